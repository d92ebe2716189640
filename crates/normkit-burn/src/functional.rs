//! Every op as a function over burn tensors: checked, then routed to the
//! fused normkit kernels (flex, `f32`/`f16`/`bf16`) or to composed tensor
//! operations (any other backend or element type, or [`Route::Composed`]).
//!
//! The layers call these; they are public for models that keep their own
//! parameters. Per-channel parameters and running statistics are rank-1
//! tensors of the channel count; LayerNorm and RMSNorm take their
//! parameters flattened to `normalized_shape`'s element count.
//!
//! [`Route::Composed`]: crate::Route::Composed

use burn::tensor::Tensor;
use normkit::{
    BatchNormConfig, ChannelAxis, GroupNormConfig, InstanceNormConfig, Momentum, NormError,
};

use crate::composed;
use crate::error::{Error, Result};
use crate::kernel::{self, Kernel};
use crate::route;

/// Running mean and running variance, each `[C]`.
pub type Running = (Tensor<1>, Tensor<1>);

fn len1(t: &Option<Tensor<1>>) -> Option<usize> {
    t.as_ref().map(|t| t.dims()[0])
}

fn check_len(
    op: &'static str,
    name: &'static str,
    got: Option<usize>,
    expected: usize,
    shape: &[usize],
) -> Result<()> {
    match got {
        Some(got) if got != expected => Err(NormError::Length {
            op,
            name,
            expected,
            got,
            shape: shape.to_vec(),
        }
        .into()),
        _ => Ok(()),
    }
}

fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(NormError::Eps { op, eps }.into())
    }
}

fn check_momentum(op: &'static str, momentum: Momentum) -> Result<()> {
    match momentum {
        Momentum::Exponential(m) if !m.is_finite() => Err(NormError::Param {
            op,
            name: "momentum",
            domain: "finite",
            value: m as f64,
        }
        .into()),
        _ => Ok(()),
    }
}

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

/// `(n, c, s)` of a channel op's input, rank ≥ 2.
fn channels(op: &'static str, shape: &[usize], axis: ChannelAxis) -> Result<(usize, usize, usize)> {
    if shape.len() < 2 {
        return Err(NormError::Rank {
            op,
            shape: shape.to_vec(),
            min_rank: 2,
        }
        .into());
    }
    let (c, spatial) = match axis {
        ChannelAxis::First => (shape[1], &shape[2..]),
        ChannelAxis::Last => (shape[shape.len() - 1], &shape[1..shape.len() - 1]),
    };
    Ok((shape[0], c, spatial.iter().product()))
}

