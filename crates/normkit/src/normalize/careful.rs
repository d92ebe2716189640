//! Groups at the limits of `f32`, normalized in `f64`.
//!
//! The kernels subtract the mean and scale in `f32`. That is exact enough
//! and cannot overflow while every deviation `|x - mean|` stays below
//! `2¹²⁶` and `rstd` is a normal `f32`. Outside that — values near
//! `f32::MAX` (where `x - mean` overflows: LayerNorm of `[MAX, -MAX, MAX]`),
//! or subnormal groups normalized with `eps = 0` (where `rstd` overflows)
//! — a group takes this path instead: each value is widened to `f64`,
//! whose range holds every such deviation and `rstd`, and rounded once at
//! the end. The same formulas as the kernels', so nothing else changes.
//!
//! Which groups do is decided from their statistics alone, before any
//! output is written: a forward pass from its exact moments (the largest
//! deviation is at most `sqrt(n · var)`), a backward pass from the saved
//! mean and `rstd` (at most `sqrt(n) / rstd`). Ordinary data never comes
//! near, so the kernels' bits do not change, and a group's path depends on
//! that group alone.

use super::partials::Partials;
use super::plan::{correction, Coefs, Run};
use crate::elem::Elem;
use crate::moments::Moments;
use crate::parallel::SharedMut;

/// Deviations and `rstd` below this are safe in `f32` (`f32::MAX` is just
/// under `2¹²⁸`, so the kernels' intermediates keep a factor 4 of room).
const SAFE: f64 = 8.507_059_173_023_462e37; // 2^126

/// A given mean this large may meet a value of the other sign whose
/// difference overflows (evaluation mode does not see the largest value).
const GIVEN_MEAN: f64 = 1.329_227_995_784_916e36; // 2^120

/// The statistics of a group normalized in `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Wide {
    pub mean: f64,
    pub rstd: f64,
}

impl Wide {
    /// `Some` when the group of moments `m` (with `rstd`) needs `f64`.
    /// Groups with a NaN or infinite statistic stay on the kernels, which
    /// propagate it as they always have.
    ///
    /// (`|mean| + sqrt(n · var) ≥ SAFE` needs one of its terms at
    /// `SAFE / 2`: the test takes no square root, once per group.)
    #[inline]
    pub fn from_moments(m: &Moments, rstd: f64) -> Option<Wide> {
        let spread = m.count as f64 * m.var;
        let careful = m.mean.abs() >= SAFE / 2.0
            || spread >= SAFE * SAFE / 4.0
            || !(1.0 / SAFE..SAFE).contains(&rstd);
        let finite = m.mean.is_finite() && spread.is_finite() && rstd.is_finite();
        (careful && finite).then_some(Wide { mean: m.mean, rstd })
    }

    /// `Some` when normalizing with given `mean` and `rstd` (evaluation
    /// mode) needs `f64`: a mean or `rstd` outside the kernels' room.
    pub fn from_given(mean: f32, rstd: f32) -> Option<Wide> {
        let (m, r) = (mean.abs() as f64, rstd as f64);
        let careful = m >= GIVEN_MEAN || !(1.0 / SAFE..SAFE).contains(&r);
        (careful && mean.is_finite() && !rstd.is_nan()).then_some(Wide {
            mean: mean as f64,
            rstd: r,
        })
    }
}

/// When the backward pass of a group of `n` values needs `f64`.
#[derive(Debug, Clone, Copy)]
pub(super) struct BackwardLimit {
    /// An `rstd` at or below this lets a deviation reach `SAFE / 2`.
    rstd_min: f32,
}

impl BackwardLimit {
    pub fn new(n: usize) -> Self {
        BackwardLimit {
            rstd_min: (2.0 * (n as f64).sqrt() / SAFE) as f32,
        }
    }

