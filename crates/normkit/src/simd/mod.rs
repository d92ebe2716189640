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
