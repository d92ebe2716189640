//! The portable path: every op out of burn's basic tensor operations, on any
//! backend and element type, differentiated by burn's generic autodiff.
//!
//! Same formulas as the kernels (see normkit): biased variance to
//! normalize, unbiased variance for running statistics. Inputs arrive
//! validated by `functional`.

use burn::tensor::Tensor;
use normkit::ChannelAxis;

/// `[n, c, s]` (channels first) or `[n, s, c]` (channels last) view of an
/// input, with the shape that broadcasts a per-channel parameter over it
/// and the two axes a per-channel statistic reduces.
#[derive(Debug, Clone, Copy)]
struct ChannelView {
    n: usize,
    c: usize,
    s: usize,
    view: [usize; 3],
    param: [usize; 3],
    reduce: [usize; 2],
}

impl ChannelView {
    fn new(dims: &[usize], axis: ChannelAxis) -> Self {
        let n = dims[0];
        match axis {
            ChannelAxis::First => {
                let c = dims[1];
                let s = dims[2..].iter().product();
                ChannelView {
                    n,
                    c,
                    s,
                    view: [n, c, s],
                    param: [1, c, 1],
                    reduce: [0, 2],
                }
            }
            ChannelAxis::Last => {
                let c = dims[dims.len() - 1];
                let s = dims[1..dims.len() - 1].iter().product();
                ChannelView {
                    n,
                    c,
                    s,
                    view: [n, s, c],
                    param: [1, 1, c],
                    reduce: [0, 1],
                }
            }
        }
    }

    /// Mean over the batch and spatial axes, kept as `[1, c, 1]`/`[1, 1, c]`.
    fn mean(&self, t: Tensor<3>) -> Tensor<3> {
        t.mean_dim(self.reduce[0]).mean_dim(self.reduce[1])
    }
}

/// `x · weight + bias` with per-channel parameters broadcast by `shape`.
fn affine<const D: usize>(
    y: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    shape: [usize; D],
) -> Tensor<D> {
    let y = match weight {
        Some(w) => y * w.reshape(shape),
        None => y,
    };
    match bias {
        Some(b) => y + b.reshape(shape),
        None => y,
    }
}

fn rstd<const D: usize>(var: Tensor<D>, eps: f64) -> Tensor<D> {
    var.add_scalar(eps).sqrt().recip()
}

/// `(1 - m) · running + m · batch`, detached from the graph.
fn follow(running: Tensor<1>, batch: Tensor<1>, m: f64) -> Tensor<1> {
    let batch = batch.detach().to_device(&running.device());
    running.mul_scalar(1.0 - m) + batch.mul_scalar(m)
}

/// BatchNorm. With `running` in training, returns it updated.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    running: Option<(Tensor<1>, Tensor<1>)>,
    use_batch_stats: bool,
    momentum: f64,
    eps: f64,
    axis: ChannelAxis,
) -> (Tensor<D>, Option<(Tensor<1>, Tensor<1>)>) {
    let dims = x.dims();
    let v = ChannelView::new(&dims, axis);
    let x3 = x.reshape(v.view);
    if !use_batch_stats {
        let (mean, var) = running.expect("evaluation needs running statistics");
        let device = x3.device();
        let mean = mean.to_device(&device).reshape(v.param);
        let var = var.to_device(&device).reshape(v.param);
        let y = (x3 - mean) * rstd(var, eps);
        let y = affine(y, weight, bias, v.param).reshape(dims);
        return (y, None);
    }
    let mean = v.mean(x3.clone());
    let centered = x3 - mean.clone();
    let var = v.mean(centered.clone() * centered.clone());
    let y = centered * rstd(var.clone(), eps);
    let y = affine(y, weight, bias, v.param).reshape(dims);
    let running = running.map(|(rm, rv)| {
        let count = (v.n * v.s) as f64;
        let unbiased = var.reshape([v.c]).mul_scalar(count / (count - 1.0));
        (
            follow(rm, mean.reshape([v.c]), momentum),
            follow(rv, unbiased, momentum),
        )
    });
    (y, running)
}

