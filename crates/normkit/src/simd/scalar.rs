//! The scalar level: plain Rust over `[f32; 16]`.

use super::{bf16_bits, Isa, LANES, ROUND_BITS};

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
