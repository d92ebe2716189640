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
    AdaInConfig, BatchNormConfig, BatchRenormConfig, ChannelAxis, GroupNormConfig,
    InstanceNormConfig, Momentum, NormError, SwitchNormConfig,
};

use crate::composed;
use crate::error::{Error, Result};
use crate::kernel::{self, AdaNorm, Kernel, Switch};
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

/// `(n, c, s)` of a channel op's input, refusing an empty one.
fn nonempty_channels(
    op: &'static str,
    shape: &[usize],
    axis: ChannelAxis,
) -> Result<(usize, usize, usize)> {
    let (n, c, s) = channels(op, shape, axis)?;
    if n == 0 || c == 0 || s == 0 {
        return Err(NormError::Empty {
            op,
            shape: shape.to_vec(),
        }
        .into());
    }
    Ok((n, c, s))
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
    const OP: &str = "adain";
    let shape = content.dims();
    let style_shape = style.dims();
    check_dtype(OP, &content)?;
    check_dtype(OP, &style)?;
    check_eps(OP, cfg.eps)?;
    let (n, c, s) = nonempty_channels(OP, &shape, cfg.channel_axis)?;
    let (sn, sc, ss) = nonempty_channels(OP, &style_shape, cfg.channel_axis)?;
    if (sn, sc) != (n, c) {
        return Err(NormError::Length {
            op: OP,
            name: "style (samples × channels)",
            expected: n * c,
            got: sn * sc,
            shape: shape.to_vec(),
        }
        .into());
    }
    if cfg.unbiased {
        for (m, sh) in [(s, &shape[..]), (ss, &style_shape[..])] {
            if m < 2 {
                return Err(NormError::TooFewValues {
                    op: OP,
                    shape: sh.to_vec(),
                }
                .into());
            }
        }
    }
    if route::fused(&content.device(), content.dtype()) {
        Ok(kernel::adain(*cfg, content, style))
    } else {
        let eps = cfg.eps as f64;
        Ok(composed::adain(
            content,
            style,
            eps,
            cfg.unbiased,
            cfg.channel_axis,
        ))
    }
}

/// Checks a modulated norm's input and modulation; returns `D`, the
/// element count of `normalized_shape`.
fn check_modulated(
    op: &'static str,
    shape: &[usize],
    normalized_shape: &[usize],
    scale: &Tensor<2>,
    shift: &Tensor<2>,
) -> Result<usize> {
    // The modulation is per sample: a dimension must precede the
    // normalized ones.
    if normalized_shape.is_empty() || normalized_shape.len() >= shape.len() {
        return Err(NormError::NormalizedShape {
            op,
            shape: shape.to_vec(),
            normalized_shape: normalized_shape.to_vec(),
        }
        .into());
    }
    let d = row_len(op, shape, normalized_shape)?;
    if shape.iter().product::<usize>() == 0 {
        return Err(NormError::Empty {
            op,
            shape: shape.to_vec(),
        }
        .into());
    }
    let n = shape[0];
    for (name, t) in [("scale", scale), ("shift", shift)] {
        let [rows, cols] = t.dims();
        if rows != n || cols != d {
            return Err(NormError::Length {
                op,
                name,
                expected: n * d,
                got: rows * cols,
                shape: shape.to_vec(),
            }
            .into());
        }
    }
    Ok(d)
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
/// dimension, an empty input, `scale` or `shift` not `[N, D]`, parameter
/// lengths other than `D`, or a bad eps.
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
    modulated(
        "ada_layer_norm",
        x,
        normalized_shape,
        scale,
        shift,
        weight,
        bias,
        eps,
    )
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
    modulated(
        "ada_rms_norm",
        x,
        normalized_shape,
        scale,
        shift,
        weight,
        None,
        eps,
    )
}

