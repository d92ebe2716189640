//! The roofline: how fast this machine moves the same bytes with no
//! arithmetic at all, measured in the same process, on the same sizes and
//! the same thread pool as the kernels.
//!
//! - 1-read-1-write, for forward passes: `y = x` (`copy_from_slice`, a
//!   `memcpy`).
//! - 2-read-1-write, for backward passes: `z[i] = x[i] + y[i]` on the raw
//!   bits (integer add, so no float exceptions or denormals interfere).
//!
//! Each is timed on the calling thread and split in equal chunks across
//! the rayon pool, the copy also in 32 KiB pieces (see [`PIECE_BYTES`]),
//! and the fastest counts: a roofline is the best the machine does,
//! whichever way. Buffers are filled before timing, so no page faults are
//! measured, and `black_box` on the destination keeps the compiler from
//! eliding a copy nobody reads.

use super::timing::{measure, timed, Budget, Sample};
use rayon::prelude::*;
use std::hint::black_box;

/// Which copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyKind {
    /// Read one buffer, write another.
    ReadWrite,
    /// Read two buffers, write a third.
    TwoReadsOneWrite,
}

impl CopyKind {
    /// Buffers touched per value.
    pub fn streams(self) -> u64 {
        match self {
            CopyKind::ReadWrite => 2,
            CopyKind::TwoReadsOneWrite => 3,
        }
    }

    pub fn bytes(self, numel: usize, esize: usize) -> u64 {
        self.streams() * numel as u64 * esize as u64
    }
}

/// Times the copy of `numel` values of `esize` bytes (2 or 4).
pub fn measure_copy(kind: CopyKind, numel: usize, esize: usize, budget: &Budget) -> Sample {
    match esize {
        2 => measure_typed::<u16>(kind, numel, budget),
        4 => measure_typed::<u32>(kind, numel, budget),
        _ => panic!("copy baseline for {esize}-byte values"),
    }
}

trait Bits: Copy + Send + Sync + 'static {
    fn from_index(i: usize) -> Self;
    fn add(self, other: Self) -> Self;
}

impl Bits for u16 {
    fn from_index(i: usize) -> Self {
        (i as u16).wrapping_mul(31).wrapping_add(7)
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
}

impl Bits for u32 {
    fn from_index(i: usize) -> Self {
        (i as u32).wrapping_mul(2_654_435_761).wrapping_add(7)
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
}

fn add_into<E: Bits>(z: &mut [E], x: &[E], y: &[E]) {
    for ((z, &x), &y) in z.iter_mut().zip(x).zip(y) {
        *z = x.add(y);
    }
}

/// A whole-buffer `memcpy` may switch to non-temporal stores, which bypass
/// the cache: faster for buffers larger than the cache, slower for buffers
/// that fit. Copying in pieces of this size keeps ordinary stores. The
/// roofline takes whichever is faster.
const PIECE_BYTES: usize = 32 * 1024;

/// One pass of `kind` over `z`, `x`, `y`; the copy in pieces of `piece`
/// values when given.
#[inline]
fn once<E: Bits>(kind: CopyKind, z: &mut [E], x: &[E], y: &[E], piece: Option<usize>) {
    match (kind, piece) {
        (CopyKind::ReadWrite, None) => z.copy_from_slice(x),
        (CopyKind::ReadWrite, Some(p)) => {
            for (z, x) in z.chunks_mut(p).zip(x.chunks(p)) {
                z.copy_from_slice(x);
            }
        }
        (CopyKind::TwoReadsOneWrite, _) => add_into(z, x, y),
    }
}

fn measure_typed<E: Bits>(kind: CopyKind, numel: usize, budget: &Budget) -> Sample {
    let x: Vec<E> = (0..numel).map(E::from_index).collect();
    let y: Vec<E> = (0..numel).map(|i| E::from_index(i + 1)).collect();
    let mut z: Vec<E> = (0..numel).map(|i| E::from_index(i + 2)).collect();
    let threads = rayon::current_num_threads();
    // Equal chunks, one per thread, rounded to whole cache lines.
    let chunk = numel.div_ceil(threads).next_multiple_of(64).max(64);
    let piece = PIECE_BYTES / std::mem::size_of::<E>();
    let pieces: &[Option<usize>] = match kind {
        CopyKind::ReadWrite => &[None, Some(piece)],
        CopyKind::TwoReadsOneWrite => &[None],
    };
    // Copies are steady: a quarter of the kernels' time budget suffices.
    let budget = Budget {
        min_time: budget.min_time / 4,
        max_time: budget.max_time / 4,
        ..*budget
    };
    let mut best: Option<Sample> = None;
    for &piece in pieces {
        let single = measure(&budget, || {
            timed(|| {
                once(kind, &mut z, black_box(&x), black_box(&y), piece);
                black_box(z.as_mut_ptr());
            })
            .0
        });
        let split = (threads > 1 && numel > chunk).then(|| {
            measure(&budget, || {
                timed(|| {
                    z.par_chunks_mut(chunk)
                        .zip(black_box(&x).par_chunks(chunk))
                        .zip(black_box(&y).par_chunks(chunk))
                        .for_each(|((z, x), y)| once(kind, z, x, y, piece));
                    black_box(z.as_mut_ptr());
                })
                .0
            })
        });
        for s in std::iter::once(single).chain(split) {
            if best.is_none_or(|b| s.median_ns < b.median_ns) {
                best = Some(s);
            }
        }
    }
    best.expect("at least one copy variant runs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_count_every_stream() {
        assert_eq!(CopyKind::ReadWrite.bytes(1000, 4), 8000);
        assert_eq!(CopyKind::TwoReadsOneWrite.bytes(1000, 2), 6000);
    }

    #[test]
    fn pieces_copy_everything() {
        let x: Vec<u32> = (0..100_000).map(u32::from_index).collect();
        let mut z = vec![0u32; x.len()];
        once(CopyKind::ReadWrite, &mut z, &x, &[], Some(PIECE_BYTES / 4));
        assert_eq!(z, x);
    }

    #[test]
    fn add_into_adds() {
        let mut z = [0u16; 3];
        add_into(&mut z, &[1, 2, u16::MAX], &[10, 20, 2]);
        assert_eq!(z, [11, 22, 1]);
    }

    #[test]
    fn copy_is_timed() {
        let s = measure_copy(CopyKind::ReadWrite, 10_000, 4, &Budget::SMOKE);
        assert!(s.median_ns > 0.0 && s.iters == 2);
        let s = measure_copy(CopyKind::TwoReadsOneWrite, 10_001, 2, &Budget::SMOKE);
        assert!(s.median_ns > 0.0 && s.iters == 2);
    }
}
