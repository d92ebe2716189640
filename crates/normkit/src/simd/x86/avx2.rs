//! AVX2 with FMA and F16C: a vector is two 256-bit registers.

use crate::simd::{Isa, Scalar, LANES, ROUND_BITS};
use std::arch::x86_64::*;

/// AVX2 with FMA and F16C: a vector is two 256-bit registers.
///
/// A token: holding one proves that this CPU has AVX2, FMA and F16C. Its field is
/// private, so the only ways to get one are [`Avx2::detect`], which asks
/// the CPU, and [`Avx2::new_unchecked`], whose callers (the level
/// selection in [`crate::simd`]) promise a detection already made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// The token, if this CPU has AVX2, FMA and F16C.
    pub(crate) fn detect() -> Option<Self> {
        let found = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        // SAFETY: the features were just detected on this CPU.
        found.then(|| unsafe { Self::new_unchecked() })
    }

    /// The token without asking the CPU.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C: every method of the token runs
    /// instructions of those extensions.
    #[inline(always)]
    pub(in crate::simd) unsafe fn new_unchecked() -> Self {
        Avx2(())
    }
}

/// The two halves of a vector as 8-lane registers.
type Pair = [__m256; 2];

#[inline(always)]
fn each(a: Pair, f: impl Fn(__m256) -> __m256) -> Pair {
    [f(a[0]), f(a[1])]
}

#[inline(always)]
fn both(a: Pair, b: Pair, f: impl Fn(__m256, __m256) -> __m256) -> Pair {
    [f(a[0], b[0]), f(a[1], b[1])]
}

/// Rounds 8 lanes to `bf16` bits as [`bf16_bits`](crate::simd::bf16_bits)
/// does, in the low halves of 32-bit lanes. A function rather than a
/// closure: a closure the inliner leaves out of line is compiled without
/// the instruction set, and every intrinsic in it becomes a call.
#[inline(always)]
fn bf16_round_8(_: Avx2, v: __m256) -> __m256i {
    // SAFETY: the token argument proves AVX2, FMA and F16C.
    unsafe {
        let b = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
        let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), lsb);
        let quiet = _mm256_or_si256(b, _mm256_set1_epi32(0x40 << 16));
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        _mm256_srli_epi32::<16>(_mm256_blendv_epi8(r, quiet, nan))
    }
}

/// Rounds 16 lanes to `bf16` bits as [`bf16_bits`](crate::simd::bf16_bits) does.
#[inline(always)]
fn bf16_round_256(s: Avx2, v: Pair) -> __m256i {
    let (lo, hi) = (bf16_round_8(s, v[0]), bf16_round_8(s, v[1]));
    // SAFETY: the token argument proves AVX2, FMA and F16C.
    unsafe {
        // packus interleaves the 128-bit halves; the permute restores
        // lane order.
        let packed = _mm256_packus_epi32(lo, hi);
        _mm256_permute4x64_epi64::<0b11_01_10_00>(packed)
    }
}

#[inline(always)]
fn f16_round_256(_: Avx2, v: Pair) -> __m256i {
    // SAFETY: the token argument proves AVX2, FMA and F16C.
    unsafe {
        let lo = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v[0]);
        let hi = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v[1]);
        _mm256_set_m128i(hi, lo)
    }
}

impl Isa for Avx2 {
    type V = Pair;

