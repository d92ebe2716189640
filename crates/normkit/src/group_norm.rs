//! Group Normalization and Instance Normalization (GroupNorm with one
//! channel per group).

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::{
    check_eps, check_len, Affine, ChannelAxis, Geometry, Grads, Momentum, RunningStats, Stats,
};
use crate::normalize::{stats_from_running, update_running, Plan, Scope};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Running, Signature,
};

/// Group Normalization (Wu & He, 2018, "Group Normalization").
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - the channels are split into `num_groups` contiguous groups and
///   `E[x]`, `Var[x]` are per (sample, group), over the group's channels
///   and every spatial position, `Var` biased;
/// - `weight`, `bias` are optional and per channel.
///
/// `num_groups = 1` is LayerNorm over `[C, *]` with per-channel affine;
/// `num_groups = C` is InstanceNorm.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `weight`, `bias`: `[C]`;
/// - saved [`Stats`]: `N × num_groups`, sample-major.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormConfig {
    /// Number of channel groups; must divide C.
    pub num_groups: usize,
    /// PyTorch: `1e-5`.
    pub eps: f32,
    /// PyTorch: channels first.
    pub channel_axis: ChannelAxis,
}

impl GroupNormConfig {
    /// PyTorch's defaults for `num_groups` groups.
    pub fn new(num_groups: usize) -> Self {
        GroupNormConfig {
            num_groups,
            eps: 1e-5,
            channel_axis: ChannelAxis::First,
        }
    }
}

fn plan(op: &'static str, shape: &[usize], cfg: &GroupNormConfig) -> Result<Plan> {
    check_eps(op, cfg.eps)?;
    let geo = Geometry::channels(op, shape, cfg.channel_axis)?;
    let g = cfg.num_groups;
    if g == 0 || geo.c % g != 0 {
        return Err(NormError::Groups {
            op,
            num_groups: g,
            channels: geo.c,
            shape: shape.to_vec(),
        });
    }
    let p = Plan {
        geo,
        scope: Scope::PerSample { groups: g },
        centered: true,
    };
    if p.group_size() == 0 {
        return Err(NormError::Empty {
            op,
            shape: shape.to_vec(),
        });
    }
    Ok(p)
}

/// GroupNorm forward; returns the per-(sample, group) statistics.
pub fn group_norm_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    cfg: &GroupNormConfig,
) -> Result<Stats> {
    const OP: &str = "group_norm";
    let p = plan(OP, shape, cfg)?;
    p.check_forward(OP, y.len(), x.len(), affine, shape)?;
    Ok(p.forward_train(y, x, affine, cfg.eps).0)
}

/// Backward of [`group_norm_forward`]: gradients of `sum(y · dy)`.
pub fn group_norm_backward<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &GroupNormConfig,
) -> Result<()> {
    const OP: &str = "group_norm";
    let p = plan(OP, shape, cfg)?;
    p.check_backward(OP, &grads, dy, x, weight, stats, shape)?;
    p.backward_train(grads, dy, x, weight, stats);
    Ok(())
}

/// Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016, "Instance
/// Normalization: The Missing Ingredient for Fast Stylization").
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - in training (or without running statistics) `E[x]`, `Var[x]` are per
///   (sample, channel) over the spatial positions: GroupNorm with
///   `num_groups = C`;
/// - with running statistics, training updates them with the batch mean of
///   the per-instance mean and unbiased variance, and evaluation
///   normalizes with them, exactly as BatchNorm's evaluation mode;
/// - `weight`, `bias` are optional and per channel (PyTorch:
///   `affine=False`, `track_running_stats=False`, `momentum=0.1`).
///
/// PyTorch's InstanceNorm treats `momentum=None` as `0.0` (the running
/// statistics never move); pass `Momentum::Exponential(0.0)` for that.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2, more than one spatial
///   position when normalizing with instance statistics;
/// - `weight`, `bias`, running statistics: `[C]`;
/// - saved [`Stats`]: `N × C` from training, `C` from evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceNormConfig {
    /// PyTorch: `1e-5`.
    pub eps: f32,
    /// PyTorch: `0.1`.
    pub momentum: Momentum,
    /// PyTorch: channels first.
    pub channel_axis: ChannelAxis,
}

impl Default for InstanceNormConfig {
    fn default() -> Self {
        InstanceNormConfig {
            eps: 1e-5,
            momentum: Momentum::default(),
            channel_axis: ChannelAxis::First,
        }
    }
}

impl InstanceNormConfig {
    fn groups(&self, shape: &[usize]) -> GroupNormConfig {
        let c = Geometry::channels("instance_norm", shape, self.channel_axis).map_or(1, |g| g.c);
        GroupNormConfig {
            num_groups: c.max(1),
            eps: self.eps,
            channel_axis: self.channel_axis,
        }
    }
}

const IN_OP: &str = "instance_norm";

