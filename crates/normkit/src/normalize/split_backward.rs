//! The training backward of batch statistics in two separate passes, for
//! sums taken over more than this input: SyncBatchNorm adds each rank's
//! pass-1 sums over all ranks before pass 2. [`Plan::backward_train`]
//! fuses the two passes instead.

use super::plan::{Coefs, GroupStats, Plan, Scope};
use crate::elem::Elem;
use crate::lanes::{self, Periodic};
use crate::layout::Stats;
use crate::parallel::{chunk_items, items_per_chunk, map_chunks, stream_output, SharedMut};
use crate::simd::multiversion;
use std::ops::Range;

impl Plan {
    /// Pass 1 alone: per channel `[Σdy, Σdy·x̂', Σx̂']`, with `x̂'` from the
    /// saved `f32` mean and rstd. Batch statistics only.
    pub fn backward_sums<T: Elem>(&self, dy: &[T], x: &[T], stats: &Stats) -> Vec<[f64; 3]> {
        debug_assert_eq!(self.scope, Scope::AcrossBatch);
        let p = self.canonical();
        let c = p.geo.c;
        if p.geo.len() == 0 {
            return vec![[0.0; 3]; c];
        }
        if p.columnar() {
            let [sdy, sdyx, sx] = p.column_sums(dy, x, &given(stats, c));
            return (0..c).map(|k| [sdy[k], sdyx[k], sx[k]]).collect();
        }
        let size = p.group_size();
        let per_chunk = items_per_chunk(c, size, 0);
        map_chunks(c.div_ceil(per_chunk), c * size, |i| {
            row_sums(&p, chunk_items(i, per_chunk, c), dy, x, stats)
        })
        .concat()
    }

    /// Pass 2 alone: `dx` from pass-1 `sums` ([`Plan::backward_sums`])
    /// taken over `count` values per channel, which may include other
    /// ranks' values. Returns each channel's residual `δ = Σx̂' / count`,
    /// by which `x̂'` exceeds `x̂` (see [`Plan::backward_train`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_dx_from_sums<T: Elem>(
        &self,
        dx: &mut [T],
        dy: &[T],
        x: &[T],
        weight: Option<&[f32]>,
        stats: &Stats,
        sums: &[[f64; 3]],
        count: u64,
    ) -> Vec<f64> {
        debug_assert_eq!(self.scope, Scope::AcrossBatch);
        let p = self.canonical();
        let c = p.geo.c;
        let n = count as f64;
        let delta = sums.iter().map(|s| s[2] / n).collect();
        if p.geo.len() == 0 {
            return delta;
        }
        let coefs = Coefs::weight_only(c, weight);
        let groups = given(stats, c);
        let dx = SharedMut::new(dx);
        if p.columnar() {
            let per = Periodic::new(c);
            let by_kind = [0, 1, 2].map(|j| sums.iter().map(|s| s[j]).collect());
            // One channel a group: `count` rows make `count` values.
            let rows = count as usize;
            let (_, k) = p.column_dx_coefs(&groups, &by_kind, &coefs, true, rows, &per);
            p.column_pass2(&dx, dy, x, &per, &k);
            return delta;
        }
        let size = p.group_size();
        let per_chunk = items_per_chunk(c, size, 0);
        let stream = stream_output::<T>(x.len());
        map_chunks(c.div_ceil(per_chunk), c * size, |i| {
            let chunk = chunk_items(i, per_chunk, c);
            super::row_backward::row_dx_given(
                &p, chunk, &dx, dy, x, &coefs, &groups, sums, n, stream,
            );
        });
        delta
    }
}

/// The saved statistics of `c` groups as the kernels take them.
fn given(stats: &Stats, c: usize) -> Vec<GroupStats> {
    (0..c).map(|k| GroupStats::given(stats, k)).collect()
}

multiversion! {
    /// Pass-1 sums of a chunk of row-path channels, run by run in order.
    fn row_sums<T: Elem>[s](plan: &Plan, groups: Range<usize>, dy: &[T], x: &[T], stats: &Stats) -> Vec<[f64; 3]> {
        let mut out = Vec::with_capacity(groups.len());
        for k in groups {
            let g = GroupStats::given(stats, k);
            let mut acc = [0.0f64; 3];
            for run in plan.runs(k) {
                let r = lanes::bwd_sums_scalar(s, &dy[run.range()], &x[run.range()], g.mean_hi, g.rstd);
                acc = [acc[0] + r[0], acc[1] + r[1], acc[2] + r[2]];
            }
            out.push(acc);
        }
        out
    }
}
