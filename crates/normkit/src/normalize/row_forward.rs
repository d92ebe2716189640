//! The row path forward: each group a few long contiguous runs, its
//! statistics and its output computed while it is in cache.

use super::careful;
use super::plan::{Coefs, GroupStats, Norm, Plan, Run, BATCH_BYTES, SKEW_MAX_BYTES};
use crate::elem::Elem;
use crate::lanes::{self, Ahead};
use crate::moments::{finish_moments, group_moments, shift_of, Moments};
use crate::parallel::{chunk_items, items_per_chunk, map_chunks, stream_output, SharedMut};
use crate::simd::{multiversion, Isa};
use std::ops::Range;

impl Plan {
    /// Row path forward over all groups; returns each group's moments
    /// (placeholders when the statistics are given).
    pub(super) fn row_forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        coefs: &Coefs<'_>,
        norm: Norm<'_>,
    ) -> Vec<Moments> {
        let groups = self.num_groups();
        let size = self.group_size();
        let per_chunk = items_per_chunk(groups, size, 0);
        let chunks = groups.div_ceil(per_chunk);
        let stream = stream_output::<T>(y.len());
        let y = SharedMut::new(y);
        map_chunks(chunks, groups * size, |i| {
            let groups = chunk_items(i, per_chunk, groups);
            row_forward_chunk(self, groups, &y, x, coefs, norm, stream)
        })
        .concat()
    }
}

/// The output sweep of one group with statistics `g`, prefetching the
/// runs of `next` (the group whose statistics come next).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn write_group<S: Isa, T: Elem>(
    s: S,
    runs: &[Run],
    next: &[Run],
    g: GroupStats,
    y: &SharedMut<'_, T>,
    x: &[T],
    coefs: &Coefs<'_>,
    stream: bool,
) {
    if let Some(w) = g.wide {
        careful::forward_runs(runs, w, y, x, coefs);
        return;
    }
    for (j, run) in runs.iter().enumerate() {
        let xr = &x[run.range()];
        let ahead = next
            .get(j)
            .map_or(Ahead::NONE, |r| Ahead::one(&x[r.range()]));
        // SAFETY: each value belongs to exactly one group's runs, and each
        // group to exactly one chunk.
        let yr = unsafe { y.range(run.range()) };
        if run.per_element {
            let cs = run.channel..run.channel + run.len;
            let (w, b) = (&coefs.weight[cs.clone()], &coefs.bias[cs]);
            lanes::apply_vec(s, yr, xr, g.mean_hi, g.mean_lo, g.rstd, w, b, ahead, stream);
        } else {
            let a = g.rstd * coefs.weight[run.channel];
            let b = coefs.bias[run.channel];
            lanes::apply_scalar(s, yr, xr, g.mean_hi, g.mean_lo, a, b, ahead, stream);
        }
    }
}