/// What normalizing with instance statistics needs beyond the plan: a
/// usable momentum and more than one spatial position (the running
/// variance is unbiased).
fn check_instance_train(p: &Plan, cfg: &InstanceNormConfig, shape: &[usize]) -> Result<()> {
    cfg.momentum.validate(IN_OP)?;
    if p.geo.s <= 1 {
        return Err(NormError::TooFewValues {
            op: IN_OP,
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

/// InstanceNorm with instance statistics (training, or no running stats).
/// Updates `running` when given. Returns the per-(sample, channel) stats.
pub fn instance_norm_forward_train<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    running: Option<RunningStats<'_>>,
    cfg: &InstanceNormConfig,
) -> Result<Stats> {
    let p = plan(IN_OP, shape, &cfg.groups(shape))?;
    p.check_forward(IN_OP, y.len(), x.len(), affine, shape)?;
    let c = p.geo.c;
    if let Some(r) = &running {
        check_len(IN_OP, "running_mean", r.mean.len(), c, shape)?;
        check_len(IN_OP, "running_var", r.var.len(), c, shape)?;
    }
    check_instance_train(&p, cfg, shape)?;
    let (stats, moments) = p.forward_train(y, x, affine, cfg.eps);
    if let Some(r) = running {
        update_running(r, &moments, cfg.momentum.factor());
    }
    Ok(stats)
}

/// InstanceNorm in evaluation mode with running statistics: identical to
/// BatchNorm's evaluation mode. Returns the per-channel stats it used.
pub fn instance_norm_forward_eval<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    running_mean: &[f32],
    running_var: &[f32],
    cfg: &InstanceNormConfig,
) -> Result<Stats> {
    const OP: &str = "instance_norm";
    let p = eval_plan(plan(OP, shape, &cfg.groups(shape))?);
    p.check_forward(OP, y.len(), x.len(), affine, shape)?;
    check_len(OP, "running_mean", running_mean.len(), p.geo.c, shape)?;
    check_len(OP, "running_var", running_var.len(), p.geo.c, shape)?;
    let stats = stats_from_running(running_mean, running_var, cfg.eps);
    p.forward_with_stats(y, x, affine, &stats);
    Ok(stats)
}

/// Per-channel statistics shared by the whole batch.
fn eval_plan(p: Plan) -> Plan {
    Plan {
        scope: Scope::AcrossBatch,
        ..p
    }
}

/// Backward of [`instance_norm_forward_train`].
pub fn instance_norm_backward_train<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &InstanceNormConfig,
) -> Result<()> {
    const OP: &str = "instance_norm";
    let p = plan(OP, shape, &cfg.groups(shape))?;
    p.check_backward(OP, &grads, dy, x, weight, stats, shape)?;
    p.backward_train(grads, dy, x, weight, stats);
    Ok(())
}

/// Backward of [`instance_norm_forward_eval`].
pub fn instance_norm_backward_eval<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &InstanceNormConfig,
) -> Result<()> {
    const OP: &str = "instance_norm";
    let p = eval_plan(plan(OP, shape, &cfg.groups(shape))?);
    p.check_backward(OP, &grads, dy, x, weight, stats, shape)?;
    p.backward_with_stats(grads, dy, x, weight, stats);
    Ok(())
}

/// [`group_norm_forward`] and [`group_norm_backward`] as a [`NormOp`]:
/// PyTorch's `GroupNorm(num_groups, num_channels, eps, affine)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormOp {
    pub cfg: GroupNormConfig,
    pub weight: bool,
    pub bias: bool,
}

impl NormOp for GroupNormOp {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        "group_norm"
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = plan(self.name(), shape, &self.cfg)?;
        checked_signature(
            self.name(),
            shape,
            affine_params(self.weight, self.bias, p.geo.c),
            Running::None,
        )
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _running: Option<RunningStats<'_>>,
    ) -> Result<Stats> {
        group_norm_forward(y, x, shape, affine_of(sig, params), &self.cfg)
    }

    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> Result<()> {
        let weight = affine_of(sig, params).weight;
        let (grads, _) = affine_grads(sig, grads);
        group_norm_backward(grads, dy, x, shape, weight, saved, &self.cfg)
    }
}

/// The InstanceNorm entry points as a [`NormOp`]: PyTorch's
/// `InstanceNorm1d/2d/3d(num_features, eps, momentum, affine,
/// track_running_stats)` for one call.
///
/// `training` selects instance statistics (PyTorch: training mode, or no
/// running statistics) or the running ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceNormOp {
    pub cfg: InstanceNormConfig,
    pub training: bool,
    pub weight: bool,
    pub bias: bool,
}

impl NormOp for InstanceNormOp {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        "instance_norm"
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = plan(self.name(), shape, &self.cfg.groups(shape))?;
        if self.training {
            check_instance_train(&p, &self.cfg, shape)?;
        }
        let channels = p.geo.c;
        checked_signature(
            self.name(),
            shape,
            affine_params(self.weight, self.bias, channels),
            Running::updates_or_reads(self.training, channels),
        )
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        running: Option<RunningStats<'_>>,
    ) -> Result<Stats> {
        let affine = affine_of(sig, params);
        match (self.training, running) {
            (true, running) => instance_norm_forward_train(y, x, shape, affine, running, &self.cfg),
            (false, Some(r)) => {
                instance_norm_forward_eval(y, x, shape, affine, r.mean, r.var, &self.cfg)
            }
            (false, None) => Err(NormError::Missing {
                op: self.name(),
                name: "running_mean",
            }),
        }
    }

    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> Result<()> {
        let weight = affine_of(sig, params).weight;
        let (grads, _) = affine_grads(sig, grads);
        if self.training {
            instance_norm_backward_train(grads, dy, x, shape, weight, saved, &self.cfg)
        } else {
            instance_norm_backward_eval(grads, dy, x, shape, weight, saved, &self.cfg)
        }
    }
}
