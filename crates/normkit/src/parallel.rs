//! Threads, chunks, and when outputs bypass the cache.
//!
//! Work is cut into chunks whose boundaries depend only on the problem's
//! shape, never on the number of threads; per-chunk partial sums are merged
//! in chunk order. So results are bitwise identical whether rayon runs one
//! thread or many. The chunks are spread over at most one task per
//! [`PARALLEL_MIN`] values and per thread of the calling pool; one task
//! runs on the calling thread.

use rayon::prelude::*;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The fewest values worth waking one more thread for: each task of a
/// kernel gets at least this many, so a problem of fewer than twice as many
/// runs on the calling thread.
///
/// Waking a thread costs little on an idle machine and a scheduler time
/// slice (milliseconds) when the cores are shared: the woken thread waits
/// behind another process, and the caller, whose work was handed to the
/// pool, waits for it. Measured on the 2-core machine under other work
/// (`examples/threads.rs` of normkit-candle, 1 against 2 threads, with and
/// without a `yes` on one core): a second thread made LayerNorm, RMSNorm,
/// BatchNorm and GroupNorm slower in both passes at every size up to
/// 1 Mi values (LayerNorm `[512, 256]` backward 0.08 → 0.13 ms, `[1024,
/// 1024]` 0.9 → 2.9 ms; BatchNorm `[4, 128, 28, 28]` forward 0.11 → 0.20
/// ms), and broke even or gained from 2 Mi values (BatchNorm `[32, 64, 32,
/// 32]` backward, LayerNorm `[4096, 1024]` forward). The backward moves
/// more per value, so the forward's crossover, the larger, is the one
/// chosen for both.
pub(crate) const PARALLEL_MIN: usize = 1 << 20;

/// [`PARALLEL_MIN`], as [`set_parallel_min`] last set it.
static MIN_VALUES_PER_TASK: AtomicUsize = AtomicUsize::new(PARALLEL_MIN);

/// Sets the fewest values a kernel wakes one more thread for (default
/// 1 Mi values) and returns the previous setting. Results are bitwise the
/// same whatever the setting; only speed changes. Tests lower it to run the
/// threaded paths on small inputs.
pub fn set_parallel_min(values: usize) -> usize {
    MIN_VALUES_PER_TASK.swap(values.max(1), Ordering::Relaxed)
}

/// How many tasks `chunks` chunks of `values` values in all are spread
/// over: one per [`PARALLEL_MIN`] values, at most one per chunk and one per
/// thread of the calling pool (never more threads than the caller's pool
/// has, so a caller already running on all of them adds none).
fn tasks(chunks: usize, values: usize) -> usize {
    let by_work = values / MIN_VALUES_PER_TASK.load(Ordering::Relaxed);
    by_work.min(chunks).min(rayon::current_num_threads()).max(1)
}

/// Values a chunk should hold: enough to amortize scheduling, few enough
/// to keep both cores busy and a chunk's data in L2.
pub(crate) const CHUNK_VALUES: usize = 1 << 16;

/// Bytes of per-chunk partial sums a kernel may hold at once.
const PARTIALS_BUDGET: usize = 16 << 20;

/// A chunk's input is at least this many times the bytes of its partial
/// sums: each chunk zeroes its partials and the merge reads them again, so
/// on long rows (65536 channels) one row per chunk would move more bytes of
/// partials than of data.
const PARTIALS_RATIO: usize = 8;

/// How `items` items of `item_values` values each (and `partial_bytes` of
/// partial sums per chunk) are cut into chunks: returns items per chunk.
pub(crate) fn items_per_chunk(items: usize, item_values: usize, partial_bytes: usize) -> usize {
    let by_work = (CHUNK_VALUES / item_values.max(1)).max(1);
    let max_chunks = (PARTIALS_BUDGET / partial_bytes.max(1)).max(1);
    let by_memory = items.div_ceil(max_chunks).max(1);
    // Input bytes counted as 4 per value (f32).
    let by_overhead = (partial_bytes * PARTIALS_RATIO).div_ceil(item_values.max(1) * 4);
    by_work.max(by_memory).max(by_overhead).min(items.max(1))
}

/// Runs `f` on every chunk `0..chunks` and returns the results in chunk
/// order, in parallel when the problem (`values` in all) is large enough.
pub(crate) fn map_chunks<R: Send>(
    chunks: usize,
    values: usize,
    f: impl Fn(usize) -> R + Sync + Send,
) -> Vec<R> {
    match tasks(chunks, values) {
        1 => (0..chunks).map(f).collect(),
        // Runs of at least `chunks / tasks` chunks: rayon cuts no more
        // than `tasks` of them.
        t => (0..chunks)
            .into_par_iter()
            .with_min_len(chunks / t)
            .map(f)
            .collect(),
    }
}

