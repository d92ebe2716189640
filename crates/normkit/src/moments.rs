//! The statistics every op uses: mean and variance of a group of values,
//! exact in the sense that matters for normalization.
//!
//! Two passes over data that is in cache: pass 1 finds a provisional mean
//! `m0` and the largest magnitude; pass 2 sums the deviations
//! `d = (x - m0) · scale` and their squares and corrects the mean and the
//! variance with them (the corrected two-pass algorithm of Chan, Golub &
//! LeVeque, 1983):
//!
//! ```text
//! mean = m0 + Σd / (n · scale)
//! var  = (Σd² / n - (Σd / n)²) / scale²
//! ```
//!
//! Never `E[x²] - E[x]²`, which cancels catastrophically when the mean is
//! large next to the spread. `scale` is a power of two chosen from the
//! largest magnitude so that the squares neither overflow (|x| near 1e30)
//! nor underflow (|x| near 1e-30) in `f32`; multiplying by a power of two is
//! exact. Sums run in `f32` lanes within blocks and in `f64` across blocks
//! ([`crate::lanes`]). Groups computed in pieces — channels-last columns,
//! chunks of a batch — are combined with Chan's pairwise update, in a fixed
//! order.

use crate::lanes;

/// Mean and biased variance of one group (or piece of one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Moments {
    /// Number of values reduced over.
    pub count: usize,
    /// Mean (0 for uncentered moments).
    pub mean: f64,
    /// `mean((x - mean)²)`, or `mean(x²)` for uncentered moments.
    pub var: f64,
}

impl Moments {
    pub const EMPTY: Moments = Moments {
        count: 0,
        mean: 0.0,
        var: 0.0,
    };

    /// Finishes pass 2: `sd = Σd`, `sdd = Σd²` with `d = (x - m0) · scale`.
    pub fn from_deviations(count: usize, m0: f64, scale: f32, sd: f64, sdd: f64) -> Self {
        let n = count as f64;
        let s = scale as f64;
        let shift = sd / n;
        Moments {
            count,
            mean: m0 + shift / s,
            var: ((sdd / n - shift * shift) / (s * s)).max(0.0),
        }
    }

