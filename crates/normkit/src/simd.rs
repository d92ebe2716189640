//! The one place where the instruction set is chosen, and the vector type
//! every kernel is written against.
//!
//! Kernels are written once, generic over an [`Isa`]: a 16-lane `f32`
//! vector with the handful of operations normalization needs (loads and
//! stores of `f32`, `bf16` and `f16`, streaming stores, arithmetic with
//! fused multiply-add, and a fixed-order reduction into `f64`). Three
//! implementations exist:
//!
//! | level | vector | registers per vector |
//! |---|---|---|
//! | [`Avx512`] | `__m512` | one |
//! | [`Avx2`] | `[__m256; 2]` | two |
//! | [`Scalar`] | `[f32; 16]` | what the baseline target makes of it |
//!
//! Every level has the same 16 lanes, rounds each operation the same way
//! (a multiply-add is always fused, a division always correctly rounded)
//! and reduces lanes in the same order, so they compute the same bits;
//! only the speed differs. [`multiversion!`] compiles a kernel's entry
//! point once per level with the matching target features and
//! [`simd_level`] picks one at run time, detecting the CPU once.
//!
//! `NORMKIT_SIMD=scalar|avx2|avx512` caps the level (tests use it to run
//! every path on one machine).

// Every method of an `Isa` implementation is a thin wrapper over one or
// two intrinsics; they are `#[inline(always)]` so that they compile inside
// the `#[target_feature]` copy of the kernel that calls them.
#![allow(clippy::missing_safety_doc)]

use std::sync::atomic::{AtomicU8, Ordering};

/// Lanes of every vector: one AVX-512 register of `f32`.
pub(crate) const LANES: usize = 16;

/// Instruction-set levels, from most to least capable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Baseline target features only.
    Scalar = 1,
    /// AVX2, FMA and F16C (x86-64-v3).
    Avx2 = 2,
    /// AVX-512 F/BW/VL/DQ (x86-64-v4).
    Avx512 = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The best level this CPU supports, capped by `NORMKIT_SIMD`.
fn detect() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    let found = if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        SimdLevel::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        SimdLevel::Avx2
    } else {
        SimdLevel::Scalar
    };
    #[cfg(not(target_arch = "x86_64"))]
    let found = SimdLevel::Scalar;
    let cap = match std::env::var("NORMKIT_SIMD").as_deref() {
        Ok("scalar") => SimdLevel::Scalar,
        Ok("avx2") => SimdLevel::Avx2,
        _ => SimdLevel::Avx512,
    };
    found.min(cap)
}

/// The instruction set the kernels use, detected on first call.
pub fn simd_level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        1 => SimdLevel::Scalar,
        2 => SimdLevel::Avx2,
        3 => SimdLevel::Avx512,
        _ => {
            let level = detect();
            LEVEL.store(level as u8, Ordering::Relaxed);
            level
        }
    }
}