fn check_running(
    op: &'static str,
    running: &Option<Running>,
    c: usize,
    shape: &[usize],
) -> Result<()> {
    if let Some((m, v)) = running {
        check_len(op, "running_mean", Some(m.dims()[0]), c, shape)?;
        check_len(op, "running_var", Some(v.dims()[0]), c, shape)?;
    }
    Ok(())
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
    const OP: &str = "batch_norm";
    let shape = x.dims();
    check_dtype(OP, &x)?;
    check_eps(OP, cfg.eps)?;
    check_momentum(OP, cfg.momentum)?;
    let (n, c, s) = channels(OP, &shape, cfg.channel_axis)?;
    if c == 0 {
        return Err(NormError::Empty {
            op: OP,
            shape: shape.to_vec(),
        }
        .into());
    }
    check_len(OP, "weight", len1(&weight), c, &shape)?;
    check_len(OP, "bias", len1(&bias), c, &shape)?;
    check_running(OP, &running, c, &shape)?;
    let use_batch = training || running.is_none();
    if use_batch && n * s <= 1 {
        return Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        }
        .into());
    }
    // Evaluation never changes the running statistics.
    let updated = |r: Option<Running>| if training { r } else { None };
    if route::fused(&x.device(), x.dtype()) {
        let kernel = Kernel::BatchNorm {
            cfg: *cfg,
            training: use_batch,
        };
        let (y, r) = kernel::norm(kernel, x, weight, bias, running);
        Ok((y, updated(r)))
    } else {
        let (y, r) = composed::batch_norm(
            x,
            weight,
            bias,
            running,
            use_batch,
            cfg.momentum.factor(),
            cfg.eps as f64,
            cfg.channel_axis,
        );
        Ok((y, updated(r)))
    }
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
    const OP: &str = "instance_norm";
    let shape = x.dims();
    check_dtype(OP, &x)?;
    check_eps(OP, cfg.eps)?;
    check_momentum(OP, cfg.momentum)?;
    let (_, c, s) = channels(OP, &shape, cfg.channel_axis)?;
    check_len(OP, "weight", len1(&weight), c, &shape)?;
    check_len(OP, "bias", len1(&bias), c, &shape)?;
    check_running(OP, &running, c, &shape)?;
    let use_instance = training || running.is_none();
    if c == 0 || s == 0 {
        return Err(NormError::Empty {
            op: OP,
            shape: shape.to_vec(),
        }
        .into());
    }
    if use_instance && s <= 1 {
        return Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        }
        .into());
    }
    let updated = |r: Option<Running>| if training { r } else { None };
    if route::fused(&x.device(), x.dtype()) {
        let kernel = Kernel::InstanceNorm {
            cfg: *cfg,
            training: use_instance,
        };
        let (y, r) = kernel::norm(kernel, x, weight, bias, running);
        Ok((y, updated(r)))
    } else {
        let (y, r) = composed::instance_norm(
            x,
            weight,
            bias,
            running,
            use_instance,
            cfg.momentum.factor(),
            cfg.eps as f64,
            cfg.channel_axis,
        );
        Ok((y, updated(r)))
    }
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
    const OP: &str = "group_norm";
    let shape = x.dims();
    check_dtype(OP, &x)?;
    check_eps(OP, cfg.eps)?;
    let (_, c, s) = channels(OP, &shape, cfg.channel_axis)?;
    let g = cfg.num_groups;
    if g == 0 || !c.is_multiple_of(g) {
        return Err(NormError::Groups {
            op: OP,
            num_groups: g,
            channels: c,
            shape: shape.to_vec(),
        }
        .into());
    }
    if c / g * s == 0 {
        return Err(NormError::Empty {
            op: OP,
            shape: shape.to_vec(),
        }
        .into());
    }
    check_len(OP, "weight", len1(&weight), c, &shape)?;
    check_len(OP, "bias", len1(&bias), c, &shape)?;
    if route::fused(&x.device(), x.dtype()) {
        Ok(kernel::norm(Kernel::GroupNorm(*cfg), x, weight, bias, None).0)
    } else {
        let axis = cfg.channel_axis;
        Ok(composed::group_norm(x, weight, bias, g, cfg.eps as f64, axis).0)
    }
}

/// Element count of `normalized_shape`, after checking that `shape` ends
/// with it and that it is not empty.
fn row_len(op: &'static str, shape: &[usize], normalized_shape: &[usize]) -> Result<usize> {
    if normalized_shape.len() > shape.len() || !shape.ends_with(normalized_shape) {
        return Err(NormError::NormalizedShape {
            op,
            shape: shape.to_vec(),
            normalized_shape: normalized_shape.to_vec(),
        }
        .into());
    }
    let d: usize = normalized_shape.iter().product();
    if d == 0 {
        return Err(NormError::Empty {
            op,
            shape: shape.to_vec(),
        }
        .into());
    }
    Ok(d)
}

