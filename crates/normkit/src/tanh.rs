//! A vectorized tanh: branch-free `f32` arithmetic on [`Isa`] vectors, 16
//! values at a time (the C library's `tanhf` is a scalar call).
//!
//! ```text
//! tanh(x) = sign(x) · e / (e + 2),   e = expm1(2|x|)
//! ```
//!
//! where `expm1(u) = 2^k · (expm1(r) + 1) - 1` with `u = k·ln 2 + r`,
//! `|r| ≤ ln 2 / 2` ([`crate::exp`]: Cody–Waite reduction and a Taylor
//! polynomial of degree 7, 0.13 ulp of truncation error).
//! Through `expm1` small arguments keep full relative accuracy
//! (`tanh(x) ≈ x`). The same `e` gives the derivative without the
//! cancellation of `1 - t²` near saturation:
//!
//! ```text
//! 1 - tanh²(x) = 4 (e + 1) / (e + 2)² = 4q (1 - q),   q = 1 / (e + 2)
//! ```
//!
//! `|x|` is clamped at 40, where `1 - tanh²` is below 1e-34 and `tanh`
//! has long rounded to ±1.
//!
//! Accuracy: within 3 ulp of the exact value on every `f32` input (2.4 ulp
//! is the worst the test below finds against `f64` tanh, walking every
//! binade of the range); `1 - tanh²` within 2.0e-7 relative over
//! `[-10, 10]`, where `1 - t²` loses every digit; NaN stays NaN. Every
//! instruction set computes the same bits.

use crate::exp::expm1;
use crate::simd::Isa;

const CLAMP: f32 = 40.0;

/// `e = expm1(2|x|)` with `|x|` clamped, the common part of both functions.
#[inline(always)]
fn expm1_2abs<S: Isa>(s: S, x: S::V) -> S::V {
    // min returns the clamp where x is NaN; the callers put the NaN back.
    let a = s.min(s.abs(x), s.splat(CLAMP));
    expm1(s, s.add(a, a))
}

/// `tanh(x)` within 3 ulp.
#[inline(always)]
pub(crate) fn tanh<S: Isa>(s: S, x: S::V) -> S::V {
    let e = expm1_2abs(s, x);
    let t = s.copysign(s.div(e, s.add(e, s.splat(2.0))), x);
    s.where_nan(x, x, t)
}

/// `(tanh(x), 1 - tanh²(x))` for the backward pass, both to a few ulp
/// relative, with one division: `q = 1 / (e + 2)`, `tanh = e · q` and
/// `1 - tanh² = 4q · (1 - q)` (a product, so it keeps its relative
/// accuracy as `q` goes to 0 at saturation).
#[inline(always)]
pub(crate) fn tanh_sech2<S: Isa>(s: S, x: S::V) -> (S::V, S::V) {
    let e = expm1_2abs(s, x);
    let q = s.div(s.splat(1.0), s.add(e, s.splat(2.0)));
    let t = s.copysign(s.mul(e, q), x);
    let sech2 = s.mul(s.mul(s.splat(4.0), q), s.sub(s.splat(1.0), q));
    (s.where_nan(x, x, t), s.where_nan(x, x, sech2))
}

#[cfg(test)]
mod tests {
    use crate::exp::testing::{on_every_level, sweep, ulps, VecFn};
    use crate::simd::Isa;

    struct Tanh;
    impl VecFn for Tanh {
        #[inline(always)]
        fn apply<S: Isa>(&self, s: S, v: S::V) -> S::V {
            super::tanh(s, v)
        }
    }

    struct Sech2;
    impl VecFn for Sech2 {
        #[inline(always)]
        fn apply<S: Isa>(&self, s: S, v: S::V) -> S::V {
            super::tanh_sech2(s, v).1
        }
    }

    fn tanh(x: f32) -> f32 {
        on_every_level(&Tanh, &[x])[0]
    }

    #[test]
    fn within_three_ulp_over_the_whole_range() {
        let xs = sweep();
        let got = on_every_level(&Tanh, &xs);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &t) in xs.iter().zip(&got) {
            let e = ulps(t, (x as f64).tanh());
            if e > worst.0 {
                worst = (e, x);
            }
        }
        eprintln!("tanh: worst error {:.2} ulp at x = {:e}", worst.0, worst.1);
        assert!(
            worst.0 <= 3.0,
            "worst error {} ulp at x = {:e}",
            worst.0,
            worst.1
        );
    }

    #[test]
    fn sech2_is_accurate_near_saturation() {
        let xs: Vec<f32> = (0..200_000).map(|i| i as f32 * 1e-4 - 10.0).collect();
        let got = on_every_level(&Sech2, &xs);
        let mut worst = 0.0f64;
        for (&x, &s) in xs.iter().zip(&got) {
            let exact = 1.0 / (x as f64).cosh().powi(2);
            worst = worst.max((s as f64 - exact).abs() / exact);
        }
        // A few ulp relative (2^-23 ≈ 1.2e-7), even where 1 - t² would
        // keep no correct digit.
        eprintln!("sech²: worst relative error {worst:e}");
        assert!(worst < 8e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn special_values() {
        assert_eq!(tanh(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh(f32::MAX), 1.0);
        assert_eq!(tanh(9.5), 1.0);
        assert!(tanh(f32::NAN).is_nan());
        let tiny = f32::from_bits(1);
        assert_eq!(tanh(tiny), tiny);
        assert_eq!(tanh(1e-20), 1e-20);
    }
}
