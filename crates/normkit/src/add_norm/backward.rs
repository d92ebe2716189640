//! The fused backward: the norm's backward with the residual stream's
//! gradient added on the way out, one pass over memory.
//!
//! Rows go in batches that fit in the first cache level: pass 1 of each
//! row reads `dy` and `sum` from memory and takes the engine's sums
//! ([`crate::lanes::bwd_sums_vec`]); pass 2 reads them again from cache,
//! `dsum` from memory, and writes `dx` while adding `dy · x̂` and `dy` into
//! the per-element parameter sums, flushed as the engine flushes them.
//! Without `dsum`, `dx`, `dweight` and `dbias` are bit for bit those of
//! [`crate::layer_norm_backward`] on `sum`; with it, `dx` is that `dx`
//! plus `dsum` in `f32`, rounded to `T` once.

use crate::elem::Elem;
use crate::lanes::{
    self, load_m, store_m, write_lanewise, Ahead, DxCoef, Lanewise, ROWS_PER_FLUSH,
};
use crate::layout::{Grads, Stats};
use crate::normalize::{dx_coef, Partials, BATCH_BYTES};
use crate::parallel::{chunk_items, items_per_chunk, map_chunks, stream_output, SharedMut};
use crate::simd::{multiversion, Isa, LANES};
use std::borrow::Cow;

/// The inputs of a backward call, checked.
pub(super) struct Backward<'a, T> {
    pub dy: &'a [T],
    pub dsum: Option<&'a [T]>,
    pub sum: &'a [T],
    /// Row length.
    pub d: usize,
    pub weight: Option<&'a [f32]>,
    pub stats: &'a Stats,
    pub centered: bool,
}

pub(super) fn backward<T: Elem>(b: Backward<'_, T>, mut grads: Grads<'_, T>) {
    let d = b.d;
    let rows = b.sum.len() / d;
    if rows == 0 {
        // No values: parameter gradients are empty sums.
        for g in [grads.dweight, grads.dbias].into_iter().flatten() {
            g.fill(0.0);
        }
        return;
    }
    let weight = b
        .weight
        .map_or_else(|| Cow::Owned(vec![1.0; d]), Cow::Borrowed);
    // The engine's chunks for rows of `d` channels, so the parameter sums
    // are merged in the same order.
    let per_chunk = items_per_chunk(rows, d, Partials::bytes(d, true));
    let stream = stream_output::<T>(b.sum.len());
    let dx = SharedMut::new(grads.dx);
    let parts = map_chunks(rows.div_ceil(per_chunk), rows * d, |i| {
        let r = chunk_items(i, per_chunk, rows);
        let span = r.start * d..r.end * d;
        // SAFETY: chunks cover disjoint rows.
        let out = unsafe { dx.range(span.clone()) };
        let k = Chunk {
            d,
            weight: &weight,
            stats: b.stats,
            first_row: r.start,
            centered: b.centered,
            stream,
        };
        let dsum = b.dsum.map(|v| &v[span.clone()]);
        backward_chunk(&k, out, &b.dy[span.clone()], dsum, &b.sum[span])
    });
    grads.dx = &mut [];
    Partials::finish(parts, grads);
}

/// What every row of a chunk shares.
struct Chunk<'a> {
    d: usize,
    weight: &'a [f32],
    stats: &'a Stats,
    /// The chunk's first row, where its statistics start.
    first_row: usize,
    centered: bool,
    stream: bool,
}

/// Pass 2 of one row: the engine's [`crate::lanes::bwd_dx_vec`] with
/// `dsum` added to `dx`.
struct DxSweep<'a, S: Isa, T> {
    dy: &'a [T],
    sum: &'a [T],
    dsum: Option<&'a [T]>,
    w: &'a [f32],
    dw: &'a mut [f32],
    db: &'a mut [f32],
    ahead: Ahead<T>,
    /// mean_hi, mean_lo, rstd, rstd · mean(g), rstd · mean(g · x̂).
    c: [S::V; 5],
}

impl<S: Isa, T: Elem> DxSweep<'_, S, T> {
    #[inline(always)]
    fn dx(&mut self, s: S, i: usize, m: usize) -> S::V {
        let (d, v) = (load_m(s, self.dy, i, m), load_m(s, self.sum, i, m));
        let w = load_m(s, self.w, i, m);
        let (dw, db) = (load_m(s, self.dw, i, m), load_m(s, self.db, i, m));
        let [mh, ml, r, mg, mgx] = self.c;
        let xh = s.mul(s.sub(s.sub(v, mh), ml), r);
        let o = s.sub(s.mul(s.mul(d, w), r), s.fma(xh, mgx, mg));
        store_m(s, self.dw, i, m, s.fma(d, xh, dw));
        store_m(s, self.db, i, m, s.add(db, d));
        match self.dsum {
            Some(g) => s.add(o, load_m(s, g, i, m)),
            None => o,
        }
    }
}

impl<S: Isa, T: Elem> Lanewise<S> for DxSweep<'_, S, T> {
    #[inline(always)]
    fn at(&mut self, s: S, i: usize) -> S::V {
        self.ahead.at(i);
        self.dx(s, i, LANES)
    }
    #[inline(always)]
    fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
        self.dx(s, i, n)
    }
}

multiversion! {
    /// The rows of one chunk, in batches (see the module documentation).
    fn backward_chunk<T: Elem>[s](
        k: &Chunk<'_>,
        dx: &mut [T],
        dy: &[T],
        dsum: Option<&[T]>,
        sum: &[T],
    ) -> Partials {
        let d = k.d;
        let rows = sum.len() / d;
        let row = |j: usize| j * d..(j + 1) * d;
        let mut parts = Partials::new(d, true);
        let per = (BATCH_BYTES / (2 * d * std::mem::size_of::<T>()).max(1)).clamp(1, 64);
        let mut coefs: Vec<DxCoef> = Vec::with_capacity(per);
        let mut j0 = 0;
        while j0 < rows {
            let batch = j0..(j0 + per).min(rows);
            coefs.clear();
            for j in batch.clone() {
                let g = k.first_row + j;
                let mean = if k.centered { k.stats.mean[g] } else { 0.0 };
                let rstd = k.stats.rstd[g];
                let sums = lanes::bwd_sums_vec(s, &dy[row(j)], &sum[row(j)], mean, rstd, k.weight);
                coefs.push(dx_coef(true, k.centered, d as f64, mean, rstd, sums).0);
            }
            for (j, c) in batch.clone().zip(&coefs) {
                let next = j + batch.len();
                let ahead = if next < rows {
                    Ahead::two(&dy[row(next)], &sum[row(next)])
                } else {
                    Ahead::NONE
                };
                let mut sweep = DxSweep {
                    dy: &dy[row(j)],
                    sum: &sum[row(j)],
                    dsum: dsum.map(|v| &v[row(j)]),
                    w: k.weight,
                    dw: &mut parts.dweight32[..],
                    db: &mut parts.dbias32[..],
                    ahead,
                    c: [
                        s.splat(c.mean_hi),
                        s.splat(c.mean_lo),
                        s.splat(c.rstd),
                        s.splat(c.mean_g * c.rstd),
                        s.splat(c.mean_gx * c.rstd),
                    ],
                };
                write_lanewise(s, &mut dx[row(j)], &mut sweep, k.stream);
                // The last rows' f32 sums stay in the partials.
                if (j + 1) % ROWS_PER_FLUSH == 0 && j + 1 < rows {
                    parts.flush();
                }
            }
            j0 = batch.end;
        }
        if k.stream {
            s.fence();
        }
        parts
    }
}
