//! Loads and stores of 16 values as `f32`, streaming stores, and the
//! read-ahead of the next group.

use crate::elem::{Elem, Storage};
use crate::simd::{Isa, LANES};

const L: usize = LANES;

/// Values `i..i + 16` of `x` as `f32`.
#[inline(always)]
pub(crate) fn load<S: Isa, T: Elem>(s: S, x: &[T], i: usize) -> S::V {
    let v: &[T; L] = x[i..i + L].try_into().unwrap();
    let p = v.as_ptr();
    // SAFETY: `v` holds 16 values of T, whose storage matches the load.
    unsafe {
        match T::STORAGE {
            Storage::F32 => s.load(p.cast()),
            Storage::Bf16 => s.load_bf16(p.cast()),
            Storage::F16 => s.load_f16(p.cast()),
        }
    }
}

/// Values `i..i + n` of `x` (`n < 16`) in the first lanes, zeros after.
#[inline(always)]
pub(crate) fn load_part<S: Isa, T: Elem>(s: S, x: &[T], i: usize, n: usize) -> S::V {
    let mut buf = [T::default(); L];
    buf[..n].copy_from_slice(&x[i..i + n]);
    load(s, &buf, 0)
}

/// Values `i..i + m` of `x`, `m ≤ 16` (a full vector when `m` is 16).
#[inline(always)]
pub(crate) fn load_m<S: Isa, T: Elem>(s: S, x: &[T], i: usize, m: usize) -> S::V {
    if m == L {
        load(s, x, i)
    } else {
        load_part(s, x, i, m)
    }
}

/// Stores the first `m ≤ 16` lanes at `y[i..i + m]`.
#[inline(always)]
pub(crate) fn store_m<S: Isa, T: Elem>(s: S, y: &mut [T], i: usize, m: usize, v: S::V) {
    if m == L {
        store(s, y, i, v)
    } else {
        store_part(s, y, i, m, v)
    }
}

/// Stores 16 lanes at `y[i..i + 16]`.
#[inline(always)]
pub(crate) fn store<S: Isa, T: Elem>(s: S, y: &mut [T], i: usize, v: S::V) {
    let out: &mut [T; L] = (&mut y[i..i + L]).try_into().unwrap();
    let p = out.as_mut_ptr();
    // SAFETY: `out` holds 16 writable values of T.
    unsafe {
        match T::STORAGE {
            Storage::F32 => s.store(p.cast(), v),
            Storage::Bf16 => s.store_bf16(p.cast(), v),
            Storage::F16 => s.store_f16(p.cast(), v),
        }
    }
}

/// Stores the first `n` lanes (`n < 16`) at `y[i..i + n]`.
#[inline(always)]
pub(crate) fn store_part<S: Isa, T: Elem>(s: S, y: &mut [T], i: usize, n: usize, v: S::V) {
    let mut buf = [T::default(); L];
    store(s, &mut buf, 0, v);
    y[i..i + n].copy_from_slice(&buf[..n]);
}

/// Streams 16 lanes to `y[i..i + 16]`, which starts at a multiple of
/// [`stream_align`] bytes.
#[inline(always)]
pub(super) fn stream<S: Isa, T: Elem>(s: S, y: &mut [T], i: usize, v: S::V) {
    let out: &mut [T; L] = (&mut y[i..i + L]).try_into().unwrap();
    let p = out.as_mut_ptr();
    debug_assert_eq!(p as usize % stream_align::<T>(), 0);
    // SAFETY: 16 writable values, aligned as the streaming store needs
    // (the caller peeled the head up to that alignment).
    unsafe {
        match T::STORAGE {
            Storage::F32 => s.stream(p.cast(), v),
            Storage::Bf16 => s.stream_bf16(p.cast(), v),
            Storage::F16 => s.stream_f16(p.cast(), v),
        }
    }
}

/// Alignment of a streaming store of 16 values: one 64-byte line of `f32`,
/// half a line of 2-byte values.
#[inline(always)]
pub(super) fn stream_align<T>() -> usize {
    L * std::mem::size_of::<T>()
}

/// Values before `y` reaches streaming alignment (less than 16), or
/// `None` when whole values never reach it.
#[inline(always)]
pub(super) fn stream_head<T>(y: &[T]) -> Option<usize> {
    let (align, size) = (stream_align::<T>(), std::mem::size_of::<T>());
    let off = y.as_ptr() as usize % align;
    off.is_multiple_of(size)
        .then(|| ((align - off) % align) / size)
}

/// The next group's inputs at the same offsets as the current one's,
/// fetched into cache while a sweep over the current group runs from
/// cache: one line per vector keeps memory busy without flooding it.
#[derive(Clone, Copy)]
pub(crate) struct Ahead<T> {
    ptrs: [*const T; 2],
    len: usize,
}

impl<T> Ahead<T> {
    pub const NONE: Ahead<T> = Ahead {
        ptrs: [std::ptr::null(); 2],
        len: 0,
    };

    /// `a` and `b` at the offsets of the sweep that fetches them.
    pub fn two(a: &[T], b: &[T]) -> Self {
        Ahead {
            ptrs: [a.as_ptr(), b.as_ptr()],
            len: a.len().min(b.len()),
        }
    }

    /// `a` alone.
    pub fn one(a: &[T]) -> Self {
        Ahead {
            ptrs: [a.as_ptr(), std::ptr::null()],
            len: a.len(),
        }
    }

    /// Fetches the lines at offset `i` (once per 16 values: a line of
    /// `f32`, half a line of 2-byte values): one stream into the first
    /// level, two (the backward's `x` and `dy`) into the second.
    #[inline(always)]
    pub fn at(&self, i: usize) {
        if i < self.len {
            if self.ptrs[1].is_null() {
                crate::simd::prefetch::<true, T>(self.ptrs[0].wrapping_add(i));
            } else {
                crate::simd::prefetch::<false, T>(self.ptrs[0].wrapping_add(i));
                crate::simd::prefetch::<false, T>(self.ptrs[1].wrapping_add(i));
            }
        }
    }
}
