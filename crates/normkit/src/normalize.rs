//! The shared engine behind BatchNorm, LayerNorm, RMSNorm, GroupNorm and
//! InstanceNorm.
//!
//! Each of them normalizes groups of values with a mean and a standard
//! deviation and then applies a per-channel affine transform. They differ
//! only in which values form a group, which [`Plan`] describes on the
//! canonical `[n, c, s]` / `[n, s, c]` view:
//!
//! | op | scope | groups per sample | centered |
//! |---|---|---|---|
//! | BatchNorm | across the batch | one per channel | yes |
//! | GroupNorm | per sample | `num_groups` | yes |
//! | InstanceNorm | per sample | `c` (GroupNorm with one channel a group) | yes |
//! | LayerNorm | per sample | 1, on `[rows, 1, d]` channels-last | yes |
//! | RMSNorm | per sample | 1, as LayerNorm | no |
//!
//! A group's values are a list of contiguous [`Run`]s; statistics, the
//! affine transform and the backward reductions all walk those runs, so a
//! new normalization that is "some groups, some channels" needs only a new
//! `Plan`.

use crate::elem::Elem;
use crate::layout::{Affine, ChannelAxis, Geometry, Grads, Stats};
use crate::moments::{moments, rstd, split, Moments};
use std::ops::Range;

/// Which values share one statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One statistic per channel, over the batch and spatial extent.
    AcrossBatch,
    /// `groups` statistics per sample, each over `c / groups` whole channels.
    PerSample { groups: usize },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub geo: Geometry,
    pub scope: Scope,
    /// Subtract the mean (false for RMSNorm).
    pub centered: bool,
}

/// A contiguous stretch of one group's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: usize,
    pub len: usize,
    /// Channel of the first value.
    pub channel: usize,
    /// The channel advances with each value (channels-last) rather than
    /// staying fixed for the whole run (channels-first).
    pub per_element: bool,
}

impl Run {
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// The runs of one group, computed on the fly.
#[derive(Debug, Clone)]
pub(crate) struct Runs {
    plan: Plan,
    group: usize,
    next: usize,
    count: usize,
}

impl Iterator for Runs {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        if self.next == self.count {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let Geometry { c, s, axis, .. } = self.plan.geo;
        let k = self.group;
        Some(match (self.plan.scope, axis) {
            (Scope::AcrossBatch, ChannelAxis::First) => Run {
                start: (i * c + k) * s,
                len: s,
                channel: k,
                per_element: false,
            },
            (Scope::AcrossBatch, ChannelAxis::Last) => Run {
                start: i * c + k,
                len: 1,
                channel: k,
                per_element: false,
            },
            (Scope::PerSample { groups }, ChannelAxis::First) => {
                let (n, g, cg) = (k / groups, k % groups, c / groups);
                let ch = g * cg + i;
                Run {
                    start: (n * c + ch) * s,
                    len: s,
                    channel: ch,
                    per_element: false,
                }
            }
            (Scope::PerSample { groups }, ChannelAxis::Last) => {
                let (n, g, cg) = (k / groups, k % groups, c / groups);
                Run {
                    start: (n * s + i) * c + g * cg,
                    len: cg,
                    channel: g * cg,
                    per_element: true,
                }
            }
        })
    }
}

impl Plan {
    /// Number of statistics (groups) in the whole tensor.
    pub fn num_groups(&self) -> usize {
        match self.scope {
            Scope::AcrossBatch => self.geo.c,
            Scope::PerSample { groups } => self.geo.n * groups,
        }
    }

    /// Number of values in each group.
    pub fn group_size(&self) -> usize {
        let Geometry { n, c, s, .. } = self.geo;
        match self.scope {
            Scope::AcrossBatch => n * s,
            Scope::PerSample { groups } => c / groups * s,
        }
    }

    pub fn runs(&self, group: usize) -> Runs {
        let Geometry { n, c, s, axis } = self.geo;
        let count = match (self.scope, axis) {
            (Scope::AcrossBatch, ChannelAxis::First) => n,
            (Scope::AcrossBatch, ChannelAxis::Last) => n * s,
            (Scope::PerSample { groups }, ChannelAxis::First) => c / groups,
            (Scope::PerSample { .. }, ChannelAxis::Last) => s,
        };
        Runs {
            plan: *self,
            group,
            next: 0,
            count,
        }
    }