/// The body of [`ada_layer_norm`] and [`ada_rms_norm`]: `op` names the
/// variant (RMSNorm is the uncentered one and has no bias).
#[allow(clippy::too_many_arguments)]
fn modulated<const D: usize>(
    op: &'static str,
    x: Tensor<D>,
    normalized_shape: &[usize],
    scale: Tensor<2>,
    shift: Tensor<2>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    eps: f32,
) -> Result<Tensor<D>> {
    let rms = op == "ada_rms_norm";
    let shape = x.dims();
    check_dtype(op, &x)?;
    check_eps(op, eps)?;
    let d = check_modulated(op, &shape, normalized_shape, &scale, &shift)?;
    check_len(op, "weight", len1(&weight), d, &shape)?;
    check_len(op, "bias", len1(&bias), d, &shape)?;
    if route::fused(&x.device(), x.dtype()) {
        let norm = AdaNorm {
            normalized_shape: normalized_shape.to_vec(),
            eps,
            rms,
        };
        Ok(kernel::ada_norm(norm, x, scale, shift, weight, bias))
    } else {
        let eps = eps as f64;
        Ok(composed::ada_norm(
            x, d, scale, shift, weight, bias, eps, !rms,
        ))
    }
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
    const OP: &str = "switch_norm";
    let shape = x.dims();
    check_dtype(OP, &x)?;
    check_eps(OP, cfg.eps)?;
    check_momentum(OP, cfg.momentum)?;
    let (n, c, s) = nonempty_channels(OP, &shape, cfg.channel_axis)?;
    check_len(OP, "weight", len1(&weight), c, &shape)?;
    check_len(OP, "bias", len1(&bias), c, &shape)?;
    check_len(OP, "mean_weight", Some(mean_weight.dims()[0]), 3, &shape)?;
    check_len(OP, "var_weight", Some(var_weight.dims()[0]), 3, &shape)?;
    check_running(OP, &running, c, &shape)?;
    let use_batch = training || running.is_none();
    if use_batch && n * s <= 1 {
        return Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        }
        .into());
    }
    let updated = |r: Option<Running>| if training { r } else { None };
    if route::fused(&x.device(), x.dtype()) {
        let op = Switch {
            cfg: *cfg,
            training: use_batch,
        };
        let (y, r) = kernel::switch_norm(op, x, mean_weight, var_weight, weight, bias, running);
        Ok((y, updated(r)))
    } else {
        let (y, r) = composed::switch_norm(
            x,
            weight,
            bias,
            mean_weight,
            var_weight,
            running,
            use_batch,
            cfg.momentum.factor(),
            cfg.eps as f64,
            cfg.channel_axis,
        );
        Ok((y, updated(r)))
    }
}

/// Checks Batch Renormalization's clip bounds: `r_max ≥ 1`, `d_max ≥ 0`,
/// both finite.
fn check_limits(op: &'static str, r_max: f32, d_max: f32) -> Result<()> {
    if !(r_max.is_finite() && r_max >= 1.0) {
        return Err(NormError::Param {
            op,
            name: "r_max",
            domain: "finite and at least 1",
            value: r_max as f64,
        }
        .into());
    }
    if !(d_max.is_finite() && d_max >= 0.0) {
        return Err(NormError::Param {
            op,
            name: "d_max",
            domain: "finite and non-negative",
            value: d_max as f64,
        }
        .into());
    }
    Ok(())
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
    const OP: &str = "batch_renorm";
    let shape = x.dims();
    check_dtype(OP, &x)?;
    check_eps(OP, cfg.eps)?;
    check_momentum(OP, cfg.momentum)?;
    check_limits(OP, cfg.r_max, cfg.d_max)?;
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
    check_len(OP, "running_mean", Some(running.0.dims()[0]), c, &shape)?;
    check_len(OP, "running_var", Some(running.1.dims()[0]), c, &shape)?;
    if !training {
        let bn = cfg.batch_norm();
        return batch_norm(x, weight, bias, Some(running), false, &bn).map_err(|e| rename(e, OP));
    }
    if n * s <= 1 {
        return Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        }
        .into());
    }
    if route::fused(&x.device(), x.dtype()) {
        let (y, r) = kernel::norm(Kernel::BatchRenorm(*cfg), x, weight, bias, Some(running));
        Ok((y, r))
    } else {
        let (y, r) = composed::batch_renorm(
            x,
            weight,
            bias,
            running,
            cfg.momentum.factor(),
            cfg.eps as f64,
            cfg.r_max as f64,
            cfg.d_max as f64,
            cfg.channel_axis,
        );
        Ok((y, Some(r)))
    }
}

/// An error of an op another one delegates to, named after the caller.
fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::Norm(e) => Error::Norm(e.with_op(op)),
        Error::DType { dtype, .. } => Error::DType { op, dtype },
        other => other,
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
