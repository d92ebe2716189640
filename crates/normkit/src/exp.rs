//! The exponential at the heart of the vectorized special functions
//! ([`crate::tanh`], [`crate::erf`]): branch-free `f32` arithmetic on
//! [`Isa`] vectors.
//!
//! ```text
//! e^u = 2^k · (1 + expm1(r)),   u = k·ln 2 + r,   |r| ≤ ln 2 / 2
//! ```
//!
//! `k = round(u / ln 2)` comes from one multiply-add with `1.5·2²³`, which
//! leaves `k` in the low mantissa bits where [`Isa::exp2_int`] reads it;
//! `r` is reduced with `ln 2` split in two (Cody–Waite) so that `k · ln2_hi`
//! is exact; `expm1(r)` is its Taylor polynomial of degree 7 (truncation
//! error below `r⁸/8! ≤ 5.1e-9`, a relative `1.5e-8` or 0.13 ulp). Keeping
//! `2^k` and `expm1(r)` apart lets each caller finish the way its accuracy
//! needs: `2^k · p + (2^k - 1)` is `expm1(u)` without cancellation near 0,
//! `2^k · p + 2^k` is `e^u`.
//!
//! Valid while `k` stays in `-126..=127`, that is for `u` in about
//! `[-87, 88]`; callers clamp their arguments.

use crate::simd::Isa;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that k · LN2_HI is exact (it has 15 significant bits, so
// for every |k| < 512).
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

/// `(k + 1.5·2²³, r)` with `u = k·ln 2 + r`: `k` as [`Isa::exp2_int`]
/// reads it (adding an integer `j` to it gives `2^(k + j)`).
#[inline(always)]
pub(crate) fn reduce<S: Isa>(s: S, u: S::V) -> (S::V, S::V) {
    let shifted = s.fma(u, s.splat(LOG2_E), s.splat(ROUND));
    let nk = s.sub(s.splat(ROUND), shifted);
    let r = s.fma(nk, s.splat(LN2_LO), s.fma(nk, s.splat(LN2_HI), u));
    (shifted, r)
}

/// `expm1(r)` for `|r|` up to about `ln 2 / 2`.
#[inline(always)]
pub(crate) fn expm1_reduced<S: Isa>(s: S, r: S::V) -> S::V {
    let mut q = s.splat(C[5]);
    for &c in C[..5].iter().rev() {
        q = s.fma(q, r, s.splat(c));
    }
    s.fma(s.mul(r, r), q, r)
}

/// `expm1(u)` for `u` in about `[-87, 88]`, to about 1 ulp relative.
#[inline(always)]
pub(crate) fn expm1<S: Isa>(s: S, u: S::V) -> S::V {
    let (k, r) = reduce(s, u);
    let (two_k, p) = (s.exp2_int(k), expm1_reduced(s, r));
    s.fma(two_k, p, s.sub(two_k, s.splat(1.0)))
}

/// What the special functions' tests share: running a vector function at
/// every instruction set this CPU has (which must agree bit for bit), the
/// ulp distance to an exact value, and inputs from every binade.
#[cfg(test)]
pub(crate) mod testing {
    use crate::simd::{simd_level, Isa, Scalar, SimdLevel, LANES};
    #[cfg(target_arch = "x86_64")]
    use crate::simd::{Avx2, Avx512};

    /// A function of one vector.
    pub(crate) trait VecFn {
        fn apply<S: Isa>(&self, s: S, v: S::V) -> S::V;
    }

    #[inline(always)]
    fn run<S: Isa, F: VecFn>(s: S, f: &F, out: &mut [f32], xs: &[f32]) {
        for (o, x) in out.chunks_exact_mut(LANES).zip(xs.chunks_exact(LANES)) {
            // SAFETY: 16 values each.
            unsafe { s.store(o.as_mut_ptr(), f.apply(s, s.load(x.as_ptr()))) }
        }
    }

    fn at_level<F: VecFn>(f: &F, out: &mut [f32], xs: &[f32], level: SimdLevel) {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                /// # Safety
                /// The CPU has AVX-512, as the token proves.
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                unsafe fn go<F: VecFn>(s: Avx512, f: &F, out: &mut [f32], xs: &[f32]) {
                    run(s, f, out, xs)
                }
                let s = Avx512::detect().expect("asked for a level this CPU has");
                // SAFETY: the token came from detection.
                unsafe { go(s, f, out, xs) }
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                /// # Safety
                /// The CPU has AVX2, FMA and F16C, as the token proves.
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn go<F: VecFn>(s: Avx2, f: &F, out: &mut [f32], xs: &[f32]) {
                    run(s, f, out, xs)
                }
                let s = Avx2::detect().expect("asked for a level this CPU has");
                // SAFETY: the token came from detection.
                unsafe { go(s, f, out, xs) }
            }
            _ => run(Scalar, f, out, xs),
        }
    }

    /// `f` over `xs` at the scalar level and at every vector level this
    /// CPU has; the levels must agree bit for bit.
    pub(crate) fn on_every_level<F: VecFn>(f: &F, xs: &[f32]) -> Vec<f32> {
        let mut padded = xs.to_vec();
        padded.resize(xs.len().next_multiple_of(LANES), 0.0);
        let mut base = vec![0.0f32; padded.len()];
        at_level(f, &mut base, &padded, SimdLevel::Scalar);
        for level in [SimdLevel::Avx2, SimdLevel::Avx512] {
            if simd_level() >= level {
                let mut other = vec![0.0f32; padded.len()];
                at_level(f, &mut other, &padded, level);
                for (i, (a, b)) in base.iter().zip(&other).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{level:?} at {:e}: {a:e} vs {b:e}",
                        padded[i]
                    );
                }
            }
        }
        base.truncate(xs.len());
        base
    }

    /// Distance in units in the last place between `got` and the exact
    /// value, measured at the exact value's binade.
    pub(crate) fn ulps(got: f32, exact: f64) -> f64 {
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

    /// Every 61st bit pattern of the non-negative finite floats (about 35
    /// million inputs, every binade), and their negatives.
    pub(crate) fn sweep() -> Vec<f32> {
        let mut xs = Vec::new();
        let mut bits = 0u32;
        while bits < 0x7f80_0000 {
            let x = f32::from_bits(bits);
            xs.extend([x, -x]);
            bits += 61;
        }
        xs
    }
}
