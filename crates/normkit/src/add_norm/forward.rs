//! The fused forward: `sum = x + residual` and its normalization in one
//! pass over memory.
//!
//! Rows go in batches that fit in the first cache level. For each row of a
//! batch, one sweep reads `x` and `residual` from memory and writes `sum`;
//! a second sweep takes the statistics of `sum` from cache; once the
//! batch's statistics are finished, a third sweep writes `y`, again from
//! cache, while the next batch's inputs are prefetched.
//!
//! When the outputs are large enough to stream past the cache, `sum` is not
//! in cache for the later sweeps: they recompute it from the cached `x` and
//! `residual` instead, rounded as the store rounds it. Otherwise they read
//! it back and are the engine's own sweeps ([`crate::lanes::shifted_sums`],
//! [`crate::lanes::apply_vec`]).
//!
//! Either way the statistics are those the engine takes of a row
//! ([`crate::moments`]: the one sweep around the mean of the first 16
//! values, the same lanes and blocks, the two-pass fallback), of the same
//! rounded values, and the output is the engine's formula: `y` is bit for
//! bit what [`crate::layer_norm_forward`] makes of `sum`.

use crate::elem::{Elem, Storage};
use crate::lanes::{self, load, load_m, load_part, reduce, store, write_lanewise, Ahead};
use crate::lanes::{Lanewise, Sums};
use crate::layout::Stats;
use crate::moments::{self, finish_moments, rstd, split};
use crate::normalize::BATCH_BYTES;
use crate::parallel::{chunk_items, items_per_chunk, map_chunks, stream_output, SharedMut};
use crate::simd::{multiversion, Isa, LANES};
use std::borrow::Cow;

/// The outputs and inputs of a forward call, checked.
pub(super) struct Forward<'a, T> {
    pub y: &'a mut [T],
    pub sum: &'a mut [T],
    pub x: &'a [T],
    pub residual: &'a [T],
    /// Row length.
    pub d: usize,
    pub weight: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
    pub eps: f32,
    pub centered: bool,
}

/// One row's statistics as the output sweep uses them.
#[derive(Debug, Clone, Copy)]
struct RowStats {
    mean_hi: f32,
    mean_lo: f32,
    rstd: f32,
}

pub(super) fn forward<T: Elem>(f: Forward<'_, T>) -> Stats {
    let d = f.d;
    let rows = f.x.len() / d;
    if rows == 0 {
        // No values (an empty batch): no statistics, and no defaults of
        // `d` values, which may be an extent no allocation holds.
        return Stats {
            mean: Vec::new(),
            rstd: Vec::new(),
        };
    }
    let weight = f
        .weight
        .map_or_else(|| Cow::Owned(vec![1.0; d]), Cow::Borrowed);
    let bias = f
        .bias
        .map_or_else(|| Cow::Owned(vec![0.0; d]), Cow::Borrowed);
    let per_chunk = items_per_chunk(rows, d, 0);
    let stream = stream_output::<T>(f.y.len());
    let (y, sum) = (SharedMut::new(f.y), SharedMut::new(f.sum));
    let (x, residual, eps, centered) = (f.x, f.residual, f.eps, f.centered);
    let parts = map_chunks(rows.div_ceil(per_chunk), x.len(), |i| {
        let r = chunk_items(i, per_chunk, rows);
        let span = r.start * d..r.end * d;
        // SAFETY: chunks cover disjoint rows, and y and sum are distinct
        // slices (both borrowed mutably by the caller).
        let (yc, sc) = unsafe { (y.range(span.clone()), sum.range(span.clone())) };
        let (xc, rc) = (&x[span.clone()], &residual[span]);
        let k = Chunk {
            d,
            weight: &weight,
            bias: &bias,
            eps,
            centered,
            stream,
        };
        forward_chunk(&k, yc, sc, xc, rc)
    });
    let mut stats = Stats {
        mean: Vec::with_capacity(if centered { rows } else { 0 }),
        rstd: Vec::with_capacity(rows),
    };
    for g in parts.iter().flatten() {
        if centered {
            stats.mean.push(g.mean_hi);
        }
        stats.rstd.push(g.rstd);
    }
    stats
}

