//! The row path backward: pass 1 (sums) of each group skewed with pass 2
//! (`dx`) of the group before it, or in batches for small groups.

use super::careful::{self, BackwardLimit};
use super::partials::Partials;
use super::plan::{correction, Backward, Coefs, GroupStats, Plan, Run, BATCH_BYTES};
use crate::elem::Elem;
use crate::lanes::{self, Ahead, DxCoef, ROWS_PER_FLUSH};
use crate::layout::ChannelAxis;
use crate::parallel::{chunk_items, items_per_chunk, map_chunks, stream_output, SharedMut};
use crate::simd::{multiversion, Isa};
use std::ops::Range;

impl Plan {
    pub(super) fn row_backward<T: Elem>(
        &self,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        coefs: &Coefs<'_>,
        mode: Backward<'_>,
    ) -> Vec<Partials> {
        let groups = self.num_groups();
        let size = self.group_size();
        let c = self.geo.c;
        let per_element = self.geo.axis == ChannelAxis::Last;
        let per_chunk = items_per_chunk(groups, size, Partials::bytes(c, per_element));
        let chunks = groups.div_ceil(per_chunk);
        let stream = stream_output::<T>(x.len());
        map_chunks(chunks, groups * size, |i| {
            let groups = chunk_items(i, per_chunk, groups);
            row_backward_chunk(self, groups, dx, dy, x, coefs, mode, stream)
        })
    }
}

/// A group of the row backward whose pass 1 is done and whose pass 2 is
/// pending.
struct Held {
    runs: Vec<Run>,
    coef: DxCoef,
    /// Per-run `[Σdy, Σdy·x̂, Σx̂]` (runs of one channel).
    run_sums: Vec<[f64; 3]>,
    delta: f64,
    /// Saved `(mean, rstd)` and `(train, centered)` of a group whose
    /// backward runs in `f64` ([`careful`]), both passes in pass 2.
    wide: Option<((f32, f32), (bool, bool))>,
}

