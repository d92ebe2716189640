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
//! whichever way. That variant then runs again between normkit's timed
//! iterations ([`Interleave`]), and those interleaved times are the
//! roofline the report divides by: kernel and copy measured at the same
//! moments of a shared machine. Buffers are filled before timing, so no
//! page faults are measured, and `black_box` on the destination keeps the
//! compiler from eliding a copy nobody reads.

use super::shapes::Pass;
use super::timing::{measure, summarize, timed, Budget, Sample};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Duration;

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

    /// The copies that make `pass`'s roofline: forward passes move like a
    /// copy, the backward like `z = x + y`, a training step like both.
    pub fn for_pass(pass: Pass) -> &'static [CopyKind] {
        match pass {
            Pass::ForwardTrain | Pass::ForwardEval => &[CopyKind::ReadWrite],
            Pass::Backward => &[CopyKind::TwoReadsOneWrite],
            Pass::ForwardBackward => &[CopyKind::ReadWrite, CopyKind::TwoReadsOneWrite],
        }
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

/// One variant of the copy over its own buffers, ready to run again.
pub trait Copier {
    /// Runs the copy once and returns its time.
    fn once(&mut self) -> Duration;
}

struct Buffers<E> {
    kind: CopyKind,
    x: Vec<E>,
    y: Vec<E>,
    z: Vec<E>,
    /// Values per thread when split across the pool.
    chunk: usize,
    /// The copy in pieces of this many values, or whole.
    piece: Option<usize>,
    split: bool,
}

impl<E: Bits> Copier for Buffers<E> {
    fn once(&mut self) -> Duration {
        let (kind, piece, chunk) = (self.kind, self.piece, self.chunk);
        let (z, x, y) = (&mut self.z, &self.x, &self.y);
        let t = if self.split {
            timed(|| {
                z.par_chunks_mut(chunk)
                    .zip(black_box(x).par_chunks(chunk))
                    .zip(black_box(y).par_chunks(chunk))
                    .for_each(|((z, x), y)| once(kind, z, x, y, piece));
                black_box(z.as_mut_ptr());
            })
        } else {
            timed(|| {
                once(kind, z, black_box(x), black_box(y), piece);
                black_box(z.as_mut_ptr());
            })
        };
        t.0
    }
}

/// The fastest variant of the copy of `numel` values of `esize` bytes (2
/// or 4) and its time: tried on the calling thread and split across the
/// pool, the 1-read-1-write copy also in pieces.
pub fn fastest_copier(
    kind: CopyKind,
    numel: usize,
    esize: usize,
    budget: &Budget,
) -> (Box<dyn Copier>, Sample) {
    match esize {
        2 => fastest_typed::<u16>(kind, numel, budget),
        4 => fastest_typed::<u32>(kind, numel, budget),
        _ => panic!("copy baseline for {esize}-byte values"),
    }
}

fn fastest_typed<E: Bits>(
    kind: CopyKind,
    numel: usize,
    budget: &Budget,
) -> (Box<dyn Copier>, Sample) {
    let threads = rayon::current_num_threads();
    // Equal chunks, one per thread, rounded to whole cache lines.
    let chunk = numel.div_ceil(threads).next_multiple_of(64).max(64);
    let mut b = Buffers {
        kind,
        x: (0..numel).map(E::from_index).collect(),
        y: (0..numel).map(|i| E::from_index(i + 1)).collect(),
        z: (0..numel).map(|i| E::from_index(i + 2)).collect(),
        chunk,
        piece: None,
        split: false,
    };
    let pieces: &[Option<usize>] = match kind {
        CopyKind::ReadWrite => &[None, Some(PIECE_BYTES / std::mem::size_of::<E>())],
        CopyKind::TwoReadsOneWrite => &[None],
    };
    // Copies are steady: a quarter of the kernels' time budget suffices.
    let budget = Budget {
        min_time: budget.min_time / 4,
        max_time: budget.max_time / 4,
        ..*budget
    };
    let splits: &[bool] = if threads > 1 && numel > chunk {
        &[false, true]
    } else {
        &[false]
    };
    let mut best: Option<(Option<usize>, bool, Sample)> = None;
    for &piece in pieces {
        for &split in splits {
            (b.piece, b.split) = (piece, split);
            let s = measure(&budget, || b.once());
            if best.is_none_or(|(_, _, b)| s.median_ns < b.median_ns) {
                best = Some((piece, split, s));
            }
        }
    }
    let (piece, split, sample) = best.expect("at least one copy variant runs");
    (b.piece, b.split) = (piece, split);
    (Box::new(b), sample)
}

/// Times the copy of `numel` values of `esize` bytes (2 or 4): the
/// fastest variant's median.
pub fn measure_copy(kind: CopyKind, numel: usize, esize: usize, budget: &Budget) -> Sample {
    fastest_copier(kind, numel, esize, budget).1
}

/// The copies of one case run between a kernel's timed iterations, so that
/// the roofline is measured at the same moments as the kernel: on a
/// shared machine both then see the same load. After every
/// [`Interleave::EVERY`] kernel iterations the copy of the pass runs as
/// many times; the kernel iteration right after (and the first copy) may
/// start with a colder cache, which a median over the rest ignores.
pub struct Interleave {
    copiers: Vec<(CopyKind, Box<dyn Copier>, Vec<f64>)>,
    count: usize,
}

impl Interleave {
    pub const EVERY: usize = 4;

    /// The fastest copy variants for `numel` values of `esize` bytes.
    pub fn new(numel: usize, esize: usize, budget: &Budget) -> Self {
        let copiers = [CopyKind::ReadWrite, CopyKind::TwoReadsOneWrite]
            .into_iter()
            .map(|kind| {
                (
                    kind,
                    fastest_copier(kind, numel, esize, budget).0,
                    Vec::new(),
                )
            })
            .collect();
        Interleave { copiers, count: 0 }
    }

    /// Called after each kernel iteration of a pass that moves `kinds`.
    pub fn tick(&mut self, kinds: &[CopyKind]) {
        self.count += 1;
        if self.count % Self::EVERY != 0 {
            return;
        }
        for (kind, copier, times) in &mut self.copiers {
            if kinds.contains(kind) {
                for _ in 0..Self::EVERY {
                    times.push(copier.once().as_nanos() as f64);
                }
            }
        }
    }

    /// The interleaved copies' medians, for the kinds that ran.
    pub fn samples(mut self) -> Vec<(CopyKind, Sample)> {
        self.copiers
            .iter_mut()
            .filter(|(_, _, t)| !t.is_empty())
            .map(|(kind, _, t)| (*kind, summarize(t)))
            .collect()
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
