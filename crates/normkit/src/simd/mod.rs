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

//! Every method of an [`Isa`] implementation is a thin wrapper over one
//! or two intrinsics, `#[inline(always)]` so that it compiles inside the
//! `#[target_feature]` copy of the kernel that calls it. The vector levels'
//! tokens ([`Avx512`], [`Avx2`]) have private constructors: a token is
//! obtained from detection only ([`selected`], or the token's own
//! `detect`), so holding one proves the CPU has its instructions.

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

/// The level in force: 0 until first asked, then a [`SimdLevel`] that
/// [`detect`] found on this CPU (never anything else).
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The best level this CPU supports, capped by `NORMKIT_SIMD`. The only
/// source of the levels [`LEVEL`] holds: [`selected`] relies on it.
fn detect() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    let found = if Avx512::detect().is_some() {
        SimdLevel::Avx512
    } else if Avx2::detect().is_some() {
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

/// The token of the level in force, for [`multiversion!`]'s dispatch.
#[derive(Clone, Copy)]
pub(crate) enum Selected {
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    Scalar(Scalar),
}

/// The token of the level [`simd_level`] reports.
#[inline]
pub(crate) fn selected() -> Selected {
    match simd_level() {
        // SAFETY: `simd_level` reports a level only after `detect` found
        // it on this CPU (see `LEVEL`).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => Selected::Avx512(unsafe { Avx512::new_unchecked() }),
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => Selected::Avx2(unsafe { Avx2::new_unchecked() }),
        _ => Selected::Scalar(Scalar),
    }
}

/// A 16-lane `f32` vector and its operations. Implemented by zero-sized
/// tokens; holding one means the CPU has the instructions it uses (the
/// vector levels' tokens come from detection only).
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
    ///
    /// # Safety
    /// `p` is valid for reading 16 `f32` (no alignment needed).
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Stores 16 `f32` at `p` (any alignment).
    ///
    /// # Safety
    /// `p` is valid for writing 16 `f32` (no alignment needed).
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// As [`Isa::store`], past the cache.
    ///
    /// # Safety
    /// `p` is valid for writing 16 `f32` and 64-byte aligned.
    unsafe fn stream(self, p: *mut f32, v: Self::V);
    /// Loads 16 `bf16` (as bits) and widens them exactly.
    ///
    /// # Safety
    /// `p` is valid for reading 16 `u16` (no alignment needed).
    unsafe fn load_bf16(self, p: *const u16) -> Self::V;
    /// Rounds to `bf16`, to nearest even (NaN stays a quiet NaN), and
    /// stores the 16 bit patterns at `p`.
    ///
    /// # Safety
    /// `p` is valid for writing 16 `u16` (no alignment needed).
    unsafe fn store_bf16(self, p: *mut u16, v: Self::V);
    /// As [`Isa::store_bf16`], past the cache.
    ///
    /// # Safety
    /// `p` is valid for writing 16 `u16` and 32-byte aligned.
    unsafe fn stream_bf16(self, p: *mut u16, v: Self::V);
    /// Loads 16 `f16` (as bits) and widens them exactly.
    ///
    /// # Safety
    /// `p` is valid for reading 16 `u16` (no alignment needed).
    unsafe fn load_f16(self, p: *const u16) -> Self::V;
    /// Rounds to `f16`, to nearest even, and stores the 16 bit patterns
    /// at `p`.
    ///
    /// # Safety
    /// `p` is valid for writing 16 `u16` (no alignment needed).
    unsafe fn store_f16(self, p: *mut u16, v: Self::V);
    /// As [`Isa::store_f16`], past the cache.
    ///
    /// # Safety
    /// `p` is valid for writing 16 `u16` and 32-byte aligned.
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

/// Bits of `1.5 · 2²³`, the constant [`Isa::exp2_int`] expects added.
pub(crate) const ROUND_BITS: u32 = 0x4b40_0000;

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use scalar::Scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

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

            /// `body` compiled for AVX-512.
            ///
            /// # Safety
            /// The CPU has AVX-512 F/BW/VL/DQ, FMA and F16C, as the token
            /// proves.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v4 $(<$($gen: $bound),*>)? (level_token: $crate::simd::Avx512, $($arg: $ty),*) $(-> $ret)? {
                body(level_token, $($arg),*)
            }

            /// `body` compiled for AVX2.
            ///
            /// # Safety
            /// The CPU has AVX2, FMA and F16C, as the token proves.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v3 $(<$($gen: $bound),*>)? (level_token: $crate::simd::Avx2, $($arg: $ty),*) $(-> $ret)? {
                body(level_token, $($arg),*)
            }

            match $crate::simd::selected() {
                // SAFETY: an `Avx512` token exists only on a CPU with the
                // features `v4` enables.
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Selected::Avx512(t) => unsafe { v4(t, $($arg),*) },
                // SAFETY: likewise an `Avx2` token and `v3`'s features.
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Selected::Avx2(t) => unsafe { v3(t, $($arg),*) },
                $crate::simd::Selected::Scalar(t) => body(t, $($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

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
            if let Some(v) = Avx2::detect() {
                // SAFETY: 16-value arrays (the token came from detection).
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
            if let Some(v) = Avx512::detect() {
                // SAFETY: 16-value arrays (the token came from detection).
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
