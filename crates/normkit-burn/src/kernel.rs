//! The fused path: a burn backend extension whose `flex` implementation
//! runs the normkit kernels on flex's CPU buffers, and whose
//! `Autodiff<Flex>` implementation records one custom backward node per op,
//! carrying the forward's saved statistics to the normkit backward kernel.
//!
//! Inputs reach this module validated (see `functional`), so a kernel error
//! here is a broken invariant, not bad user input.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch, ExtensionType, Flex,
};
use burn::tensor::{DType, Tensor, TensorData};
use normkit::{
    Affine, BatchNormConfig, ChannelAxis, Elem, Grads, GroupNormConfig, InstanceNormConfig,
    RunningStats, Stats,
};

use crate::route;

/// One normalization over a tensor, as the normkit kernels define it.
// The variants are named after the ops, which all end in "Norm".
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kernel {
    /// `training`: batch statistics (and running update when running
    /// statistics are given); otherwise the running statistics.
    BatchNorm {
        cfg: BatchNormConfig,
        training: bool,
    },
    InstanceNorm {
        cfg: InstanceNormConfig,
        training: bool,
    },
    GroupNorm(GroupNormConfig),
    LayerNorm {
        normalized_shape: Vec<usize>,
        eps: f32,
    },
    RmsNorm {
        normalized_shape: Vec<usize>,
        eps: f32,
    },
}

/// An optional tensor input of the extension (the extension frontend maps
/// tensors held by derived types, not `Option`s).
#[derive(ExtensionType)]
pub(crate) enum Maybe<B: Backend> {
    Present(FloatTensor<B>),
    Absent,
}

impl<B: Backend> Maybe<B> {
    fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            Maybe::Present(t) => Some(t),
            Maybe::Absent => None,
        }
    }
}

fn maybe(t: Option<Tensor<1>>) -> Maybe<Dispatch> {
    match t {
        Some(t) => Maybe::Present(t.into_dispatch()),
        None => Maybe::Absent,
    }
}

/// The backend extension. Only `flex` and `Autodiff<flex>` implement it;
/// callers check [`route::fused`] before dispatching here.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait NormBackend: Backend {
    /// Normalizes `x`; returns the output and, when running statistics were
    /// given to a training step, their updated values.
    #[allow(clippy::type_complexity)]
    fn normkit_norm(
        kernel: Kernel,
        x: FloatTensor<Self>,
        #[extension_type] weight: Maybe<Self>,
        #[extension_type] bias: Maybe<Self>,
        #[extension_type] running_mean: Maybe<Self>,
        #[extension_type] running_var: Maybe<Self>,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    );

    /// Dynamic Tanh; `alpha` has one element.
    fn normkit_dyt(
        axis: ChannelAxis,
        x: FloatTensor<Self>,
        alpha: FloatTensor<Self>,
        #[extension_type] weight: Maybe<Self>,
        #[extension_type] bias: Maybe<Self>,
    ) -> FloatTensor<Self>;

    /// Weight normalization `g · v / ‖v‖`; `g` holds one value per index
    /// along `dim`.
    fn normkit_weight_norm(
        dim: Option<isize>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

// ---------------------------------------------------------------------------
// Entry points on high-level tensors.

pub(crate) fn norm<const D: usize>(
    kernel: Kernel,
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    running: Option<(Tensor<1>, Tensor<1>)>,
) -> (Tensor<D>, Option<(Tensor<1>, Tensor<1>)>) {
    let (running_mean, running_var) = match running {
        Some((m, v)) => (Some(m), Some(v)),
        None => (None, None),
    };
    let (y, m, v) = <Dispatch as NormBackend>::normkit_norm(
        kernel,
        x.into_dispatch(),
        maybe(weight),
        maybe(bias),
        maybe(running_mean),
        maybe(running_var),
    );
    let running = m
        .zip(v)
        .map(|(m, v)| (Tensor::<1>::from_dispatch(m), Tensor::<1>::from_dispatch(v)));
    (Tensor::from_dispatch(y), running)
}

pub(crate) fn dyt<const D: usize>(
    axis: ChannelAxis,
    x: Tensor<D>,
    alpha: Tensor<1>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as NormBackend>::normkit_dyt(
        axis,
        x.into_dispatch(),
        alpha.into_dispatch(),
        maybe(weight),
        maybe(bias),
    ))
}

pub(crate) fn weight_norm<const D: usize>(
    dim: Option<isize>,
    v: Tensor<D>,
    g: Tensor<1>,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as NormBackend>::normkit_weight_norm(
        dim,
        v.into_dispatch(),
        g.into_dispatch(),
    ))
}