    fn ranges(&self, group: usize) -> impl Iterator<Item = Range<usize>> + Clone {
        self.runs(group).map(|r| r.range())
    }

    /// Statistics of every group.
    pub fn moments<T: Elem>(&self, x: &[T]) -> Vec<Moments> {
        (0..self.num_groups())
            .map(|k| moments(x, self.ranges(k), self.centered))
            .collect()
    }

    /// Training forward: normalizes each group with its own statistics.
    /// Returns the saved statistics and the raw moments (for running-stat
    /// updates).
    pub fn forward_train<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        affine: Affine<'_>,
        eps: f32,
    ) -> (Stats, Vec<Moments>) {
        let all = self.moments(x);
        let groups = all.len();
        let mut stats = Stats {
            mean: Vec::with_capacity(if self.centered { groups } else { 0 }),
            rstd: Vec::with_capacity(groups),
        };
        for (k, m) in all.iter().enumerate() {
            let r = rstd(m.var, eps);
            let (hi, lo) = split(m.mean);
            self.apply_group(y, x, k, hi, lo, r as f32, affine);
            if self.centered {
                stats.mean.push(hi);
            }
            stats.rstd.push(r as f32);
        }
        (stats, all)
    }

    /// Forward with given statistics (evaluation mode).
    pub fn forward_with_stats<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        affine: Affine<'_>,
        stats: &Stats,
    ) {
        for k in 0..self.num_groups() {
            let mean = if self.centered { stats.mean[k] } else { 0.0 };
            self.apply_group(y, x, k, mean, 0.0, stats.rstd[k], affine);
        }
    }

    /// `y = ((x - mean_hi) - mean_lo) · rstd · weight + bias` over a group.
    #[allow(clippy::too_many_arguments)]
    fn apply_group<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        group: usize,
        mean_hi: f32,
        mean_lo: f32,
        rstd: f32,
        affine: Affine<'_>,
    ) {
        let w = |c: usize| affine.weight.map_or(1.0, |w| w[c]);
        let b = |c: usize| affine.bias.map_or(0.0, |b| b[c]);
        for run in self.runs(group) {
            let (ys, xs) = (&mut y[run.range()], &x[run.range()]);
            if run.per_element {
                for (i, (yv, &xv)) in ys.iter_mut().zip(xs).enumerate() {
                    let c = run.channel + i;
                    let xhat = ((xv.to_f32() - mean_hi) - mean_lo) * rstd;
                    *yv = T::from_f32(xhat * w(c) + b(c));
                }
            } else {
                let (scale, shift) = (rstd * w(run.channel), b(run.channel));
                for (yv, &xv) in ys.iter_mut().zip(xs) {
                    *yv = T::from_f32(((xv.to_f32() - mean_hi) - mean_lo) * scale + shift);
                }
            }
        }
    }

    /// Backward through a training-mode forward (statistics depend on x).
    ///
    /// With `x̂ = (x - mean) · rstd` and `g = dy · weight`, per group of n:
    /// `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))` (RMSNorm drops the
    /// `mean(g)` term). The saved mean is an `f32` rounding of the true one;
    /// pass 1 also sums `x̂`, whose mean would be 0 for the true mean, and
    /// that residual corrects `x̂` in pass 2, so a large mean costs no
    /// accuracy here either.
    pub fn backward_train<T: Elem>(
        &self,
        grads: Grads<'_, T>,
        dy: &[T],
        x: &[T],
        weight: Option<&[f32]>,
        stats: &Stats,
    ) {
        let w = |c: usize| weight.map_or(1.0, |w| w[c] as f64);
        let mut acc = ParamAcc::new(self.geo.c, &grads);
        let n = self.group_size() as f64;
        for k in 0..self.num_groups() {
            let mean = if self.centered { stats.mean[k] } else { 0.0 };
            let r = stats.rstd[k];
            // Pass 1: Σg, Σg·x̂, Σx̂.
            let (mut sg, mut sgx, mut sx) = (0.0f64, 0.0f64, 0.0f64);
            for run in self.runs(k) {
                for (i, (&dyv, &xv)) in dy[run.range()].iter().zip(&x[run.range()]).enumerate() {
                    let c = if run.per_element { run.channel + i } else { run.channel };
                    let xhat = (xv.to_f64() - mean as f64) * r as f64;
                    let g = dyv.to_f64() * w(c);
                    sg += g;
                    sgx += g * xhat;
                    sx += xhat;
                }
            }
            let (delta, mean_g) = if self.centered { (sx / n, sg / n) } else { (0.0, 0.0) };
            let mean_gx = (sgx - delta * sg) / n;
            // Fold the correction into a second mean word, as in forward.
            let lo = if self.centered && r != 0.0 { (delta / r as f64) as f32 } else { 0.0 };
            let (mean_g, mean_gx) = (mean_g as f32, mean_gx as f32);
            // Pass 2: dx and the parameter sums.
            for run in self.runs(k) {
                let range = run.range();
                for (i, ((dxv, &dyv), &xv)) in grads.dx[range.clone()]
                    .iter_mut()
                    .zip(&dy[range.clone()])
                    .zip(&x[range])
                    .enumerate()
                {
                    let c = if run.per_element { run.channel + i } else { run.channel };
                    let xhat = ((xv.to_f32() - mean) - lo) * r;
                    let dyv = dyv.to_f32();
                    let g = dyv * w(c) as f32;
                    *dxv = T::from_f32(r * (g - mean_g - xhat * mean_gx));
                    acc.add(c, dyv, xhat);
                }
            }
        }
        acc.finish(grads);
    }

    /// Backward through an evaluation-mode forward (statistics are
    /// constants): `dx = dy · weight · rstd`.
    pub fn backward_with_stats<T: Elem>(
        &self,
        grads: Grads<'_, T>,
        dy: &[T],
        x: &[T],
        weight: Option<&[f32]>,
        stats: &Stats,
    ) {
        let w = |c: usize| weight.map_or(1.0, |w| w[c]);
        let mut acc = ParamAcc::new(self.geo.c, &grads);
        for k in 0..self.num_groups() {
            let mean = if self.centered { stats.mean[k] } else { 0.0 };
            let r = stats.rstd[k];
            for run in self.runs(k) {
                let range = run.range();
                for (i, ((dxv, &dyv), &xv)) in grads.dx[range.clone()]
                    .iter_mut()
                    .zip(&dy[range.clone()])
                    .zip(&x[range])
                    .enumerate()
                {
                    let c = if run.per_element { run.channel + i } else { run.channel };
                    let dyv = dyv.to_f32();
                    *dxv = T::from_f32(dyv * w(c) * r);
                    acc.add(c, dyv, (xv.to_f32() - mean) * r);
                }
            }
        }
        acc.finish(grads);
    }
}

