//! Batch Normalization.

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::{
    check_eps, check_len, Affine, ChannelAxis, Geometry, Grads, Momentum, RunningStats, Stats,
};
use crate::normalize::{stats_from_running, update_running, Plan, Scope};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Running, Signature,
};

const OP: &str = "batch_norm";

/// Batch Normalization (Ioffe & Szegedy, 2015, "Batch Normalization:
/// Accelerating Deep Network Training by Reducing Internal Covariate Shift").
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - `E[x]`, `Var[x]` are per channel, over the batch and every spatial
///   position; `Var` is the biased variance (divide by n);
/// - in training they are the batch's own, and the running statistics
///   follow them: `running = (1 - m) · running + m · batch`, with the
///   *unbiased* variance (divide by n - 1), as PyTorch does;
/// - in evaluation they are the running statistics;
/// - `weight`, `bias` are optional per-channel parameters.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` (channels first) or `[N, *, C]` (channels last),
///   rank ≥ 2;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
/// - saved [`Stats`]: one mean and rstd per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance inside the square root. PyTorch: `1e-5`.
    pub eps: f32,
    /// Running-statistics update rule. PyTorch: `momentum=0.1`.
    pub momentum: Momentum,
    /// Position of the channel axis. PyTorch: channels first.
    pub channel_axis: ChannelAxis,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: Momentum::default(),
            channel_axis: ChannelAxis::First,
        }
    }
}

fn plan(shape: &[usize], cfg: &BatchNormConfig) -> Result<Plan> {
    check_eps(OP, cfg.eps)?;
    let geo = Geometry::channels(OP, shape, cfg.channel_axis)?;
    if geo.c == 0 {
        return Err(NormError::Empty {
            op: OP,
            shape: shape.to_vec(),
        });
    }
    Ok(Plan {
        geo,
        scope: Scope::AcrossBatch,
        centered: true,
    })
}

/// Every check of a training forward but the batch size (which
/// SyncBatchNorm counts over all ranks).
pub(crate) fn check_forward_train(
    y_len: usize,
    x_len: usize,
    shape: &[usize],
    affine: Affine<'_>,
    running: Option<&RunningStats<'_>>,
    cfg: &BatchNormConfig,
) -> Result<Plan> {
    let p = plan(shape, cfg)?;
    p.check_forward(OP, y_len, x_len, affine, shape)?;
    cfg.momentum.validate(OP)?;
    if let Some(r) = running {
        check_len(OP, "running_mean", r.mean.len(), p.geo.c, shape)?;
        check_len(OP, "running_var", r.var.len(), p.geo.c, shape)?;
    }
    Ok(p)
}

/// Every check of a backward pass but the batch size.
pub(crate) fn check_backward<T>(
    grads: &Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &BatchNormConfig,
) -> Result<Plan> {
    let p = plan(shape, cfg)?;
    p.check_backward(OP, grads, dy, x, weight, stats, shape)?;
    Ok(p)
}

/// What a training step needs beyond the plan: a usable momentum and more
/// than one value per channel (the running variance is unbiased).
fn check_train(p: &Plan, cfg: &BatchNormConfig, shape: &[usize]) -> Result<()> {
    cfg.momentum.validate(OP)?;
    if p.group_size() <= 1 {
        return Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

/// Training forward: normalizes with the batch statistics, updates
/// `running` when given, and returns the statistics backward needs.
pub fn batch_norm_forward_train<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    running: Option<RunningStats<'_>>,
    cfg: &BatchNormConfig,
) -> Result<Stats> {
    let p = check_forward_train(y.len(), x.len(), shape, affine, running.as_ref(), cfg)?;
    check_train(&p, cfg, shape)?;
    let (stats, moments) = p.forward_train(y, x, affine, cfg.eps);
    if let Some(r) = running {
        update_running(r, &moments, cfg.momentum.factor());
    }
    Ok(stats)
}

/// Evaluation forward: normalizes with the running statistics. Returns the
/// statistics it used, which [`batch_norm_backward_eval`] takes.
pub fn batch_norm_forward_eval<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    running_mean: &[f32],
    running_var: &[f32],
    cfg: &BatchNormConfig,
) -> Result<Stats> {
    let p = plan(shape, cfg)?;
    p.check_forward(OP, y.len(), x.len(), affine, shape)?;
    check_len(OP, "running_mean", running_mean.len(), p.geo.c, shape)?;
    check_len(OP, "running_var", running_var.len(), p.geo.c, shape)?;
    let stats = stats_from_running(running_mean, running_var, cfg.eps);
    // An empty input may still have huge extents: do not walk its runs.
    if !x.is_empty() {
        p.forward_with_stats(y, x, affine, &stats);
    }
    Ok(stats)
}

/// Backward of [`batch_norm_forward_train`]: gradients of `sum(y · dy)`.
pub fn batch_norm_backward_train<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &BatchNormConfig,
) -> Result<()> {
    let p = check_backward(&grads, dy, x, shape, weight, stats, cfg)?;
    if p.group_size() <= 1 {
        return Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        });
    }
    p.backward_train(grads, dy, x, weight, stats);
    Ok(())
}

/// Backward of [`batch_norm_forward_eval`]: the statistics are constants.
pub fn batch_norm_backward_eval<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &BatchNormConfig,
) -> Result<()> {
    let p = check_backward(&grads, dy, x, shape, weight, stats, cfg)?;
    if x.is_empty() {
        // Empty sums, without walking the runs of a possibly huge shape.
        for out in [grads.dweight, grads.dbias].into_iter().flatten() {
            out.fill(0.0);
        }
        return Ok(());
    }
    p.backward_with_stats(grads, dy, x, weight, stats);
    Ok(())
}

/// The BatchNorm entry points as a [`NormOp`]: PyTorch's
/// `BatchNorm1d/2d/3d(num_features, eps, momentum, affine,
/// track_running_stats)` for one call.
///
/// `training` selects batch statistics (PyTorch: training mode, or no
/// running statistics at all) or the running ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormOp {
    pub cfg: BatchNormConfig,
    pub training: bool,
    pub weight: bool,
    pub bias: bool,
}

impl BatchNormOp {
    /// The signature, refusing a training step's bad momentum, and (when
    /// `count`) a batch with one value per channel: SyncBatchNorm counts
    /// the batch over every rank instead, in its forward.
    pub(crate) fn signature_counting(&self, shape: &[usize], count: bool) -> Result<Signature> {
        let p = plan(shape, &self.cfg)?;
        if self.training {
            self.cfg.momentum.validate(OP)?;
        }
        if self.training && count {
            check_train(&p, &self.cfg, shape)?;
        }
        let channels = p.geo.c;
        checked_signature(
            self.name(),
            shape,
            affine_params(self.weight, self.bias, channels),
            Running::updates_or_reads(self.training, channels),
        )
    }
}

impl NormOp for BatchNormOp {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        self.signature_counting(shape, self.training)
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
            (true, running) => batch_norm_forward_train(y, x, shape, affine, running, &self.cfg),
            (false, Some(r)) => {
                batch_norm_forward_eval(y, x, shape, affine, r.mean, r.var, &self.cfg)
            }
            (false, None) => Err(NormError::Missing {
                op: OP,
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
            batch_norm_backward_train(grads, dy, x, shape, weight, saved, &self.cfg)
        } else {
            batch_norm_backward_eval(grads, dy, x, shape, weight, saved, &self.cfg)
        }
    }
}
