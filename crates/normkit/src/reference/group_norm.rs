//! GroupNorm's and InstanceNorm's twins (InstanceNorm is GroupNorm with
//! one channel per group), and InstanceNorm's running-statistics update.

use super::{
    check_len, check_params, mean_var, normalize, normalize_backward, sample_groups, Dims,
    Gradients, Normalized,
};

/// GroupNorm: statistics per (sample, group), sample-major.
pub fn group_norm(
    x: &[f64],
    d: Dims,
    num_groups: usize,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> Normalized {
    check_len("x", x.len(), d.numel());
    check_params(weight, bias, d.c);
    normalize(x, &sample_groups(d, num_groups), weight, bias, eps, true)
}

/// Backward of [`group_norm`].
pub fn group_norm_backward(
    dy: &[f64],
    x: &[f64],
    d: Dims,
    num_groups: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> Gradients {
    check_len("x", x.len(), d.numel());
    check_len("dy", dy.len(), d.numel());
    check_params(weight, None, d.c);
    normalize_backward(dy, x, &sample_groups(d, num_groups), d.c, weight, eps, true)
}

/// InstanceNorm with instance statistics: GroupNorm with one channel per
/// group. (With running statistics, evaluation mode is
/// [`batch_norm_eval`] and its backward [`batch_norm_backward_eval`].)
pub fn instance_norm(
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> Normalized {
    group_norm(x, d, d.c, weight, bias, eps)
}

/// Backward of [`instance_norm`].
pub fn instance_norm_backward(
    dy: &[f64],
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    eps: f64,
) -> Gradients {
    group_norm_backward(dy, x, d, d.c, weight, eps)
}

/// The running statistics after one InstanceNorm training step: the
/// batch averages of each instance's mean and unbiased variance, folded in
/// with `momentum`. Returns `(running_mean, running_var)`.
pub fn instance_norm_running_update(
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
        let (mut batch_mean, mut batch_var) = (0.0, 0.0);
        for n in 0..d.n {
            let mut values = Vec::new();
            for s in 0..d.s {
                values.push(x[d.at(n, c, s)]);
            }
            let count = values.len() as f64;
            let (mean, var) = mean_var(&values);
            batch_mean += mean / d.n as f64;
            batch_var += var * count / (count - 1.0) / d.n as f64;
        }
        new_mean.push((1.0 - momentum) * running_mean[c] + momentum * batch_mean);
        new_var.push((1.0 - momentum) * running_var[c] + momentum * batch_var);
    }
    (new_mean, new_var)
}