/// GroupNorm over `groups` contiguous channel groups. Also returns the
/// per-(sample, group) mean and biased variance as `[n, groups]`.
pub(crate) fn group_norm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    groups: usize,
    eps: f64,
    axis: ChannelAxis,
) -> (Tensor<D>, Tensor<2>, Tensor<2>) {
    let dims = x.dims();
    let v = ChannelView::new(&dims, axis);
    let cg = v.c / groups;
    let (y, mean, var) = match axis {
        ChannelAxis::First => {
            let xg = x.reshape([v.n, groups, cg * v.s]);
            let mean = xg.clone().mean_dim(2);
            let centered = xg - mean.clone();
            let var = (centered.clone() * centered.clone()).mean_dim(2);
            let y = (centered * rstd(var.clone(), eps)).reshape(v.view);
            (y, mean.reshape([v.n, groups]), var.reshape([v.n, groups]))
        }
        ChannelAxis::Last => {
            let xg = x.reshape([v.n, v.s, groups, cg]);
            let mean = xg.clone().mean_dim(3).mean_dim(1);
            let centered = xg - mean.clone();
            let var = (centered.clone() * centered.clone())
                .mean_dim(3)
                .mean_dim(1);
            let y = (centered * rstd(var.clone(), eps)).reshape(v.view);
            (y, mean.reshape([v.n, groups]), var.reshape([v.n, groups]))
        }
    };
    (affine(y, weight, bias, v.param).reshape(dims), mean, var)
}

/// InstanceNorm: instance statistics (with `running` updated by their
/// batch average) or, when `use_instance_stats` is false, the running ones.
#[allow(clippy::too_many_arguments)]
pub(crate) fn instance_norm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    running: Option<(Tensor<1>, Tensor<1>)>,
    use_instance_stats: bool,
    momentum: f64,
    eps: f64,
    axis: ChannelAxis,
) -> (Tensor<D>, Option<(Tensor<1>, Tensor<1>)>) {
    if !use_instance_stats {
        return batch_norm(x, weight, bias, running, false, momentum, eps, axis);
    }
    let dims = x.dims();
    let v = ChannelView::new(&dims, axis);
    let (y, mean, var) = group_norm(x, weight, bias, v.c, eps, axis);
    let running = running.map(|(rm, rv)| {
        let s = v.s as f64;
        let mean = mean.mean_dim(0).reshape([v.c]);
        let unbiased = var.mean_dim(0).reshape([v.c]).mul_scalar(s / (s - 1.0));
        (follow(rm, mean, momentum), follow(rv, unbiased, momentum))
    });
    (y, running)
}

/// LayerNorm (`centered`) or RMSNorm over the trailing `d` values of each row.
pub(crate) fn row_norm<const D: usize>(
    x: Tensor<D>,
    d: usize,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    eps: f64,
    centered: bool,
) -> Tensor<D> {
    let dims = x.dims();
    let rows = dims.iter().product::<usize>() / d;
    let x2 = x.reshape([rows, d]);
    let y = if centered {
        let mean = x2.clone().mean_dim(1);
        let centered = x2 - mean;
        let var = (centered.clone() * centered.clone()).mean_dim(1);
        centered * rstd(var, eps)
    } else {
        let ms = (x2.clone() * x2.clone()).mean_dim(1);
        x2 * rstd(ms, eps)
    };
    affine(y, weight, bias, [1, d]).reshape(dims)
}

/// Dynamic Tanh `weight · tanh(alpha · x) + bias`.
pub(crate) fn dyt<const D: usize>(
    x: Tensor<D>,
    alpha: Tensor<1>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    axis: ChannelAxis,
) -> Tensor<D> {
    let dims = x.dims();
    let view = if D == 1 {
        ChannelView::new(&[1, dims[0]], ChannelAxis::Last)
    } else {
        ChannelView::new(&dims, axis)
    };
    let x3 = x.reshape(view.view);
    let y = (x3 * alpha.reshape([1, 1, 1])).tanh();
    affine(y, weight, bias, view.param).reshape(dims)
}