    #[inline(always)]
    fn splat(self, v: f32) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        let r = unsafe { _mm256_set1_ps(v) };
        [r, r]
    }
    #[inline(always)]
    fn add(self, a: Pair, b: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        both(a, b, |a, b| unsafe { _mm256_add_ps(a, b) })
    }
    #[inline(always)]
    fn sub(self, a: Pair, b: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        both(a, b, |a, b| unsafe { _mm256_sub_ps(a, b) })
    }
    #[inline(always)]
    fn mul(self, a: Pair, b: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        both(a, b, |a, b| unsafe { _mm256_mul_ps(a, b) })
    }
    #[inline(always)]
    fn div(self, a: Pair, b: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        both(a, b, |a, b| unsafe { _mm256_div_ps(a, b) })
    }
    #[inline(always)]
    fn fma(self, a: Pair, b: Pair, c: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        unsafe {
            [
                _mm256_fmadd_ps(a[0], b[0], c[0]),
                _mm256_fmadd_ps(a[1], b[1], c[1]),
            ]
        }
    }
    #[inline(always)]
    fn max(self, a: Pair, b: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        both(a, b, |a, b| unsafe { _mm256_max_ps(a, b) })
    }
    #[inline(always)]
    fn min(self, a: Pair, b: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        both(a, b, |a, b| unsafe { _mm256_min_ps(a, b) })
    }
    #[inline(always)]
    fn abs(self, a: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        each(a, |a| unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) })
    }
    #[inline(always)]
    fn copysign(self, a: Pair, sign: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        both(a, sign, |a, s| unsafe {
            let m = _mm256_set1_ps(-0.0);
            _mm256_or_ps(_mm256_andnot_ps(m, a), _mm256_and_ps(m, s))
        })
    }
    #[inline(always)]
    fn where_nan(self, x: Pair, a: Pair, b: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        unsafe {
            let pick = |x: __m256, a: __m256, b: __m256| {
                _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
            };
            [pick(x[0], a[0], b[0]), pick(x[1], a[1], b[1])]
        }
    }
    #[inline(always)]
    fn keep_first(self, a: Pair, n: usize) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        unsafe {
            let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let n = n.min(LANES) as i32;
            let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
            let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), idx);
            [
                _mm256_and_ps(a[0], _mm256_castsi256_ps(m0)),
                _mm256_and_ps(a[1], _mm256_castsi256_ps(m1)),
            ]
        }
    }
    #[inline(always)]
    fn exp2_int(self, v: Pair) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        each(v, |v| unsafe {
            let k = _mm256_sub_epi32(_mm256_castps_si256(v), _mm256_set1_epi32(ROUND_BITS as i32));
            let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127)));
            _mm256_castsi256_ps(e)
        })
    }
    #[inline(always)]
    fn sum_f64(self, a: Pair) -> f64 {
        // SAFETY: the token proves AVX2, FMA and F16C; registers only.
        unsafe {
            // Lanes 0-3, 4-7 (first register) and 8-11, 12-15 (second).
            let q0 = _mm256_cvtps_pd(_mm256_castps256_ps128(a[0]));
            let q1 = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a[0]));
            let q2 = _mm256_cvtps_pd(_mm256_castps256_ps128(a[1]));
            let q3 = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a[1]));
            // l + (l + 8) for l in 0..4 and 4..8, then + 4.
            let t4 = _mm256_add_pd(_mm256_add_pd(q0, q2), _mm256_add_pd(q1, q3));
            let t2 = _mm_add_pd(_mm256_castpd256_pd128(t4), _mm256_extractf128_pd::<1>(t4));
            _mm_cvtsd_f64(_mm_add_sd(t2, _mm_unpackhi_pd(t2, t2)))
        }
    }
    #[inline(always)]
    fn max_lane(self, a: Pair) -> f32 {
        Scalar.max_lane(self.to_array(a))
    }
    #[inline(always)]
    fn to_array(self, a: Pair) -> [f32; LANES] {
        // SAFETY: a vector and `[f32; 16]` have the same size, and any bits are an `f32`.
        unsafe { std::mem::transmute::<Pair, [f32; LANES]>(a) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 readable values at
        // `p` (`Isa::load`).
        unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: Pair) {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 writable values at
        // `p` (`Isa::store`).
        unsafe {
            _mm256_storeu_ps(p, v[0]);
            _mm256_storeu_ps(p.add(8), v[1]);
        }
    }
    #[inline(always)]
    unsafe fn stream(self, p: *mut f32, v: Pair) {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 writable values at
        // `p`, aligned as `Isa::stream` requires.
        unsafe {
            _mm256_stream_ps(p, v[0]);
            _mm256_stream_ps(p.add(8), v[1]);
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 readable values at
        // `p` (`Isa::load_bf16`).
        unsafe {
            let w = |q: *const u16| {
                let b = _mm256_cvtepu16_epi32(_mm_loadu_si128(q.cast()));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(b))
            };
            [w(p), w(p.add(8))]
        }
    }
    #[inline(always)]
    unsafe fn store_bf16(self, p: *mut u16, v: Pair) {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 writable values at
        // `p` (`Isa::store_bf16`).
        unsafe { _mm256_storeu_si256(p.cast(), bf16_round_256(self, v)) }
    }
    #[inline(always)]
    unsafe fn stream_bf16(self, p: *mut u16, v: Pair) {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 writable values at
        // `p`, aligned as `Isa::stream_bf16` requires.
        unsafe { _mm256_stream_si256(p.cast(), bf16_round_256(self, v)) }
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u16) -> Pair {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 readable values at
        // `p` (`Isa::load_f16`).
        unsafe {
            [
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast())),
            ]
        }
    }
    #[inline(always)]
    unsafe fn store_f16(self, p: *mut u16, v: Pair) {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 writable values at
        // `p` (`Isa::store_f16`).
        unsafe { _mm256_storeu_si256(p.cast(), f16_round_256(self, v)) }
    }
    #[inline(always)]
    unsafe fn stream_f16(self, p: *mut u16, v: Pair) {
        // SAFETY: the token proves AVX2, FMA and F16C; the caller provides 16 writable values at
        // `p`, aligned as `Isa::stream_f16` requires.
        unsafe { _mm256_stream_si256(p.cast(), f16_round_256(self, v)) }
    }
    #[inline(always)]
    fn fence(self) {
        // SAFETY: `sfence` is SSE, part of every x86-64 CPU.
        unsafe { _mm_sfence() }
    }
    #[inline(always)]
    fn outlined<R>(self, f: impl FnOnce() -> R) -> R {
        /// `f` compiled with the level's features.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline(never)]
        unsafe fn go<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the token proves the features `go` enables.
        unsafe { go(f) }
    }
}