    /// Whether a group with saved `mean` and `rstd` needs `f64`:
    /// `|mean| + sqrt(n) / rstd` (a bound on its deviations) may reach
    /// `SAFE`, or `rstd` is no normal `f32`. No division, once per group.
    #[inline]
    pub fn needs_wide(self, mean: f32, rstd: f32) -> bool {
        let careful = !rstd.is_normal()
            || rstd as f64 >= SAFE
            || rstd <= self.rstd_min
            || mean.abs() as f64 >= SAFE / 2.0;
        careful && mean.is_finite() && !rstd.is_nan()
    }
}

/// `y = (x - mean) · rstd · weight + bias` over the runs of one group.
pub(super) fn forward_runs<T: Elem>(
    runs: &[Run],
    w: Wide,
    y: &SharedMut<'_, T>,
    x: &[T],
    coefs: &Coefs<'_>,
) {
    for run in runs {
        // SAFETY: each value belongs to exactly one group's runs, and each
        // group to exactly one chunk.
        let out = unsafe { y.range(run.range()) };
        for (j, (o, v)) in out.iter_mut().zip(&x[run.range()]).enumerate() {
            let ch = run.channel + if run.per_element { j } else { 0 };
            let a = coefs.weight[ch] as f64;
            *o = T::from_f64((v.to_f64() - w.mean) * w.rstd * a + coefs.bias[ch] as f64);
        }
    }
}

/// `rstd` of a group recomputed from its values, for a saved one that
/// `f32` could not hold: `eps` was then 0 (the smallest positive `f32`
/// eps would have kept `rstd` finite) or negligible.
fn exact_rstd<T: Elem>(values: impl Iterator<Item = T> + Clone, n: f64, centered: bool) -> f64 {
    let mean = if centered {
        values.clone().map(|v| v.to_f64()).sum::<f64>() / n
    } else {
        0.0
    };
    let var = values.map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
    1.0 / var.sqrt()
}

/// The backward pass of one group in `f64`, with the kernels' formulas:
/// `x̂ = (x - mean) · rstd - δ` and
/// `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))`, `g = dy · weight`;
/// parameter sums go into `parts` as the kernels' do.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_runs<T: Elem>(
    runs: &[Run],
    (mean, rstd): (f32, f32),
    (train, centered): (bool, bool),
    dx: &SharedMut<'_, T>,
    dy: &[T],
    x: &[T],
    coefs: &Coefs<'_>,
    parts: &mut Partials,
) {
    let n: usize = runs.iter().map(|r| r.len).sum();
    let values = runs.iter().flat_map(|r| x[r.range()].iter().copied());
    let mean = if centered { mean as f64 } else { 0.0 };
    let rstd = if rstd.is_normal() {
        rstd as f64
    } else {
        exact_rstd(values, n as f64, centered)
    };
    let weight = |run: &Run, j: usize| {
        coefs.weight[run.channel + if run.per_element { j } else { 0 }] as f64
    };
    let (mut sg, mut sgx, mut sx) = (0.0f64, 0.0f64, 0.0f64);
    for run in runs {
        for (j, (d, v)) in dy[run.range()].iter().zip(&x[run.range()]).enumerate() {
            let xh = (v.to_f64() - mean) * rstd;
            let g = d.to_f64() * weight(run, j);
            sg += g;
            sgx += g * xh;
            sx += xh;
        }
    }
    let (delta, mean_g, mean_gx) = correction(train, centered, n as f64, [sg, sgx, sx]);
    for run in runs {
        // SAFETY: each value belongs to exactly one group's runs, and each
        // group to exactly one chunk.
        let out = unsafe { dx.range(run.range()) };
        let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
        let inputs = dy[run.range()].iter().zip(&x[run.range()]);
        for (j, (o, (d, v))) in out.iter_mut().zip(inputs).enumerate() {
            let xh = (v.to_f64() - mean) * rstd - delta;
            let d = d.to_f64();
            *o = T::from_f64(rstd * (d * weight(run, j) - mean_g - xh * mean_gx));
            if run.per_element {
                let ch = run.channel + j;
                parts.dweight32[ch] += (d * xh) as f32;
                parts.dbias32[ch] += d as f32;
            }
            sdy += d;
            sdyx += d * xh;
        }
        if !run.per_element {
            parts.add(run.channel, sdyx, sdy);
        }
    }
}
