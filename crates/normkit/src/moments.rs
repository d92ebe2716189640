//! The one statistics routine every op uses.
//!
//! Means and variances are computed in two passes with `f64` accumulators:
//! pass 1 finds a provisional mean `m0`; pass 2 sums the deviations
//! `d = x - m0` and their squares and corrects both the mean and the
//! variance (the "corrected two-pass" algorithm, Chan, Golub & LeVeque
//! 1983):
//!
//! ```text
//! mean = m0 + Σd / n
//! var  = Σd² / n - (Σd / n)²
//! ```
//!
//! Never `E[x²] - E[x]²`, which cancels catastrophically when the mean is
//! large next to the spread. The `f64` accumulators also make overflow
//! impossible: the largest `f32` squared is about 1.2e77, far inside `f64`.
//! Each pass sums into four independent lanes, so the accumulation error
//! grows with n/4 rather than n, and the loop vectorizes.

use crate::elem::Elem;
use std::ops::Range;

/// Mean and biased variance of one normalized group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Moments {
    /// Number of values reduced over.
    pub count: usize,
    /// Mean (0 for uncentered moments).
    pub mean: f64,
    /// `mean((x - mean)²)`, or `mean(x²)` for uncentered moments.
    pub var: f64,
}

const LANES: usize = 4;

#[inline]
fn lanes_sum<T: Elem>(x: &[T], mut f: impl FnMut(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v.to_f64());
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += f(v.to_f64());
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Mean and variance of the values of `x` in `runs` (`centered`), or the
/// mean square (`!centered`, as RMSNorm and weight norm need).
pub(crate) fn moments<T: Elem, I>(x: &[T], runs: I, centered: bool) -> Moments
where
    I: Iterator<Item = Range<usize>> + Clone,
{
    let count: usize = runs.clone().map(|r| r.len()).sum();
    if count == 0 {
        return Moments {
            count,
            mean: f64::NAN,
            var: f64::NAN,
        };
    }
    let n = count as f64;
    if !centered {
        let sumsq: f64 = runs.map(|r| lanes_sum(&x[r], |v| v * v)).sum();
        return Moments {
            count,
            mean: 0.0,
            var: sumsq / n,
        };
    }
    let m0 = runs.clone().map(|r| lanes_sum(&x[r], |v| v)).sum::<f64>() / n;
    let (mut sd, mut sdd) = (0.0f64, 0.0f64);
    for r in runs {
        sd += lanes_sum(&x[r.clone()], |v| v - m0);
        sdd += lanes_sum(&x[r], |v| (v - m0) * (v - m0));
    }
    let shift = sd / n;
    Moments {
        count,
        mean: m0 + shift,
        var: (sdd / n - shift * shift).max(0.0),
    }
}

/// Splits an `f64` into two `f32`s whose sum is it to about 2⁻⁴⁸ relative.
/// Subtracting a mean as `(x - hi) - lo` keeps the digits that rounding
/// the mean to `f32` would drop: for a mean of 1e4 that is the difference
/// between an error of 5e-4 and one of 1e-7 in the normalized output.
#[inline]
pub(crate) fn split(v: f64) -> (f32, f32) {
    let hi = v as f32;
    let lo = if hi.is_finite() {
        (v - hi as f64) as f32
    } else {
        0.0
    };
    (hi, lo)
}

/// `1 / sqrt(var + eps)`, in `f64` so that tiny or huge variances survive.
#[inline]
pub(crate) fn rstd(var: f64, eps: f32) -> f64 {
    1.0 / (var + eps as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_mean_keeps_variance() {
        // Unit-spread values around 1e4: E[x²] - E[x]² in f32 loses it all.
        let x: Vec<f32> = (0..1000).map(|i| 1e4 + (i % 7) as f32 - 3.0).collect();
        let exact_mean = x.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
        let exact_var = x
            .iter()
            .map(|&v| (v as f64 - exact_mean).powi(2))
            .sum::<f64>()
            / 1000.0;
        let m = moments(&x, std::iter::once(0..x.len()), true);
        assert!((m.mean - exact_mean).abs() < 1e-9);
        assert!((m.var - exact_var).abs() / exact_var < 1e-12);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let x = [1e30f32, -1e30, 3e38, -3e38];
        let m = moments(&x, std::iter::once(0..4), true);
        assert!(m.var.is_finite() && m.var > 0.0);
        let m = moments(&x, std::iter::once(0..4), false);
        assert!(m.var.is_finite());
    }

    #[test]
    fn split_recovers_value() {
        let v = 10000.123456789f64;
        let (hi, lo) = split(v);
        assert!(((hi as f64 + lo as f64) - v).abs() < 1e-10);
    }

    #[test]
    fn empty_is_nan_not_panic() {
        let x: [f32; 0] = [];
        assert!(moments(&x, std::iter::once(0..0), true).mean.is_nan());
    }
}