/// Dynamic erf `weight · erf(alpha · x + shift) + bias`.
pub(crate) fn derf<const D: usize>(
    x: Tensor<D>,
    alpha: Tensor<1>,
    shift: Tensor<1>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    axis: ChannelAxis,
) -> Tensor<D> {
    let dims = x.dims();
    let view = if D == 1 {
        ChannelView::new(&[1, dims[0]], ChannelAxis::Last)
    } else {
        ChannelView::new(&dims, axis)
    };
    let x3 = x.reshape(view.view);
    let y = (x3 * alpha.reshape([1, 1, 1]) + shift.reshape([1, 1, 1])).erf();
    affine(y, weight, bias, view.param).reshape(dims)
}

/// Weight normalization `g · v / ‖v‖`, the norm over every axis but `dim`
/// (a normalized, non-negative axis index) or over everything.
pub(crate) fn weight_norm<const D: usize>(
    v: Tensor<D>,
    g: Tensor<1>,
    dim: Option<usize>,
) -> Tensor<D> {
    let dims = v.dims();
    let view = match dim {
        Some(k) => [
            dims[..k].iter().product(),
            dims[k],
            dims[k + 1..].iter().product(),
        ],
        None => [1, 1, dims.iter().product()],
    };
    let v3 = v.reshape(view);
    let norm = (v3.clone() * v3.clone()).sum_dim(0).sum_dim(2).sqrt();
    let scale = g.reshape([1, view[1], 1]) / norm;
    (v3 * scale).reshape(dims)
}

/// Per-instance mean and standard deviation `sqrt(var + eps)` of a
/// `[n, c, s]`/`[n, s, c]` view over its spatial axis, the variance divided
/// by `M - 1` when `unbiased` (else `M`); also returns the centered input.
fn instance_std(
    t: Tensor<3>,
    v: &ChannelView,
    eps: f64,
    unbiased: bool,
) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    let axis = v.reduce[1];
    let mean = t.clone().mean_dim(axis);
    let centered = t - mean.clone();
    let m = v.s as f64;
    let divisor = if unbiased { m - 1.0 } else { m };
    let var = (centered.clone() * centered.clone())
        .sum_dim(axis)
        .div_scalar(divisor);
    (centered, mean, var.add_scalar(eps).sqrt())
}

/// AdaIN: the content's per-instance statistics replaced by the style's.
pub(crate) fn adain<const D: usize, const E: usize>(
    x: Tensor<D>,
    style: Tensor<E>,
    eps: f64,
    unbiased: bool,
    axis: ChannelAxis,
) -> Tensor<D> {
    let dims = x.dims();
    let vx = ChannelView::new(&dims, axis);
    let vs = ChannelView::new(&style.dims(), axis);
    let (centered, _, std_x) = instance_std(x.reshape(vx.view), &vx, eps, unbiased);
    let (_, mean_s, std_s) = instance_std(style.reshape(vs.view), &vs, eps, unbiased);
    (centered / std_x * std_s + mean_s).reshape(dims)
}

/// Modulated LayerNorm (`centered`) or RMSNorm over the trailing `d`
/// values of each row: `norm(x) · (1 + scale[n]) + shift[n]`, with `scale`
/// and `shift` `[N, d]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ada_norm<const D: usize>(
    x: Tensor<D>,
    d: usize,
    scale: Tensor<2>,
    shift: Tensor<2>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    eps: f64,
    centered: bool,
) -> Tensor<D> {
    let dims = x.dims();
    let n = dims[0];
    let rows = dims.iter().product::<usize>() / (n * d);
    let y = row_norm(x, d, weight, bias, eps, centered).reshape([n, rows, d]);
    let gain = scale.reshape([n, 1, d]).add_scalar(1.0);
    (y * gain + shift.reshape([n, 1, d])).reshape(dims)
}

