//! The shared engine behind BatchNorm, LayerNorm, RMSNorm, GroupNorm and
//! InstanceNorm.
//!
//! Each of them normalizes groups of values with a mean and a standard
//! deviation and then applies a per-channel affine transform. They differ
//! only in which values form a group, which [`Plan`] describes on the
//! canonical `[n, c, s]` / `[n, s, c]` view:
//!
//! | op | scope | groups per sample | centered |
//! |---|---|---|---|
//! | BatchNorm | across the batch | one per channel | yes |
//! | GroupNorm | per sample | `num_groups` | yes |
//! | InstanceNorm | per sample | `c` (GroupNorm with one channel a group) | yes |
//! | LayerNorm | per sample | 1, on `[rows, 1, d]` channels-last | yes |
//! | RMSNorm | per sample | 1, as LayerNorm | no |
//!
//! Two paths execute a plan:
//!
//! - the **row path**, when each group is a few long contiguous [`Run`]s
//!   (channels first, and LayerNorm rows): a group is loaded once, its
//!   statistics computed and the group normalized while it is in cache;
//! - the **column path**, for channels-last data with a spatial extent or
//!   batch statistics: rows of `c` channels are reduced per channel and
//!   the per-channel sums combined into group statistics.
//!
//! Both are cut into chunks fixed by the shape ([`crate::parallel`]), so
//! results do not depend on the thread count. A new normalization that is
//! "some groups of channels, per-channel affine" needs only a new `Plan`.

use crate::elem::Elem;
use crate::error::Result;
use crate::lanes::{self, Ahead, DxChannels, DxCoef, Periodic, ROWS_PER_FLUSH};
use crate::layout::{
    check_affine, check_grads, check_len, Affine, ChannelAxis, Geometry, Grads, RunningStats, Stats,
};
use crate::moments::{finish_moments, group_moments, rstd, scale_for, shift_of, split, Moments};
use crate::parallel::{
    chunk_items, for_blocks, items_per_chunk, map_chunks, stream_output, Scratch, SharedMut,
};
use crate::simd::{multiversion, Isa};
use std::borrow::Cow;
use std::ops::Range;

/// Which values share one statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One statistic per channel, over the batch and spatial extent.
    AcrossBatch,
    /// `groups` statistics per sample, each over `c / groups` whole channels.
    PerSample { groups: usize },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub geo: Geometry,
    pub scope: Scope,
    /// Subtract the mean (false for RMSNorm).
    pub centered: bool,
}

/// A contiguous stretch of one group's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: usize,
    pub len: usize,
    /// Channel of the first value.
    pub channel: usize,
    /// The channel advances with each value (channels-last) rather than
    /// staying fixed for the whole run (channels-first).
    pub per_element: bool,
}

impl Run {
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// The runs of one group, computed on the fly: run `i` starts at
/// `first + i · stride` with channel `channel + i · channel_step`.
#[derive(Debug, Clone)]
pub(crate) struct Runs {
    first: usize,
    stride: usize,
    len: usize,
    channel: usize,
    channel_step: usize,
    per_element: bool,
    next: usize,
    count: usize,
}

impl Iterator for Runs {
    type Item = Run;

    #[inline]
    fn next(&mut self) -> Option<Run> {
        if self.next == self.count {
            return None;
        }
        let i = self.next;
        self.next += 1;
        Some(Run {
            start: self.first + i * self.stride,
            len: self.len,
            channel: self.channel + i * self.channel_step,
            per_element: self.per_element,
        })
    }
}

/// Weight and bias as plain per-channel slices (ones and zeros built once
/// per call when absent) so inner loops have no branches.
struct Coefs<'a> {
    weight: Cow<'a, [f32]>,
    bias: Cow<'a, [f32]>,
}

impl<'a> Coefs<'a> {
    /// For the backward passes, which never read the bias.
    fn weight_only(c: usize, weight: Option<&'a [f32]>) -> Self {
        Coefs {
            weight: weight.map_or_else(|| Cow::Owned(vec![1.0; c]), Cow::Borrowed),
            bias: Cow::Borrowed(&[]),
        }
    }

    fn new(c: usize, weight: Option<&'a [f32]>, bias: Option<&'a [f32]>) -> Self {
        Coefs {
            weight: weight.map_or_else(|| Cow::Owned(vec![1.0; c]), Cow::Borrowed),
            bias: bias.map_or_else(|| Cow::Owned(vec![0.0; c]), Cow::Borrowed),
        }
    }
}

/// Per-channel parameter-gradient partial sums of one chunk.
///
/// Per-channel runs add into `f64` sums; per-element rows (channels-last)
/// add into `f32` sums, `dweight32` and `dbias32`, flushed into the `f64`
/// ones every [`ROWS_PER_FLUSH`] rows. A per-element chunk allocates its
/// `f64` sums at its first flush only, so a chunk of at most that many
/// rows never has them: on rows of 65536 channels, zeroing and merging
/// `f64` sums per chunk cost a third of the backward pass.
#[derive(Debug)]
pub(crate) struct Partials {
    dweight: Scratch<f64>,
    dbias: Scratch<f64>,
    pub dweight32: Scratch<f32>,
    pub dbias32: Scratch<f32>,
    c: usize,
}

