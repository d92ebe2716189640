//! A vectorized error function and the Gaussian that is its derivative:
//! branch-free `f32` arithmetic on [`Isa`] vectors, 16 values at a time.
//!
//! ```text
//! erf(x)  = 2/√π ∫₀ˣ e^(-t²) dt,      erf'(x) = 2/√π · e^(-x²)
//! ```
//!
//! erf is odd, so `a = |x|` is computed and the sign copied back. Two
//! formulas cover `[0, ∞)`, each where it keeps its digits:
//!
//! - `a ≤ 0.875`: `erf(a) = a · (c₀ + z · Q(z))` with `z = a²`,
//!   `c₀ = 2/√π` and `Q` a degree-5 polynomial (relative fit error
//!   `1.1e-9`). `c₀` is carried as two `f32`s and the last step is one
//!   multiply-add, so near 0 the result is `c₀ · a` rounded once.
//! - `a > 0.875`: `erf(a) = 1 - erfc(a) = -expm1(-f(a))` with
//!   `f(a) = -ln erfc(a) = a · P(a)`, `P` of degree 10 on `[0.875, 4]`
//!   (relative fit error `1.5e-9`). `f` is smooth and grows like `a²`,
//!   where `erfc` underflows and has no polynomial form; its error enters
//!   the result damped by `erfc(a) ≤ 0.22`. `a` is clamped at 4, where
//!   `erf` is 1 in `f32` (`erfc(4) ≈ 1.5e-8`, under half an ulp of 1).
//!
//! Both are evaluated and one picked per lane without a branch: with
//! `m = min(max((a - 0.875) · 2⁴⁰, 0), 1)`, which is exactly 0 or 1 (the
//! smallest `a - 0.875` above zero times `2⁴⁰` exceeds 1), the result is
//! `large · m + small · (1 - m)`, a product by 0 or 1 and one exact add.
//! The coefficients were fitted (Chebyshev least squares in 40-digit
//! arithmetic, rounded to `f32`) to `Q(z) = (erf(√z)/√z - c₀) / z` and to
//! `-ln erfc(a) / a`.
//!
//! Accuracy: within 1.5 ulp of the exact value on every `f32` input (1.0
//! is the worst the test below finds, walking every binade of the range
//! against an `f64` erf); NaN
//! stays NaN, `erf(±∞) = ±1`, `erf(-0) = -0`.
//!
//! The derivative's Gaussian `e^(-x²)` is taken with `x²` split into an
//! exact sum `hi + lo` (one multiply-add), so the rounding of `x²` — a
//! relative error of `x² · 2⁻²⁴` in the result, 16 ulp at `x = 4` — is not
//! made: within 1.5 ulp relative wherever the result is a normal `f32`
//! (the test finds 1.15), and rounded once into the subnormals. The
//! exponent `k ≥ -175` of such small results is out of
//! [`Isa::exp2_int`]'s range, so the value is formed `2⁶⁴` times larger
//! and scaled down by one multiplication.
//!
//! Every instruction set computes the same bits.

use crate::exp::{expm1, expm1_reduced, reduce};
use crate::simd::Isa;

/// Where the two formulas meet.
const SPLIT: f32 = 0.875;
/// `erf(a)` is 1 in `f32` from here on.
const CLAMP: f32 = 4.0;
/// Scales `a - SPLIT` so that every `a` above the split selects 1.
const SELECT: f32 = (1u64 << 40) as f32;
/// `2/√π` as an `f32` and the rest.
pub(crate) const TWO_OVER_SQRT_PI: f32 = std::f32::consts::FRAC_2_SQRT_PI;
const TWO_OVER_SQRT_PI_LO: f32 = -5.863_538_3e-8;
/// `Q(z)`, highest degree first.
const Q: [f32; 6] = [
    9.112_82e-5,
    -8.307_686e-4,
    5.214_655_3e-3,
    -2.686_452e-2,
    1.128_378_1e-1,
    -3.761_263_8e-1,
];
/// `P(a) = -ln erfc(a) / a` on `[0.875, 4]`, highest degree first.
const P: [f32; 11] = [
    -4.325_648_8e-8,
    1.214_740_7e-6,
    -1.516_161_5e-5,
    1.092_541_1e-4,
    -4.814_003_8e-4,
    1.114_488_8e-3,
    8.990_457e-4,
    -2.037_036_8e-2,
    1.036_266_2e-1,
    6.362_856_6e-1,
    1.128_436_2,
];

/// `c[0] · xⁿ + … + c[n]` by Horner's rule, one multiply-add a step.
#[inline(always)]
fn poly<S: Isa>(s: S, x: S::V, c: &[f32]) -> S::V {
    let mut p = s.splat(c[0]);
    for &k in &c[1..] {
        p = s.fma(p, x, s.splat(k));
    }
    p
}

/// `erf(x)` within 1.5 ulp.
#[inline(always)]
pub(crate) fn erf<S: Isa>(s: S, x: S::V) -> S::V {
    let (zero, one) = (s.splat(0.0), s.splat(1.0));
    // min and max return their second operand where a is NaN: both
    // arguments stay finite, and the NaN is put back at the end.
    let a = s.abs(x);
    let small = {
        let a = s.min(a, s.splat(SPLIT));
        let z = s.mul(a, a);
        let rest = s.fma(z, poly(s, z, &Q), s.splat(TWO_OVER_SQRT_PI_LO));
        s.fma(a, s.splat(TWO_OVER_SQRT_PI), s.mul(a, rest))
    };
    let large = {
        let a = s.min(s.max(a, s.splat(SPLIT)), s.splat(CLAMP));
        let f = s.mul(a, poly(s, a, &P));
        s.sub(zero, expm1(s, s.sub(zero, f)))
    };
    let m = s.min(
        s.max(s.mul(s.sub(a, s.splat(SPLIT)), s.splat(SELECT)), zero),
        one,
    );
    let r = s.fma(large, m, s.mul(small, s.sub(one, m)));
    s.where_nan(x, x, s.copysign(r, x))
}

