//! A vectorized tanh: branch-free `f32` arithmetic on [`Isa`] vectors, 16
//! values at a time (the C library's `tanhf` is a scalar call).
//!
//! ```text
//! tanh(x) = sign(x) · e / (e + 2),   e = expm1(2|x|)
//! ```
//!
//! where `expm1(u) = 2^k · (expm1(r) + 1) - 1` with `u = k·ln 2 + r`,
//! `|r| ≤ ln 2 / 2` (Cody–Waite reduction), and `expm1(r)` is its Taylor
//! polynomial of degree 7 (truncation error below `r⁸/8! ≤ 5.1e-9`, a
//! relative `1.5e-8` or 0.13 ulp of the value).
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

use crate::simd::Isa;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that k · LN2_HI is exact for the k that occur (k ≤ 116).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
// 1.5 · 2²³: adding and subtracting it rounds to an integer.
const ROUND: f32 = 12_582_912.0;
/// Taylor coefficients of `(expm1(r) - r) / r²`: 1/2!, 1/3!, …, 1/7!.
const C: [f32; 6] = [
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];

/// `expm1(2a)` for `0 ≤ a ≤ 40`.
#[inline(always)]
fn expm1_2x<S: Isa>(s: S, a: S::V) -> S::V {
    let u = s.add(a, a);
    // k = round(u / ln 2): adding ROUND leaves k in the low mantissa bits,
    // where exp2_int reads it with integer arithmetic.
    let shifted = s.fma(a, s.splat(2.0 * LOG2_E), s.splat(ROUND));
    let nk = s.sub(s.splat(ROUND), shifted);
    let r = s.fma(nk, s.splat(LN2_LO), s.fma(nk, s.splat(LN2_HI), u));
    let mut q = s.splat(C[5]);
    for &c in C[..5].iter().rev() {
        q = s.fma(q, r, s.splat(c));
    }
    let p = s.fma(s.mul(r, r), q, r);
    let two_k = s.exp2_int(shifted);
    s.fma(two_k, p, s.sub(two_k, s.splat(1.0)))
}

const CLAMP: f32 = 40.0;

/// `e = expm1(2|x|)` with `|x|` clamped, the common part of both functions.
#[inline(always)]
fn expm1_2abs<S: Isa>(s: S, x: S::V) -> S::V {
    // min returns the clamp where x is NaN; the callers put the NaN back.
    expm1_2x(s, s.min(s.abs(x), s.splat(CLAMP)))
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
    use crate::simd::{simd_level, Isa, Scalar, SimdLevel, LANES};
    #[cfg(target_arch = "x86_64")]
    use crate::simd::{Avx2, Avx512};

    /// `f` over `xs`, 16 at a time, at the scalar level and at every
    /// vector level this CPU has; the levels must agree bit for bit.
    fn on_every_level(xs: &[f32], f: impl Fn(&mut [f32], &[f32], SimdLevel)) -> Vec<f32> {
        let mut base = vec![0.0f32; xs.len()];
        f(&mut base, xs, SimdLevel::Scalar);
        for level in [SimdLevel::Avx2, SimdLevel::Avx512] {
            if simd_level() >= level {
                let mut other = vec![0.0f32; xs.len()];
                f(&mut other, xs, level);
                for (i, (a, b)) in base.iter().zip(&other).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{level:?} at {:e}: {a:e} vs {b:e}",
                        xs[i]
                    );
                }
            }
        }
        base
    }

    fn run<S: Isa>(s: S, out: &mut [f32], xs: &[f32], sech2: bool) {
        for (o, x) in out.chunks_exact_mut(LANES).zip(xs.chunks_exact(LANES)) {
            // SAFETY: 16 values each.
            unsafe {
                let v = s.load(x.as_ptr());
                let r = if sech2 {
                    super::tanh_sech2(s, v).1
                } else {
                    super::tanh(s, v)
                };
                s.store(o.as_mut_ptr(), r);
            }
        }
    }

    fn at_level(out: &mut [f32], xs: &[f32], level: SimdLevel, sech2: bool) {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                /// # Safety
                /// The CPU has AVX-512, as the token proves.
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                unsafe fn go(s: Avx512, out: &mut [f32], xs: &[f32], sech2: bool) {
                    run(s, out, xs, sech2)
                }
                let s = Avx512::detect().expect("asked for a level this CPU has");
                // SAFETY: the token came from detection.
                unsafe { go(s, out, xs, sech2) }
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                /// # Safety
                /// The CPU has AVX2, FMA and F16C, as the token proves.
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn go(s: Avx2, out: &mut [f32], xs: &[f32], sech2: bool) {
                    run(s, out, xs, sech2)
                }
                let s = Avx2::detect().expect("asked for a level this CPU has");
                // SAFETY: the token came from detection.
                unsafe { go(s, out, xs, sech2) }
            }
            _ => run(Scalar, out, xs, sech2),
        }
    }

    fn tanh_all(xs: &[f32]) -> Vec<f32> {
        on_every_level(xs, |o, x, l| at_level(o, x, l, false))
    }

    fn tanh(x: f32) -> f32 {
        let mut xs = [0.0f32; LANES];
        xs[0] = x;
        tanh_all(&xs)[0]
    }

    /// Distance in units in the last place between `got` and the exact
    /// value, measured at the exact value's binade.
    fn ulps(got: f32, exact: f64) -> f64 {
        let rounded = exact as f32;
        if got == rounded {
            return 0.0;
        }
        let ulp = if rounded == 0.0 {
            f32::from_bits(1) as f64
        } else {
            let next = f32::from_bits(rounded.abs().to_bits() + 1) as f64;
            next - rounded.abs() as f64
        };
        (got as f64 - exact).abs() / ulp
    }

    #[test]
    fn within_three_ulp_over_the_whole_range() {
        // Every 61st bit pattern of the non-negative floats (about 35
        // million inputs, every binade), and their negatives.
        let mut xs = Vec::new();
        let mut bits = 0u32;
        while bits < 0x7f80_0000 {
            let x = f32::from_bits(bits);
            xs.extend([x, -x]);
            bits += 61;
        }
        xs.resize(xs.len().next_multiple_of(LANES), 0.0);
        let got = tanh_all(&xs);
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
        let got = on_every_level(&xs, |o, x, l| at_level(o, x, l, true));
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