/// Switchable Normalization: the softmax-weighted mixture of the
/// instance, layer and batch (or, without `use_batch_stats`, running)
/// statistics. With `running` in training, returns it updated by the batch
/// statistics.
#[allow(clippy::too_many_arguments)]
pub(crate) fn switch_norm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    mean_weight: Tensor<1>,
    var_weight: Tensor<1>,
    running: Option<(Tensor<1>, Tensor<1>)>,
    use_batch_stats: bool,
    momentum: f64,
    eps: f64,
    axis: ChannelAxis,
) -> (Tensor<D>, Option<(Tensor<1>, Tensor<1>)>) {
    let dims = x.dims();
    let v = ChannelView::new(&dims, axis);
    let x3 = x.reshape(v.view);
    let spatial = v.reduce[1];
    let square = |t: Tensor<3>| t.clone() * t;
    // Each family's biased moments, two-pass.
    let in_mean = x3.clone().mean_dim(spatial);
    let in_var = square(x3.clone() - in_mean.clone()).mean_dim(spatial);
    let ln_mean = x3.clone().mean_dim(1).mean_dim(2);
    let ln_var = square(x3.clone() - ln_mean.clone()).mean_dim(1).mean_dim(2);
    let (bn_mean, bn_var) = if use_batch_stats {
        let mean = v.mean(x3.clone());
        let var = v.mean(square(x3.clone() - mean.clone()));
        (mean, var)
    } else {
        let (mean, var) = running
            .clone()
            .expect("evaluation needs running statistics");
        let device = x3.device();
        (
            mean.to_device(&device).reshape(v.param),
            var.to_device(&device).reshape(v.param),
        )
    };
    let wm = burn::tensor::activation::softmax(mean_weight, 0);
    let wv = burn::tensor::activation::softmax(var_weight, 0);
    let pick = |w: &Tensor<1>, k: usize| w.clone().narrow(0, k, 1).reshape([1, 1, 1]);
    let mean = in_mean * pick(&wm, 0) + ln_mean * pick(&wm, 1) + bn_mean.clone() * pick(&wm, 2);
    let var = in_var * pick(&wv, 0) + ln_var * pick(&wv, 1) + bn_var.clone() * pick(&wv, 2);
    let y = (x3 - mean) * rstd(var, eps);
    let y = affine(y, weight, bias, v.param).reshape(dims);
    if !use_batch_stats {
        return (y, None);
    }
    let running = running.map(|(rm, rv)| {
        let count = (v.n * v.s) as f64;
        let unbiased = bn_var.reshape([v.c]).mul_scalar(count / (count - 1.0));
        (
            follow(rm, bn_mean.reshape([v.c]), momentum),
            follow(rv, unbiased, momentum),
        )
    });
    (y, running)
}

/// Batch Renormalization's training step: BatchNorm corrected by `r` and
/// `d` (constants: detached), computed from the running statistics before
/// they follow the batch's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_renorm<const D: usize>(
    x: Tensor<D>,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
    running: (Tensor<1>, Tensor<1>),
    momentum: f64,
    eps: f64,
    r_max: f64,
    d_max: f64,
    axis: ChannelAxis,
) -> (Tensor<D>, (Tensor<1>, Tensor<1>)) {
    let dims = x.dims();
    let v = ChannelView::new(&dims, axis);
    let x3 = x.reshape(v.view);
    let mean = v.mean(x3.clone());
    let centered = x3.clone() - mean.clone();
    let var = v.mean(centered.clone() * centered.clone());
    let (rm, rv) = running;
    let device = x3.device();
    let running_mean = rm.clone().detach().to_device(&device).reshape(v.param);
    let inv_sigma = rstd(rv.clone().detach().to_device(&device).reshape(v.param), eps);
    let sigma_b = var.clone().detach().add_scalar(eps).sqrt();
    let r = (sigma_b * inv_sigma.clone()).clamp(1.0 / r_max, r_max);
    let d = ((mean.clone().detach() - running_mean) * inv_sigma).clamp(-d_max, d_max);
    let y = centered * rstd(var.clone(), eps) * r + d;
    let y = affine(y, weight, bias, v.param).reshape(dims);
    let count = (v.n * v.s) as f64;
    let unbiased = var.reshape([v.c]).mul_scalar(count / (count - 1.0));
    let running = (
        follow(rm, mean.reshape([v.c]), momentum),
        follow(rv, unbiased, momentum),
    );
    (y, running)
}