/// Beyond this `|x|`, `e^(-x²)` is below half the smallest subnormal.
const GAUSS_CLAMP: f32 = 11.0;
/// `2^-64`: the Gaussian is formed 2⁶⁴ times too large, within the
/// exponent range of [`Isa::exp2_int`], and scaled down with one rounding.
const DOWN: f32 = f32::from_bits((127 - 64) << 23);

/// `e^(-x²)`, within 1.5 ulp relative where the result is normal.
#[inline(always)]
pub(crate) fn exp_neg_sq<S: Isa>(s: S, x: S::V) -> S::V {
    let a = s.min(s.abs(x), s.splat(GAUSS_CLAMP));
    let hi = s.mul(a, a);
    let lo = s.fma(a, a, s.sub(s.splat(0.0), hi));
    // e^(-hi - lo) = 2^k · (1 + expm1(r - lo)), with k ≥ -175.
    let (k, r) = reduce(s, s.sub(s.splat(0.0), hi));
    let p = expm1_reduced(s, s.sub(r, lo));
    let up = s.exp2_int(s.add(k, s.splat(64.0)));
    s.where_nan(x, x, s.mul(s.fma(up, p, up), s.splat(DOWN)))
}

#[cfg(test)]
mod tests {
    use crate::exp::testing::{on_every_level, sweep, ulps, VecFn};
    use crate::reference::erf as erf64;
    use crate::simd::Isa;

    struct Erf;
    impl VecFn for Erf {
        #[inline(always)]
        fn apply<S: Isa>(&self, s: S, v: S::V) -> S::V {
            super::erf(s, v)
        }
    }

    struct Gauss;
    impl VecFn for Gauss {
        #[inline(always)]
        fn apply<S: Isa>(&self, s: S, v: S::V) -> S::V {
            super::exp_neg_sq(s, v)
        }
    }

    fn erf(x: f32) -> f32 {
        on_every_level(&Erf, &[x])[0]
    }

    #[test]
    fn within_one_and_a_half_ulp_over_the_whole_range() {
        let xs = sweep();
        let got = on_every_level(&Erf, &xs);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &e) in xs.iter().zip(&got) {
            let err = ulps(e, erf64(x as f64));
            if err > worst.0 {
                worst = (err, x);
            }
        }
        eprintln!("erf: worst error {:.2} ulp at x = {:e}", worst.0, worst.1);
        assert!(
            worst.0 <= 1.5,
            "worst error {} ulp at x = {:e}",
            worst.0,
            worst.1
        );
    }

    #[test]
    fn dense_around_the_split_and_the_clamp() {
        // Every f32 in [0.8, 0.95] and [3.8, 4.2]: where the formulas meet
        // and where the result turns into 1.
        let mut xs = Vec::new();
        for (lo, hi) in [(0.8f32, 0.95f32), (3.8, 4.2)] {
            let mut b = lo.to_bits();
            while b <= hi.to_bits() {
                xs.push(f32::from_bits(b));
                b += 1;
            }
        }
        let got = on_every_level(&Erf, &xs);
        for (&x, &e) in xs.iter().zip(&got) {
            let err = ulps(e, erf64(x as f64));
            assert!(err <= 1.5, "{err} ulp at x = {x:e}");
        }
    }

    #[test]
    fn gaussian_is_accurate_to_the_subnormals() {
        let xs = sweep();
        let got = on_every_level(&Gauss, &xs);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &g) in xs.iter().zip(&got) {
            let exact = (-(x as f64) * (x as f64)).exp();
            if exact >= f32::MIN_POSITIVE as f64 {
                let err = ulps(g, exact);
                if err > worst.0 {
                    worst = (err, x);
                }
            } else {
                // Subnormal or zero: within two steps of the subnormal grid.
                let step = f32::from_bits(1) as f64;
                assert!(
                    (g as f64 - exact).abs() <= 2.0 * step,
                    "x = {x:e}: {g:e} vs {exact:e}"
                );
            }
        }
        eprintln!(
            "e^(-x²): worst error {:.2} ulp at x = {:e}",
            worst.0, worst.1
        );
        assert!(worst.0 <= 1.5, "worst {} ulp at x = {:e}", worst.0, worst.1);
    }

    #[test]
    fn special_values() {
        assert_eq!(erf(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf(f32::MAX), 1.0);
        assert_eq!(erf(-4.0), -1.0);
        assert!(erf(f32::NAN).is_nan());
        // Tiny: 2/√π · x, rounded once.
        let tiny = 1e-30f32;
        assert_eq!(
            erf(tiny),
            (1e-30f64 * 2.0 / std::f64::consts::PI.sqrt()) as f32
        );
        assert_eq!(on_every_level(&Gauss, &[0.0])[0], 1.0);
        assert_eq!(on_every_level(&Gauss, &[f32::INFINITY])[0], 0.0);
        assert!(on_every_level(&Gauss, &[f32::NAN])[0].is_nan());
    }
}