multiversion! {
    /// The row backward over a chunk of groups. Pass 1 of each group (sums,
    /// from memory) runs in one loop with pass 2 of the group before it
    /// (dx, from cache; see [`lanes::Skewed`]); the first group's pass 1
    /// and the last group's pass 2 run alone. Small groups, and inputs
    /// that fit in cache, go in batches instead, as in the forward.
    fn row_backward_chunk<T: Elem>[s](
        plan: &Plan,
        groups: Range<usize>,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        coefs: &Coefs<'_>,
        mode: Backward<'_>,
        stream: bool,
    ) -> Partials {
        let c = plan.geo.c;
        let n = plan.group_size() as f64;
        // Per-element (LayerNorm) parameter sums go through f32 rows first.
        let per_element = plan.geo.axis == ChannelAxis::Last;
        let mut parts = Partials::new(c, per_element);
        let limit = BackwardLimit::new(plan.group_size());
        let (end, count) = (groups.end, groups.len());
        let mut held: Option<Held> = None;
        let mut spare = Held::new();
        let mut done = 0usize;
        let mut after: Vec<Run> = Vec::new();
        // Pass 2 bookkeeping once a held group's dx is written.
        let mut finish = |h: &Held, parts: &mut Partials| {
            for (run, sums) in h.runs.iter().zip(&h.run_sums) {
                parts.add(run.channel, sums[1] - h.delta * sums[0], sums[0]);
            }
            done += 1;
            // The last rows' f32 sums stay in the partials.
            if per_element && done.is_multiple_of(ROWS_PER_FLUSH) && done < count {
                parts.flush();
            }
        };
        let group_bytes = plan.group_size() * std::mem::size_of::<T>();
        if plan.batched::<T>() {
            // Small groups in batches, as in the forward: pass 1 of every
            // group of a batch, then pass 2 of each from cache. The same
            // sums in the same order as the skewed loop.
            let per = (BATCH_BYTES / group_bytes.max(1)).clamp(1, 64);
            let mut batch: Vec<Held> = (0..per.min(groups.len())).map(|_| Held::new()).collect();
            let mut k0 = groups.start;
            while k0 < end {
                let ks = k0..(k0 + per).min(end);
                for (h, k) in batch.iter_mut().zip(ks.clone()) {
                    bwd_pass1(s, h, plan, k, dy, x, coefs, &mode, limit);
                }
                for h in &batch[..ks.len()] {
                    bwd_pass2(s, h, dx, dy, x, coefs, &mut parts, stream);
                    finish(h, &mut parts);
                }
                k0 = ks.end;
            }
        } else {
            for k in groups {
                let mut cur = std::mem::replace(&mut spare, Held::new());
                cur.runs.clear();
                cur.runs.extend(plan.runs(k));
                cur.run_sums.clear();
                let g = GroupStats::given(mode.stats, k);
                if limit.needs_wide(g.mean_hi, g.rstd) {
                    // Alone, in f64: the held group's pass 2 first.
                    if let Some(h) = held.take() {
                        bwd_pass2(s, &h, dx, dy, x, coefs, &mut parts, stream);
                        finish(&h, &mut parts);
                    }
                    let flags = (mode.train, plan.centered);
                    let stats = (g.mean_hi, g.rstd);
                    careful::backward_runs(&cur.runs, stats, flags, dx, dy, x, coefs, &mut parts);
                    finish(&cur, &mut parts);
                    spare = cur;
                    continue;
                }
                let mean = if plan.centered { g.mean_hi } else { 0.0 };
                // Runs of the group after this one, fetched while this loop runs.
                after.clear();
                if k + 1 < end {
                    after.extend(plan.runs(k + 1));
                }
                let (mut sg, mut sgx, mut sx) = (0.0f64, 0.0f64, 0.0f64);
                for (j, run) in cur.runs.iter().enumerate() {
                    let (x1, dy1) = (&x[run.range()], &dy[run.range()]);
                    let ahead = after.get(j).map_or(Ahead::NONE, |r| Ahead::two(&x[r.range()], &dy[r.range()]));
                    let sums = match &held {
                        Some(h) => {
                            let r0 = h.runs[j];
                            // SAFETY: each value belongs to exactly one group's
                            // runs, and each group to exactly one chunk.
                            let dx0 = unsafe { dx.range(r0.range()) };
                            let k = lanes::Skewed {
                                dy1, x1, mean1: mean, rstd1: g.rstd,
                                dx0, dy0: &dy[r0.range()], x0: &x[r0.range()], k0: h.coef, ahead,
                            };
                            if run.per_element {
                                let c1 = run.channel..run.channel + run.len;
                                let c0 = r0.channel..r0.channel + r0.len;
                                let (w1, w0) = (&coefs.weight[c1], &coefs.weight[c0.clone()]);
                                let (dw, db) = (&mut parts.dweight32[c0.clone()], &mut parts.dbias32[c0]);
                                s.outlined(#[inline(always)] || lanes::bwd_skewed_vec(s, k, w1, w0, dw, db))
                            } else {
                                let w0 = coefs.weight[r0.channel];
                                s.outlined(#[inline(always)] || lanes::bwd_skewed_scalar(s, k, w0))
                            }
                        }
                        None if run.per_element => {
                            let w = &coefs.weight[run.channel..run.channel + run.len];
                            lanes::bwd_sums_vec(s, dy1, x1, mean, g.rstd, w)
                        }
                        None => lanes::bwd_sums_scalar(s, dy1, x1, mean, g.rstd),
                    };
                    if run.per_element {
                        sg += sums[0];
                        sgx += sums[1];
                        sx += sums[2];
                    } else {
                        let w = coefs.weight[run.channel] as f64;
                        sg += w * sums[0];
                        sgx += w * sums[1];
                        sx += sums[2];
                        cur.run_sums.push(sums);
                    }
                }
                if let Some(h) = held.take() {
                    finish(&h, &mut parts);
                    spare = h;
                }
                cur.set_coef(mode.train, plan.centered, n, g, [sg, sgx, sx]);
                held = Some(cur);
            }
            // The last group's pass 2 alone.
            if let Some(h) = held.take() {
                bwd_pass2(s, &h, dx, dy, x, coefs, &mut parts, stream);
                finish(&h, &mut parts);
            }
        }
        if stream {
            s.fence();
        }
        parts
    }
}

impl Held {
    fn new() -> Self {
        Held {
            runs: Vec::new(),
            coef: DX_NONE,
            run_sums: Vec::new(),
            delta: 0.0,
            wide: None,
        }
    }

    /// The coefficients of pass 2 from the group's statistics `g` and its
    /// pass-1 sums `[Σg, Σg·x̂, Σx̂]`.
    fn set_coef(&mut self, train: bool, centered: bool, n: f64, g: GroupStats, sums: [f64; 3]) {
        (self.coef, self.delta) = dx_coef(train, centered, n, g.mean_hi, g.rstd, sums);
    }
}

/// The coefficients of pass 2 for a group of `n` values with saved `mean`
/// and `rstd`, from its pass-1 sums `[Σg, Σg·x̂, Σx̂]`, and the residual
/// `δ` of the rounded mean (see [`correction`]). Shared with the fused
/// residual ops, whose backward is this one plus a term.
pub(crate) fn dx_coef(
    train: bool,
    centered: bool,
    n: f64,
    mean: f32,
    rstd: f32,
    sums: [f64; 3],
) -> (DxCoef, f64) {
    let (delta, mean_g, mean_gx) = correction(train, centered, n, sums);
    let coef = DxCoef {
        mean_hi: if centered { mean } else { 0.0 },
        mean_lo: if rstd != 0.0 {
            (delta / rstd as f64) as f32
        } else {
            0.0
        },
        rstd,
        mean_g: mean_g as f32,
        mean_gx: mean_gx as f32,
    };
    (coef, delta)
}

/// Pass 1 of group `k` of the row backward alone: its runs, their sums,
/// and the coefficients of pass 2, in `h`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_pass1<S: Isa, T: Elem>(
    s: S,
    h: &mut Held,
    plan: &Plan,
    k: usize,
    dy: &[T],
    x: &[T],
    coefs: &Coefs<'_>,
    mode: &Backward<'_>,
    limit: BackwardLimit,
) {
    h.runs.clear();
    h.runs.extend(plan.runs(k));
    h.run_sums.clear();
    let g = GroupStats::given(mode.stats, k);
    let wide = limit.needs_wide(g.mean_hi, g.rstd);
    h.wide = wide.then_some(((g.mean_hi, g.rstd), (mode.train, plan.centered)));
    if wide {
        return;
    }
    let mean = if plan.centered { g.mean_hi } else { 0.0 };
    let (mut sg, mut sgx, mut sx) = (0.0f64, 0.0f64, 0.0f64);
    for run in &h.runs {
        let (x1, dy1) = (&x[run.range()], &dy[run.range()]);
        if run.per_element {
            let w = &coefs.weight[run.channel..run.channel + run.len];
            let sums = lanes::bwd_sums_vec(s, dy1, x1, mean, g.rstd, w);
            sg += sums[0];
            sgx += sums[1];
            sx += sums[2];
        } else {
            let sums = lanes::bwd_sums_scalar(s, dy1, x1, mean, g.rstd);
            let w = coefs.weight[run.channel] as f64;
            sg += w * sums[0];
            sgx += w * sums[1];
            sx += sums[2];
            h.run_sums.push(sums);
        }
    }
    h.set_coef(
        mode.train,
        plan.centered,
        plan.group_size() as f64,
        g,
        [sg, sgx, sx],
    );
}

/// Pass 2 of a held group alone: its `dx`, and for per-element runs the
/// parameter sums into `parts`' `f32` sums.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_pass2<S: Isa, T: Elem>(
    s: S,
    h: &Held,
    dx: &SharedMut<'_, T>,
    dy: &[T],
    x: &[T],
    coefs: &Coefs<'_>,
    parts: &mut Partials,
    stream: bool,
) {
    if let Some((stats, flags)) = h.wide {
        careful::backward_runs(&h.runs, stats, flags, dx, dy, x, coefs, parts);
        return;
    }
    for run in &h.runs {
        let (xr, dyr) = (&x[run.range()], &dy[run.range()]);
        // SAFETY: each value belongs to exactly one group's runs, and each
        // group to exactly one chunk.
        let out = unsafe { dx.range(run.range()) };
        if run.per_element {
            let cs = run.channel..run.channel + run.len;
            let w = &coefs.weight[cs.clone()];
            lanes::bwd_dx_vec(
                s,
                out,
                dyr,
                xr,
                h.coef,
                w,
                &mut parts.dweight32[cs.clone()],
                &mut parts.dbias32[cs],
                Ahead::NONE,
                stream,
            );
        } else {
            lanes::bwd_dx_scalar(
                s,
                out,
                dyr,
                xr,
                h.coef,
                coefs.weight[run.channel],
                Ahead::NONE,
                stream,
            );
        }
    }
}