// ---------------------------------------------------------------------------
// Flex buffers.

/// Runs `$body` with `$T` bound to the normkit element type of `$dtype`.
macro_rules! with_elem {
    ($dtype:expr, |$T:ident| $body:block) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            other => unreachable!("the fused path only takes f32, f16 and bf16, got {other:?}"),
        }
    };
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// A parameter's values as `f32`, whatever its storage type.
fn values_f32(t: &FlexTensor) -> Vec<f32> {
    let data = t.clone().into_data();
    if data.dtype() == DType::F32 {
        data.try_into_vec::<f32>()
    } else {
        data.convert::<f32>().try_into_vec::<f32>()
    }
    .expect("a float tensor converts to f32")
}

/// A tensor shaped and typed like `like`, holding `values`.
fn tensor_like(values: Vec<f32>, like: &ParamLike) -> FlexTensor {
    let data = TensorData::new(values, like.shape.clone());
    if like.dtype == DType::F32 {
        FlexTensor::from_data(data)
    } else {
        FlexTensor::from_data(data.convert_dtype(like.dtype))
    }
}

/// Shape and storage type of a parameter, for shaping its gradient.
#[derive(Debug, Clone)]
struct ParamLike {
    shape: Vec<usize>,
    dtype: DType,
}

impl ParamLike {
    fn of(t: &FlexTensor) -> Self {
        ParamLike {
            shape: dims(t),
            dtype: t.dtype(),
        }
    }
}

/// `t` with `dtype` and a contiguous layout starting at offset zero.
fn contiguous(t: FlexTensor, dtype: DType) -> FlexTensor {
    let t = if t.dtype() == dtype {
        t
    } else {
        FlexTensor::from_data(t.into_data().convert_dtype(dtype))
    };
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}