/// Caps the instruction set the kernels use at `level` (never above what
/// the CPU has) and returns the level now in force. For comparing paths and
/// for reproducing results across machines; the default is the best the
/// CPU offers. Every level computes the same values; only the speed
/// differs.
pub fn set_simd_level(level: SimdLevel) -> SimdLevel {
    let chosen = detect().min(level);
    LEVEL.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// A 16-lane `f32` vector and its operations. Implemented by zero-sized
/// tokens; holding one means the CPU has the instructions it uses
/// (they are only created inside [`multiversion!`] after detection).
pub(crate) trait Isa: Copy + Send + Sync + 'static {
    type V: Copy;

    fn splat(self, v: f32) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, rounded once.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `max(a, b)`; where either is NaN, `b`.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `min(a, b)`; where either is NaN, `b`.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// `|a|` with the sign of `sign`.
    fn copysign(self, a: Self::V, sign: Self::V) -> Self::V;
    /// `a` where `x` is NaN, else `b`.
    fn where_nan(self, x: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// `a` in the first `n` lanes, 0 in the others.
    fn keep_first(self, a: Self::V, n: usize) -> Self::V;
    /// `2^k` where `v` holds `k + 1.5·2²³` (an integer `k` in -126..=127
    /// placed in the low mantissa bits by adding `1.5·2²³`).
    fn exp2_int(self, v: Self::V) -> Self::V;
    /// The sum of the 16 lanes in `f64`, in a fixed order (lane `l` plus
    /// lane `l + 8`, then `+ 4`, `+ 2`, `+ 1`), the same on every level.
    fn sum_f64(self, a: Self::V) -> f64;
    /// The largest lane (NaN lanes ignored unless all are NaN).
    fn max_lane(self, a: Self::V) -> f32;
    fn to_array(self, a: Self::V) -> [f32; LANES];

    /// Loads 16 `f32` from `p` (any alignment).
    unsafe fn load(self, p: *const f32) -> Self::V;
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// Stores past the cache; `p` is 64-byte aligned.
    unsafe fn stream(self, p: *mut f32, v: Self::V);
    /// Loads 16 `bf16` (as bits) and widens them exactly.
    unsafe fn load_bf16(self, p: *const u16) -> Self::V;
    /// Rounds to `bf16`, to nearest even (NaN stays a quiet NaN).
    unsafe fn store_bf16(self, p: *mut u16, v: Self::V);
    /// As [`Isa::store_bf16`], past the cache; `p` is 32-byte aligned.
    unsafe fn stream_bf16(self, p: *mut u16, v: Self::V);
    unsafe fn load_f16(self, p: *const u16) -> Self::V;
    /// Rounds to `f16`, to nearest even.
    unsafe fn store_f16(self, p: *mut u16, v: Self::V);
    /// As [`Isa::store_f16`], past the cache; `p` is 32-byte aligned.
    unsafe fn stream_f16(self, p: *mut u16, v: Self::V);
    /// Orders earlier streaming stores before later stores: called once
    /// a chunk of work is done, before other threads may read its output.
    fn fence(self);

    /// Runs `f` in a function of its own, compiled for this level. A hot
    /// loop with many streams gets every register that way, where inlined
    /// into a large kernel it would share them and spill. `f` must be a
    /// closure marked `#[inline(always)]`: left to the inliner, a large one
    /// (the `bf16` backward loop) is compiled on its own, without this
    /// level's instructions, and every vector operation becomes a call.
    fn outlined<R>(self, f: impl FnOnce() -> R) -> R;
}

/// `bf16` bits of `v`, rounded to nearest even; a NaN becomes a quiet
/// NaN. Shared by the scalar path and the tests.
#[inline(always)]
pub(crate) fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

// ------------------------------------------------------------------ scalar

/// Plain Rust over `[f32; 16]`: the baseline target's code, and the
/// definition the vector levels match bit for bit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scalar;

#[inline(always)]
fn map1(a: [f32; LANES], f: impl Fn(f32) -> f32) -> [f32; LANES] {
    std::array::from_fn(|l| f(a[l]))
}

#[inline(always)]
fn map2(a: [f32; LANES], b: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> [f32; LANES] {
    std::array::from_fn(|l| f(a[l], b[l]))
}

impl Isa for Scalar {
    type V = [f32; LANES];

    #[inline(always)]
    fn splat(self, v: f32) -> Self::V {
        [v; LANES]
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn div(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a / b)
    }
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
    }
    #[inline(always)]
    fn max(self, a: Self::V, b: Self::V) -> Self::V {
        // The vector instructions' rule: the first operand if it is
        // greater, else the second (so NaN in either gives the second).
        map2(a, b, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    fn min(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| if a < b { a } else { b })
    }
    #[inline(always)]
    fn abs(self, a: Self::V) -> Self::V {
        map1(a, f32::abs)
    }
    #[inline(always)]
    fn copysign(self, a: Self::V, sign: Self::V) -> Self::V {
        map2(a, sign, f32::copysign)
    }
    #[inline(always)]
    fn where_nan(self, x: Self::V, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| if x[l].is_nan() { a[l] } else { b[l] })
    }
    #[inline(always)]
    fn keep_first(self, a: Self::V, n: usize) -> Self::V {
        std::array::from_fn(|l| if l < n { a[l] } else { 0.0 })
    }
    #[inline(always)]
    fn exp2_int(self, v: Self::V) -> Self::V {
        map1(v, |v| {
            let k = v.to_bits().wrapping_sub(ROUND_BITS);
            f32::from_bits(k.wrapping_add(127) << 23)
        })
    }
    #[inline(always)]
    fn sum_f64(self, a: Self::V) -> f64 {
        let mut t: [f64; 8] = std::array::from_fn(|l| a[l] as f64 + a[l + 8] as f64);
        for l in 0..4 {
            t[l] += t[l + 4];
        }
        for l in 0..2 {
            t[l] += t[l + 2];
        }
        t[0] + t[1]
    }
    #[inline(always)]
    fn max_lane(self, a: Self::V) -> f32 {
        a.iter().fold(f32::NAN, |m, &v| if m >= v { m } else { v })
    }
    #[inline(always)]
    fn to_array(self, a: Self::V) -> [f32; LANES] {
        a
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees 16 readable values at p.
        unsafe { p.cast::<[f32; LANES]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees 16 writable values at p.
        unsafe { p.cast::<[f32; LANES]>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn stream(self, p: *mut f32, v: Self::V) {
        // SAFETY: as store.
        unsafe { self.store(p, v) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> Self::V {
        // SAFETY: the caller guarantees 16 readable values at p.
        let b = unsafe { p.cast::<[u16; LANES]>().read_unaligned() };
        std::array::from_fn(|l| f32::from_bits((b[l] as u32) << 16))
    }
    #[inline(always)]
    unsafe fn store_bf16(self, p: *mut u16, v: Self::V) {
        let b: [u16; LANES] = std::array::from_fn(|l| bf16_bits(v[l]));
        // SAFETY: the caller guarantees 16 writable values at p.
        unsafe { p.cast::<[u16; LANES]>().write_unaligned(b) }
    }
    #[inline(always)]
    unsafe fn stream_bf16(self, p: *mut u16, v: Self::V) {
        // SAFETY: as store_bf16.
        unsafe { self.store_bf16(p, v) }
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u16) -> Self::V {
        // SAFETY: the caller guarantees 16 readable values at p.
        let b = unsafe { p.cast::<[u16; LANES]>().read_unaligned() };
        std::array::from_fn(|l| half::f16::from_bits(b[l]).to_f32())
    }
    #[inline(always)]
    unsafe fn store_f16(self, p: *mut u16, v: Self::V) {
        let b: [u16; LANES] = std::array::from_fn(|l| half::f16::from_f32(v[l]).to_bits());
        // SAFETY: the caller guarantees 16 writable values at p.
        unsafe { p.cast::<[u16; LANES]>().write_unaligned(b) }
    }
    #[inline(always)]
    unsafe fn stream_f16(self, p: *mut u16, v: Self::V) {
        // SAFETY: as store_f16.
        unsafe { self.store_f16(p, v) }
    }
    #[inline(always)]
    fn fence(self) {}
    #[inline(always)]
    fn outlined<R>(self, f: impl FnOnce() -> R) -> R {
        #[inline(never)]
        fn go<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        go(f)
    }
}

/// Bits of `1.5 · 2²³`, the constant [`Isa::exp2_int`] expects added.
pub(crate) const ROUND_BITS: u32 = 0x4b40_0000;

// ------------------------------------------------------------------ x86-64

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Isa, LANES, ROUND_BITS};
    use std::arch::x86_64::*;

    /// AVX-512 F/BW/VL/DQ with FMA and F16C.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx512;

    /// AVX2 with FMA and F16C: a vector is two 256-bit registers.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2;

    // SAFETY (for every `unsafe` block in these two impls): a token exists
    // only inside the `multiversion!` copy compiled for its target
    // features, after `simd_level` detected them on this CPU; pointer
    // arguments carry the validity the trait method documents.

    impl Isa for Avx512 {
        type V = __m512;

        #[inline(always)]
        fn splat(self, v: f32) -> __m512 {
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn max(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        fn abs(self, a: __m512) -> __m512 {
            unsafe { _mm512_abs_ps(a) }
        }
        #[inline(always)]
        fn copysign(self, a: __m512, sign: __m512) -> __m512 {
            unsafe {
                let m = _mm512_set1_epi32(i32::MIN);
                let s = _mm512_and_si512(_mm512_castps_si512(sign), m);
                let a = _mm512_andnot_si512(m, _mm512_castps_si512(a));
                _mm512_castsi512_ps(_mm512_or_si512(a, s))
            }
        }
        #[inline(always)]
        fn where_nan(self, x: __m512, a: __m512, b: __m512) -> __m512 {
            unsafe {
                let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
                _mm512_mask_blend_ps(nan, b, a)
            }
        }
        #[inline(always)]
        fn keep_first(self, a: __m512, n: usize) -> __m512 {
            unsafe { _mm512_maskz_mov_ps(((1u32 << n.min(LANES)) - 1) as u16, a) }
        }
        #[inline(always)]
        fn exp2_int(self, v: __m512) -> __m512 {
            unsafe {
                let k =
                    _mm512_sub_epi32(_mm512_castps_si512(v), _mm512_set1_epi32(ROUND_BITS as i32));
                let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(k, _mm512_set1_epi32(127)));
                _mm512_castsi512_ps(e)
            }
        }
        #[inline(always)]
        fn sum_f64(self, a: __m512) -> f64 {
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
            unsafe { std::mem::transmute::<__m512, [f32; LANES]>(a) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f32, v: __m512) {
            unsafe { _mm512_stream_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_bf16(self, p: *const u16) -> __m512 {
            unsafe {
                let b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(b))
            }
        }
        #[inline(always)]
        unsafe fn store_bf16(self, p: *mut u16, v: __m512) {
            unsafe { _mm256_storeu_si256(p.cast(), bf16_round_512(v)) }
        }
        #[inline(always)]
        unsafe fn stream_bf16(self, p: *mut u16, v: __m512) {
            unsafe { _mm256_stream_si256(p.cast(), bf16_round_512(v)) }
        }
        #[inline(always)]
        unsafe fn load_f16(self, p: *const u16) -> __m512 {
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
        #[inline(always)]
        unsafe fn store_f16(self, p: *mut u16, v: __m512) {
            unsafe {
                _mm256_storeu_si256(p.cast(), _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
            }
        }
        #[inline(always)]
        unsafe fn stream_f16(self, p: *mut u16, v: __m512) {
            unsafe {
                _mm256_stream_si256(p.cast(), _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
            }
        }
        #[inline(always)]
        fn fence(self) {
            unsafe { _mm_sfence() }
        }
        #[inline(always)]
        fn outlined<R>(self, f: impl FnOnce() -> R) -> R {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            #[inline(never)]
            unsafe fn go<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            unsafe { go(f) }
        }
    }

    use super::Scalar;

    /// Rounds 16 lanes to `bf16` bits as [`super::bf16_bits`] does.
    #[inline(always)]
    fn bf16_round_512(v: __m512) -> __m256i {
        // SAFETY: only called from Avx512's methods (see above).
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

    /// Rounds 16 lanes to `bf16` bits as [`super::bf16_bits`] does.
    #[inline(always)]
    fn bf16_round_256(v: Pair) -> __m256i {
        // SAFETY: only called from Avx2's methods (see above).
        unsafe {
            let half = |v: __m256| {
                let b = _mm256_castps_si256(v);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
                let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), lsb);
                let quiet = _mm256_or_si256(b, _mm256_set1_epi32(0x40 << 16));
                let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                _mm256_srli_epi32::<16>(_mm256_blendv_epi8(r, quiet, nan))
            };
            // packus interleaves the 128-bit halves; the permute restores
            // lane order.
            let packed = _mm256_packus_epi32(half(v[0]), half(v[1]));
            _mm256_permute4x64_epi64::<0b11_01_10_00>(packed)
        }
    }

    #[inline(always)]
    fn f16_round_256(v: Pair) -> __m256i {
        // SAFETY: only called from Avx2's methods (see above).
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
            let r = unsafe { _mm256_set1_ps(v) };
            [r, r]
        }
        #[inline(always)]
        fn add(self, a: Pair, b: Pair) -> Pair {
            both(a, b, |a, b| unsafe { _mm256_add_ps(a, b) })
        }
        #[inline(always)]
        fn sub(self, a: Pair, b: Pair) -> Pair {
            both(a, b, |a, b| unsafe { _mm256_sub_ps(a, b) })
        }
        #[inline(always)]
        fn mul(self, a: Pair, b: Pair) -> Pair {
            both(a, b, |a, b| unsafe { _mm256_mul_ps(a, b) })
        }
        #[inline(always)]
        fn div(self, a: Pair, b: Pair) -> Pair {
            both(a, b, |a, b| unsafe { _mm256_div_ps(a, b) })
        }
        #[inline(always)]
        fn fma(self, a: Pair, b: Pair, c: Pair) -> Pair {
            unsafe {
                [
                    _mm256_fmadd_ps(a[0], b[0], c[0]),
                    _mm256_fmadd_ps(a[1], b[1], c[1]),
                ]
            }
        }
        #[inline(always)]
        fn max(self, a: Pair, b: Pair) -> Pair {
            both(a, b, |a, b| unsafe { _mm256_max_ps(a, b) })
        }
        #[inline(always)]
        fn min(self, a: Pair, b: Pair) -> Pair {
            both(a, b, |a, b| unsafe { _mm256_min_ps(a, b) })
        }
        #[inline(always)]
        fn abs(self, a: Pair) -> Pair {
            each(a, |a| unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) })
        }
        #[inline(always)]
        fn copysign(self, a: Pair, sign: Pair) -> Pair {
            both(a, sign, |a, s| unsafe {
                let m = _mm256_set1_ps(-0.0);
                _mm256_or_ps(_mm256_andnot_ps(m, a), _mm256_and_ps(m, s))
            })
        }
        #[inline(always)]
        fn where_nan(self, x: Pair, a: Pair, b: Pair) -> Pair {
            unsafe {
                let pick = |x: __m256, a: __m256, b: __m256| {
                    _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
                };
                [pick(x[0], a[0], b[0]), pick(x[1], a[1], b[1])]
            }
        }
        #[inline(always)]
        fn keep_first(self, a: Pair, n: usize) -> Pair {
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
            each(v, |v| unsafe {
                let k =
                    _mm256_sub_epi32(_mm256_castps_si256(v), _mm256_set1_epi32(ROUND_BITS as i32));
                let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127)));
                _mm256_castsi256_ps(e)
            })
        }
        #[inline(always)]
        fn sum_f64(self, a: Pair) -> f64 {
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
            unsafe { std::mem::transmute::<Pair, [f32; LANES]>(a) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> Pair {
            unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: Pair) {
            unsafe {
                _mm256_storeu_ps(p, v[0]);
                _mm256_storeu_ps(p.add(8), v[1]);
            }
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f32, v: Pair) {
            unsafe {
                _mm256_stream_ps(p, v[0]);
                _mm256_stream_ps(p.add(8), v[1]);
            }
        }
        #[inline(always)]
        unsafe fn load_bf16(self, p: *const u16) -> Pair {
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
            unsafe { _mm256_storeu_si256(p.cast(), bf16_round_256(v)) }
        }
        #[inline(always)]
        unsafe fn stream_bf16(self, p: *mut u16, v: Pair) {
            unsafe { _mm256_stream_si256(p.cast(), bf16_round_256(v)) }
        }
        #[inline(always)]
        unsafe fn load_f16(self, p: *const u16) -> Pair {
            unsafe {
                [
                    _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast())),
                ]
            }
        }
        #[inline(always)]
        unsafe fn store_f16(self, p: *mut u16, v: Pair) {
            unsafe { _mm256_storeu_si256(p.cast(), f16_round_256(v)) }
        }
        #[inline(always)]
        unsafe fn stream_f16(self, p: *mut u16, v: Pair) {
            unsafe { _mm256_stream_si256(p.cast(), f16_round_256(v)) }
        }
        #[inline(always)]
        fn fence(self) {
            unsafe { _mm_sfence() }
        }
        #[inline(always)]
        fn outlined<R>(self, f: impl FnOnce() -> R) -> R {
            #[target_feature(enable = "avx2,fma,f16c")]
            #[inline(never)]
            unsafe fn go<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            unsafe { go(f) }
        }
    }
}

/// Defines `fn $name(args) -> ret` whose `$body` is compiled once per
/// [`SimdLevel`] and run at the best level [`simd_level`] reports. Inside
/// the body, `$isa` is the level's [`Isa`] token (a generic type `S`);
/// the body should call `#[inline(always)]` kernels with it so that they
/// are compiled inside each copy.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($gen:ident : $bound:path),*>)? [$isa:ident] ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments, unused_variables)]
            fn body<S: $crate::simd::Isa $($(, $gen: $bound)*)?>($isa: S, $($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v4 $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                body($crate::simd::Avx512, $($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v3 $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                body($crate::simd::Avx2, $($arg),*)
            }

            match $crate::simd::simd_level() {
                // SAFETY: simd_level() reports AVX-512 only after detecting
                // AVX-512 F/BW/VL/DQ, FMA and F16C on this CPU.
                #[cfg(target_arch = "x86_64")]
                $crate::simd::SimdLevel::Avx512 => unsafe { v4($($arg),*) },
                // SAFETY: likewise AVX2, FMA and F16C.
                #[cfg(target_arch = "x86_64")]
                $crate::simd::SimdLevel::Avx2 => unsafe { v3($($arg),*) },
                _ => body($crate::simd::Scalar, $($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level available here against the scalar definition, bit for
    /// bit, on awkward values.
    #[test]
    fn levels_agree_with_scalar() {
        let vals: [f32; LANES] = [
            0.0,
            -0.0,
            1.0,
            -1.5,
            3.4e38,
            -3.4e38,
            1e-40,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.1,
            2.5,
            -7.25e-3,
            1e20,
            65504.0,
            70000.0,
        ];
        let other: [f32; LANES] = std::array::from_fn(|l| vals[(l * 7 + 3) % LANES] * 0.75);
        let s = Scalar;
        let expect = (
            s.fma(vals, other, vals),
            s.max(vals, other),
            s.min(vals, other),
            s.copysign(other, vals),
            s.sum_f64(s.keep_first(vals, 5)),
        );
        let bf: [u16; LANES] = std::array::from_fn(|l| bf16_bits(vals[l]));
        let mut bf_out = [0u16; LANES];
        let mut f16_out = [0u16; LANES];
        // SAFETY: 16-value arrays.
        unsafe {
            s.store_f16(f16_out.as_mut_ptr(), vals);
        }
        #[cfg(target_arch = "x86_64")]
        {
            let bits = |a: [f32; LANES]| a.map(f32::to_bits);
            if simd_level() >= SimdLevel::Avx2 {
                let v = Avx2;
                // SAFETY: AVX2 detected above; 16-value arrays.
                unsafe {
                    let (a, b) = (v.load(vals.as_ptr()), v.load(other.as_ptr()));
                    assert_eq!(bits(v.to_array(v.fma(a, b, a))), bits(expect.0));
                    assert_eq!(bits(v.to_array(v.max(a, b))), bits(expect.1));
                    assert_eq!(bits(v.to_array(v.min(a, b))), bits(expect.2));
                    assert_eq!(bits(v.to_array(v.copysign(b, a))), bits(expect.3));
                    assert_eq!(v.sum_f64(v.keep_first(a, 5)).to_bits(), expect.4.to_bits());
                    v.store_bf16(bf_out.as_mut_ptr(), a);
                    assert_eq!(bf_out, bf);
                    let mut h = [0u16; LANES];
                    v.store_f16(h.as_mut_ptr(), a);
                    assert_eq!(h, f16_out);
                }
            }
            if simd_level() >= SimdLevel::Avx512 {
                let v = Avx512;
                // SAFETY: AVX-512 detected above; 16-value arrays.
                unsafe {
                    let (a, b) = (v.load(vals.as_ptr()), v.load(other.as_ptr()));
                    assert_eq!(bits(v.to_array(v.fma(a, b, a))), bits(expect.0));
                    assert_eq!(bits(v.to_array(v.max(a, b))), bits(expect.1));
                    assert_eq!(bits(v.to_array(v.min(a, b))), bits(expect.2));
                    assert_eq!(bits(v.to_array(v.copysign(b, a))), bits(expect.3));
                    assert_eq!(v.sum_f64(v.keep_first(a, 5)).to_bits(), expect.4.to_bits());
                    v.store_bf16(bf_out.as_mut_ptr(), a);
                    assert_eq!(bf_out, bf);
                    let mut h = [0u16; LANES];
                    v.store_f16(h.as_mut_ptr(), a);
                    assert_eq!(h, f16_out);
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to even.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(f32::NAN) & 0x7fc0, 0x7fc0);
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
    }
}

/// Asks the CPU to start loading the cache line holding `p` into every
/// cache level (`L1`) or into the second level and beyond (`!L1`), where
/// several input streams of a group that is read later would crowd the
/// first level out. A hint: it never faults, whatever `p` is.
#[inline(always)]
pub(crate) fn prefetch<const L1: bool, T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it reads nothing and cannot fault.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        if L1 {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        } else {
            _mm_prefetch::<_MM_HINT_T1>(p.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
