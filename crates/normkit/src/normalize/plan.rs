//! A plan's geometry: which values form each group, as runs over the
//! canonical `[n, c, s]` / `[n, s, c]` view, and the choices that follow
//! from it (row or column path, batched or skewed sweeps).

use super::careful::Wide;
use crate::layout::{ChannelAxis, Geometry, Stats};
use crate::moments::{rstd, split, Moments};
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
pub(super) struct Coefs<'a> {
    pub(super) weight: Cow<'a, [f32]>,
    pub(super) bias: Cow<'a, [f32]>,
}

impl<'a> Coefs<'a> {
    /// For the backward passes, which never read the bias.
    pub(super) fn weight_only(c: usize, weight: Option<&'a [f32]>) -> Self {
        Coefs {
            weight: weight.map_or_else(|| Cow::Owned(vec![1.0; c]), Cow::Borrowed),
            bias: Cow::Borrowed(&[]),
        }
    }

    pub(super) fn new(c: usize, weight: Option<&'a [f32]>, bias: Option<&'a [f32]>) -> Self {
        Coefs {
            weight: weight.map_or_else(|| Cow::Owned(vec![1.0; c]), Cow::Borrowed),
            bias: bias.map_or_else(|| Cow::Owned(vec![0.0; c]), Cow::Borrowed),
        }
    }
}

/// Statistics of one group as the kernels use them.
#[derive(Debug, Clone, Copy)]
pub(super) struct GroupStats {
    pub(super) mean_hi: f32,
    pub(super) mean_lo: f32,
    pub(super) rstd: f32,
    /// The group is normalized in `f64` ([`super::careful`]).
    pub(super) wide: Option<Wide>,
}

impl GroupStats {
    pub(super) fn from_moments(m: &Moments, eps: f32) -> Self {
        let (mean_hi, mean_lo) = split(m.mean);
        let r = rstd(m.var, eps);
        GroupStats {
            mean_hi,
            mean_lo,
            rstd: r as f32,
            wide: Wide::from_moments(m, r),
        }
    }

    /// Saved statistics, as a backward pass reads them (which decides
    /// about `f64` itself).
    pub(super) fn given(stats: &Stats, k: usize) -> Self {
        GroupStats {
            mean_hi: stats.mean.get(k).copied().unwrap_or(0.0),
            mean_lo: 0.0,
            rstd: stats.rstd[k],
            wide: None,
        }
    }

    /// Given statistics to normalize with (evaluation mode).
    pub(super) fn given_forward(stats: &Stats, k: usize) -> Self {
        let g = Self::given(stats, k);
        GroupStats {
            wide: Wide::from_given(g.mean_hi, g.rstd),
            ..g
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
    pub(super) fn canonical(&self) -> Plan {
        let mut p = *self;
        if p.geo.s == 1 {
            p.geo.axis = ChannelAxis::Last;
        }
        p
    }

    /// When `unweighted` (no per-channel parameter is read or written), a
    /// row-path plan of channels-last rows as the same memory seen
    /// channels first: `[n, groups, c / groups]`, each group one run of
    /// one "channel". The kernels then run with a scalar weight of 1 —
    /// the same bits as a weight of ones — and need no per-channel
    /// buffers (ones, zeros, partial sums) as long as a row.
    pub(super) fn unweighted_if(&self, unweighted: bool) -> Plan {
        match self.scope {
            Scope::PerSample { groups }
                if unweighted && self.geo.axis == ChannelAxis::Last && self.geo.s == 1 =>
            {
                Plan {
                    geo: Geometry {
                        n: self.geo.n,
                        c: groups,
                        s: self.geo.c / groups,
                        axis: ChannelAxis::First,
                    },
                    ..*self
                }
            }
            _ => *self,
        }
    }

    /// Channels-last data whose groups span several rows.
    pub(super) fn columnar(&self) -> bool {
        self.geo.axis == ChannelAxis::Last && (self.scope == Scope::AcrossBatch || self.geo.s > 1)
    }

    /// Whether the row path takes its groups in batches (small groups, or
    /// an input that fits in cache) rather than skewed.
    pub(super) fn batched<T>(&self) -> bool {
        let group_bytes = self.group_size() * std::mem::size_of::<T>();
        group_bytes <= BATCH_GROUP_BYTES || self.num_groups() * group_bytes <= IN_CACHE_BYTES
    }

    pub(super) fn channels_per_group(&self) -> usize {
        match self.scope {
            Scope::AcrossBatch => 1,
            Scope::PerSample { groups } => self.geo.c / groups,
        }
    }
}

/// Where a forward pass gets its statistics.
#[derive(Clone, Copy)]
pub(super) enum Norm<'a> {
    /// From the data, with this eps.
    Batch(f32),
    /// As given, one per group.
    Given(&'a [GroupStats]),
}

#[derive(Clone, Copy)]
pub(super) struct Backward<'a> {
    pub(super) stats: &'a Stats,
    /// Statistics came from the data (so they carry gradient).
    pub(super) train: bool,
}

/// Groups up to this size are skewed in the row forward: the statistics
/// sweep of group `k + 1` and the output sweep of group `k` run in one loop
/// ([`SkewedFwd`](crate::lanes::SkewedFwd)). Both groups are then in cache at once, hence
/// the limit.
pub(super) const SKEW_MAX_BYTES: usize = 256 << 10;

/// Groups up to this size are normalized in batches instead (see
/// `row_forward_chunk`): their per-group work (horizontal sums, a division
/// and a square root) would dominate a skewed loop.
pub(super) const BATCH_GROUP_BYTES: usize = 1 << 10;

/// Inputs up to this size are normalized in batches whatever their group
/// size: in cache there is no memory latency for a skewed loop to hide.
pub(super) const IN_CACHE_BYTES: usize = 1 << 20;

/// Bytes of input a batch of small groups spans: it stays in L1 between
/// the two sweeps.
pub(crate) const BATCH_BYTES: usize = 16 << 10;

/// From a group's pass-1 sums `[Σg, Σg·x̂', Σx̂']` over `n` values, where
/// `x̂'` used the `f32`-rounded mean: `(δ, mean(g), mean(g·x̂))` with
/// `δ = mean(x̂')` the residual that corrects `x̂ = x̂' - δ`. Evaluation
/// (`!train`) has constant statistics: no mean terms, no correction.
pub(super) fn correction(
    train: bool,
    centered: bool,
    n: f64,
    [sg, sgx, sx]: [f64; 3],
) -> (f64, f64, f64) {
    match (train, centered) {
        (false, _) => (0.0, 0.0, 0.0),
        (true, true) => {
            let delta = sx / n;
            (delta, sg / n, (sgx - delta * sg) / n)
        }
        (true, false) => (0.0, 0.0, sgx / n),
    }
}
