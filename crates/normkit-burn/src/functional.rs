//! Every op as a function over burn tensors: checked against normkit's own
//! validation of the op (its `signature`) before any work, then routed to
//! the fused normkit kernels (flex, `f32`/`f16`/`bf16`) or to composed
//! tensor operations (any other backend or element type, or
//! [`Route::Composed`]). Both routes refuse the same inputs with the same
//! errors.
//!
//! The layers call these; they are public for models that keep their own
//! parameters. Per-channel parameters and running statistics are rank-1
//! tensors of the channel count; LayerNorm and RMSNorm take their
//! parameters flattened to `normalized_shape`'s element count.
//!
//! [`Route::Composed`]: crate::Route::Composed

use std::sync::Arc;

use burn::tensor::Tensor;
use normkit::op::{
    AdaInOp, AdaNormOp, BatchNormOp, BatchRenormOp, DerfOp, DytOp, ErasedOp, GroupNormOp,
    InstanceNormOp, LayerNormOp, RmsNormOp, SwitchNormOp, WeightNormOp,
};
use normkit::{
    AdaInConfig, BatchNormConfig, BatchRenormConfig, ChannelAxis, GroupNormConfig,
    InstanceNormConfig, NormError, RunningStats, SwitchNormConfig,
};

use crate::composed;
use crate::error::{Error, Result};
use crate::fused;
use crate::route;

/// Running mean and running variance, each `[C]`.
pub type Running = (Tensor<1>, Tensor<1>);

fn check_dtype<const D: usize>(op: &'static str, x: &Tensor<D>) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            dtype: format!("{:?}", x.dtype()),
        })
    }
}

fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Checks a call of `op` on `x` with the op's present parameters
/// (`params`, flattened, in its signature's order) and running statistics:
/// normkit's validation of the shape and hyperparameters, then each
/// parameter's length and the running statistics against the signature.
fn check<const D: usize>(
    op: &dyn ErasedOp,
    x: &Tensor<D>,
    params: &[Tensor<1>],
    running: Option<&Running>,
) -> Result<()> {
    let name = op.name_erased();
    check_dtype(name, x)?;
    let shape = x.dims();
    let sig = op.signature_erased(&shape)?;
    for (p, t) in sig.params.iter().zip(params) {
        let got = t.dims()[0];
        if got != p.len {
            return Err(NormError::Length {
                op: name,
                name: p.name,
                expected: p.len,
                got,
                shape: shape.to_vec(),
            }
            .into());
        }
    }
    debug_assert_eq!(sig.params.len(), params.len(), "{name}: parameter count");
    // normkit's own check reads only the lengths.
    let (mut mean, mut var) = running.map_or((vec![], vec![]), |(m, v)| {
        (vec![0.0; m.dims()[0]], vec![0.0; v.dims()[0]])
    });
    let stats = running.map(|_| RunningStats {
        mean: &mut mean,
        var: &mut var,
    });
    sig.check_running(name, stats.as_ref(), &shape)?;
    Ok(())
}

/// One op call: checked, then the fused kernels or `composed` (the same
/// op out of burn's tensor operations, given `x` and `running`).
fn call<const D: usize, O: ErasedOp + 'static>(
    op: O,
    x: Tensor<D>,
    params: Vec<Tensor<1>>,
    running: Option<Running>,
    composed: impl FnOnce(Tensor<D>, Option<Running>) -> (Tensor<D>, Option<Running>),
) -> Result<(Tensor<D>, Option<Running>)> {
    check(&op, &x, &params, running.as_ref())?;
    if route::fused(&x.device(), x.dtype()) {
        fused::run(Arc::new(op), x, params, running)
    } else if numel(&x.dims()) == 0 {
        // Accepted empty: nothing to compute, and the composed ops would
        // divide by the extents an empty tensor lacks.
        Ok((x, None))
    } else {
        Ok(composed(x, running))
    }
}

/// The present ones of optional parameters, in order.
fn present<const N: usize>(params: [&Option<Tensor<1>>; N]) -> Vec<Tensor<1>> {
    params.into_iter().flatten().cloned().collect()
}

/// `t` flattened, as an op's packed parameter.
fn flat<const D: usize>(t: &Tensor<D>) -> Tensor<1> {
    match numel(&t.dims()) {
        // burn's reshape reads a 0 as "keep this extent".
        0 => Tensor::zeros([0], &t.device()),
        n => t.clone().reshape([n]),
    }
}

