//! Threads, chunks and scratch buffers.
//!
//! Work is cut into chunks whose boundaries depend only on the problem's
//! shape, never on the number of threads; per-chunk partial sums are merged
//! in chunk order. So results are bitwise identical whether rayon runs one
//! thread or many. Problems smaller than [`PARALLEL_MIN`] values run on the
//! calling thread, with the same chunks.

use rayon::prelude::*;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::Range;

/// Below this many values a kernel stays on the calling thread: spreading
/// it would cost more in synchronization than it saves.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// Values a chunk should hold: enough to amortize scheduling, few enough
/// to keep both cores busy and a chunk's data in L2.
pub(crate) const CHUNK_VALUES: usize = 1 << 16;

/// Bytes of per-chunk partial sums a kernel may hold at once.
const PARTIALS_BUDGET: usize = 16 << 20;

/// How `items` items of `item_values` values each (and `partial_bytes` of
/// partial sums per chunk) are cut into chunks: returns items per chunk.
pub(crate) fn items_per_chunk(items: usize, item_values: usize, partial_bytes: usize) -> usize {
    let by_work = (CHUNK_VALUES / item_values.max(1)).max(1);
    let max_chunks = (PARTIALS_BUDGET / partial_bytes.max(1)).max(1);
    let by_memory = items.div_ceil(max_chunks).max(1);
    by_work.max(by_memory).min(items.max(1))
}

/// Runs `f` on every chunk `0..chunks` and returns the results in chunk
/// order, in parallel when the problem (`values` in all) is large enough.
pub(crate) fn map_chunks<R: Send>(
    chunks: usize,
    values: usize,
    f: impl Fn(usize) -> R + Sync + Send,
) -> Vec<R> {
    if chunks > 1 && values >= PARALLEL_MIN && rayon::current_num_threads() > 1 {
        (0..chunks).into_par_iter().map(f).collect()
    } else {
        (0..chunks).map(f).collect()
    }
}

/// The items of chunk `i` when `per_chunk` items make a chunk.
pub(crate) fn chunk_items(i: usize, per_chunk: usize, items: usize) -> Range<usize> {
    (i * per_chunk).min(items)..((i + 1) * per_chunk).min(items)
}

/// An output slice that chunks running on different threads write to,
/// each in places no other chunk touches.
pub(crate) struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: SharedMut only hands out slices through `range`, whose callers
// guarantee that no two live slices overlap; T is sent between threads.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
// SAFETY: as above: shared access never aliases a mutable range.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        SharedMut {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: PhantomData,
        }
    }

    /// The elements in `r`.
    ///
    /// # Safety
    /// No other slice obtained from `self` that overlaps `r` may be alive.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub unsafe fn range(&self, r: Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len);
        // SAFETY: in bounds (checked above) and, by the caller's promise,
        // not aliased; the borrow of the original slice outlives 'a.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// An `f32` scratch buffer from a per-thread pool (contents unspecified),
/// returned to the pool when dropped, so widening bf16/f16 data allocates
/// once per thread. No closure is involved: kernels use it inside their
/// `multiversion!` body, where a closure would be compiled separately,
/// without the body's instruction set.
pub(crate) struct Buffer {
    buf: Vec<f32>,
    len: usize,
}

impl Buffer {
    pub fn take(len: usize) -> Self {
        let mut buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Buffer { buf, len }
    }
}

impl std::ops::Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        POOL.with(|p| p.borrow_mut().push(buf));
    }
}

/// `src` as `f32`: itself when it is `f32`, else widened into `buf`.
#[inline(always)]
pub(crate) fn as_f32<'a, T: crate::Elem>(src: &'a [T], buf: &'a mut [f32]) -> &'a [f32] {
    match T::as_f32(src) {
        Some(s) => s,
        None => {
            let buf = &mut buf[..src.len()];
            T::load(src, buf);
            buf
        }
    }
}

/// Where to compute an output as `f32`: `out` itself when it is `f32`,
/// else `buf`, to be rounded into `out` by [`store_f32`] afterwards.
#[inline(always)]
pub(crate) fn f32_target<'a, T: crate::Elem>(
    out: &'a mut [T],
    buf: &'a mut [f32],
) -> &'a mut [f32] {
    let n = out.len();
    match T::as_f32_mut(out) {
        Some(o) => o,
        None => &mut buf[..n],
    }
}

/// Completes [`f32_target`]: rounds `buf` into `out` unless `out` was
/// written in place.
#[inline(always)]
pub(crate) fn store_f32<T: crate::Elem>(out: &mut [T], buf: &[f32]) {
    if T::as_f32(out).is_none() {
        T::store(&buf[..out.len()], out);
    }
}
