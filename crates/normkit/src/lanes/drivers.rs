//! The two drivers every loop runs on: elementwise outputs and sums.

use super::io::{store, store_part, stream, stream_head};
use crate::elem::Elem;
use crate::simd::{Isa, LANES};

const L: usize = LANES;

/// Values per `f32` accumulation block.
pub(crate) const BLOCK: usize = 1024;

/// An elementwise computation: the output vector for 16 values at a time.
/// [`write_lanewise`] asks for the values in order (`i` increasing, each
/// value once), so an implementation may track where it is, such as the
/// channel of value `i`.
pub(crate) trait Lanewise<S: Isa> {
    /// Output for values `i..i + 16`.
    fn at(&mut self, s: S, i: usize) -> S::V;
    /// Output for values `i..i + n`, `n < 16`, in the first lanes.
    fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V;
}

/// Writes `f`'s output for every value of `y`. With `stream_out`, full
/// vectors go past the cache once `y` is aligned for it; the caller issues
/// [`Isa::fence`] before another thread reads the output.
#[inline(always)]
pub(crate) fn write_lanewise<S: Isa, T: Elem, F: Lanewise<S>>(
    s: S,
    y: &mut [T],
    f: &mut F,
    stream_out: bool,
) {
    let n = y.len();
    let mut i = 0;
    if let Some(head) = stream_head(y).filter(|&h| stream_out && h + L <= n) {
        if head > 0 {
            store_part(s, y, 0, head, f.at_part(s, 0, head));
            i = head;
        }
        while i + L <= n {
            stream(s, y, i, f.at(s, i));
            i += L;
        }
    }
    while i + L <= n {
        store(s, y, i, f.at(s, i));
        i += L;
    }
    if i < n {
        store_part(s, y, i, n - i, f.at_part(s, i, n - i));
    }
}

/// `K` sums over `n` values: [`reduce`] calls `add` for each full vector
/// and `add_part` for the tail, whose missing lanes must add nothing.
/// `add` may also write an elementwise output at the same values.
pub(crate) trait Sums<S: Isa, const K: usize> {
    fn add(&mut self, s: S, i: usize, acc: &mut [S::V; K]);
    fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; K]);
}

/// The `K` sums of `f` over `0..n` in the fixed order described above.
#[inline(always)]
pub(crate) fn reduce<S: Isa, const K: usize, F: Sums<S, K>>(s: S, n: usize, f: &mut F) -> [f64; K] {
    let mut out = [0.0f64; K];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let mut a = [s.splat(0.0); K];
        let mut b = [s.splat(0.0); K];
        let mut i = start;
        while i + 2 * L <= end {
            f.add(s, i, &mut a);
            f.add(s, i + L, &mut b);
            i += 2 * L;
        }
        if i + L <= end {
            f.add(s, i, &mut a);
            i += L;
        }
        if i < end {
            f.add_part(s, i, end - i, &mut b);
        }
        for k in 0..K {
            out[k] += s.sum_f64(a[k]) + s.sum_f64(b[k]);
        }
        start = end;
    }
    out
}
