//! Running statistics: folding batch moments in, and normalizing with them.

use crate::layout::{RunningStats, Stats};
use crate::moments::{rstd, Moments};

/// Folds batch statistics into running ones:
/// `running = (1 - m) · running + m · batch`, with the unbiased variance
/// (Bessel's `n / (n - 1)`). `moments` holds one entry per channel
/// (BatchNorm) or per (sample, channel) (InstanceNorm, whose batch
/// statistic is the mean over the samples of the per-instance ones).
pub(crate) fn update_running(running: RunningStats<'_>, moments: &[Moments], momentum: f64) {
    let c = running.mean.len();
    if c == 0 || moments.is_empty() {
        return;
    }
    let instances = (moments.len() / c) as f64;
    let mut mean = vec![0.0f64; c];
    let mut var = vec![0.0f64; c];
    for (k, m) in moments.iter().enumerate() {
        let n = m.count as f64;
        mean[k % c] += m.mean / instances;
        var[k % c] += m.var * n / (n - 1.0) / instances;
    }
    let it = running
        .mean
        .iter_mut()
        .zip(running.var.iter_mut())
        .zip(mean)
        .zip(var);
    for (((rm, rv), m), v) in it {
        *rm = ((1.0 - momentum) * *rm as f64 + momentum * m) as f32;
        *rv = ((1.0 - momentum) * *rv as f64 + momentum * v) as f32;
    }
}

/// Statistics that normalize with running estimates (evaluation mode).
pub(crate) fn stats_from_running(mean: &[f32], var: &[f32], eps: f32) -> Stats {
    Stats {
        mean: mean.to_vec(),
        rstd: var.iter().map(|&v| rstd(v as f64, eps) as f32).collect(),
    }
}