impl Partials {
    /// Zeroed sums of `c` channels, for per-element rows or per-channel runs.
    pub fn new(c: usize, per_element: bool) -> Self {
        let (wide, narrow) = if per_element { (0, c) } else { (c, 0) };
        Partials {
            dweight: Scratch::zeroed(wide),
            dbias: Scratch::zeroed(wide),
            dweight32: Scratch::zeroed(narrow),
            dbias32: Scratch::zeroed(narrow),
            c,
        }
    }

    /// Bytes of the sums a chunk of `c` channels holds (per-element
    /// chunks of at most [`ROWS_PER_FLUSH`] rows).
    pub fn bytes(c: usize, per_element: bool) -> usize {
        c * if per_element { 8 } else { 16 }
    }

    fn widen(&mut self) {
        if self.dweight.len() < self.c {
            self.dweight = Scratch::zeroed(self.c);
            self.dbias = Scratch::zeroed(self.c);
        }
    }

    /// Adds the sums of one per-channel run.
    #[inline]
    pub fn add(&mut self, channel: usize, dweight: f64, dbias: f64) {
        self.widen();
        self.dweight[channel] += dweight;
        self.dbias[channel] += dbias;
    }

    /// Adds the `f32` sums into the `f64` ones and zeroes them.
    pub fn flush(&mut self) {
        self.widen();
        flush_into(&mut self.dweight, &mut self.dweight32);
        flush_into(&mut self.dbias, &mut self.dbias32);
    }

    /// Adds chunks' partials in order and writes the requested gradients.
    /// Each channel's sum runs over the chunks in chunk order, so blocks of
    /// channels are merged on different threads with the same result.
    pub fn finish<T>(parts: Vec<Partials>, grads: Grads<'_, T>) {
        type Pick = for<'p> fn(&'p Partials) -> (&'p [f64], &'p [f32]);
        let outputs: [(Option<&mut [f32]>, Pick); 2] = [
            (grads.dweight, |p| (&p.dweight, &p.dweight32)),
            (grads.dbias, |p| (&p.dbias, &p.dbias32)),
        ];
        for (out, pick) in outputs {
            if let Some(out) = out {
                let sums: Vec<_> = parts.iter().map(pick).collect();
                merge_partials(out, &sums);
            }
        }
    }
}

/// Channels merged together by [`Partials::finish`].
const MERGE_BLOCK: usize = 2048;

/// `out[ch] = Σ_chunks (wide[ch] + narrow[ch])` with either part possibly
/// absent (empty), summed in `f64` in chunk order.
fn merge_partials(out: &mut [f32], parts: &[(&[f64], &[f32])]) {
    for_blocks(out, MERGE_BLOCK, out.len() * parts.len(), |start, out| {
        let span = start..start + out.len();
        let mut total = [0.0f64; MERGE_BLOCK];
        let total = &mut total[..out.len()];
        for (j, &(wide, narrow)) in parts.iter().enumerate() {
            let (wide, narrow) = (wide.get(span.clone()), narrow.get(span.clone()));
            // The first chunk's sums are copied, not added to zero, so a
            // sum of -0.0 stays -0.0.
            let add = |t: &mut f64, v: f64| *t = if j == 0 { v } else { *t + v };
            match (wide, narrow) {
                (Some(w), Some(n)) => {
                    for ((t, &w), &n) in total.iter_mut().zip(w).zip(n) {
                        add(t, w + n as f64);
                    }
                }
                (Some(w), None) => {
                    for (t, &w) in total.iter_mut().zip(w) {
                        add(t, w);
                    }
                }
                (None, Some(n)) => {
                    for (t, &n) in total.iter_mut().zip(n) {
                        add(t, n as f64);
                    }
                }
                (None, None) => {
                    for t in total.iter_mut() {
                        add(t, 0.0);
                    }
                }
            }
        }
        for (o, t) in out.iter_mut().zip(total.iter()) {
            *o = *t as f32;
        }
    });
}

/// Statistics of one group as the kernels use them.
#[derive(Debug, Clone, Copy)]
struct GroupStats {
    mean_hi: f32,
    mean_lo: f32,
    rstd: f32,
}

impl GroupStats {
    fn from_moments(m: &Moments, eps: f32) -> Self {
        let (mean_hi, mean_lo) = split(m.mean);
        GroupStats {
            mean_hi,
            mean_lo,
            rstd: rstd(m.var, eps) as f32,
        }
    }

    fn given(stats: &Stats, k: usize) -> Self {
        GroupStats {
            mean_hi: stats.mean.get(k).copied().unwrap_or(0.0),
            mean_lo: 0.0,
            rstd: stats.rstd[k],
        }
    }
}

impl Plan {
    /// Number of statistics (groups) in the whole tensor.
    pub fn num_groups(&self) -> usize {
        match self.scope {
            Scope::AcrossBatch => self.geo.c,
            Scope::PerSample { groups } => self.geo.n * groups,
        }
    }

    /// Number of values in each group.
    pub fn group_size(&self) -> usize {
        let Geometry { n, c, s, .. } = self.geo;
        match self.scope {
            Scope::AcrossBatch => n * s,
            Scope::PerSample { groups } => c / groups * s,
        }
    }

