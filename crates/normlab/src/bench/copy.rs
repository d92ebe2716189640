//! The roofline: how fast this machine moves the same bytes with no
//! arithmetic at all, measured in the same process, on the same sizes and
//! the same thread pool as the kernels.
//!
//! - 1-read-1-write, for forward passes: `y = x` (`copy_from_slice`, a
//!   `memcpy`).
//! - 2-read-1-write, for backward passes: `z[i] = x[i] + y[i]` on the raw
//!   bits (integer add, so no float exceptions or denormals interfere).
//!
//! Each is timed twice, on the calling thread and split in equal chunks
//! across the rayon pool, and the faster counts: a roofline is the best the
//! machine does, whichever way. Buffers are filled before timing, so no
//! page faults are measured, and `black_box` on the destination keeps the
//! compiler from eliding a copy nobody reads.

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

fn measure_typed<E: Bits>(kind: CopyKind, numel: usize, budget: &Budget) -> Sample {
    let x: Vec<E> = (0..numel).map(E::from_index).collect();
    let y: Vec<E> = (0..numel).map(|i| E::from_index(i + 1)).collect();
    let mut z: Vec<E> = (0..numel).map(|i| E::from_index(i + 2)).collect();
    let threads = rayon::current_num_threads();
    // Equal chunks, one per thread, rounded to whole cache lines.
    let chunk = numel.div_ceil(threads).next_multiple_of(64).max(64);

    let single = match kind {
        CopyKind::ReadWrite => measure(budget, || {
            timed(|| {
                z.copy_from_slice(black_box(&x));
                black_box(z.as_mut_ptr());
            })
            .0
        }),
        CopyKind::TwoReadsOneWrite => measure(budget, || {
            timed(|| {
                add_into(&mut z, black_box(&x), black_box(&y));
                black_box(z.as_mut_ptr());
            })
            .0
        }),
    };
    if threads == 1 || numel <= chunk {
        return single;
    }
    let split = match kind {
        CopyKind::ReadWrite => measure(budget, || {
            timed(|| {
                z.par_chunks_mut(chunk)
                    .zip(black_box(&x).par_chunks(chunk))
                    .for_each(|(z, x)| z.copy_from_slice(x));
                black_box(z.as_mut_ptr());
            })
            .0
        }),
        CopyKind::TwoReadsOneWrite => measure(budget, || {
            timed(|| {
                z.par_chunks_mut(chunk)
                    .zip(black_box(&x).par_chunks(chunk))
                    .zip(black_box(&y).par_chunks(chunk))
                    .for_each(|((z, x), y)| add_into(z, x, y));
                black_box(z.as_mut_ptr());
            })
            .0
        }),
    };
    if split.median_ns < single.median_ns {
        split
    } else {
        single
    }
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
    fn add_into_adds() {
        let mut z = [0u16; 3];
        add_into(&mut z, &[1, 2, u16::MAX], &[10, 20, 2]);
        assert_eq!(z, [11, 22, 1]);
    }

    #[test]
    fn copy_is_timed() {
        let s = measure_copy(CopyKind::ReadWrite, 10_000, 4, &Budget::SMOKE);
        assert!(s.median_ns > 0.0 && s.iters == 2);
    }
}