fn output<T: burn::tensor::Element>(values: Vec<T>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// What a fused normalization forward leaves behind.
struct NormForward {
    y: FlexTensor,
    x: FlexTensor,
    stats: Stats,
    running: Option<(Vec<f32>, Vec<f32>)>,
}

fn norm_forward(
    kernel: &Kernel,
    x: FlexTensor,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    mut running: Option<(Vec<f32>, Vec<f32>)>,
) -> NormForward {
    route::count_forward();
    let dtype = x.dtype();
    let x = contiguous(x, dtype);
    let shape = dims(&x);
    let affine = Affine { weight, bias };
    let (y, stats) = with_elem!(x.dtype(), |T| {
        let xs = x.as_slice::<T>().expect("contiguous");
        let mut y = vec![T::from_f32(0.0); xs.len()];
        let running_stats = running.as_mut().map(|(mean, var)| RunningStats {
            mean: mean.as_mut_slice(),
            var: var.as_mut_slice(),
        });
        let stats = match kernel {
            Kernel::BatchNorm {
                cfg,
                training: true,
            } => normkit::batch_norm_forward_train(&mut y, xs, &shape, affine, running_stats, cfg),
            Kernel::BatchNorm {
                cfg,
                training: false,
            } => {
                let r = running_stats.expect("evaluation needs running statistics");
                normkit::batch_norm_forward_eval(&mut y, xs, &shape, affine, r.mean, r.var, cfg)
            }
            Kernel::InstanceNorm {
                cfg,
                training: true,
            } => {
                normkit::instance_norm_forward_train(&mut y, xs, &shape, affine, running_stats, cfg)
            }
            Kernel::InstanceNorm {
                cfg,
                training: false,
            } => {
                let r = running_stats.expect("evaluation needs running statistics");
                normkit::instance_norm_forward_eval(&mut y, xs, &shape, affine, r.mean, r.var, cfg)
            }
            Kernel::GroupNorm(cfg) => normkit::group_norm_forward(&mut y, xs, &shape, affine, cfg),
            Kernel::LayerNorm {
                normalized_shape,
                eps,
            } => normkit::layer_norm_forward(&mut y, xs, &shape, normalized_shape, affine, *eps),
            Kernel::RmsNorm {
                normalized_shape,
                eps,
            } => normkit::rms_norm_forward(&mut y, xs, &shape, normalized_shape, weight, *eps),
        }
        .expect("inputs are validated before dispatch");
        (output(y, &shape), stats)
    });
    // Evaluation reads the running statistics without changing them.
    let updates = matches!(
        kernel,
        Kernel::BatchNorm { training: true, .. } | Kernel::InstanceNorm { training: true, .. }
    );
    NormForward {
        y,
        x,
        stats,
        running: running.filter(|_| updates),
    }
}

/// Gradients of a normalization: `dx` and, when asked, `dweight`/`dbias`.
fn norm_backward(
    kernel: &Kernel,
    dy: FlexTensor,
    x: &FlexTensor,
    weight: Option<&[f32]>,
    channels: usize,
    stats: &Stats,
    want: (bool, bool),
) -> (FlexTensor, Option<Vec<f32>>, Option<Vec<f32>>) {
    route::count_backward();
    let shape = dims(x);
    let dy = contiguous(dy, x.dtype());
    let c = channels;
    let mut dweight = want.0.then(|| vec![0.0f32; c]);
    let mut dbias = want.1.then(|| vec![0.0f32; c]);
    let dx = with_elem!(x.dtype(), |T| {
        let xs = x.as_slice::<T>().expect("contiguous");
        let dys = dy.as_slice::<T>().expect("contiguous");
        let mut dx = vec![T::from_f32(0.0); xs.len()];
        let grads = Grads {
            dx: &mut dx,
            dweight: dweight.as_deref_mut(),
            dbias: dbias.as_deref_mut(),
        };
        match kernel {
            Kernel::BatchNorm {
                cfg,
                training: true,
            } => normkit::batch_norm_backward_train(grads, dys, xs, &shape, weight, stats, cfg),
            Kernel::BatchNorm {
                cfg,
                training: false,
            } => normkit::batch_norm_backward_eval(grads, dys, xs, &shape, weight, stats, cfg),
            Kernel::InstanceNorm {
                cfg,
                training: true,
            } => normkit::instance_norm_backward_train(grads, dys, xs, &shape, weight, stats, cfg),
            Kernel::InstanceNorm {
                cfg,
                training: false,
            } => normkit::instance_norm_backward_eval(grads, dys, xs, &shape, weight, stats, cfg),
            Kernel::GroupNorm(cfg) => {
                normkit::group_norm_backward(grads, dys, xs, &shape, weight, stats, cfg)
            }
            Kernel::LayerNorm {
                normalized_shape, ..
            } => normkit::layer_norm_backward(
                grads,
                dys,
                xs,
                &shape,
                normalized_shape,
                weight,
                stats,
            ),
            Kernel::RmsNorm {
                normalized_shape, ..
            } => {
                normkit::rms_norm_backward(grads, dys, xs, &shape, normalized_shape, weight, stats)
            }
        }
        .expect("shapes were validated by the forward pass");
        output(dx, &shape)
    });
    (dx, dweight, dbias)
}

fn dyt_forward(
    axis: ChannelAxis,
    x: FlexTensor,
    alpha: f32,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> (FlexTensor, FlexTensor) {
    route::count_forward();
    let dtype = x.dtype();
    let x = contiguous(x, dtype);
    let shape = dims(&x);
    let y = with_elem!(x.dtype(), |T| {
        let xs = x.as_slice::<T>().expect("contiguous");
        let mut y = vec![T::from_f32(0.0); xs.len()];
        normkit::dyt_forward(&mut y, xs, &shape, alpha, Affine { weight, bias }, axis)
            .expect("inputs are validated before dispatch");
        output(y, &shape)
    });
    (y, x)
}

fn weight_norm_forward(
    dim: Option<isize>,
    v: FlexTensor,
    g: &[f32],
) -> (FlexTensor, FlexTensor, Vec<f32>) {
    route::count_forward();
    let dtype = v.dtype();
    let v = contiguous(v, dtype);
    let shape = dims(&v);
    let (w, norms) = with_elem!(v.dtype(), |T| {
        let vs = v.as_slice::<T>().expect("contiguous");
        let mut w = vec![T::from_f32(0.0); vs.len()];
        let norms = normkit::weight_norm_forward(&mut w, vs, &shape, g, dim)
            .expect("inputs are validated before dispatch");
        (output(w, &shape), norms)
    });
    (w, v, norms)
}

// ---------------------------------------------------------------------------
// flex: forward only.

impl NormBackend for Flex {
    fn normkit_norm(
        kernel: Kernel,
        x: FlexTensor,
        weight: Maybe<Self>,
        bias: Maybe<Self>,
        running_mean: Maybe<Self>,
        running_var: Maybe<Self>,
    ) -> (FlexTensor, Option<FlexTensor>, Option<FlexTensor>) {
        let (weight, bias) = (weight.into_option(), bias.into_option());
        let (running_mean, running_var) = (running_mean.into_option(), running_var.into_option());
        let like = running_mean.as_ref().map(ParamLike::of);
        let running = running_mean
            .zip(running_var)
            .map(|(m, v)| (values_f32(&m), values_f32(&v)));
        let weight = weight.as_ref().map(values_f32);
        let bias = bias.as_ref().map(values_f32);
        let fwd = norm_forward(&kernel, x, weight.as_deref(), bias.as_deref(), running);
        let (m, v) = split_running(fwd.running, like.as_ref());
        (fwd.y, m, v)
    }

    fn normkit_dyt(
        axis: ChannelAxis,
        x: FlexTensor,
        alpha: FlexTensor,
        weight: Maybe<Self>,
        bias: Maybe<Self>,
    ) -> FlexTensor {
        let (weight, bias) = (weight.into_option(), bias.into_option());
        let alpha = values_f32(&alpha)[0];
        let weight = weight.as_ref().map(values_f32);
        let bias = bias.as_ref().map(values_f32);
        dyt_forward(axis, x, alpha, weight.as_deref(), bias.as_deref()).0
    }

    fn normkit_weight_norm(dim: Option<isize>, v: FlexTensor, g: FlexTensor) -> FlexTensor {
        weight_norm_forward(dim, v, &values_f32(&g)).0
    }
}

fn split_running(
    running: Option<(Vec<f32>, Vec<f32>)>,
    like: Option<&ParamLike>,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    match (running, like) {
        (Some((m, v)), Some(like)) => (Some(tensor_like(m, like)), Some(tensor_like(v, like))),
        _ => (None, None),
    }
}

// ---------------------------------------------------------------------------
// Autodiff<flex>: forward plus one custom backward node.

/// Which input a parent of the backward node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Input,
    Alpha,
    Weight,
    Bias,
    Magnitude,
}

/// Everything a backward step needs, saved by its forward.
#[derive(Debug, Clone)]
enum Saved {
    Norm {
        kernel: Kernel,
        /// The input, contiguous.
        x: FlexTensor,
        weight: Option<Vec<f32>>,
        weight_like: Option<ParamLike>,
        bias_like: Option<ParamLike>,
        /// The forward's mean and rstd.
        stats: Stats,
    },
    Dyt {
        axis: ChannelAxis,
        x: FlexTensor,
        alpha: f32,
        alpha_like: ParamLike,
        weight: Option<Vec<f32>>,
        weight_like: Option<ParamLike>,
        bias_like: Option<ParamLike>,
    },
    WeightNorm {
        dim: Option<isize>,
        v: FlexTensor,
        g: Vec<f32>,
        g_like: ParamLike,
        /// The forward's ‖v‖ per slice.
        norms: Vec<f32>,
    },
}

/// The gradient of each parent, in the order of `slots`; `None` where
/// `needed` says the parent takes none.
fn gradients(
    saved: Saved,
    dy: FlexTensor,
    slots: &[Slot],
    needed: &[bool],
) -> Vec<Option<FlexTensor>> {
    let wants = |slot: Slot| {
        slots
            .iter()
            .zip(needed)
            .any(|(&s, &needed)| s == slot && needed)
    };
    let mut out: Vec<(Slot, FlexTensor)> = Vec::with_capacity(slots.len());
    match saved {
        Saved::Norm {
            kernel,
            x,
            weight,
            weight_like,
            bias_like,
            stats,
        } => {
            let c = weight
                .as_ref()
                .map(Vec::len)
                .or_else(|| bias_like.as_ref().map(|b| b.shape.iter().product()))
                .unwrap_or(0);
            let want = (
                wants(Slot::Weight) && weight_like.is_some(),
                wants(Slot::Bias) && bias_like.is_some(),
            );
            let (dx, dweight, dbias) =
                norm_backward(&kernel, dy, &x, weight.as_deref(), c, &stats, want);
            out.push((Slot::Input, dx));
            if let (Some(g), Some(like)) = (dweight, weight_like) {
                out.push((Slot::Weight, tensor_like(g, &like)));
            }
            if let (Some(g), Some(like)) = (dbias, bias_like) {
                out.push((Slot::Bias, tensor_like(g, &like)));
            }
        }
        Saved::Dyt {
            axis,
            x,
            alpha,
            alpha_like,
            weight,
            weight_like,
            bias_like,
        } => {
            route::count_backward();
            let shape = dims(&x);
            let dy = contiguous(dy, x.dtype());
            let c = weight
                .as_ref()
                .map(Vec::len)
                .or_else(|| bias_like.as_ref().map(|b| b.shape.iter().product()))
                .unwrap_or(0);
            let mut dweight = (wants(Slot::Weight) && weight_like.is_some()).then(|| vec![0.0; c]);
            let mut dbias = (wants(Slot::Bias) && bias_like.is_some()).then(|| vec![0.0; c]);
            let (dx, dalpha) = with_elem!(x.dtype(), |T| {
                let xs = x.as_slice::<T>().expect("contiguous");
                let dys = dy.as_slice::<T>().expect("contiguous");
                let mut dx = vec![T::from_f32(0.0); xs.len()];
                let grads = Grads {
                    dx: &mut dx,
                    dweight: dweight.as_deref_mut(),
                    dbias: dbias.as_deref_mut(),
                };
                let dalpha =
                    normkit::dyt_backward(grads, dys, xs, &shape, alpha, weight.as_deref(), axis)
                        .expect("shapes were validated by the forward pass");
                (output(dx, &shape), dalpha)
            });
            out.push((Slot::Input, dx));
            out.push((Slot::Alpha, tensor_like(vec![dalpha], &alpha_like)));
            if let (Some(g), Some(like)) = (dweight, weight_like) {
                out.push((Slot::Weight, tensor_like(g, &like)));
            }
            if let (Some(g), Some(like)) = (dbias, bias_like) {
                out.push((Slot::Bias, tensor_like(g, &like)));
            }
        }
        Saved::WeightNorm {
            dim,
            v,
            g,
            g_like,
            norms,
        } => {
            route::count_backward();
            let shape = dims(&v);
            let dw = contiguous(dy, v.dtype());
            let mut dg = vec![0.0f32; g.len()];
            let dv = with_elem!(v.dtype(), |T| {
                let vs = v.as_slice::<T>().expect("contiguous");
                let dws = dw.as_slice::<T>().expect("contiguous");
                let mut dv = vec![T::from_f32(0.0); vs.len()];
                normkit::weight_norm_backward(&mut dv, &mut dg, dws, vs, &shape, &g, dim, &norms)
                    .expect("shapes were validated by the forward pass");
                output(dv, &shape)
            });
            out.push((Slot::Input, dv));
            out.push((Slot::Magnitude, tensor_like(dg, &g_like)));
        }
    }
    // Gradients of inputs that need none were not computed.
    slots
        .iter()
        .map(|slot| {
            let at = out.iter().position(|(s, _)| s == slot)?;
            Some(out.swap_remove(at).1)
        })
        .collect()
}

/// The custom backward node of every fused op.
#[derive(Debug)]
struct FusedBackward;

impl<const N: usize> Backward<Flex, N> for FusedBackward {
    type State = (Saved, [Slot; N]);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (saved, slots) = ops.state;
        let needed = ops.parents.each_ref().map(Option::is_some);
        let computed = gradients(saved, dy, &slots, &needed);
        for (parent, grad) in ops.parents.into_iter().zip(computed) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

type AdTensor<C> = FloatTensor<Autodiff<Flex, C>>;

/// Registers `output` as the result of a fused op over the inputs whose
/// guards are given, in the order of `slots`.
fn track<C: CheckpointStrategy>(
    guards: Vec<NodeGuard>,
    slots: Vec<Slot>,
    saved: Saved,
    output: FlexTensor,
) -> AdTensor<C> {
    fn run<C: CheckpointStrategy, const N: usize>(
        guards: Vec<NodeGuard>,
        slots: Vec<Slot>,
        saved: Saved,
        output: FlexTensor,
    ) -> AdTensor<C> {
        let guards: [NodeGuard; N] = guards.try_into().expect("one guard per slot");
        let slots: [Slot; N] = slots.try_into().expect("one slot per guard");
        match FusedBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((saved, slots), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
    match guards.len() {
        1 => run::<C, 1>(guards, slots, saved, output),
        2 => run::<C, 2>(guards, slots, saved, output),
        3 => run::<C, 3>(guards, slots, saved, output),
        4 => run::<C, 4>(guards, slots, saved, output),
        n => unreachable!("fused ops have one to four differentiable inputs, got {n}"),
    }
}

/// Splits an autodiff tensor into its flex primitive and its graph guard.
fn parts<C: CheckpointStrategy>(t: AdTensor<C>) -> (FlexTensor, NodeGuard) {
    t.into_parts()
}

impl<C: CheckpointStrategy> NormBackend for Autodiff<Flex, C> {
    fn normkit_norm(
        kernel: Kernel,
        x: AdTensor<C>,
        weight: Maybe<Self>,
        bias: Maybe<Self>,
        running_mean: Maybe<Self>,
        running_var: Maybe<Self>,
    ) -> (AdTensor<C>, Option<AdTensor<C>>, Option<AdTensor<C>>) {
        let (weight, bias) = (weight.into_option(), bias.into_option());
        let running_mean = running_mean.into_option().map(|t| t.into_primitive());
        let running_var = running_var.into_option().map(|t| t.into_primitive());
        let like = running_mean.as_ref().map(ParamLike::of);
        let running = running_mean
            .zip(running_var)
            .map(|(m, v)| (values_f32(&m), values_f32(&v)));

        let (x, gx) = parts::<C>(x);
        let mut guards = vec![gx];
        let mut slots = vec![Slot::Input];
        let (weight, weight_like) = match weight.map(parts::<C>) {
            Some((w, g)) => {
                guards.push(g);
                slots.push(Slot::Weight);
                (Some(values_f32(&w)), Some(ParamLike::of(&w)))
            }
            None => (None, None),
        };
        let (bias, bias_like) = match bias.map(parts::<C>) {
            Some((b, g)) => {
                guards.push(g);
                slots.push(Slot::Bias);
                (Some(values_f32(&b)), Some(ParamLike::of(&b)))
            }
            None => (None, None),
        };

        let fwd = norm_forward(&kernel, x, weight.as_deref(), bias.as_deref(), running);
        let (m, v) = split_running(fwd.running, like.as_ref());
        let saved = Saved::Norm {
            kernel,
            x: fwd.x,
            weight,
            weight_like,
            bias_like,
            stats: fwd.stats,
        };
        let y = track::<C>(guards, slots, saved, fwd.y);
        (
            y,
            m.map(<Self as AutodiffBackend>::from_inner),
            v.map(<Self as AutodiffBackend>::from_inner),
        )
    }

    fn normkit_dyt(
        axis: ChannelAxis,
        x: AdTensor<C>,
        alpha: AdTensor<C>,
        weight: Maybe<Self>,
        bias: Maybe<Self>,
    ) -> AdTensor<C> {
        let (weight, bias) = (weight.into_option(), bias.into_option());
        let (x, gx) = parts::<C>(x);
        let (alpha, ga) = parts::<C>(alpha);
        let mut guards = vec![gx, ga];
        let mut slots = vec![Slot::Input, Slot::Alpha];
        let (weight, weight_like) = match weight.map(parts::<C>) {
            Some((w, g)) => {
                guards.push(g);
                slots.push(Slot::Weight);
                (Some(values_f32(&w)), Some(ParamLike::of(&w)))
            }
            None => (None, None),
        };
        let (bias, bias_like) = match bias.map(parts::<C>) {
            Some((b, g)) => {
                guards.push(g);
                slots.push(Slot::Bias);
                (Some(values_f32(&b)), Some(ParamLike::of(&b)))
            }
            None => (None, None),
        };
        let alpha_like = ParamLike::of(&alpha);
        let alpha = values_f32(&alpha)[0];
        let (y, x) = dyt_forward(axis, x, alpha, weight.as_deref(), bias.as_deref());
        let saved = Saved::Dyt {
            axis,
            x,
            alpha,
            alpha_like,
            weight,
            weight_like,
            bias_like,
        };
        track::<C>(guards, slots, saved, y)
    }

    fn normkit_weight_norm(dim: Option<isize>, v: AdTensor<C>, g: AdTensor<C>) -> AdTensor<C> {
        let (v, gv) = parts::<C>(v);
        let (g, gg) = parts::<C>(g);
        let g_like = ParamLike::of(&g);
        let g = values_f32(&g);
        let (w, v, norms) = weight_norm_forward(dim, v, &g);
        let saved = Saved::WeightNorm {
            dim,
            v,
            g,
            g_like,
            norms,
        };
        track::<C>(vec![gv, gg], vec![Slot::Input, Slot::Magnitude], saved, w)
    }
}