    pub fn runs(&self, group: usize) -> Runs {
        let Geometry { n, c, s, axis } = self.geo;
        let k = group;
        let runs = |first, stride, count, len, channel, channel_step, per_element| Runs {
            first,
            stride,
            len,
            channel,
            channel_step,
            per_element,
            next: 0,
            count,
        };
        match (self.scope, axis) {
            // Channel k of every sample.
            (Scope::AcrossBatch, ChannelAxis::First) => runs(k * s, c * s, n, s, k, 0, false),
            // Value k of every row of channels.
            (Scope::AcrossBatch, ChannelAxis::Last) => runs(k, c, n * s, 1, k, 0, false),
            // The group's channels of sample k / groups, one run each.
            (Scope::PerSample { groups }, ChannelAxis::First) => {
                let (sample, cg) = (k / groups, c / groups);
                let ch = k % groups * cg;
                runs((sample * c + ch) * s, s, cg, s, ch, 1, false)
            }
            // The group's channels at every position of the sample.
            (Scope::PerSample { groups }, ChannelAxis::Last) => {
                let (sample, cg) = (k / groups, c / groups);
                let ch = k % groups * cg;
                runs(sample * s * c + ch, c, s, cg, ch, 0, true)
            }
        }
    }

    /// The same plan with `[n, c, 1]` seen as `[n, 1, c]`: identical memory,
    /// and channels-last turns n runs of one value into one row of c.
    fn canonical(&self) -> Plan {
        let mut p = *self;
        if p.geo.s == 1 {
            p.geo.axis = ChannelAxis::Last;
        }
        p
    }

    /// Channels-last data whose groups span several rows.
    fn columnar(&self) -> bool {
        self.geo.axis == ChannelAxis::Last && (self.scope == Scope::AcrossBatch || self.geo.s > 1)
    }

    /// Whether the row path takes its groups in batches (small groups, or
    /// an input that fits in cache) rather than skewed.
    fn batched<T>(&self) -> bool {
        let group_bytes = self.group_size() * std::mem::size_of::<T>();
        group_bytes <= BATCH_GROUP_BYTES || self.num_groups() * group_bytes <= IN_CACHE_BYTES
    }

    fn channels_per_group(&self) -> usize {
        match self.scope {
            Scope::AcrossBatch => 1,
            Scope::PerSample { groups } => self.geo.c / groups,
        }
    }

