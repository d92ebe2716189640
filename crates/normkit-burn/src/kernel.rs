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
    AdaInConfig, AdaInStats, Affine, BatchNormConfig, BatchRenormConfig, ChannelAxis, Elem, Grads,
    GroupNormConfig, InstanceNormConfig, Modulation, ModulationGrads, RenormStats, RunningStats,
    Stats, SwitchGrads, SwitchNormConfig, SwitchStats, SwitchWeights,
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
    /// Batch Renormalization's training step; running statistics are
    /// required (its corrections come from them). Evaluation is
    /// `BatchNorm { training: false, .. }`.
    BatchRenorm(BatchRenormConfig),
}

/// A modulated LayerNorm (`rms` false) or RMSNorm over the trailing
/// `normalized_shape` dimensions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdaNorm {
    pub normalized_shape: Vec<usize>,
    pub eps: f32,
    pub rms: bool,
}

/// Switchable Normalization; `training` mixes in the batch statistics
/// (and updates running ones when given), otherwise the running ones.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Switch {
    pub cfg: SwitchNormConfig,
    pub training: bool,
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

    /// AdaIN of the content `x` with the statistics of `style`.
    fn normkit_adain(
        cfg: AdaInConfig,
        x: FloatTensor<Self>,
        style: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Modulated LayerNorm/RMSNorm; `scale`, `shift` are `[N, D]`.
    fn normkit_ada_norm(
        op: AdaNorm,
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        #[extension_type] weight: Maybe<Self>,
        #[extension_type] bias: Maybe<Self>,
    ) -> FloatTensor<Self>;

    /// Switchable Normalization; returns the output and, when running
    /// statistics were given to a training step, their updated values.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn normkit_switch_norm(
        op: Switch,
        x: FloatTensor<Self>,
        mean_weight: FloatTensor<Self>,
        var_weight: FloatTensor<Self>,
        #[extension_type] weight: Maybe<Self>,
        #[extension_type] bias: Maybe<Self>,
        #[extension_type] running_mean: Maybe<Self>,
        #[extension_type] running_var: Maybe<Self>,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    );
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

pub(crate) fn adain<const D: usize, const E: usize>(
    cfg: AdaInConfig,
    x: Tensor<D>,
    style: Tensor<E>,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as NormBackend>::normkit_adain(
        cfg,
        x.into_dispatch(),
        style.into_dispatch(),
    ))
}

pub(crate) fn ada_norm<const D: usize>(
    op: AdaNorm,
    x: Tensor<D>,
    scale: Tensor<2>,
    shift: Tensor<2>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as NormBackend>::normkit_ada_norm(
        op,
        x.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
        maybe(weight),
        maybe(bias),
    ))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn switch_norm<const D: usize>(
    op: Switch,
    x: Tensor<D>,
    mean_weight: Tensor<1>,
    var_weight: Tensor<1>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    running: Option<(Tensor<1>, Tensor<1>)>,
) -> (Tensor<D>, Option<(Tensor<1>, Tensor<1>)>) {
    let (running_mean, running_var) = match running {
        Some((m, v)) => (Some(m), Some(v)),
        None => (None, None),
    };
    let (y, m, v) = <Dispatch as NormBackend>::normkit_switch_norm(
        op,
        x.into_dispatch(),
        mean_weight.into_dispatch(),
        var_weight.into_dispatch(),
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
    /// Batch Renormalization's `r` and `d`, constants of its backward.
    corrections: Option<(Vec<f32>, Vec<f32>)>,
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
    let mut corrections = None;
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
            Kernel::BatchRenorm(cfg) => {
                let r = running_stats.expect("batch renormalization needs running statistics");
                normkit::batch_renorm_forward_train(&mut y, xs, &shape, affine, r, cfg).map(|s| {
                    corrections = Some((s.r, s.d));
                    s.stats
                })
            }
        }
        .expect("inputs are validated before dispatch");
        (output(y, &shape), stats)
    });
    // Evaluation reads the running statistics without changing them.
    let updates = matches!(
        kernel,
        Kernel::BatchNorm { training: true, .. }
            | Kernel::InstanceNorm { training: true, .. }
            | Kernel::BatchRenorm(_)
    );
    NormForward {
        y,
        x,
        stats,
        corrections,
        running: running.filter(|_| updates),
    }
}