    /// Chan's update: the moments of the union of two disjoint pieces.
    pub fn merge(self, other: Moments) -> Moments {
        if other.count == 0 {
            return self;
        }
        if self.count == 0 {
            return other;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        let m2 = self.var * na + other.var * nb + delta * delta * na * nb / n;
        Moments {
            count: self.count + other.count,
            mean: self.mean + delta * nb / n,
            var: m2 / n,
        }
    }
}

/// The power of two that brings `maxabs` near 1, when squares of values
/// that large (or small) would leave `f32`'s range; 1 otherwise.
#[inline(always)]
pub(crate) fn scale_for(maxabs: f32) -> f32 {
    const BIG: f32 = (1u64 << 60) as f32;
    const SMALL: f32 = 1.0 / BIG;
    if !maxabs.is_finite() || maxabs == 0.0 || (SMALL..=BIG).contains(&maxabs) {
        return 1.0;
    }
    let exp = ((maxabs.to_bits() >> 23) & 0xff) as i32 - 127;
    // 2^-exp, kept within the normal range so it is exact.
    f32::from_bits(((127 - exp.clamp(-126, 126)) as u32) << 23)
}

/// Moments of the values in `runs`, contiguous `f32` slices in cache.
/// Uncentered moments (`!centered`) are the mean square.
#[inline(always)]
pub(crate) fn row_moments<'a, I>(runs: I, centered: bool) -> Moments
where
    I: Iterator<Item = &'a [f32]> + Clone,
{
    let count: usize = runs.clone().map(|r| r.len()).sum();
    if count == 0 {
        return Moments {
            count,
            mean: f64::NAN,
            var: f64::NAN,
        };
    }
    let (mut sum, mut maxabs) = (0.0f64, 0.0f32);
    for r in runs.clone() {
        let (s, m) = lanes::sum_maxabs(r);
        sum += s;
        maxabs = maxabs.max(m);
    }
    let scale = scale_for(maxabs);
    let m0 = if centered { sum / count as f64 } else { 0.0 };
    let shift = (m0 * scale as f64) as f32;
    let (mut sd, mut sdd) = (0.0f64, 0.0f64);
    for r in runs {
        let (a, b) = lanes::dev_sums(r, scale, shift);
        sd += a;
        sdd += b;
    }
    if centered {
        // m0 was rounded to f32 in `shift`; Σd measures from that value.
        Moments::from_deviations(count, shift as f64 / scale as f64, scale, sd, sdd)
    } else {
        let s = scale as f64;
        Moments {
            count,
            mean: 0.0,
            var: sdd / count as f64 / (s * s),
        }
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

    fn exact(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    #[test]
    fn large_mean_keeps_variance() {
        // Unit-spread values around 1e4: E[x²] - E[x]² in f32 loses it all.
        let x: Vec<f32> = (0..5000).map(|i| 1e4 + (i % 7) as f32 - 3.0).collect();
        let (mean, var) = exact(&x);
        let m = row_moments([&x[..]].into_iter(), true);
        assert!((m.mean - mean).abs() < 1e-9, "{} vs {mean}", m.mean);
        assert!((m.var - var).abs() / var < 1e-6, "{} vs {var}", m.var);
    }

    #[test]
    fn huge_and_tiny_values_keep_their_variance() {
        for scale in [1e30f32, 1e-30, 2e37] {
            let x: Vec<f32> = (0..37)
                .map(|i| ((i * 7919) % 13) as f32 * scale - 5.0 * scale)
                .collect();
            let (mean, var) = exact(&x);
            let m = row_moments([&x[..20], &x[20..]].into_iter(), true);
            assert!(m.var.is_finite() && m.var > 0.0);
            assert!((m.var - var).abs() / var < 1e-6, "scale {scale}");
            assert!((m.mean - mean).abs() <= 1e-6 * var.sqrt());
            let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 37.0;
            let u = row_moments([&x[..]].into_iter(), false);
            assert!((u.var - ms).abs() / ms < 1e-6);
        }
    }

    #[test]
    fn merge_equals_whole() {
        let x: Vec<f32> = (0..999)
            .map(|i| ((i * 31) % 101) as f32 * 0.37 + 50.0)
            .collect();
        let whole = row_moments([&x[..]].into_iter(), true);
        let parts = [&x[..1], &x[1..400], &x[400..]]
            .iter()
            .map(|p| row_moments([*p].into_iter(), true))
            .fold(Moments::EMPTY, Moments::merge);
        assert_eq!(parts.count, 999);
        assert!((parts.mean - whole.mean).abs() < 1e-9);
        // Each piece sums in f32 lanes, so pieces and whole agree to ~1e-7.
        assert!((parts.var - whole.var).abs() / whole.var < 1e-6);
    }

    #[test]
    fn scale_is_exact_power_of_two() {
        assert_eq!(scale_for(1.0), 1.0);
        assert_eq!(scale_for(0.0), 1.0);
        for m in [1e30f32, 3.4e38, 1e-30, 1e-38] {
            let s = scale_for(m);
            assert_eq!(s.to_bits() & 0x7f_ffff, 0, "{m}: {s}");
            assert!((0.5..4.0).contains(&(m * s)), "{m} · {s}");
        }
    }

    #[test]
    fn split_recovers_value() {
        let v = 10000.123456789f64;
        let (hi, lo) = split(v);
        assert!(((hi as f64 + lo as f64) - v).abs() < 1e-10);
    }

    #[test]
    fn empty_is_nan_not_panic() {
        assert!(row_moments(std::iter::empty(), true).mean.is_nan());
    }
}
