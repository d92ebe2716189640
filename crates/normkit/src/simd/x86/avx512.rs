//! AVX-512 F/BW/VL/DQ: a vector is one 512-bit register.

use crate::simd::{Isa, Scalar, LANES, ROUND_BITS};
use std::arch::x86_64::*;

/// AVX-512 F/BW/VL/DQ with FMA and F16C: a vector is one 512-bit register.
///
/// A token: holding one proves that this CPU has AVX-512 F/BW/VL/DQ, FMA and F16C. Its field is
/// private, so the only ways to get one are [`Avx512::detect`], which asks
/// the CPU, and [`Avx512::new_unchecked`], whose callers (the level
/// selection in [`crate::simd`]) promise a detection already made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// The token, if this CPU has AVX-512 F/BW/VL/DQ, FMA and F16C.
    pub(crate) fn detect() -> Option<Self> {
        let found = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        // SAFETY: the features were just detected on this CPU.
        found.then(|| unsafe { Self::new_unchecked() })
    }

    /// The token without asking the CPU.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL/DQ, FMA and F16C: every method of the token runs
    /// instructions of those extensions.
    #[inline(always)]
    pub(in crate::simd) unsafe fn new_unchecked() -> Self {
        Avx512(())
    }
}

impl Isa for Avx512 {
    type V = __m512;

    #[inline(always)]
    fn splat(self, v: f32) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn abs(self, a: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_abs_ps(a) }
    }
    #[inline(always)]
    fn copysign(self, a: __m512, sign: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe {
            let m = _mm512_set1_epi32(i32::MIN);
            let s = _mm512_and_si512(_mm512_castps_si512(sign), m);
            let a = _mm512_andnot_si512(m, _mm512_castps_si512(a));
            _mm512_castsi512_ps(_mm512_or_si512(a, s))
        }
    }
    #[inline(always)]
    fn where_nan(self, x: __m512, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe {
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            _mm512_mask_blend_ps(nan, b, a)
        }
    }
    #[inline(always)]
    fn keep_first(self, a: __m512, n: usize) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe { _mm512_maskz_mov_ps(((1u32 << n.min(LANES)) - 1) as u16, a) }
    }
    #[inline(always)]
    fn exp2_int(self, v: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe {
            let k = _mm512_sub_epi32(_mm512_castps_si512(v), _mm512_set1_epi32(ROUND_BITS as i32));
            let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(k, _mm512_set1_epi32(127)));
            _mm512_castsi512_ps(e)
        }
    }
    #[inline(always)]
    fn sum_f64(self, a: __m512) -> f64 {
        // SAFETY: the token proves AVX-512; registers only.
        unsafe {
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
            let hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(a));
            let t8 = _mm512_add_pd(lo, hi);
            let t4 = _mm256_add_pd(_mm512_castpd512_pd256(t8), _mm512_extractf64x4_pd::<1>(t8));
            let t2 = _mm_add_pd(_mm256_castpd256_pd128(t4), _mm256_extractf128_pd::<1>(t4));
            _mm_cvtsd_f64(_mm_add_sd(t2, _mm_unpackhi_pd(t2, t2)))
        }
    }
    #[inline(always)]
    fn max_lane(self, a: __m512) -> f32 {
        Scalar.max_lane(self.to_array(a))
    }
    #[inline(always)]
    fn to_array(self, a: __m512) -> [f32; LANES] {
        // SAFETY: a vector and `[f32; 16]` have the same size, and any bits are an `f32`.
        unsafe { std::mem::transmute::<__m512, [f32; LANES]>(a) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        // SAFETY: the token proves AVX-512; the caller provides 16 readable values at `p`
        // (`Isa::load`).
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        // SAFETY: the token proves AVX-512; the caller provides 16 writable values at `p`
        // (`Isa::store`).
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn stream(self, p: *mut f32, v: __m512) {
        // SAFETY: the token proves AVX-512; the caller provides 16 writable values at `p`, aligned
        // as `Isa::stream` requires.
        unsafe { _mm512_stream_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> __m512 {
        // SAFETY: the token proves AVX-512; the caller provides 16 readable values at `p`
        // (`Isa::load_bf16`).
        unsafe {
            let b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(b))
        }
    }
    #[inline(always)]
    unsafe fn store_bf16(self, p: *mut u16, v: __m512) {
        // SAFETY: the token proves AVX-512; the caller provides 16 writable values at `p`
        // (`Isa::store_bf16`).
        unsafe { _mm256_storeu_si256(p.cast(), bf16_round_512(self, v)) }
    }
    #[inline(always)]
    unsafe fn stream_bf16(self, p: *mut u16, v: __m512) {
        // SAFETY: the token proves AVX-512; the caller provides 16 writable values at `p`, aligned
        // as `Isa::stream_bf16` requires.
        unsafe { _mm256_stream_si256(p.cast(), bf16_round_512(self, v)) }
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u16) -> __m512 {
        // SAFETY: the token proves AVX-512; the caller provides 16 readable values at `p`
        // (`Isa::load_f16`).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn store_f16(self, p: *mut u16, v: __m512) {
        // SAFETY: the token proves AVX-512; the caller provides 16 writable values at `p`
        // (`Isa::store_f16`).
        unsafe { _mm256_storeu_si256(p.cast(), _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)) }
    }
    #[inline(always)]
    unsafe fn stream_f16(self, p: *mut u16, v: __m512) {
        // SAFETY: the token proves AVX-512; the caller provides 16 writable values at `p`, aligned
        // as `Isa::stream_f16` requires.
        unsafe { _mm256_stream_si256(p.cast(), _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)) }
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
        /// The CPU must have AVX-512 F/BW/VL/DQ, FMA and F16C.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
        #[inline(never)]
        unsafe fn go<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the token proves the features `go` enables.
        unsafe { go(f) }
    }
}

/// Rounds 16 lanes to `bf16` bits as [`bf16_bits`](crate::simd::bf16_bits) does.
#[inline(always)]
fn bf16_round_512(_: Avx512, v: __m512) -> __m256i {
    // SAFETY: the token argument proves AVX-512 F/BW/VL/DQ, FMA and F16C.
    unsafe {
        let b = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb);
        let quiet = _mm512_or_si512(b, _mm512_set1_epi32(0x40 << 16));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let r = _mm512_mask_blend_epi32(nan, r, quiet);
        _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(r))
    }
}
