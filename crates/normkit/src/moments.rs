//! The statistics every op uses: mean and variance of a group of values,
//! exact in the sense that matters for normalization.
//!
//! **One sweep** over the data, as it streams in from memory: with a shift
//! `k` (the mean of the group's first 16 values, rounded to `f32`), sum
//! `d = x - k` and `d²`:
//!
//! ```text
//! mean = k + Σd / n
//! var  = Σd² / n - (Σd / n)²
//! ```
//!
//! This is `E[x²] - E[x]²` only in form: measured from `k`, which lies
//! within a fraction of a standard deviation of the mean, the two terms do
//! not cancel. The sweep's result is kept when `(Σd / n)² ≤ Σd² / (2n)`,
//! that is when `k` is within one standard deviation of the mean (the
//! subtraction then loses at most a factor `(1 + 1/2) / (1 - 1/2) = 3` of
//! the sums' relative precision, under two bits of `f32`'s 24, where the
//! output needs far fewer), and the sums show
//! that no square left `f32`'s range: both are finite (an overflow makes
//! them infinite) and `Σd² / n` is at least `2⁻¹⁰⁰` (squares far below
//! that lose digits to underflow).
//!
//! **Otherwise, more sweeps** over the group, which is still in cache: the
//! corrected two-pass algorithm (Chan, Golub & LeVeque, 1983) on values
//! scaled by a power of two chosen from the largest magnitude. Pass 1 finds
//! a provisional mean `m0`; pass 2 sums `d = x · scale - m0 · scale` and
//! `d²` and corrects:
//!
//! ```text
//! mean = m0 + Σd / (n · scale)
//! var  = (Σd² / n - (Σd / n)²) / scale²
//! ```
//!
//! Multiplying by a power of two is exact, so values near 1e30 (whose
//! squares overflow `f32`) and near 1e-30 (whose squares underflow) keep
//! their variance. A group whose first values are far from its mean (sorted
//! data, a ramp) takes this path; so does a NaN, which then propagates.
//!
//! Either way the sums run in `f32` lanes within blocks and in `f64` across
//! blocks ([`crate::lanes`]). Groups computed in pieces — channels-last
//! columns, chunks of a batch — are combined with Chan's pairwise update,
//! in a fixed order.

use crate::elem::Elem;
use crate::lanes;
use crate::simd::Isa;

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
            var: non_negative((sdd / n - shift * shift) / (s * s)),
        }
    }

    /// The one-sweep result from `sd = Σd`, `sdd = Σd²` with `d = x - shift`
    /// over `count` values, or `None` when it must be recomputed (see the
    /// module documentation).
    pub fn from_shifted(
        count: usize,
        shift: f32,
        [sd, sdd]: [f64; 2],
        centered: bool,
    ) -> Option<Self> {
        // 2⁻¹⁰⁰: squares this small keep about 26 bits above f32's
        // smallest normal, 2⁻¹²⁶.
        const TINY: f64 = 7.888_609_052_210_118e-31;
        let n = count as f64;
        let (mean_d, msq) = (sd / n, sdd / n);
        // Written so that NaN fails every test.
        // A zero mean square is refused too: squares that all underflowed
        // look the same as a constant group (which the fallback computes
        // as well).
        let in_range = msq.is_finite() && sd.is_finite() && msq >= TINY;
        if !in_range {
            return None;
        }
        if !centered {
            return Some(Moments {
                count,
                mean: 0.0,
                var: msq,
            });
        }
        // Written negated so that a NaN refuses the sweep too.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(mean_d * mean_d <= 0.5 * msq) {
            return None;
        }
        Some(Moments {
            count,
            mean: shift as f64 + mean_d,
            var: non_negative(msq - mean_d * mean_d),
        })
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

