//! BatchNorm's twins: the training forward and its running-statistics
//! update, the evaluation forward, and both backwards.

use super::{
    bias_at, channel_groups, check_len, check_params, mean_var, normalize, normalize_backward,
    weight_at, Dims, Gradients, Normalized,
};

/// BatchNorm in training mode: each channel normalized with its own batch
/// mean and biased variance (one entry per channel in the result).
pub fn batch_norm_train(
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> Normalized {
    check_len("x", x.len(), d.numel());
    check_params(weight, bias, d.c);
    normalize(x, &channel_groups(d), weight, bias, eps, true)
}

/// The running statistics after one BatchNorm training step:
/// `(1 - momentum) · running + momentum · batch`, with the batch's unbiased
/// variance. Returns `(running_mean, running_var)`.
pub fn batch_norm_running_update(
    x: &[f64],
    d: Dims,
    running_mean: &[f64],
    running_var: &[f64],
    momentum: f64,
) -> (Vec<f64>, Vec<f64>) {
    check_len("x", x.len(), d.numel());
    check_len("running_mean", running_mean.len(), d.c);
    check_len("running_var", running_var.len(), d.c);
    let mut new_mean = Vec::new();
    let mut new_var = Vec::new();
    for c in 0..d.c {
        let mut values = Vec::new();
        for n in 0..d.n {
            for s in 0..d.s {
                values.push(x[d.at(n, c, s)]);
            }
        }
        let count = values.len() as f64;
        let (mean, var) = mean_var(&values);
        let unbiased = var * count / (count - 1.0);
        new_mean.push((1.0 - momentum) * running_mean[c] + momentum * mean);
        new_var.push((1.0 - momentum) * running_var[c] + momentum * unbiased);
    }
    (new_mean, new_var)
}

/// BatchNorm in evaluation mode:
/// `y = (x - running_mean) / sqrt(running_var + eps) · weight + bias`.
pub fn batch_norm_eval(
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
) -> Vec<f64> {
    check_len("x", x.len(), d.numel());
    check_params(weight, bias, d.c);
    check_len("running_mean", running_mean.len(), d.c);
    check_len("running_var", running_var.len(), d.c);
    let mut y = vec![0.0; x.len()];
    for n in 0..d.n {
        for c in 0..d.c {
            let rstd = 1.0 / (running_var[c] + eps).sqrt();
            for s in 0..d.s {
                let i = d.at(n, c, s);
                let xhat = (x[i] - running_mean[c]) * rstd;
                y[i] = xhat * weight_at(weight, c) + bias_at(bias, c);
            }
        }
    }
    y
}

/// Backward of [`batch_norm_train`].
pub fn batch_norm_backward_train(
    dy: &[f64],
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    eps: f64,
) -> Gradients {
    check_len("x", x.len(), d.numel());
    check_len("dy", dy.len(), d.numel());
    check_params(weight, None, d.c);
    normalize_backward(dy, x, &channel_groups(d), d.c, weight, eps, true)
}

/// Backward of [`batch_norm_eval`]: the statistics are constants, so
/// `dx = dy · weight / sqrt(running_var + eps)`.
pub fn batch_norm_backward_eval(
    dy: &[f64],
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
) -> Gradients {
    check_len("x", x.len(), d.numel());
    check_len("dy", dy.len(), d.numel());
    check_params(weight, None, d.c);
    check_len("running_mean", running_mean.len(), d.c);
    check_len("running_var", running_var.len(), d.c);
    let mut out = Gradients {
        dx: vec![0.0; x.len()],
        dweight: vec![0.0; d.c],
        dbias: vec![0.0; d.c],
    };
    for n in 0..d.n {
        for c in 0..d.c {
            let rstd = 1.0 / (running_var[c] + eps).sqrt();
            for s in 0..d.s {
                let i = d.at(n, c, s);
                out.dx[i] = dy[i] * weight_at(weight, c) * rstd;
                out.dweight[c] += dy[i] * (x[i] - running_mean[c]) * rstd;
                out.dbias[c] += dy[i];
            }
        }
    }
    out
}