/// Runs `f(start, block)` on the consecutive blocks of `block` values of
/// `out`, in parallel when the work (`values` touched) is large enough.
/// The blocks must be independent.
pub(crate) fn for_blocks<E: Send>(
    out: &mut [E],
    block: usize,
    values: usize,
    f: impl Fn(usize, &mut [E]) + Sync + Send,
) {
    let block = block.max(1);
    let blocks = out.len().div_ceil(block);
    match tasks(blocks, values) {
        1 => {
            for (i, o) in out.chunks_mut(block).enumerate() {
                f(i * block, o);
            }
        }
        t => out
            .par_chunks_mut(block)
            .with_min_len(blocks / t)
            .enumerate()
            .for_each(|(i, o)| f(i * block, o)),
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

/// Outputs of 4-byte values at least this large are written with
/// streaming stores, past the cache: with the input they no longer fit in
/// it, and streaming saves reading each output line before overwriting it
/// and evicting the input to make room for it. Smaller outputs stay in
/// cache for whatever reads them next. Measured on a 32 MiB last-level
/// cache shared with other tenants, 2 threads, `f32` outputs of 12–16 MiB:
/// streaming made LayerNorm, RMSNorm and BatchNorm forwards 1.4–1.8× faster
/// (LayerNorm `[4096, 1024]` 1.15–1.27 → 0.80–0.83 ms), DyT forward and the
/// row backwards no slower.
pub(crate) const STREAM_MIN_BYTES: usize = 8 << 20;

/// The same for 2-byte values. A 16-value vector of them is half a line, so
/// a line is streamed in two stores that must meet in a write-combining
/// buffer; in the load-heavy row loops they often do not, and streaming
/// made the `bf16` LayerNorm forward on `[8192, 1024]` slower (1.38–1.40 →
/// 1.86–1.89 ms), while BatchNorm's gained (0.85 → 0.65 ms).
pub(crate) const STREAM_MIN_BYTES_HALF: usize = 20 << 20;

/// Whether an output of `len` values of `T` is streamed.
pub(crate) fn stream_output<T>(len: usize) -> bool {
    let min = if std::mem::size_of::<T>() >= 4 {
        STREAM_MIN_BYTES
    } else {
        STREAM_MIN_BYTES_HALF
    };
    len.saturating_mul(std::mem::size_of::<T>()) >= min
}

/// A zeroed vector of `f32` or `f64` lent from a process-wide pool and
/// given back when dropped. Per-chunk partial sums of a backward pass are
/// as long as the channel count; allocating them afresh for every call
/// would fault in new pages each time, which costs more than the pass
/// itself on long rows. The pool keeps at most [`POOL_MAX_BYTES`].
pub(crate) struct Scratch<E: Pooled> {
    v: Vec<E>,
}

/// Bytes of scratch vectors the pool keeps between calls.
const POOL_MAX_BYTES: usize = 64 << 20;

pub(crate) trait Pooled: Copy + Default + Send + 'static {
    fn pool() -> &'static Mutex<Pool<Self>>;
}

pub(crate) struct Pool<E> {
    free: Vec<Vec<E>>,
    bytes: usize,
}

impl<E> Pool<E> {
    const fn new() -> Self {
        Pool {
            free: Vec::new(),
            bytes: 0,
        }
    }
}

impl Pooled for f32 {
    fn pool() -> &'static Mutex<Pool<f32>> {
        static POOL: Mutex<Pool<f32>> = Mutex::new(Pool::new());
        &POOL
    }
}

impl Pooled for f64 {
    fn pool() -> &'static Mutex<Pool<f64>> {
        static POOL: Mutex<Pool<f64>> = Mutex::new(Pool::new());
        &POOL
    }
}

impl<E: Pooled> Scratch<E> {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Scratch { v: Vec::new() };
        }
        let reused = {
            let mut pool = E::pool().lock().unwrap_or_else(|e| e.into_inner());
            let found = pool.free.iter().rposition(|v| v.capacity() >= len);
            found.map(|i| {
                let v = pool.free.swap_remove(i);
                pool.bytes -= v.capacity() * std::mem::size_of::<E>();
                v
            })
        };
        let mut v = reused.unwrap_or_default();
        v.clear();
        v.resize(len, E::default());
        Scratch { v }
    }
}

impl<E: Pooled> std::ops::Deref for Scratch<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        &self.v
    }
}

impl<E: Pooled> std::ops::DerefMut for Scratch<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        &mut self.v
    }
}

impl<E: Pooled> Drop for Scratch<E> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        let size = v.capacity() * std::mem::size_of::<E>();
        if size == 0 {
            return;
        }
        let mut pool = E::pool().lock().unwrap_or_else(|e| e.into_inner());
        if pool.bytes + size <= POOL_MAX_BYTES {
            pool.bytes += size;
            pool.free.push(v);
        }
    }
}

impl<E: Pooled + std::fmt::Debug> std::fmt::Debug for Scratch<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.v.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn tasks_follow_the_work_the_chunks_and_the_calling_pool() {
        let min = MIN_VALUES_PER_TASK.load(Ordering::Relaxed);
        in_pool(4, || {
            assert_eq!(tasks(8, min - 1), 1);
            assert_eq!(tasks(8, 2 * min), 2);
            assert_eq!(tasks(8, 100 * min), 4);
            assert_eq!(tasks(3, 100 * min), 3);
            assert_eq!(tasks(0, 100 * min), 1);
        });
        in_pool(1, || assert_eq!(tasks(8, 100 * min), 1));
    }

    #[test]
    fn every_chunk_runs_once_in_order_whatever_the_tasks() {
        for (threads, chunks) in [(1, 7), (2, 7), (3, 2), (4, 9)] {
            let got = in_pool(threads, || map_chunks(chunks, usize::MAX, |i| i));
            assert_eq!(got, (0..chunks).collect::<Vec<_>>());
            let mut out = vec![0usize; 10 * chunks + 3];
            in_pool(threads, || {
                for_blocks(&mut out, 10, usize::MAX, |start, o| {
                    for (k, v) in o.iter_mut().enumerate() {
                        *v = start + k;
                    }
                })
            });
            assert_eq!(out, (0..out.len()).collect::<Vec<_>>());
        }
    }
}