/// What every row of a chunk shares.
struct Chunk<'a> {
    d: usize,
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
    centered: bool,
    stream: bool,
}

/// `v` rounded to `T` and widened back: the value a store then a load of
/// `T` gives, so that statistics and output see the sum as stored.
#[inline(always)]
fn rounded<S: Isa, T: Elem>(s: S, v: S::V) -> S::V {
    match T::STORAGE {
        Storage::F32 => v,
        _ => {
            let mut buf = [T::default(); LANES];
            store(s, &mut buf, 0, v);
            load(s, &buf, 0)
        }
    }
}

/// Values `i..i + m` of `x + residual` (`m ≤ 16`), rounded to `T`; zeros
/// after the first `m` lanes.
#[inline(always)]
fn sum_at<S: Isa, T: Elem>(s: S, x: &[T], r: &[T], i: usize, m: usize) -> S::V {
    rounded::<S, T>(s, s.add(load_m(s, x, i, m), load_m(s, r, i, m)))
}

/// Sweep 1: `sum = x + residual`, rounded once by the store.
struct AddSweep<'a, T> {
    x: &'a [T],
    r: &'a [T],
}

impl<S: Isa, T: Elem> Lanewise<S> for AddSweep<'_, T> {
    #[inline(always)]
    fn at(&mut self, s: S, i: usize) -> S::V {
        s.add(load(s, self.x, i), load(s, self.r, i))
    }
    #[inline(always)]
    fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
        s.add(load_part(s, self.x, i, n), load_part(s, self.r, i, n))
    }
}

/// Sweep 2: `[Σd, Σd²]` with `d = sum - shift`, in the order of the
/// engine's [`crate::lanes::shifted_sums`].
struct StatSweep<'a, S: Isa, T> {
    x: &'a [T],
    r: &'a [T],
    shift: S::V,
}

impl<S: Isa, T: Elem> Sums<S, 2> for StatSweep<'_, S, T> {
    #[inline(always)]
    fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 2]) {
        let d = s.sub(sum_at(s, self.x, self.r, i, LANES), self.shift);
        acc[0] = s.add(acc[0], d);
        acc[1] = s.fma(d, d, acc[1]);
    }
    #[inline(always)]
    fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 2]) {
        let d = s.keep_first(s.sub(sum_at(s, self.x, self.r, i, n), self.shift), n);
        acc[0] = s.add(acc[0], d);
        acc[1] = s.fma(d, d, acc[1]);
    }
}

/// Sweep 3: `y = ((sum - mean_hi) - mean_lo) · rstd · w + b`, the
/// engine's [`crate::lanes::apply_vec`] on the recomputed sums.
struct OutSweep<'a, S: Isa, T> {
    x: &'a [T],
    r: &'a [T],
    w: &'a [f32],
    b: &'a [f32],
    ahead: Ahead<T>,
    /// mean_hi, mean_lo, rstd.
    c: [S::V; 3],
}

impl<S: Isa, T: Elem> OutSweep<'_, S, T> {
    #[inline(always)]
    fn out(&self, s: S, i: usize, m: usize) -> S::V {
        let [mh, ml, r] = self.c;
        let (w, b) = (load_m(s, self.w, i, m), load_m(s, self.b, i, m));
        let v = sum_at(s, self.x, self.r, i, m);
        s.fma(s.mul(s.sub(s.sub(v, mh), ml), r), w, b)
    }
}

impl<S: Isa, T: Elem> Lanewise<S> for OutSweep<'_, S, T> {
    #[inline(always)]
    fn at(&mut self, s: S, i: usize) -> S::V {
        self.ahead.at(i);
        self.out(s, i, LANES)
    }
    #[inline(always)]
    fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
        self.out(s, i, n)
    }
}