multiversion! {
    /// Pass 2 alone of a chunk of groups of one channel each (BatchNorm's
    /// channels), from given pass-1 sums `[Σdy, Σdy·x̂, Σx̂]` per group
    /// over `n` values: SyncBatchNorm's, taken over every rank.
    pub(super) fn row_dx_given<T: Elem>[s](
        plan: &Plan,
        groups: Range<usize>,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        coefs: &Coefs<'_>,
        stats: &[GroupStats],
        sums: &[[f64; 3]],
        n: f64,
        stream: bool,
    ) {
        // Runs of one channel collect no per-element parameter sums.
        let mut unused = Partials::new(0, false);
        let mut h = Held::new();
        for k in groups {
            h.runs.clear();
            h.runs.extend(plan.runs(k));
            let w = coefs.weight[k] as f64;
            let [sdy, sdyx, sx] = sums[k];
            h.set_coef(true, plan.centered, n, stats[k], [w * sdy, w * sdyx, sx]);
            bwd_pass2(s, &h, dx, dy, x, coefs, &mut unused, stream);
        }
        if stream {
            s.fence();
        }
    }
}

/// Placeholder coefficients of a [`Held`] not yet filled.
const DX_NONE: DxCoef = DxCoef {
    mean_hi: 0.0,
    mean_lo: 0.0,
    rstd: 0.0,
    mean_g: 0.0,
    mean_gx: 0.0,
};