/// Gradients of a normalization: `dx` and, when asked, `dweight`/`dbias`.
#[allow(clippy::too_many_arguments)]
fn norm_backward(
    kernel: &Kernel,
    dy: FlexTensor,
    x: &FlexTensor,
    weight: Option<&[f32]>,
    channels: usize,
    stats: &Stats,
    corrections: Option<&(Vec<f32>, Vec<f32>)>,
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
            Kernel::BatchRenorm(cfg) => {
                let (r, d) = corrections.expect("the training forward saved r and d");
                let stats = RenormStats {
                    stats: stats.clone(),
                    r: r.clone(),
                    d: d.clone(),
                };
                normkit::batch_renorm_backward_train(grads, dys, xs, &shape, weight, &stats, cfg)
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

/// What a fused AdaIN forward leaves behind.
struct AdaInForward {
    y: FlexTensor,
    /// The content and the style, contiguous, in the content's element type.
    x: FlexTensor,
    style: FlexTensor,
    stats: AdaInStats,
}

fn adain_forward(cfg: &AdaInConfig, x: FlexTensor, style: FlexTensor) -> AdaInForward {
    route::count_forward();
    let dtype = x.dtype();
    let x = contiguous(x, dtype);
    // The kernel takes both operands in one element type.
    let style = contiguous(style, dtype);
    let (shape, style_shape) = (dims(&x), dims(&style));
    let (y, stats) = with_elem!(dtype, |T| {
        let xs = x.as_slice::<T>().expect("contiguous");
        let ss = style.as_slice::<T>().expect("contiguous");
        let mut y = vec![T::from_f32(0.0); xs.len()];
        let stats = normkit::adain_forward(&mut y, xs, &shape, ss, &style_shape, cfg)
            .expect("inputs are validated before dispatch");
        (output(y, &shape), stats)
    });
    AdaInForward { y, x, style, stats }
}

/// A modulated norm's modulation and affine parameters, as `f32`.
#[derive(Debug, Clone)]
struct AdaParams {
    scale: Vec<f32>,
    shift: Vec<f32>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

impl AdaParams {
    fn affine(&self) -> Affine<'_> {
        Affine {
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
        }
    }

    fn modulation(&self) -> Modulation<'_> {
        Modulation {
            scale: &self.scale,
            shift: &self.shift,
        }
    }
}

/// Returns the output, the contiguous input and the per-row statistics.
fn ada_norm_forward(op: &AdaNorm, x: FlexTensor, p: &AdaParams) -> (FlexTensor, FlexTensor, Stats) {
    route::count_forward();
    let dtype = x.dtype();
    let x = contiguous(x, dtype);
    let shape = dims(&x);
    let ns = &op.normalized_shape;
    let (y, stats) = with_elem!(dtype, |T| {
        let xs = x.as_slice::<T>().expect("contiguous");
        let mut y = vec![T::from_f32(0.0); xs.len()];
        let m = p.modulation();
        if op.rms {
            normkit::ada_rms_norm_forward(&mut y, xs, &shape, ns, p.weight.as_deref(), m, op.eps)
        } else {
            normkit::ada_layer_norm_forward(&mut y, xs, &shape, ns, p.affine(), m, op.eps)
        }
        .map(|stats| (output(y, &shape), stats))
        .expect("inputs are validated before dispatch")
    });
    (y, x, stats)
}

/// Switchable Normalization's importance logits and affine parameters, as
/// `f32`.
#[derive(Debug, Clone)]
struct SwitchParams {
    mean_weight: Vec<f32>,
    var_weight: Vec<f32>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

impl SwitchParams {
    fn weights(&self) -> SwitchWeights<'_> {
        SwitchWeights {
            mean_weight: &self.mean_weight,
            var_weight: &self.var_weight,
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
        }
    }
}

/// What a fused Switchable Normalization forward leaves behind.
struct SwitchForward {
    y: FlexTensor,
    x: FlexTensor,
    stats: SwitchStats,
    running: Option<(Vec<f32>, Vec<f32>)>,
}

fn switch_norm_forward(
    op: &Switch,
    x: FlexTensor,
    p: &SwitchParams,
    mut running: Option<(Vec<f32>, Vec<f32>)>,
) -> SwitchForward {
    route::count_forward();
    let dtype = x.dtype();
    let x = contiguous(x, dtype);
    let shape = dims(&x);
    let (y, stats) = with_elem!(dtype, |T| {
        let xs = x.as_slice::<T>().expect("contiguous");
        let mut y = vec![T::from_f32(0.0); xs.len()];
        let (affine, weights) = (p.affine(), p.weights());
        if op.training {
            let r = running.as_mut().map(|(mean, var)| RunningStats {
                mean: mean.as_mut_slice(),
                var: var.as_mut_slice(),
            });
            normkit::switch_norm_forward_train(&mut y, xs, &shape, affine, weights, r, &op.cfg)
        } else {
            let (m, v) = running
                .as_ref()
                .expect("evaluation needs running statistics");
            normkit::switch_norm_forward_eval(&mut y, xs, &shape, affine, weights, m, v, &op.cfg)
        }
        .map(|stats| (output(y, &shape), stats))
        .expect("inputs are validated before dispatch")
    });
    SwitchForward {
        y,
        x,
        stats,
        // Evaluation reads the running statistics without changing them.
        running: running.filter(|_| op.training),
    }
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

    fn normkit_adain(cfg: AdaInConfig, x: FlexTensor, style: FlexTensor) -> FlexTensor {
        adain_forward(&cfg, x, style).y
    }

    fn normkit_ada_norm(
        op: AdaNorm,
        x: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        weight: Maybe<Self>,
        bias: Maybe<Self>,
    ) -> FlexTensor {
        let params = AdaParams {
            scale: values_f32(&scale),
            shift: values_f32(&shift),
            weight: weight.into_option().as_ref().map(values_f32),
            bias: bias.into_option().as_ref().map(values_f32),
        };
        ada_norm_forward(&op, x, &params).0
    }

    fn normkit_switch_norm(
        op: Switch,
        x: FlexTensor,
        mean_weight: FlexTensor,
        var_weight: FlexTensor,
        weight: Maybe<Self>,
        bias: Maybe<Self>,
        running_mean: Maybe<Self>,
        running_var: Maybe<Self>,
    ) -> (FlexTensor, Option<FlexTensor>, Option<FlexTensor>) {
        let (running_mean, running_var) = (running_mean.into_option(), running_var.into_option());
        let like = running_mean.as_ref().map(ParamLike::of);
        let running = running_mean
            .zip(running_var)
            .map(|(m, v)| (values_f32(&m), values_f32(&v)));
        let params = SwitchParams {
            mean_weight: values_f32(&mean_weight),
            var_weight: values_f32(&var_weight),
            weight: weight.into_option().as_ref().map(values_f32),
            bias: bias.into_option().as_ref().map(values_f32),
        };
        let fwd = switch_norm_forward(&op, x, &params, running);
        let (m, v) = split_running(fwd.running, like.as_ref());
        (fwd.y, m, v)
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
    Style,
    Scale,
    Shift,
    MeanWeight,
    VarWeight,
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
        corrections: Option<(Vec<f32>, Vec<f32>)>,
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
    AdaIn {
        cfg: AdaInConfig,
        /// Content and style, contiguous, in the content's element type.
        x: FlexTensor,
        style: FlexTensor,
        /// The style as it came, for shaping its gradient.
        style_like: ParamLike,
        stats: AdaInStats,
    },
    AdaNorm {
        op: AdaNorm,
        x: FlexTensor,
        params: AdaParams,
        weight_like: Option<ParamLike>,
        bias_like: Option<ParamLike>,
        scale_like: ParamLike,
        shift_like: ParamLike,
        /// The forward's per-row mean (LayerNorm only) and rstd.
        stats: Stats,
    },
    Switch {
        op: Switch,
        x: FlexTensor,
        params: SwitchParams,
        weight_like: Option<ParamLike>,
        bias_like: Option<ParamLike>,
        mean_weight_like: ParamLike,
        var_weight_like: ParamLike,
        /// The three families' statistics and the mixed ones.
        stats: SwitchStats,
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
            corrections,
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
            let (dx, dweight, dbias) = norm_backward(
                &kernel,
                dy,
                &x,
                weight.as_deref(),
                c,
                &stats,
                corrections.as_ref(),
                want,
            );
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
        Saved::AdaIn {
            cfg,
            x,
            style,
            style_like,
            stats,
        } => {
            route::count_backward();
            let (shape, style_shape) = (dims(&x), dims(&style));
            let dy = contiguous(dy, x.dtype());
            let want_style = wants(Slot::Style);
            let (dx, dstyle) = with_elem!(x.dtype(), |T| {
                let xs = x.as_slice::<T>().expect("contiguous");
                let ss = style.as_slice::<T>().expect("contiguous");
                let dys = dy.as_slice::<T>().expect("contiguous");
                let mut dx = vec![T::from_f32(0.0); xs.len()];
                let mut dstyle = want_style.then(|| vec![T::from_f32(0.0); ss.len()]);
                normkit::adain_backward(
                    &mut dx,
                    dstyle.as_deref_mut(),
                    dys,
                    xs,
                    &shape,
                    ss,
                    &style_shape,
                    &stats,
                    &cfg,
                )
                .expect("shapes were validated by the forward pass");
                (output(dx, &shape), dstyle.map(|d| output(d, &style_shape)))
            });
            out.push((Slot::Input, dx));
            if let Some(ds) = dstyle {
                // Back to the style's own element type.
                out.push((Slot::Style, contiguous(ds, style_like.dtype)));
            }
        }
        Saved::AdaNorm {
            op,
            x,
            params,
            weight_like,
            bias_like,
            scale_like,
            shift_like,
            stats,
        } => {
            route::count_backward();
            let shape = dims(&x);
            let dy = contiguous(dy, x.dtype());
            let d: usize = op.normalized_shape.iter().product();
            let nd = params.scale.len();
            let mut dscale = wants(Slot::Scale).then(|| vec![0.0f32; nd]);
            let mut dshift = wants(Slot::Shift).then(|| vec![0.0f32; nd]);
            let mut dweight = (wants(Slot::Weight) && weight_like.is_some()).then(|| vec![0.0; d]);
            let mut dbias = (wants(Slot::Bias) && bias_like.is_some()).then(|| vec![0.0; d]);
            let dx = with_elem!(x.dtype(), |T| {
                let xs = x.as_slice::<T>().expect("contiguous");
                let dys = dy.as_slice::<T>().expect("contiguous");
                let mut dx = vec![T::from_f32(0.0); xs.len()];
                let grads = Grads {
                    dx: &mut dx,
                    dweight: dweight.as_deref_mut(),
                    dbias: dbias.as_deref_mut(),
                };
                let dmodulation = ModulationGrads {
                    dscale: dscale.as_deref_mut(),
                    dshift: dshift.as_deref_mut(),
                };
                let (ns, m) = (&op.normalized_shape, params.modulation());
                if op.rms {
                    let w = params.weight.as_deref();
                    normkit::ada_rms_norm_backward(
                        grads,
                        dmodulation,
                        dys,
                        xs,
                        &shape,
                        ns,
                        w,
                        m,
                        &stats,
                    )
                } else {
                    let a = params.affine();
                    normkit::ada_layer_norm_backward(
                        grads,
                        dmodulation,
                        dys,
                        xs,
                        &shape,
                        ns,
                        a,
                        m,
                        &stats,
                    )
                }
                .expect("shapes were validated by the forward pass");
                output(dx, &shape)
            });
            out.push((Slot::Input, dx));
            if let Some(g) = dscale {
                out.push((Slot::Scale, tensor_like(g, &scale_like)));
            }
            if let Some(g) = dshift {
                out.push((Slot::Shift, tensor_like(g, &shift_like)));
            }
            if let (Some(g), Some(like)) = (dweight, weight_like) {
                out.push((Slot::Weight, tensor_like(g, &like)));
            }
            if let (Some(g), Some(like)) = (dbias, bias_like) {
                out.push((Slot::Bias, tensor_like(g, &like)));
            }
        }
        Saved::Switch {
            op,
            x,
            params,
            weight_like,
            bias_like,
            mean_weight_like,
            var_weight_like,
            stats,
        } => {
            route::count_backward();
            let shape = dims(&x);
            let dy = contiguous(dy, x.dtype());
            let c = stats.bn_mean.len();
            let mut dweight = (wants(Slot::Weight) && weight_like.is_some()).then(|| vec![0.0; c]);
            let mut dbias = (wants(Slot::Bias) && bias_like.is_some()).then(|| vec![0.0; c]);
            let mut dmean_weight = wants(Slot::MeanWeight).then(|| vec![0.0f32; 3]);
            let mut dvar_weight = wants(Slot::VarWeight).then(|| vec![0.0f32; 3]);
            let dx = with_elem!(x.dtype(), |T| {
                let xs = x.as_slice::<T>().expect("contiguous");
                let dys = dy.as_slice::<T>().expect("contiguous");
                let mut dx = vec![T::from_f32(0.0); xs.len()];
                let grads = Grads {
                    dx: &mut dx,
                    dweight: dweight.as_deref_mut(),
                    dbias: dbias.as_deref_mut(),
                };
                let dweights = SwitchGrads {
                    dmean_weight: dmean_weight.as_deref_mut(),
                    dvar_weight: dvar_weight.as_deref_mut(),
                };
                normkit::switch_norm_backward(
                    grads,
                    dweights,
                    dys,
                    xs,
                    &shape,
                    params.weight.as_deref(),
                    params.weights(),
                    &stats,
                    &op.cfg,
                )
                .expect("shapes were validated by the forward pass");
                output(dx, &shape)
            });
            out.push((Slot::Input, dx));
            if let (Some(g), Some(like)) = (dweight, weight_like) {
                out.push((Slot::Weight, tensor_like(g, &like)));
            }
            if let (Some(g), Some(like)) = (dbias, bias_like) {
                out.push((Slot::Bias, tensor_like(g, &like)));
            }
            if let Some(g) = dmean_weight {
                out.push((Slot::MeanWeight, tensor_like(g, &mean_weight_like)));
            }
            if let Some(g) = dvar_weight {
                out.push((Slot::VarWeight, tensor_like(g, &var_weight_like)));
            }
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
        5 => run::<C, 5>(guards, slots, saved, output),
        n => unreachable!("fused ops have one to five differentiable inputs, got {n}"),
    }
}

/// Splits an autodiff tensor into its flex primitive and its graph guard.
fn parts<C: CheckpointStrategy>(t: AdTensor<C>) -> (FlexTensor, NodeGuard) {
    t.into_parts()
}

/// The inputs of a fused node: one guard per differentiable input, with
/// the slot its gradient goes to.
struct Parents {
    guards: Vec<NodeGuard>,
    slots: Vec<Slot>,
}

impl Parents {
    /// Starts with the node's main input; returns its flex primitive.
    fn new<C: CheckpointStrategy>(x: AdTensor<C>) -> (Self, FlexTensor) {
        let (x, g) = parts::<C>(x);
        let parents = Parents {
            guards: vec![g],
            slots: vec![Slot::Input],
        };
        (parents, x)
    }

    /// Adds a parameter; returns its values as `f32` and its shape and type.
    fn param<C: CheckpointStrategy>(
        &mut self,
        t: AdTensor<C>,
        slot: Slot,
    ) -> (Vec<f32>, ParamLike) {
        let (t, g) = parts::<C>(t);
        self.guards.push(g);
        self.slots.push(slot);
        (values_f32(&t), ParamLike::of(&t))
    }

    /// [`param`](Self::param) for an optional parameter.
    fn maybe<C: CheckpointStrategy>(
        &mut self,
        t: Maybe<Autodiff<Flex, C>>,
        slot: Slot,
    ) -> (Option<Vec<f32>>, Option<ParamLike>) {
        match t.into_option() {
            Some(t) => {
                let (v, like) = self.param::<C>(t, slot);
                (Some(v), Some(like))
            }
            None => (None, None),
        }
    }

    fn track<C: CheckpointStrategy>(self, saved: Saved, output: FlexTensor) -> AdTensor<C> {
        track::<C>(self.guards, self.slots, saved, output)
    }
}

/// Running statistics of an autodiff step: constants, read as `f32`, with
/// the shape and type their updates take.
#[allow(clippy::type_complexity)]
fn running_values<C: CheckpointStrategy>(
    mean: Maybe<Autodiff<Flex, C>>,
    var: Maybe<Autodiff<Flex, C>>,
) -> (Option<(Vec<f32>, Vec<f32>)>, Option<ParamLike>) {
    let mean = mean.into_option().map(|t| t.into_primitive());
    let var = var.into_option().map(|t| t.into_primitive());
    let like = mean.as_ref().map(ParamLike::of);
    let running = mean.zip(var).map(|(m, v)| (values_f32(&m), values_f32(&v)));
    (running, like)
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
            corrections: fwd.corrections,
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

    fn normkit_adain(cfg: AdaInConfig, x: AdTensor<C>, style: AdTensor<C>) -> AdTensor<C> {
        let (x, gx) = parts::<C>(x);
        let (style, gs) = parts::<C>(style);
        let style_like = ParamLike::of(&style);
        let fwd = adain_forward(&cfg, x, style);
        let saved = Saved::AdaIn {
            cfg,
            x: fwd.x,
            style: fwd.style,
            style_like,
            stats: fwd.stats,
        };
        track::<C>(vec![gx, gs], vec![Slot::Input, Slot::Style], saved, fwd.y)
    }

    fn normkit_ada_norm(
        op: AdaNorm,
        x: AdTensor<C>,
        scale: AdTensor<C>,
        shift: AdTensor<C>,
        weight: Maybe<Self>,
        bias: Maybe<Self>,
    ) -> AdTensor<C> {
        let (mut parents, x) = Parents::new::<C>(x);
        let (scale, scale_like) = parents.param::<C>(scale, Slot::Scale);
        let (shift, shift_like) = parents.param::<C>(shift, Slot::Shift);
        let (weight, weight_like) = parents.maybe::<C>(weight, Slot::Weight);
        let (bias, bias_like) = parents.maybe::<C>(bias, Slot::Bias);
        let params = AdaParams {
            scale,
            shift,
            weight,
            bias,
        };
        let (y, x, stats) = ada_norm_forward(&op, x, &params);
        let saved = Saved::AdaNorm {
            op,
            x,
            params,
            weight_like,
            bias_like,
            scale_like,
            shift_like,
            stats,
        };
        parents.track::<C>(saved, y)
    }

    fn normkit_switch_norm(
        op: Switch,
        x: AdTensor<C>,
        mean_weight: AdTensor<C>,
        var_weight: AdTensor<C>,
        weight: Maybe<Self>,
        bias: Maybe<Self>,
        running_mean: Maybe<Self>,
        running_var: Maybe<Self>,
    ) -> (AdTensor<C>, Option<AdTensor<C>>, Option<AdTensor<C>>) {
        let (running, like) = running_values::<C>(running_mean, running_var);
        let (mut parents, x) = Parents::new::<C>(x);
        let (mean_weight, mean_weight_like) = parents.param::<C>(mean_weight, Slot::MeanWeight);
        let (var_weight, var_weight_like) = parents.param::<C>(var_weight, Slot::VarWeight);
        let (weight, weight_like) = parents.maybe::<C>(weight, Slot::Weight);
        let (bias, bias_like) = parents.maybe::<C>(bias, Slot::Bias);
        let params = SwitchParams {
            mean_weight,
            var_weight,
            weight,
            bias,
        };
        let fwd = switch_norm_forward(&op, x, &params, running);
        let (m, v) = split_running(fwd.running, like.as_ref());
        let saved = Saved::Switch {
            op,
            x: fwd.x,
            params,
            weight_like,
            bias_like,
            mean_weight_like,
            var_weight_like,
            stats: fwd.stats,
        };
        let y = parents.track::<C>(saved, fwd.y);
        (
            y,
            m.map(<Self as AutodiffBackend>::from_inner),
            v.map(<Self as AutodiffBackend>::from_inner),
        )
    }
}
