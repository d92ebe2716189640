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
//! - the **row path**, when each group is a few long contiguous [`Run`](plan::Run)s
//!   (channels first, and LayerNorm rows): a group is loaded once, its
//!   statistics computed and the group normalized while it is in cache;
//! - the **column path**, for channels-last data with a spatial extent or
//!   batch statistics: rows of `c` channels are reduced per channel and
//!   the per-channel sums combined into group statistics.
//!
//! Both are cut into chunks fixed by the shape ([`crate::parallel`]), so
//! results do not depend on the thread count. A new normalization that is
//! "some groups of channels, per-channel affine" needs only a new `Plan`.

mod careful;
mod checks;
mod column;
mod partials;
mod plan;
mod row_backward;
mod row_forward;
mod running;
mod split_backward;

pub(crate) use partials::Partials;
pub(crate) use plan::{Plan, Scope, BATCH_BYTES};
pub(crate) use row_backward::dx_coef;
pub(crate) use running::{stats_from_running, update_running};

use crate::elem::Elem;
use crate::layout::{Affine, Grads, Stats};
use crate::moments::Moments;
use crate::parallel::SharedMut;
use plan::{Backward, Coefs, GroupStats, Norm};

impl Plan {
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
        let p = p.unweighted_if(affine.weight.is_none() && affine.bias.is_none());
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
            .map(|k| GroupStats::given_forward(stats, k))
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
        let p = p.unweighted_if(affine.weight.is_none() && affine.bias.is_none());
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
        if p.columnar() {
            p.column_group_moments(x)
        } else {
            p.row_moments(x)
        }
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
        let no_params = grads.dweight.is_none() && grads.dbias.is_none();
        let p = p.unweighted_if(weight.is_none() && no_params);
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