/// `v`, or 0 where rounding made it negative; NaN stays NaN (a group with
/// a NaN has a NaN variance, as PyTorch saves it, never 0).
#[inline]
fn non_negative(v: f64) -> f64 {
    if v < 0.0 {
        0.0
    } else {
        v
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

/// The one-sweep shift of a group: the mean of its first (up to) 16
/// values, rounded to `f32`.
#[inline(always)]
pub(crate) fn shift_of<'a, S: Isa, T: Elem, I>(s: S, mut runs: I) -> f32
where
    I: Iterator<Item = &'a [T]>,
{
    match runs.next() {
        // The common case: a first run of at least 16 values.
        Some(r) if r.len() >= 16 => lanes::head_mean(s, r) as f32,
        Some(r) => {
            let (mut sum, mut n) = (0.0f64, 0usize);
            for v in std::iter::once(r).chain(runs).flatten().take(16) {
                sum += v.to_f64();
                n += 1;
            }
            (sum / n.max(1) as f64) as f32
        }
        None => 0.0,
    }
}

/// Moments of the values in `runs`, the contiguous slices of one group (see
/// the module documentation). Uncentered moments (`!centered`) are the
/// mean square.
#[inline(always)]
pub(crate) fn group_moments<'a, S: Isa, T: Elem, I>(s: S, runs: I, centered: bool) -> Moments
where
    I: Iterator<Item = &'a [T]> + Clone,
{
    // An empty group sums nothing; `finish_moments` makes it NaN.
    let shift = if centered {
        shift_of(s, runs.clone())
    } else {
        0.0
    };
    let mut sums = [0.0f64; 2];
    for r in runs.clone() {
        let [a, b] = lanes::shifted_sums(s, r, shift);
        sums = [sums[0] + a, sums[1] + b];
    }
    finish_moments(s, runs, shift, sums, centered)
}

/// The moments of a group from its one-sweep sums (taken with `shift`, run
/// by run in order), or from the fallback when they are refused.
#[inline(always)]
pub(crate) fn finish_moments<'a, S: Isa, T: Elem, I>(
    s: S,
    runs: I,
    shift: f32,
    sums: [f64; 2],
    centered: bool,
) -> Moments
where
    I: Iterator<Item = &'a [T]> + Clone,
{
    let count: usize = runs.clone().map(|r| r.len()).sum();
    if count == 0 {
        return Moments {
            count,
            mean: f64::NAN,
            var: f64::NAN,
        };
    }
    if let Some(m) = Moments::from_shifted(count, shift, sums, centered) {
        return m;
    }
    // Out of line (it is rare), but through `outlined` so that it keeps the
    // instruction set: a plain non-inlined function would have no target
    // features, and every vector operation in it would become a call.
    s.outlined(
        #[inline(always)]
        move || two_pass(s, runs, count, centered),
    )
}

/// The fallback: the corrected two-pass algorithm on scaled values.
#[inline(always)]
fn two_pass<'a, S: Isa, T: Elem, I>(s: S, runs: I, count: usize, centered: bool) -> Moments
where
    I: Iterator<Item = &'a [T]> + Clone,
{
    // Plain loops: a closure handed to an iterator adapter is compiled
    // apart, without the instruction set (see `finish_moments`).
    let mut maxabs = 0.0f32;
    for r in runs.clone() {
        maxabs = maxabs.max(lanes::max_abs(s, r));
    }
    let scale = scale_for(maxabs);
    let n = count as f64;
    let m0 = if centered {
        let mut sum = 0.0f64;
        for r in runs.clone() {
            sum += lanes::dev_sums(s, r, scale, 0.0)[0];
        }
        // The mean of the scaled values, as the f32 pass 2 subtracts.
        (sum / n) as f32
    } else {
        0.0
    };
    let (mut sd, mut sdd) = (0.0f64, 0.0f64);
    for r in runs {
        let [a, b] = lanes::dev_sums(s, r, scale, m0);
        sd += a;
        sdd += b;
    }
    let sc = scale as f64;
    if centered {
        Moments::from_deviations(count, m0 as f64 / sc, scale, sd, sdd)
    } else {
        Moments {
            count,
            mean: 0.0,
            var: sdd / n / (sc * sc),
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
    use crate::simd::Scalar;

    fn row_moments<'a>(runs: impl Iterator<Item = &'a [f32]> + Clone, centered: bool) -> Moments {
        group_moments(Scalar, runs, centered)
    }

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
    fn one_sweep_and_fallback_agree() {
        // The same values in a shuffled order (the first values are typical:
        // one sweep) and sorted (the first values are the smallest: the
        // fallback). Both must match the exact moments to f32 precision.
        let mut x: Vec<f32> = (0..3001)
            .map(|i| 250.0 + ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let (mean, var) = exact(&x);
        let n = x.len();
        let mixed = row_moments([&x[..]].into_iter(), true);
        let k = shift_of(Scalar, [&x[..]].into_iter());
        let sweep = lanes::shifted_sums(Scalar, &x, k);
        assert!(Moments::from_shifted(n, k, sweep, true).is_some());
        x.sort_by(f32::total_cmp);
        let k = shift_of(Scalar, [&x[..]].into_iter());
        let sweep = lanes::shifted_sums(Scalar, &x, k);
        assert!(Moments::from_shifted(n, k, sweep, true).is_none());
        let sorted = row_moments([&x[..]].into_iter(), true);
        for m in [mixed, sorted] {
            assert!((m.mean - mean).abs() < 1e-9 * mean, "{} vs {mean}", m.mean);
            assert!((m.var - var).abs() / var < 1e-6, "{} vs {var}", m.var);
        }
    }

    #[test]
    fn shift_far_from_mean_is_refused() {
        // mean(d)² against mean(d²) / 2: exactly at the limit is kept.
        assert!(Moments::from_shifted(4, 0.0, [4.0, 8.0], true).is_some());
        assert!(Moments::from_shifted(4, 0.0, [4.0, 7.9], true).is_none());
        assert!(Moments::from_shifted(4, 0.0, [2.0, 4.0], true).is_some());
        assert!(Moments::from_shifted(4, 0.0, [f64::NAN, 4.0], true).is_none());
        // Squares that overflowed or nearly underflowed need the scaled
        // fallback.
        assert!(Moments::from_shifted(4, 0.0, [0.0, f64::INFINITY], false).is_none());
        assert!(Moments::from_shifted(4, 0.0, [0.0, 4e-31], false).is_none());
        assert!(Moments::from_shifted(4, 0.0, [0.0, 4e-30], false).is_some());
        // All squares zero: constant, or all underflowed; the fallback tells.
        assert!(Moments::from_shifted(4, 0.0, [0.0, 0.0], true).is_none());
    }

    #[test]
    fn empty_is_nan_not_panic() {
        assert!(row_moments(std::iter::empty(), true).mean.is_nan());
    }
}