/// BatchNorm (see [`normkit::BatchNormConfig`] for the math).
///
/// With `training`, or without running statistics, normalizes with the
/// batch's statistics; in training, `running` comes back updated with the
/// batch mean and unbiased variance. Otherwise normalizes with `running`.
///
/// # Shapes
/// - `x`: `[N, C, *]` or `[N, *, C]`; `weight`, `bias`, running: `[C]`.
///
/// # Errors
/// Rank below 2, parameter lengths other than `C`, a bad eps or momentum,
/// or a single value per channel when using batch statistics.
pub fn batch_norm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    running: Option<Running>,
    training: bool,
    cfg: &BatchNormConfig,
) -> Result<(Tensor<D>, Option<Running>)> {
    let use_batch = training || running.is_none();
    let op = BatchNormOp {
        cfg: *cfg,
        training: use_batch,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params = present([&weight, &bias]);
    call(op, x, params, running, |x, running| {
        let (m, eps, axis) = (cfg.momentum.factor(), cfg.eps as f64, cfg.channel_axis);
        composed::batch_norm(x, weight, bias, running, use_batch, m, eps, axis)
    })
}

/// InstanceNorm (see [`normkit::InstanceNormConfig`] for the math).
///
/// With `training`, or without running statistics, normalizes each
/// (sample, channel) with its own statistics; in training, `running` comes
/// back updated with the batch average of the instance mean and unbiased
/// variance. Otherwise normalizes with `running`, as BatchNorm evaluates.
///
/// # Shapes
/// - `x`: `[N, C, *]` or `[N, *, C]`; `weight`, `bias`, running: `[C]`.
///
/// # Errors
/// Rank below 2, parameter lengths other than `C`, a bad eps or momentum,
/// or a single spatial position when using instance statistics.
pub fn instance_norm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    running: Option<Running>,
    training: bool,
    cfg: &InstanceNormConfig,
) -> Result<(Tensor<D>, Option<Running>)> {
    let use_instance = training || running.is_none();
    let op = InstanceNormOp {
        cfg: *cfg,
        training: use_instance,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params = present([&weight, &bias]);
    call(op, x, params, running, |x, running| {
        let (m, eps, axis) = (cfg.momentum.factor(), cfg.eps as f64, cfg.channel_axis);
        composed::instance_norm(x, weight, bias, running, use_instance, m, eps, axis)
    })
}

/// GroupNorm (see [`normkit::group_norm_forward`] for the math).
///
/// # Shapes
/// - `x`: `[N, C, *]` or `[N, *, C]`; `weight`, `bias`: `[C]`.
///
/// # Errors
/// Rank below 2, `num_groups` zero or not dividing `C`, an empty group,
/// parameter lengths other than `C`, or a bad eps.
pub fn group_norm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    cfg: &GroupNormConfig,
) -> Result<Tensor<D>> {
    let op = GroupNormOp {
        cfg: *cfg,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params = present([&weight, &bias]);
    let (y, _) = call(op, x, params, None, |x, _| {
        let (groups, eps, axis) = (cfg.num_groups, cfg.eps as f64, cfg.channel_axis);
        (
            composed::group_norm(x, weight, bias, groups, eps, axis).0,
            None,
        )
    })?;
    Ok(y)
}

/// LayerNorm over the trailing `normalized_shape` dimensions (see
/// [`normkit::layer_norm_forward`] for the math).
///
/// # Shapes
/// - `x`: `[*, *normalized_shape]`; `weight`, `bias`: `[prod(normalized_shape)]`.
///
/// # Errors
/// `x` not ending with a non-empty `normalized_shape`, an empty
/// `normalized_shape` product, parameter lengths other than it, or a bad
/// eps.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    normalized_shape: &[usize],
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    eps: f32,
) -> Result<Tensor<D>> {
    let op = LayerNormOp {
        normalized_shape: normalized_shape.to_vec(),
        eps,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params = present([&weight, &bias]);
    let (y, _) = call(op, x, params, None, |x, _| {
        let d = numel(normalized_shape);
        (
            composed::row_norm(x, d, weight, bias, eps as f64, true),
            None,
        )
    })?;
    Ok(y)
}

/// RMSNorm over the trailing `normalized_shape` dimensions (see
/// [`normkit::rms_norm_forward`] for the math).
///
/// # Shapes
/// - `x`: `[*, *normalized_shape]`; `weight`: `[prod(normalized_shape)]`.
///
/// # Errors
/// As [`layer_norm`].
pub fn rms_norm<const D: usize>(
    x: Tensor<D>,
    normalized_shape: &[usize],
    weight: Option<Tensor<1>>,
    eps: f32,
) -> Result<Tensor<D>> {
    let op = RmsNormOp {
        normalized_shape: normalized_shape.to_vec(),
        eps,
        weight: weight.is_some(),
    };
    let params = present([&weight]);
    let (y, _) = call(op, x, params, None, |x, _| {
        let d = numel(normalized_shape);
        (
            composed::row_norm(x, d, weight, None, eps as f64, false),
            None,
        )
    })?;
    Ok(y)
}

/// Dynamic Tanh `weight · tanh(alpha · x) + bias` (see
/// [`normkit::dyt_forward`]).
///
/// # Shapes
/// - `x`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2); `alpha`: `[1]`; `weight`, `bias`: `[C]`.
///
/// # Errors
/// A rank too low for `axis`, `alpha` not of one element, or parameter
/// lengths other than `C`.
pub fn dyt<const D: usize>(
    x: Tensor<D>,
    alpha: Tensor<1>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    axis: ChannelAxis,
) -> Result<Tensor<D>> {
    let op = DytOp {
        channel_axis: axis,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params = present([&Some(alpha.clone()), &weight, &bias]);
    let (y, _) = call(op, x, params, None, |x, _| {
        (composed::dyt(x, alpha, weight, bias, axis), None)
    })?;
    Ok(y)
}

/// Dynamic erf `weight · erf(alpha · x + shift) + bias` (see
/// [`normkit::derf_forward`]).
///
/// # Shapes
/// - `x`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2); `alpha`, `shift`: `[1]`; `weight`, `bias`: `[C]`.
///
/// # Errors
/// A rank too low for `axis`, `alpha` or `shift` not of one element, or
/// parameter lengths other than `C`.
pub fn derf<const D: usize>(
    x: Tensor<D>,
    alpha: Tensor<1>,
    shift: Tensor<1>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    axis: ChannelAxis,
) -> Result<Tensor<D>> {
    let op = DerfOp {
        channel_axis: axis,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params = present([&Some(alpha.clone()), &Some(shift.clone()), &weight, &bias]);
    let (y, _) = call(op, x, params, None, |x, _| {
        (composed::derf(x, alpha, shift, weight, bias, axis), None)
    })?;
    Ok(y)
}

/// Weight normalization `g · v / ‖v‖` (see [`normkit::weight_norm_forward`]):
/// one norm per index along `dim` (negative counts from the end), or one
/// over the whole tensor when `dim` is `None`.
///
/// # Shapes
/// - `v`: any shape with at least one element; `g`: `[v.dims()[dim]]`, or
///   `[1]` when `dim` is `None`.
///
/// # Errors
/// An empty `v`, `dim` out of range, or `g` of the wrong length.
pub fn weight_norm<const D: usize>(
    v: Tensor<D>,
    g: Tensor<1>,
    dim: Option<isize>,
) -> Result<Tensor<D>> {
    let op = WeightNormOp { dim };
    // In range once checked: the kept axis counted from the front.
    let kept = dim.map(|d| d.rem_euclid(D.max(1) as isize) as usize);
    let (w, _) = call(op, v, vec![g.clone()], None, |v, _| {
        (composed::weight_norm(v, g, kept), None)
    })?;
    Ok(w)
}

/// AdaIN: `content` normalized per (sample, channel), then given the
/// style's per-(sample, channel) mean and standard deviation (see
/// [`normkit::AdaInConfig`] for the math). Gradients flow to both inputs.
///
/// # Shapes
/// - `content`, output: `[N, C, *]` or `[N, *, C]`;
/// - `style`: the same `N` and `C` in the same layout, any spatial extent.
///
/// # Errors
/// Rank below 2, `style` of another batch or channel count, an empty
/// input, a bad eps, or (unbiased) a single spatial position in either.
pub fn adain<const D: usize, const E: usize>(
    content: Tensor<D>,
    style: Tensor<E>,
    cfg: &AdaInConfig,
) -> Result<Tensor<D>> {
    let op = AdaInOp {
        cfg: *cfg,
        style_shape: style.dims().to_vec(),
    };
    check_dtype(op.name_erased(), &style)?;
    let (y, _) = call(op, content, vec![flat(&style)], None, |x, _| {
        let (eps, axis) = (cfg.eps as f64, cfg.channel_axis);
        (composed::adain(x, style, eps, cfg.unbiased, axis), None)
    })?;
    Ok(y)
}

/// Modulated LayerNorm (adaLN, FiLM): `layer_norm(x) · (1 + scale[n]) +
/// shift[n]`, `n` the sample of each row (see
/// [`normkit::ada_layer_norm_forward`] for the math). Gradients flow to
/// `x`, `scale`, `shift`, `weight` and `bias`.
///
/// # Shapes
/// - `x`, output: `[N, *, *normalized_shape]`, at least one dimension
///   before `normalized_shape`;
/// - `scale`, `shift`: `[N, D]`, `D = prod(normalized_shape)`;
/// - `weight`, `bias`: `[D]`.
///
/// # Errors
/// `x` not ending with a non-empty `normalized_shape` preceded by a batch
/// dimension, `scale` or `shift` not `[N, D]`, parameter lengths other
/// than `D`, or a bad eps.
#[allow(clippy::too_many_arguments)]
pub fn ada_layer_norm<const D: usize>(
    x: Tensor<D>,
    normalized_shape: &[usize],
    scale: Tensor<2>,
    shift: Tensor<2>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    eps: f32,
) -> Result<Tensor<D>> {
    modulated(x, normalized_shape, scale, shift, weight, bias, eps, false)
}

/// Modulated RMSNorm: `rms_norm(x) · (1 + scale[n]) + shift[n]` (see
/// [`normkit::ada_rms_norm_forward`]). Gradients flow to `x`, `scale`,
/// `shift` and `weight`.
///
/// # Shapes
/// As [`ada_layer_norm`], without a bias.
///
/// # Errors
/// As [`ada_layer_norm`].
pub fn ada_rms_norm<const D: usize>(
    x: Tensor<D>,
    normalized_shape: &[usize],
    scale: Tensor<2>,
    shift: Tensor<2>,
    weight: Option<Tensor<1>>,
    eps: f32,
) -> Result<Tensor<D>> {
    modulated(x, normalized_shape, scale, shift, weight, None, eps, true)
}

/// The body of [`ada_layer_norm`] and [`ada_rms_norm`].
#[allow(clippy::too_many_arguments)]
fn modulated<const D: usize>(
    x: Tensor<D>,
    normalized_shape: &[usize],
    scale: Tensor<2>,
    shift: Tensor<2>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    eps: f32,
    rms: bool,
) -> Result<Tensor<D>> {
    let op = AdaNormOp {
        normalized_shape: normalized_shape.to_vec(),
        eps,
        rms,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    // normkit takes the modulation flat; its rows must be the samples.
    let n = x.dims()[0];
    for (name, t) in [("scale", &scale), ("shift", &shift)] {
        let [rows, cols] = t.dims();
        if rows != n {
            return Err(NormError::Length {
                op: op.name_erased(),
                name,
                expected: n * cols,
                got: rows * cols,
                shape: x.dims().to_vec(),
            }
            .into());
        }
    }
    let mut params = present([&weight, &bias]);
    params.extend([flat(&scale), flat(&shift)]);
    let (y, _) = call(op, x, params, None, |x, _| {
        let d = numel(normalized_shape);
        let y = composed::ada_norm(x, d, scale, shift, weight, bias, eps as f64, !rms);
        (y, None)
    })?;
    Ok(y)
}

/// Switchable Normalization (see [`normkit::SwitchNormConfig`] for the
/// math): the input normalized with a softmax-weighted mixture of its
/// instance, layer and batch statistics.
///
/// With `training`, or without running statistics, the batch part is the
/// batch's own statistics; in training, `running` comes back updated with
/// the batch mean and unbiased variance. Otherwise the batch part is
/// `running`, a constant. Gradients flow to `x`, `weight`, `bias`,
/// `mean_weight` and `var_weight`.
///
/// # Shapes
/// - `x`: `[N, C, *]` or `[N, *, C]`; `weight`, `bias`, running: `[C]`;
/// - `mean_weight`, `var_weight`: `[3]`, logits in the order IN, LN, BN.
///
/// # Errors
/// Rank below 2, an empty input, parameter lengths other than `C` (or 3
/// for the logits), a bad eps or momentum, or a single value per channel
/// when using batch statistics.
#[allow(clippy::too_many_arguments)]
pub fn switch_norm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    mean_weight: Tensor<1>,
    var_weight: Tensor<1>,
    running: Option<Running>,
    training: bool,
    cfg: &SwitchNormConfig,
) -> Result<(Tensor<D>, Option<Running>)> {
    let use_batch = training || running.is_none();
    let op = SwitchNormOp {
        cfg: *cfg,
        training: use_batch,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let mut params = present([&weight, &bias]);
    params.extend([mean_weight.clone(), var_weight.clone()]);
    call(op, x, params, running, |x, running| {
        let (m, eps, axis) = (cfg.momentum.factor(), cfg.eps as f64, cfg.channel_axis);
        let (mw, vw) = (mean_weight, var_weight);
        composed::switch_norm(x, weight, bias, mw, vw, running, use_batch, m, eps, axis)
    })
}

/// Batch Renormalization (see [`normkit::BatchRenormConfig`] for the
/// math). With `training`, normalizes with the batch statistics corrected
/// towards `running` by `r` and `d` (constants: no gradient flows through
/// them) and returns `running` updated as BatchNorm updates it; otherwise
/// normalizes with `running`, exactly as BatchNorm evaluates.
///
/// # Shapes
/// - `x`: `[N, C, *]` or `[N, *, C]`; `weight`, `bias`, running: `[C]`.
///
/// # Errors
/// Rank below 2, no channels, parameter lengths other than `C`, a bad eps
/// or momentum, `r_max < 1`, `d_max < 0` or a non-finite bound, or a
/// single value per channel in training.
pub fn batch_renorm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    running: Running,
    training: bool,
    cfg: &BatchRenormConfig,
) -> Result<(Tensor<D>, Option<Running>)> {
    let op = BatchRenormOp {
        cfg: *cfg,
        training,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params = present([&weight, &bias]);
    let given = running.clone();
    call(op, x, params, Some(running), |x, _| {
        let running = given;
        let (m, eps, axis) = (cfg.momentum.factor(), cfg.eps as f64, cfg.channel_axis);
        if training {
            let (r_max, d_max) = (cfg.r_max as f64, cfg.d_max as f64);
            let (y, r) =
                composed::batch_renorm(x, weight, bias, running, m, eps, r_max, d_max, axis);
            (y, Some(r))
        } else {
            composed::batch_norm(x, weight, bias, Some(running), false, m, eps, axis)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn checks_are_normkits_and_come_before_any_work() {
        let device = Device::flex();
        let x = Tensor::<2>::zeros([4, 3], &device);
        // The op's own validation: no eps check of this crate's.
        let op = LayerNormOp {
            normalized_shape: vec![3],
            eps: f32::NAN,
            weight: false,
            bias: false,
        };
        assert!(matches!(
            check(&op, &x, &[], None),
            Err(Error::Norm(NormError::Eps { .. }))
        ));
        // Parameter lengths against the signature, named by it.
        let op = LayerNormOp {
            eps: 1e-5,
            weight: true,
            ..op
        };
        let w = Tensor::<1>::ones([4], &device);
        assert!(matches!(
            check(&op, &x, &[w], None),
            Err(Error::Norm(NormError::Length {
                name: "weight",
                expected: 3,
                got: 4,
                ..
            }))
        ));
        // Running statistics where the op reads them.
        let op = BatchNormOp {
            cfg: BatchNormConfig::default(),
            training: false,
            weight: false,
            bias: false,
        };
        assert!(matches!(
            check(&op, &x, &[], None),
            Err(Error::Norm(NormError::Missing { .. }))
        ));
        let r = (Tensor::zeros([2], &device), Tensor::ones([2], &device));
        assert!(matches!(
            check(&op, &x, &[], Some(&r)),
            Err(Error::Norm(NormError::Length {
                name: "running_mean",
                ..
            }))
        ));
    }
}