multiversion! {
    /// The row forward over a chunk of groups. With statistics from the
    /// data, the statistics sweep of each group runs in one loop with the
    /// output sweep of the group before it (see [`lanes::SkewedFwd`]); the
    /// first group's statistics and the last group's output run alone.
    /// Small groups, and inputs that fit in cache, go in batches instead
    /// ([`forward_batched`]).
    fn row_forward_chunk<T: Elem>[s](
        plan: &Plan,
        groups: Range<usize>,
        y: &SharedMut<'_, T>,
        x: &[T],
        coefs: &Coefs<'_>,
        norm: Norm<'_>,
        stream: bool,
    ) -> Vec<Moments> {
        let mut out = Vec::with_capacity(groups.len());
        let end = groups.end;
        let eps = match norm {
            Norm::Batch(eps) => eps,
            Norm::Given(given) => {
                // Statistics given: one sweep per group, nothing to overlap.
                let mut runs: Vec<Run> = Vec::new();
                for k in groups {
                    runs.clear();
                    runs.extend(plan.runs(k));
                    write_group(s, &runs, &[], given[k], y, x, coefs, stream);
                    out.push(Moments::EMPTY);
                }
                if stream {
                    s.fence();
                }
                return out;
            }
        };
        let group_bytes = plan.group_size() * std::mem::size_of::<T>();
        if plan.batched::<T>() {
            return forward_batched(s, plan, groups, y, x, coefs, eps, stream);
        }
        let skew = group_bytes <= SKEW_MAX_BYTES;
        // `runs`: the group being read; `held`: the group read before it,
        // whose output is written next, with its statistics.
        let (mut runs, mut held, mut after): (Vec<Run>, Vec<Run>, Vec<Run>) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut held_stats: Option<GroupStats> = None;
        for k in groups {
            runs.clear();
            runs.extend(plan.runs(k));
            after.clear();
            if k + 1 < end {
                after.extend(plan.runs(k + 1));
            }
            let shift = if plan.centered { shift_of(s, runs.iter().map(|r| &x[r.range()])) } else { 0.0 };
            let mut sums = [0.0f64; 2];
            for (j, run) in runs.iter().enumerate() {
                let x1 = &x[run.range()];
                let ahead = after.get(j).map_or(Ahead::NONE, |r| Ahead::one(&x[r.range()]));
                let [a, b] = match held_stats {
                    Some(g) if skew => {
                        let r0 = held[j];
                        // SAFETY: each value belongs to exactly one group's
                        // runs, and each group to exactly one chunk.
                        let y0 = unsafe { y.range(r0.range()) };
                        let k = lanes::SkewedFwd {
                            x1, shift1: shift, y0, x0: &x[r0.range()],
                            mean_hi: g.mean_hi, mean_lo: g.mean_lo, ahead, stream,
                        };
                        if r0.per_element {
                            let cs = r0.channel..r0.channel + r0.len;
                            let (w, b) = (&coefs.weight[cs.clone()], &coefs.bias[cs]);
                            s.outlined(#[inline(always)] || lanes::fwd_skewed_vec(s, k, g.rstd, w, b))
                        } else {
                            let a = g.rstd * coefs.weight[r0.channel];
                            let b = coefs.bias[r0.channel];
                            s.outlined(#[inline(always)] || lanes::fwd_skewed_scalar(s, k, a, b))
                        }
                    }
                    _ => lanes::shifted_sums(s, x1, shift),
                };
                sums = [sums[0] + a, sums[1] + b];
            }
            let m = finish_moments(s, runs.iter().map(|r| &x[r.range()]), shift, sums, plan.centered);
            out.push(m);
            let g = GroupStats::from_moments(&m, eps);
            if skew && g.wide.is_none() {
                held_stats = Some(g);
                std::mem::swap(&mut runs, &mut held);
            } else {
                // A group normalized in f64 is written alone.
                held_stats = None;
                write_group(s, &runs, &after, g, y, x, coefs, stream);
            }
        }
        if let Some(g) = held_stats {
            write_group(s, &held, &[], g, y, x, coefs, stream);
        }
        if stream {
            s.fence();
        }
        out
    }
}

/// The row forward of small groups: the sums of a batch of groups (from
/// memory), then their statistics (independent of each other, so the
/// latencies of their divisions and square roots overlap), then their
/// outputs (from L1). The sums are those of the skewed loop, in the same
/// order, so the path changes no bit.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_batched<S: Isa, T: Elem>(
    s: S,
    plan: &Plan,
    groups: Range<usize>,
    y: &SharedMut<'_, T>,
    x: &[T],
    coefs: &Coefs<'_>,
    eps: f32,
    stream: bool,
) -> Vec<Moments> {
    let group_bytes = plan.group_size() * std::mem::size_of::<T>();
    let per = (BATCH_BYTES / group_bytes.max(1)).clamp(1, 64);
    let mut out = Vec::with_capacity(groups.len());
    let mut runs: Vec<Run> = Vec::new();
    let mut pending: Vec<(f32, [f64; 2])> = Vec::with_capacity(per);
    let mut k0 = groups.start;
    while k0 < groups.end {
        let batch = k0..(k0 + per).min(groups.end);
        pending.clear();
        for k in batch.clone() {
            runs.clear();
            runs.extend(plan.runs(k));
            let shift = if plan.centered {
                shift_of(s, runs.iter().map(|r| &x[r.range()]))
            } else {
                0.0
            };
            let mut sums = [0.0f64; 2];
            for r in &runs {
                let [a, b] = lanes::shifted_sums(s, &x[r.range()], shift);
                sums = [sums[0] + a, sums[1] + b];
            }
            pending.push((shift, sums));
        }
        let first = out.len();
        for (k, &(shift, sums)) in batch.clone().zip(&pending) {
            let group = plan.runs(k).map(|r| &x[r.range()]);
            out.push(finish_moments(s, group, shift, sums, plan.centered));
        }
        for (k, m) in batch.clone().zip(&out[first..]) {
            runs.clear();
            runs.extend(plan.runs(k));
            write_group(
                s,
                &runs,
                &[],
                GroupStats::from_moments(m, eps),
                y,
                x,
                coefs,
                stream,
            );
        }
        k0 = batch.end;
    }
    if stream {
        s.fence();
    }
    out
}

multiversion! {
    fn row_moments_chunk<T: Elem>[s](plan: &Plan, groups: Range<usize>, x: &[T]) -> Vec<Moments> {
        let mut runs: Vec<Run> = Vec::new();
        groups
            .map(|k| {
                runs.clear();
                runs.extend(plan.runs(k));
                group_moments(s, runs.iter().map(|r| &x[r.range()]), plan.centered)
            })
            .collect()
    }
}

impl Plan {
    /// Each group's moments on the row path, without normalizing.
    pub(super) fn row_moments<T: Elem>(&self, x: &[T]) -> Vec<Moments> {
        let groups = self.num_groups();
        let size = self.group_size();
        let per_chunk = items_per_chunk(groups, size, 0);
        let chunks = groups.div_ceil(per_chunk);
        map_chunks(chunks, groups * size, |i| {
            row_moments_chunk(self, chunk_items(i, per_chunk, groups), x)
        })
        .concat()
    }
}