/// The one-sweep shift of a row of sums recomputed from `x` and `r`, as
/// [`moments::shift_of`] takes it from the stored row:
/// the mean of the first 16 (rounded) values, summed across lanes in
/// `f64` for a full vector and one by one for a shorter row.
#[inline(always)]
fn shift_of<S: Isa, T: Elem>(s: S, x: &[T], r: &[T]) -> f32 {
    let n = x.len().min(LANES);
    let v = sum_at(s, x, r, 0, n);
    if n == LANES {
        (s.sum_f64(v) / LANES as f64) as f32
    } else {
        let lanes = s.to_array(v);
        let mut total = 0.0f64;
        for &l in &lanes[..n] {
            total += l as f64;
        }
        (total / n.max(1) as f64) as f32
    }
}

multiversion! {
    /// The rows of one chunk, in batches (see the module documentation).
    fn forward_chunk<T: Elem>[s](
        k: &Chunk<'_>,
        y: &mut [T],
        sum: &mut [T],
        x: &[T],
        residual: &[T],
    ) -> Vec<RowStats> {
        let d = k.d;
        let rows = x.len() / d;
        let row = |j: usize| j * d..(j + 1) * d;
        let per = (BATCH_BYTES / (2 * d * std::mem::size_of::<T>()).max(1)).clamp(1, 64);
        let mut out: Vec<RowStats> = Vec::with_capacity(rows);
        let mut pending: Vec<(f32, [f64; 2])> = Vec::with_capacity(per);
        let mut j0 = 0;
        while j0 < rows {
            let batch = j0..(j0 + per).min(rows);
            pending.clear();
            for j in batch.clone() {
                let (xr, rr) = (&x[row(j)], &residual[row(j)]);
                write_lanewise(s, &mut sum[row(j)], &mut AddSweep { x: xr, r: rr }, k.stream);
                pending.push(if k.stream {
                    let shift = if k.centered { shift_of(s, xr, rr) } else { 0.0 };
                    let mut sweep = StatSweep { x: xr, r: rr, shift: s.splat(shift) };
                    (shift, reduce(s, d, &mut sweep))
                } else {
                    let sr = std::iter::once(&sum[row(j)]);
                    let shift = if k.centered { moments::shift_of(s, sr) } else { 0.0 };
                    (shift, lanes::shifted_sums(s, &sum[row(j)], shift))
                });
            }
            let first = out.len();
            for (j, &(shift, sums)) in batch.clone().zip(&pending) {
                // The fallback, when the sums are refused, reads the row as
                // stored.
                let runs = std::iter::once(&sum[row(j)]);
                let m = finish_moments(s, runs, shift, sums, k.centered);
                let (mean_hi, mean_lo) = split(m.mean);
                out.push(RowStats { mean_hi, mean_lo, rstd: rstd(m.var, k.eps) as f32 });
            }
            for (j, g) in batch.clone().zip(&out[first..]) {
                // Prefetched meanwhile: the same row of the next batch.
                let next = j + batch.len();
                let ahead = if next < rows {
                    Ahead::two(&x[row(next)], &residual[row(next)])
                } else {
                    Ahead::NONE
                };
                let yr = &mut y[row(j)];
                if k.stream {
                    let mut sweep = OutSweep {
                        x: &x[row(j)],
                        r: &residual[row(j)],
                        w: k.weight,
                        b: k.bias,
                        ahead,
                        c: [s.splat(g.mean_hi), s.splat(g.mean_lo), s.splat(g.rstd)],
                    };
                    write_lanewise(s, yr, &mut sweep, true);
                } else {
                    let (w, b) = (k.weight, k.bias);
                    let sr = &sum[row(j)];
                    lanes::apply_vec(s, yr, sr, g.mean_hi, g.mean_lo, g.rstd, w, b, ahead, false);
                }
            }
            j0 = batch.end;
        }
        if k.stream {
            s.fence();
        }
        out
    }
}