/// Per-channel `Σ dy · x̂` and `Σ dy`, accumulated in `f64`.
pub(crate) struct ParamAcc {
    dweight: Option<Vec<f64>>,
    dbias: Option<Vec<f64>>,
}

impl ParamAcc {
    pub fn new<T>(channels: usize, grads: &Grads<'_, T>) -> Self {
        ParamAcc {
            dweight: grads.dweight.as_ref().map(|_| vec![0.0; channels]),
            dbias: grads.dbias.as_ref().map(|_| vec![0.0; channels]),
        }
    }

    #[inline(always)]
    pub fn add(&mut self, c: usize, dy: f32, xhat: f32) {
        if let Some(dw) = &mut self.dweight {
            dw[c] += dy as f64 * xhat as f64;
        }
        if let Some(db) = &mut self.dbias {
            db[c] += dy as f64;
        }
    }

    pub fn finish<T>(self, grads: Grads<'_, T>) {
        for (out, acc) in [(grads.dweight, self.dweight), (grads.dbias, self.dbias)] {
            if let (Some(out), Some(acc)) = (out, acc) {
                for (o, a) in out.iter_mut().zip(acc) {
                    *o = a as f32;
                }
            }
        }
    }
}

/// Folds batch statistics into running ones:
/// `running = (1 - m) · running + m · batch`, with the unbiased variance.
pub(crate) fn update_running(
    running_mean: &mut [f32],
    running_var: &mut [f32],
    batch_mean: &[f64],
    batch_var_unbiased: &[f64],
    momentum: f64,
) {
    for (((rm, rv), &m), &v) in running_mean
        .iter_mut()
        .zip(running_var.iter_mut())
        .zip(batch_mean)
        .zip(batch_var_unbiased)
    {
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