    /// Training forward: normalizes each group with its own statistics.
    /// Returns the saved statistics and the raw moments (for running-stat
    /// updates).
    pub fn forward_train<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        affine: Affine<'_>,
        eps: f32,
    ) -> (Stats, Vec<Moments>) {
        let p = self.canonical();
        if p.geo.len() == 0 {
            // Nothing to normalize (an empty batch); no group has values.
            let groups = p.num_groups();
            let nan = |n| vec![f32::NAN; n];
            let stats = Stats {
                mean: nan(if p.centered { groups } else { 0 }),
                rstd: nan(groups),
            };
            return (stats, vec![Moments::EMPTY; groups]);
        }
        let coefs = Coefs::new(p.geo.c, affine.weight, affine.bias);
        let moments = if p.columnar() {
            p.column_forward(y, x, &coefs, Norm::Batch(eps))
        } else {
            p.row_forward(y, x, &coefs, Norm::Batch(eps))
        };
        let mut stats = Stats {
            mean: Vec::with_capacity(if p.centered { moments.len() } else { 0 }),
            rstd: Vec::with_capacity(moments.len()),
        };
        for m in &moments {
            let g = GroupStats::from_moments(m, eps);
            if p.centered {
                stats.mean.push(g.mean_hi);
            }
            stats.rstd.push(g.rstd);
        }
        (stats, moments)
    }

    /// Forward with given statistics (evaluation mode).
    pub fn forward_with_stats<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        affine: Affine<'_>,
        stats: &Stats,
    ) {
        let groups: Vec<GroupStats> = (0..self.num_groups())
            .map(|k| GroupStats::given(stats, k))
            .collect();
        self.forward_with_groups(y, x, affine, &groups);
    }

    /// Forward with statistics computed elsewhere as exact moments, one per
    /// group: the mean keeps its `f64` digits (as a hi/lo pair), so
    /// statistics mixed from several sources normalize as precisely as the
    /// engine's own.
    pub fn forward_with_moments<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        affine: Affine<'_>,
        moments: &[Moments],
        eps: f32,
    ) -> Stats {
        let groups: Vec<GroupStats> = moments
            .iter()
            .map(|m| GroupStats::from_moments(m, eps))
            .collect();
        self.forward_with_groups(y, x, affine, &groups);
        Stats {
            mean: groups.iter().map(|g| g.mean_hi).collect(),
            rstd: groups.iter().map(|g| g.rstd).collect(),
        }
    }

    fn forward_with_groups<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        affine: Affine<'_>,
        groups: &[GroupStats],
    ) {
        let p = self.canonical();
        if p.geo.len() == 0 {
            return;
        }
        let coefs = Coefs::new(p.geo.c, affine.weight, affine.bias);
        if p.columnar() {
            p.column_forward(y, x, &coefs, Norm::Given(groups));
        } else {
            p.row_forward(y, x, &coefs, Norm::Given(groups));
        }
    }

    /// Each group's moments, without normalizing: the same statistics a
    /// training forward computes (bit for bit), for ops that must see them
    /// before choosing their affine transform.
    pub fn moments<T: Elem>(&self, x: &[T]) -> Vec<Moments> {
        let p = self.canonical();
        let groups = p.num_groups();
        if p.geo.len() == 0 {
            return vec![Moments::EMPTY; groups];
        }
        let c = p.geo.c;
        if p.columnar() {
            let units = p.units();
            let per_piece = p.rows_per_piece(units.rows);
            let unit_len = units.rows * c;
            let pieces = units.rows.div_ceil(per_piece).max(1);
            // Pieces of every unit, reduced in parallel and merged in
            // order: the cut matches `column_forward`'s, so the sums are too.
            let parts = map_chunks(units.count * pieces, x.len(), |i| {
                let (u, piece) = (i / pieces, i % pieces);
                let r = chunk_items(piece, per_piece, units.rows);
                let xs = &x[u * unit_len..(u + 1) * unit_len];
                column_moments(&xs[r.start * c..r.end * c], c, p.centered)
            });
            return parts
                .chunks(pieces)
                .flat_map(|unit| {
                    let mut per_channel = vec![Moments::EMPTY; c];
                    for part in unit {
                        for (acc, m) in per_channel.iter_mut().zip(part) {
                            *acc = acc.merge(*m);
                        }
                    }
                    p.group_moments(&per_channel)
                })
                .collect();
        }
        let size = p.group_size();
        let per_chunk = items_per_chunk(groups, size, 0);
        let chunks = groups.div_ceil(per_chunk);
        map_chunks(chunks, groups * size, |i| {
            row_moments_chunk(&p, chunk_items(i, per_chunk, groups), x)
        })
        .concat()
    }

    /// Backward through a training-mode forward (statistics depend on x).
    ///
    /// With `x̂ = (x - mean) · rstd` and `g = dy · weight`, per group of n:
    /// `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))` (RMSNorm drops the
    /// `mean(g)` term). The saved mean is an `f32` rounding of the true one;
    /// pass 1 also sums `x̂`, whose mean would be 0 for the true mean, and
    /// that residual corrects `x̂` in pass 2, so a large mean costs no
    /// accuracy here either. Pass 1 reads x and dy from memory; pass 2
    /// finds them in cache.
    pub fn backward_train<T: Elem>(
        &self,
        grads: Grads<'_, T>,
        dy: &[T],
        x: &[T],
        weight: Option<&[f32]>,
        stats: &Stats,
    ) {
        self.backward(grads, dy, x, weight, stats, true);
    }

    /// Backward through an evaluation-mode forward (statistics are
    /// constants): `dx = dy · weight · rstd`.
    pub fn backward_with_stats<T: Elem>(
        &self,
        grads: Grads<'_, T>,
        dy: &[T],
        x: &[T],
        weight: Option<&[f32]>,
        stats: &Stats,
    ) {
        self.backward(grads, dy, x, weight, stats, false);
    }

    fn backward<T: Elem>(
        &self,
        mut grads: Grads<'_, T>,
        dy: &[T],
        x: &[T],
        weight: Option<&[f32]>,
        stats: &Stats,
        train: bool,
    ) {
        let p = self.canonical();
        if p.geo.len() == 0 {
            // No values: parameter gradients are empty sums.
            for g in [grads.dweight, grads.dbias].into_iter().flatten() {
                g.fill(0.0);
            }
            return;
        }
        let coefs = Coefs::weight_only(p.geo.c, weight);
        let mode = Backward { stats, train };
        let dx = SharedMut::new(grads.dx);
        let parts = if p.columnar() {
            p.column_backward(&dx, dy, x, &coefs, mode)
        } else {
            p.row_backward(&dx, dy, x, &coefs, mode)
        };
        grads.dx = &mut [];
        Partials::finish(parts, grads);
    }
}

/// Where a forward pass gets its statistics.
#[derive(Clone, Copy)]
enum Norm<'a> {
    /// From the data, with this eps.
    Batch(f32),
    /// As given, one per group.
    Given(&'a [GroupStats]),
}

#[derive(Clone, Copy)]
struct Backward<'a> {
    stats: &'a Stats,
    /// Statistics came from the data (so they carry gradient).
    train: bool,
}

