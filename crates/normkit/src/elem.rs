//! Element types the kernels read and write.
//!
//! Inputs and outputs may be `f32`, `bf16` or `f16`; every kernel widens
//! to `f32` on load, accumulates in `f32` lanes (`f64` across blocks), and
//! rounds once on store.
//! Parameters (weight, bias, running statistics) are always `f32`.

use half::{bf16, f16};

mod sealed {
    /// How a type is stored, for the kernels' loads and stores.
    #[doc(hidden)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Storage {
        F32,
        Bf16,
        F16,
    }

    /// Only the three types below are `Elem`: the kernels load and store
    /// each of them with their own instructions.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}
pub(crate) use sealed::Storage;

/// A floating-point storage type for activations and their gradients:
/// `f32`, `bf16` or `f16` (the trait is sealed).
pub trait Elem: sealed::Sealed + Copy + Default + Send + Sync + 'static {
    /// Name used in messages and benchmark output.
    const NAME: &'static str;
    #[doc(hidden)]
    const STORAGE: Storage;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
    /// Rounds an `f64` straight to `Self` through `f32`.
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        Self::from_f32(v as f32)
    }
    /// The slice itself when `Self` is `f32`, so kernels skip conversion.
    #[inline(always)]
    fn as_f32(_s: &[Self]) -> Option<&[f32]> {
        None
    }
    /// Mutable counterpart of [`Elem::as_f32`].
    #[inline(always)]
    fn as_f32_mut(_s: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    /// Widens `src` into `dst` (same length).
    #[inline(always)]
    fn load(src: &[Self], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
    /// Rounds `src` into `dst` (same length), to nearest even.
    #[inline(always)]
    fn store(src: &[f32], dst: &mut [Self]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = Self::from_f32(s);
        }
    }
}

impl Elem for f32 {
    const NAME: &'static str = "f32";
    const STORAGE: Storage = Storage::F32;
    #[inline(always)]
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline(always)]
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for bf16 {
    const NAME: &'static str = "bf16";
    const STORAGE: Storage = Storage::Bf16;
    // bf16 is the top half of an f32: widening is a shift, and rounding
    // to nearest even adds 0x7fff plus the lowest kept bit. Plain integer
    // code, so it vectorizes where the kernels inline it.
    #[inline(always)]
    fn load(src: &[Self], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
    #[inline(always)]
    fn store(src: &[f32], dst: &mut [Self]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            let b = s.to_bits();
            let rounded = if s.is_nan() {
                (b >> 16) | 0x40
            } else {
                (b + 0x7fff + ((b >> 16) & 1)) >> 16
            };
            *d = bf16::from_bits(rounded as u16);
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Elem for f16 {
    const NAME: &'static str = "f16";
    const STORAGE: Storage = Storage::F16;
    // `half` converts slices with F16C instructions when the CPU has them.
    #[inline(always)]
    fn load(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    #[inline(always)]
    fn store(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
