//! The one place where the instruction set is chosen.
//!
//! Kernels are written once, over blocks of [`LANES`] `f32`s held in plain
//! arrays with several independent accumulators, and marked
//! `#[inline(always)]`. [`multiversion!`] compiles a kernel's entry point
//! three times — for AVX-512, for AVX2 with FMA, and for the baseline
//! target — so the same source becomes 512-bit, 256-bit or 128-bit vector
//! code, and [`level`] picks one at run time, detecting the CPU once.
//!
//! `NORMKIT_SIMD=scalar|avx2|avx512` caps the level (tests use it to run
//! every path on one machine).

use std::sync::atomic::{AtomicU8, Ordering};

/// Width of a lane block: one AVX-512 register of `f32`.
pub(crate) const LANES: usize = 16;

/// Instruction-set levels, from most to least capable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Baseline target features only.
    Scalar = 1,
    /// AVX2 and FMA (x86-64-v3).
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
/// CPU offers.
pub fn set_simd_level(level: SimdLevel) -> SimdLevel {
    let chosen = detect().min(level);
    LEVEL.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// Asks the CPU to start loading `data` into cache (for a write when
/// `write`), so the next group of work finds it there. Rows that are a
/// page long defeat the hardware prefetchers, which stop at page
/// boundaries; a hint per 64-byte line costs a few cycles per kilobyte.
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T], write: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(data);
        let base = data.as_ptr() as *const i8;
        let mut at = 0;
        while at < bytes {
            // SAFETY: prefetch is a hint that never faults; the address is
            // inside `data`.
            unsafe {
                if write {
                    _mm_prefetch::<_MM_HINT_ET0>(base.add(at));
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(base.add(at));
                }
            }
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, write);
}

/// Defines `fn $name(args) -> ret` that runs `$body` compiled for the best
/// instruction set [`simd_level`] reports. The body should call
/// `#[inline(always)]` helpers so that they are compiled inside it.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($gen:ident : $bound:path),*>)? ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v4 $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v3 $(<$($gen: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            match $crate::simd::simd_level() {
                // SAFETY: simd_level() reports AVX-512 only after detecting
                // AVX-512 F/BW/VL/DQ, FMA and F16C on this CPU.
                #[cfg(target_arch = "x86_64")]
                $crate::simd::SimdLevel::Avx512 => unsafe { v4($($arg),*) },
                // SAFETY: likewise AVX2, FMA and F16C.
                #[cfg(target_arch = "x86_64")]
                $crate::simd::SimdLevel::Avx2 => unsafe { v3($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;