impl Plan {
    /// Row path forward over all groups; returns each group's moments
    /// (placeholders when the statistics are given).
    fn row_forward<T: Elem>(
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

    fn row_backward<T: Elem>(
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

/// Groups up to this size are skewed in the row forward: the statistics
/// sweep of group `k + 1` and the output sweep of group `k` run in one loop
/// ([`lanes::SkewedFwd`]). Both groups are then in cache at once, hence
/// the limit.
const SKEW_MAX_BYTES: usize = 256 << 10;

/// Groups up to this size are normalized in batches instead (see
/// `row_forward_chunk`): their per-group work (horizontal sums, a division
/// and a square root) would dominate a skewed loop.
const BATCH_GROUP_BYTES: usize = 1 << 10;

/// Inputs up to this size are normalized in batches whatever their group
/// size: in cache there is no memory latency for a skewed loop to hide.
const IN_CACHE_BYTES: usize = 1 << 20;

/// Bytes of input a batch of small groups spans: it stays in L1 between
/// the two sweeps.
const BATCH_BYTES: usize = 16 << 10;

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
            if skew {
                held_stats = Some(g);
                std::mem::swap(&mut runs, &mut held);
            } else {
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

/// A group of the row backward whose pass 1 is done and whose pass 2 is
/// pending.
struct Held {
    runs: Vec<Run>,
    coef: DxCoef,
    /// Per-run `[Σdy, Σdy·x̂, Σx̂]` (runs of one channel).
    run_sums: Vec<[f64; 3]>,
    delta: f64,
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
            if per_element && done % ROWS_PER_FLUSH == 0 && done < count {
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
                    bwd_pass1(s, h, plan, k, dy, x, coefs, &mode);
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
        }
    }

    /// The coefficients of pass 2 from the group's statistics `g` and its
    /// pass-1 sums `[Σg, Σg·x̂, Σx̂]`.
    fn set_coef(&mut self, train: bool, centered: bool, n: f64, g: GroupStats, sums: [f64; 3]) {
        let (delta, mean_g, mean_gx) = correction(train, centered, n, sums);
        self.delta = delta;
        self.coef = DxCoef {
            mean_hi: if centered { g.mean_hi } else { 0.0 },
            mean_lo: if g.rstd != 0.0 {
                (delta / g.rstd as f64) as f32
            } else {
                0.0
            },
            rstd: g.rstd,
            mean_g: mean_g as f32,
            mean_gx: mean_gx as f32,
        };
    }
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
) {
    h.runs.clear();
    h.runs.extend(plan.runs(k));
    h.run_sums.clear();
    let g = GroupStats::given(mode.stats, k);
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

/// Placeholder coefficients of a [`Held`] not yet filled.
const DX_NONE: DxCoef = DxCoef {
    mean_hi: 0.0,
    mean_lo: 0.0,
    rstd: 0.0,
    mean_g: 0.0,
    mean_gx: 0.0,
};

// ---------------------------------------------------------------- columns

/// The column path's units: the row ranges of `[rows, c]` whose groups are
/// independent. Batch statistics make one unit of all rows; per-sample
/// statistics make one unit per sample.
struct Units {
    count: usize,
    rows: usize,
}

impl Plan {
    fn units(&self) -> Units {
        let Geometry { n, s, .. } = self.geo;
        match self.scope {
            Scope::AcrossBatch => Units {
                count: 1,
                rows: n * s,
            },
            Scope::PerSample { .. } => Units { count: n, rows: s },
        }
    }

    /// Rows per piece: a piece's rows are reduced together in cache.
    fn rows_per_piece(&self, rows: usize) -> usize {
        items_per_chunk(rows, self.geo.c, 0)
    }

    /// Group statistics of unit `u` from its per-channel moments.
    fn group_moments(&self, per_channel: &[Moments]) -> Vec<Moments> {
        per_channel
            .chunks(self.channels_per_group())
            .map(|ch| ch.iter().fold(Moments::EMPTY, |a, &b| a.merge(b)))
            .collect()
    }

    /// Per-channel forward coefficients `y = ((x - mh) - ml) · a + b`,
    /// [`Periodic::extend`]ed for the flat column loops.
    fn channel_coefs(&self, groups: &[GroupStats], coefs: &Coefs, per: &Periodic) -> [Vec<f32>; 4] {
        let cg = self.channels_per_group();
        let c = self.geo.c;
        let (mut mh, mut ml, mut a) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let g = &groups[ch / cg];
            mh[ch] = g.mean_hi;
            ml[ch] = g.mean_lo;
            a[ch] = g.rstd * coefs.weight[ch];
        }
        [
            per.extend(&mh),
            per.extend(&ml),
            per.extend(&a),
            per.extend(&coefs.bias),
        ]
    }

    fn column_forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        coefs: &Coefs<'_>,
        norm: Norm<'_>,
    ) -> Vec<Moments> {
        let c = self.geo.c;
        let per = Periodic::new(c);
        let units = self.units();
        let per_piece = self.rows_per_piece(units.rows);
        let stream = stream_output::<T>(y.len());
        let y = SharedMut::new(y);
        let total = x.len();
        if units.count == 1 {
            // Batch statistics: pieces in parallel, merged in order, then a
            // second parallel sweep normalizes.
            let pieces = units.rows.div_ceil(per_piece).max(1);
            let (moments, groups): (Vec<Moments>, Vec<GroupStats>) = match norm {
                Norm::Batch(eps) => {
                    let parts = map_chunks(pieces, total, |i| {
                        let r = chunk_items(i, per_piece, units.rows);
                        column_moments(&x[r.start * c..r.end * c], c, self.centered)
                    });
                    let mut per_channel = vec![Moments::EMPTY; c];
                    for part in parts {
                        for (acc, m) in per_channel.iter_mut().zip(part) {
                            *acc = acc.merge(m);
                        }
                    }
                    let m = self.group_moments(&per_channel);
                    let g = m.iter().map(|m| GroupStats::from_moments(m, eps)).collect();
                    (m, g)
                }
                Norm::Given(groups) => (Vec::new(), groups.to_vec()),
            };
            let cc = self.channel_coefs(&groups, coefs, &per);
            // The second sweep runs backwards: the pieces the first sweep
            // read last are the likeliest still in cache.
            map_chunks(pieces, total, |i| {
                let r = chunk_items(pieces - 1 - i, per_piece, units.rows);
                // SAFETY: pieces cover disjoint row ranges.
                let out = unsafe { y.range(r.start * c..r.end * c) };
                column_apply(out, &x[r.start * c..r.end * c], &per, &cc, stream);
            });
            moments
        } else {
            // Per-sample statistics: one task per sample does both sweeps
            // while the sample is in cache.
            let unit_len = units.rows * c;
            map_chunks(units.count, total, |u| {
                let xs = &x[u * unit_len..(u + 1) * unit_len];
                let (m, groups) = match norm {
                    Norm::Batch(eps) => {
                        let mut per_channel = vec![Moments::EMPTY; c];
                        for xp in xs.chunks(per_piece * c) {
                            for (acc, m) in
                                per_channel
                                    .iter_mut()
                                    .zip(column_moments(xp, c, self.centered))
                            {
                                *acc = acc.merge(m);
                            }
                        }
                        let m = self.group_moments(&per_channel);
                        let g: Vec<GroupStats> =
                            m.iter().map(|m| GroupStats::from_moments(m, eps)).collect();
                        (m, g)
                    }
                    Norm::Given(groups) => {
                        let per_unit = self.num_groups() / units.count;
                        (
                            Vec::new(),
                            groups[u * per_unit..(u + 1) * per_unit].to_vec(),
                        )
                    }
                };
                let cc = self.channel_coefs(&groups, coefs, &per);
                // Backwards, piece by piece: the last pieces read are in cache.
                for r in pieces_backwards(units.rows, per_piece) {
                    let span = r.start * c..r.end * c;
                    // SAFETY: samples cover disjoint ranges, and pieces
                    // disjoint parts of a sample.
                    let out =
                        unsafe { y.range(u * unit_len + span.start..u * unit_len + span.end) };
                    column_apply(out, &xs[span], &per, &cc, stream);
                }
                m
            })
            .concat()
        }
    }

    fn column_backward<T: Elem>(
        &self,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        coefs: &Coefs<'_>,
        mode: Backward<'_>,
    ) -> Vec<Partials> {
        let c = self.geo.c;
        let per = Periodic::new(c);
        let units = self.units();
        let per_piece = self.rows_per_piece(units.rows);
        let total = x.len();
        let groups_per_unit = self.num_groups() / units.count;
        let unit_stats = |u: usize| -> Vec<GroupStats> {
            (0..groups_per_unit)
                .map(|k| GroupStats::given(mode.stats, u * groups_per_unit + k))
                .collect()
        };
        if units.count == 1 {
            let pieces = units.rows.div_ceil(per_piece).max(1);
            let groups = unit_stats(0);
            let mean = self.expand(&groups, |g| g.mean_hi);
            let rstd = self.expand(&groups, |g| g.rstd);
            let parts = map_chunks(pieces, total, |i| {
                let r = chunk_items(i, per_piece, units.rows);
                let span = r.start * c..r.end * c;
                column_bwd_sums(&dy[span.clone()], &x[span], c, &mean, &rstd)
            });
            let mut sums = [vec![0.0f64; c], vec![0.0f64; c], vec![0.0f64; c]];
            for part in parts {
                for (acc, p) in sums.iter_mut().zip(part) {
                    for (a, v) in acc.iter_mut().zip(p) {
                        *a += v;
                    }
                }
            }
            let (part, k) =
                self.column_dx_coefs(&groups, &sums, coefs, mode.train, units.rows, &per);
            // Backwards, as in the forward: the last pieces are in cache.
            map_chunks(pieces, total, |i| {
                let r = chunk_items(pieces - 1 - i, per_piece, units.rows);
                let span = r.start * c..r.end * c;
                // SAFETY: pieces cover disjoint row ranges.
                let out = unsafe { dx.range(span.clone()) };
                column_dx(out, &dy[span.clone()], &x[span], &per, &k);
            });
            vec![part]
        } else {
            let unit_len = units.rows * c;
            map_chunks(units.count, total, |u| {
                let span = u * unit_len..(u + 1) * unit_len;
                let (xs, dys) = (&x[span.clone()], &dy[span.clone()]);
                let groups = unit_stats(u);
                let mean = self.expand(&groups, |g| g.mean_hi);
                let rstd = self.expand(&groups, |g| g.rstd);
                let mut sums = [vec![0.0f64; c], vec![0.0f64; c], vec![0.0f64; c]];
                for (xp, dyp) in xs.chunks(per_piece * c).zip(dys.chunks(per_piece * c)) {
                    for (acc, p) in sums
                        .iter_mut()
                        .zip(column_bwd_sums(dyp, xp, c, &mean, &rstd))
                    {
                        for (a, v) in acc.iter_mut().zip(p) {
                            *a += v;
                        }
                    }
                }
                let (part, k) =
                    self.column_dx_coefs(&groups, &sums, coefs, mode.train, units.rows, &per);
                // Backwards, piece by piece: the last pieces read are in cache.
                for r in pieces_backwards(units.rows, per_piece) {
                    let piece = r.start * c..r.end * c;
                    let at = span.start + piece.start..span.start + piece.end;
                    // SAFETY: samples cover disjoint ranges, and pieces
                    // disjoint parts of a sample.
                    let out = unsafe { dx.range(at) };
                    column_dx(out, &dys[piece.clone()], &xs[piece], &per, &k);
                }
                part
            })
        }
    }

    /// A per-group value repeated for each channel of the group.
    fn expand(&self, groups: &[GroupStats], f: impl Fn(&GroupStats) -> f32) -> Vec<f32> {
        let cg = self.channels_per_group();
        (0..self.geo.c).map(|ch| f(&groups[ch / cg])).collect()
    }

    /// From the per-channel sums `[Σdy, Σdy·x̂, Σx̂]` of one unit: its
    /// parameter partials and the per-channel coefficients of pass 2.
    fn column_dx_coefs(
        &self,
        groups: &[GroupStats],
        sums: &[Vec<f64>; 3],
        coefs: &Coefs<'_>,
        train: bool,
        rows: usize,
        per: &Periodic,
    ) -> (Partials, DxChannels) {
        let c = self.geo.c;
        let cg = self.channels_per_group();
        let n = (rows * cg) as f64;
        let mut part = Partials::new(c, false);
        let z = || vec![0.0f32; c];
        let mut k = [z(), z(), z(), z(), z(), z()];
        for (gi, g) in groups.iter().enumerate() {
            let chans = gi * cg..(gi + 1) * cg;
            let (mut sg, mut sgx, mut sx) = (0.0f64, 0.0f64, 0.0f64);
            for ch in chans.clone() {
                let w = coefs.weight[ch] as f64;
                sg += w * sums[0][ch];
                sgx += w * sums[1][ch];
                sx += sums[2][ch];
            }
            let (delta, mean_g, mean_gx) = correction(train, self.centered, n, [sg, sgx, sx]);
            let r = g.rstd as f64;
            for ch in chans {
                part.add(ch, sums[1][ch] - delta * sums[0][ch], sums[0][ch]);
                k[0][ch] = if self.centered { g.mean_hi } else { 0.0 };
                k[1][ch] = if r != 0.0 { (delta / r) as f32 } else { 0.0 };
                k[2][ch] = g.rstd;
                k[3][ch] = coefs.weight[ch] * g.rstd;
                k[4][ch] = (r * mean_g) as f32;
                k[5][ch] = (r * mean_gx) as f32;
            }
        }
        let [mean_hi, mean_lo, rstd, wr, cg, cgx] = k.map(|v| per.extend(&v));
        let dx = DxChannels {
            mean_hi,
            mean_lo,
            rstd,
            wr,
            cg,
            cgx,
        };
        (part, dx)
    }
}

/// From a group's pass-1 sums `[Σg, Σg·x̂', Σx̂']` over `n` values, where
/// `x̂'` used the `f32`-rounded mean: `(δ, mean(g), mean(g·x̂))` with
/// `δ = mean(x̂')` the residual that corrects `x̂ = x̂' - δ`. Evaluation
/// (`!train`) has constant statistics: no mean terms, no correction.
/// The row ranges of `rows` rows cut in pieces of `per_piece`, last first.
fn pieces_backwards(rows: usize, per_piece: usize) -> impl Iterator<Item = Range<usize>> {
    let pieces = rows.div_ceil(per_piece.max(1));
    (0..pieces)
        .rev()
        .map(move |i| chunk_items(i, per_piece, rows))
}

fn correction(train: bool, centered: bool, n: f64, [sg, sgx, sx]: [f64; 3]) -> (f64, f64, f64) {
    match (train, centered) {
        (false, _) => (0.0, 0.0, 0.0),
        (true, true) => {
            let delta = sx / n;
            (delta, sg / n, (sgx - delta * sg) / n)
        }
        (true, false) => (0.0, 0.0, sgx / n),
    }
}

/// Adds `f32` accumulators into `f64` ones and zeroes them.
#[inline(always)]
fn flush_into(acc: &mut [f64], part: &mut [f32]) {
    for (a, p) in acc.iter_mut().zip(part.iter_mut()) {
        *a += std::mem::take(p) as f64;
    }
}

/// The one-sweep shift of each channel of a `[rows, c]` piece: the mean of
/// its first (up to) 16 rows, rounded to `f32`.
fn column_shift<T: Elem>(x: &[T], c: usize) -> Vec<f32> {
    let rows = (x.len() / c.max(1)).min(16);
    let mut sum = vec![0.0f64; c];
    for row in x.chunks_exact(c).take(rows) {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += v.to_f64();
        }
    }
    sum.iter()
        .map(|&s| (s / rows.max(1) as f64) as f32)
        .collect()
}

multiversion! {
    /// Per-channel moments of a `[rows, c]` piece: one sweep, and two more
    /// over the piece (in cache) when any channel's sweep is refused (see
    /// [`crate::moments`]).
    fn column_moments<T: Elem>[s](x: &[T], c: usize, centered: bool) -> Vec<Moments> {
        let rows = x.len() / c.max(1);
        if rows == 0 {
            return vec![Moments::EMPTY; c];
        }
        let shift = if centered { column_shift(x, c) } else { vec![0.0; c] };
        let [s1, s2] = lanes::col_shifted_sums(s, x, c, &shift);
        let swept: Option<Vec<Moments>> = (0..c)
            .map(|ch| Moments::from_shifted(rows, shift[ch], [s1[ch], s2[ch]], centered))
            .collect();
        if let Some(m) = swept {
            return m;
        }
        let scale: Vec<f32> = lanes::col_max_abs(s, x, c).into_iter().map(scale_for).collect();
        let zero = vec![0.0f32; c];
        let m0: Vec<f32> = if centered {
            let [sum, _] = lanes::col_dev_sums(s, x, c, &scale, &zero);
            sum.iter().map(|&v| (v / rows as f64) as f32).collect()
        } else {
            zero
        };
        let [d1, d2] = lanes::col_dev_sums(s, x, c, &scale, &m0);
        (0..c)
            .map(|ch| {
                let sc = scale[ch] as f64;
                if centered {
                    Moments::from_deviations(rows, m0[ch] as f64 / sc, scale[ch], d1[ch], d2[ch])
                } else {
                    Moments { count: rows, mean: 0.0, var: d2[ch] / rows as f64 / (sc * sc) }
                }
            })
            .collect()
    }
}

multiversion! {
    /// `y = ((x - mh[c]) - ml[c]) · a[c] + b[c]` over `[rows, c]`.
    fn column_apply<T: Elem>[s](y: &mut [T], x: &[T], per: &Periodic, k: &[Vec<f32>; 4], stream: bool) {
        lanes::apply_channels(s, y, x, per, k, stream);
        if stream {
            s.fence();
        }
    }
}

multiversion! {
    /// Per-channel `[Σdy, Σdy·x̂, Σx̂]` over `[rows, c]`.
    fn column_bwd_sums<T: Elem>[s](dy: &[T], x: &[T], c: usize, mean: &[f32], rstd: &[f32]) -> [Vec<f64>; 3] {
        lanes::col_bwd_sums(s, dy, x, c, mean, rstd)
    }
}

multiversion! {
    /// Backward pass 2 over `[rows, c]`.
    fn column_dx<T: Elem>[s](dx: &mut [T], dy: &[T], x: &[T], per: &Periodic, k: &DxChannels) {
        lanes::bwd_dx_channels(s, dx, dy, x, per, k);
    }
}

/// Folds batch statistics into running ones:
/// `running = (1 - m) · running + m · batch`, with the unbiased variance
/// (Bessel's `n / (n - 1)`). `moments` holds one entry per channel
/// (BatchNorm) or per (sample, channel) (InstanceNorm, whose batch
/// statistic is the mean over the samples of the per-instance ones).
pub(crate) fn update_running(running: RunningStats<'_>, moments: &[Moments], momentum: f64) {
    let c = running.mean.len();
    if c == 0 || moments.is_empty() {
        return;
    }
    let instances = (moments.len() / c) as f64;
    let mut mean = vec![0.0f64; c];
    let mut var = vec![0.0f64; c];
    for (k, m) in moments.iter().enumerate() {
        let n = m.count as f64;
        mean[k % c] += m.mean / instances;
        var[k % c] += m.var * n / (n - 1.0) / instances;
    }
    let it = running
        .mean
        .iter_mut()
        .zip(running.var.iter_mut())
        .zip(mean)
        .zip(var);
    for (((rm, rv), m), v) in it {
        *rm = ((1.0 - momentum) * *rm as f64 + momentum * m) as f32;
        *rv = ((1.0 - momentum) * *rv as f64 + momentum * v) as f32;
    }
}

impl Plan {
    /// Checks a forward call's buffers against the plan.
    pub fn check_forward(
        &self,
        op: &'static str,
        y_len: usize,
        x_len: usize,
        affine: Affine<'_>,
        shape: &[usize],
    ) -> Result<()> {
        check_len(op, "x", x_len, self.geo.len(), shape)?;
        check_len(op, "y", y_len, self.geo.len(), shape)?;
        check_affine(op, affine, self.geo.c, shape)
    }

    /// Checks a backward call's buffers and saved statistics against the
    /// plan (`mean` may be empty for uncentered plans).
    #[allow(clippy::too_many_arguments)]
    pub fn check_backward<T>(
        &self,
        op: &'static str,
        grads: &Grads<'_, T>,
        dy: &[T],
        x: &[T],
        weight: Option<&[f32]>,
        stats: &Stats,
        shape: &[usize],
    ) -> Result<()> {
        let (len, c, k) = (self.geo.len(), self.geo.c, self.num_groups());
        check_len(op, "x", x.len(), len, shape)?;
        check_len(op, "dy", dy.len(), len, shape)?;
        check_grads(op, grads, len, c, shape)?;
        check_affine(op, Affine { weight, bias: None }, c, shape)?;
        if self.centered {
            check_len(op, "mean", stats.mean.len(), k, shape)?;
        }
        check_len(op, "rstd", stats.rstd.len(), k, shape)
    }
}

/// Statistics that normalize with running estimates (evaluation mode).
pub(crate) fn stats_from_running(mean: &[f32], var: &[f32], eps: f32) -> Stats {
    Stats {
        mean: mean.to_vec(),
        rstd: var.iter().map(|&v| rstd(v as f64, eps) as f32).collect(),
    }
}
