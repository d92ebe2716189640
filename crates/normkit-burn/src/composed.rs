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