/// LayerNorm over the trailing `normalized_shape` dimensions (see
/// [`normkit::layer_norm_forward`] for the math).
///
/// # Shapes
/// - `x`: `[*, *normalized_shape]`; `weight`, `bias`: `[prod(normalized_shape)]`.
///
/// # Errors
/// `x` not ending with `normalized_shape`, an empty `normalized_shape`
/// product, parameter lengths other than it, or a bad eps.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    normalized_shape: &[usize],
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    eps: f32,
) -> Result<Tensor<D>> {
    const OP: &str = "layer_norm";
    let shape = x.dims();
    check_dtype(OP, &x)?;
    check_eps(OP, eps)?;
    let d = row_len(OP, &shape, normalized_shape)?;
    check_len(OP, "weight", len1(&weight), d, &shape)?;
    check_len(OP, "bias", len1(&bias), d, &shape)?;
    if route::fused(&x.device(), x.dtype()) {
        let kernel = Kernel::LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            eps,
        };
        Ok(kernel::norm(kernel, x, weight, bias, None).0)
    } else {
        Ok(composed::row_norm(x, d, weight, bias, eps as f64, true))
    }
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
    const OP: &str = "rms_norm";
    let shape = x.dims();
    check_dtype(OP, &x)?;
    check_eps(OP, eps)?;
    let d = row_len(OP, &shape, normalized_shape)?;
    check_len(OP, "weight", len1(&weight), d, &shape)?;
    if route::fused(&x.device(), x.dtype()) {
        let kernel = Kernel::RmsNorm {
            normalized_shape: normalized_shape.to_vec(),
            eps,
        };
        Ok(kernel::norm(kernel, x, weight, None, None).0)
    } else {
        Ok(composed::row_norm(x, d, weight, None, eps as f64, false))
    }
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
    const OP: &str = "dyt";
    let shape = x.dims();
    check_dtype(OP, &x)?;
    let c = match (axis, D) {
        (ChannelAxis::Last, 1) => shape[0],
        (ChannelAxis::Last, 0) | (ChannelAxis::First, 0 | 1) => {
            return Err(NormError::Rank {
                op: OP,
                shape: shape.to_vec(),
                min_rank: if axis == ChannelAxis::Last { 1 } else { 2 },
            }
            .into())
        }
        _ => channels(OP, &shape, axis)?.1,
    };
    check_len(OP, "alpha", Some(alpha.dims()[0]), 1, &shape)?;
    check_len(OP, "weight", len1(&weight), c, &shape)?;
    check_len(OP, "bias", len1(&bias), c, &shape)?;
    if route::fused(&x.device(), x.dtype()) {
        Ok(kernel::dyt(axis, x, alpha, weight, bias))
    } else {
        Ok(composed::dyt(x, alpha, weight, bias, axis))
    }
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
    const OP: &str = "weight_norm";
    let shape = v.dims();
    check_dtype(OP, &v)?;
    if shape.iter().product::<usize>() == 0 {
        return Err(NormError::Empty {
            op: OP,
            shape: shape.to_vec(),
        }
        .into());
    }
    let kept = match dim {
        None => None,
        Some(d) => {
            let k = if d < 0 { d + D as isize } else { d };
            if k < 0 || k >= D as isize {
                return Err(NormError::Dim {
                    op: OP,
                    dim: d,
                    shape: shape.to_vec(),
                }
                .into());
            }
            Some(k as usize)
        }
    };
    let k = kept.map_or(1, |k| shape[k]);
    check_len(OP, "g", Some(g.dims()[0]), k, &shape)?;
    if route::fused(&v.device(), v.dtype()) {
        Ok(kernel::weight_norm(kept.map(|k| k as isize), v, g))
    } else {
        Ok(composed::weight_norm(v, g, kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_extents_follow_the_axis() {
        let shape = [2, 3, 4, 5];
        assert_eq!(
            channels("t", &shape, ChannelAxis::First).unwrap(),
            (2, 3, 20)
        );
        assert_eq!(
            channels("t", &shape, ChannelAxis::Last).unwrap(),
            (2, 5, 12)
        );
        assert_eq!(
            channels("t", &[7, 1], ChannelAxis::Last).unwrap(),
            (7, 1, 1)
        );
        assert!(matches!(
            channels("t", &[4], ChannelAxis::First),
            Err(Error::Norm(NormError::Rank { min_rank: 2, .. }))
        ));
    }

    #[test]
    fn row_length_needs_a_matching_nonempty_suffix() {
        assert_eq!(row_len("t", &[2, 3, 4], &[3, 4]).unwrap(), 12);
        assert_eq!(row_len("t", &[2, 3, 4], &[]).unwrap(), 1);
        assert!(row_len("t", &[2, 3, 4], &[4, 3]).is_err());
        assert!(row_len("t", &[4], &[1, 4]).is_err());
        assert!(matches!(
            row_len("t", &[2, 0], &[0]),
            Err(Error::Norm(NormError::Empty { .. }))
        ));
    }

    #[test]
    fn eps_and_momentum_domains() {
        assert!(check_eps("t", 0.0).is_ok());
        assert!(check_eps("t", -1e-9).is_err());
        assert!(check_eps("t", f32::NAN).is_err());
        assert!(check_momentum("t", Momentum::Exponential(1.5)).is_ok());
        assert!(check_momentum("t", Momentum::Exponential(f32::INFINITY)).is_err());
        assert!(check_momentum(
            "t",
            Momentum::CumulativeAverage {
                num_batches_tracked: 3
            }
        )
        .is_ok());
    }
}
