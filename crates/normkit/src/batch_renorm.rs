//! Batch Renormalization: BatchNorm whose training output is pulled
//! towards what the running statistics would give.

use crate::batch_norm::BatchNormConfig;
use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::{
    check_eps, check_len, Affine, ChannelAxis, Geometry, Grads, Momentum, RunningStats, Stats,
};
use crate::moments::rstd;
use crate::normalize::{update_running, Plan, Scope};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Running, Signature,
};

const OP: &str = "batch_renorm";

/// Batch Renormalization (Ioffe, 2017, "Batch Renormalization: Towards
/// Reducing Minibatch Dependence in Batch-Normalized Models").
///
/// ```text
/// training:   y = ((x - μ_B) / σ_B · r + d) · weight + bias
/// evaluation: y = (x - μ) / σ · weight + bias          (BatchNorm's)
/// ```
///
/// where
/// - `μ_B`, `σ_B = sqrt(Var_B + eps)` are the batch's per-channel mean and
///   standard deviation (biased variance), as in BatchNorm;
/// - `μ`, `σ = sqrt(running_var + eps)` come from the running statistics
///   *before* this step's update;
/// - `r = clip(σ_B / σ, 1/r_max, r_max)` and
///   `d = clip((μ_B - μ) / σ, -d_max, d_max)` are per channel and treated
///   as constants: no gradient flows through them;
/// - the running statistics follow the batch exactly as BatchNorm's do
///   (momentum or cumulative average, unbiased variance).
///
/// With `r_max = 1` and `d_max = 0`, `r = 1` and `d = 0`: this is BatchNorm,
/// bit for bit. The paper starts there and relaxes the limits during
/// training ([`RenormSchedule`]).
///
/// Since `r` and `d` are constants, the training forward is BatchNorm with
/// the affine transform `weight · r`, `weight · d + bias`, and its backward
/// BatchNorm's backward with that weight; the kernels run exactly that.
/// Computing `r` needs the batch statistics before normalizing, so the
/// training forward reads `x` once more than BatchNorm's.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
/// - saved [`RenormStats`]: the batch mean and rstd, `r` and `d`, per
///   channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchRenormConfig {
    /// PyTorch's BatchNorm: `1e-5`.
    pub eps: f32,
    /// Running-statistics update rule (BatchNorm's: `momentum=0.1`).
    pub momentum: Momentum,
    /// Position of the channel axis.
    pub channel_axis: ChannelAxis,
    /// Largest allowed `r` (≥ 1); `r` stays within `[1/r_max, r_max]`.
    pub r_max: f32,
    /// Largest allowed `|d|` (≥ 0).
    pub d_max: f32,
}

impl Default for BatchRenormConfig {
    /// The paper's final limits, `r_max = 3`, `d_max = 5`.
    fn default() -> Self {
        BatchRenormConfig {
            eps: 1e-5,
            momentum: Momentum::default(),
            channel_axis: ChannelAxis::First,
            r_max: 3.0,
            d_max: 5.0,
        }
    }
}

impl BatchRenormConfig {
    /// The BatchNorm configuration with the same eps, momentum and layout:
    /// evaluation mode runs BatchNorm with it.
    pub fn batch_norm(&self) -> BatchNormConfig {
        BatchNormConfig {
            eps: self.eps,
            momentum: self.momentum,
            channel_axis: self.channel_axis,
        }
    }
}

/// How `r_max` and `d_max` grow during training: plain BatchNorm
/// (`r_max = 1`, `d_max = 0`) for `warmup` steps, then each limit rises
/// linearly to its final value, reached at step `r_max_at` / `d_max_at`.
///
/// The paper's schedule (the [`Default`]): BatchNorm for 5,000 steps,
/// `r_max = 3` at 40,000 steps and `d_max = 5` at 25,000.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenormSchedule {
    pub warmup: u64,
    pub r_max_at: u64,
    pub d_max_at: u64,
    pub r_max: f32,
    pub d_max: f32,
}

impl Default for RenormSchedule {
    fn default() -> Self {
        RenormSchedule {
            warmup: 5_000,
            r_max_at: 40_000,
            d_max_at: 25_000,
            r_max: 3.0,
            d_max: 5.0,
        }
    }
}

impl RenormSchedule {
    /// `(r_max, d_max)` for training step `step` (counted from 0).
    pub fn limits(&self, step: u64) -> (f32, f32) {
        let ramp = |end: u64, from: f32, to: f32| -> f32 {
            if step <= self.warmup {
                from
            } else if step >= end {
                to
            } else {
                let t = (step - self.warmup) as f64 / (end - self.warmup) as f64;
                (from as f64 + t * (to as f64 - from as f64)) as f32
            }
        };
        (
            ramp(self.r_max_at, 1.0, self.r_max),
            ramp(self.d_max_at, 0.0, self.d_max),
        )
    }
}

/// What a training forward saves for the backward pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RenormStats {
    /// The batch mean and `1 / σ_B`, per channel.
    pub stats: Stats,
    /// The correction `r`, per channel.
    pub r: Vec<f32>,
    /// The correction `d`, per channel.
    pub d: Vec<f32>,
}

fn check_limits(cfg: &BatchRenormConfig) -> Result<()> {
    if !(cfg.r_max >= 1.0 && cfg.r_max.is_finite()) {
        return Err(NormError::Param {
            op: OP,
            name: "r_max",
            domain: "finite and at least 1",
            value: cfg.r_max as f64,
        });
    }
    if !(cfg.d_max >= 0.0 && cfg.d_max.is_finite()) {
        return Err(NormError::Param {
            op: OP,
            name: "d_max",
            domain: "finite and non-negative",
            value: cfg.d_max as f64,
        });
    }
    Ok(())
}

fn plan(shape: &[usize], cfg: &BatchRenormConfig) -> Result<Plan> {
    check_eps(OP, cfg.eps)?;
    check_limits(cfg)?;
    let geo = Geometry::channels(OP, shape, cfg.channel_axis)?;
    if geo.c == 0 {
        return Err(NormError::Empty {
            op: OP,
            shape: shape.to_vec(),
        });
    }
    let p = Plan {
        geo,
        scope: Scope::AcrossBatch,
        centered: true,
    };
    if p.group_size() <= 1 {
        return Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        });
    }
    Ok(p)
}

/// The affine transform BatchNorm applies so that it computes Batch
/// Renormalization: `weight · r` and `weight · d + bias`.
fn effective_affine(affine: Affine<'_>, r: &[f32], d: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let w = |k: usize| affine.weight.map_or(1.0, |w| w[k]);
    let b = |k: usize| affine.bias.map_or(0.0, |b| b[k]);
    let weight = (0..r.len()).map(|k| w(k) * r[k]).collect();
    let bias = (0..r.len()).map(|k| w(k) * d[k] + b(k)).collect();
    (weight, bias)
}

/// Training forward: normalizes with the batch statistics corrected by `r`
/// and `d`, then updates `running`. Evaluation: [`batch_renorm_forward_eval`].
pub fn batch_renorm_forward_train<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    running: RunningStats<'_>,
    cfg: &BatchRenormConfig,
) -> Result<RenormStats> {
    let p = plan(shape, cfg)?;
    p.check_forward(OP, y.len(), x.len(), affine, shape)?;
    cfg.momentum.validate(OP)?;
    check_len(OP, "running_mean", running.mean.len(), p.geo.c, shape)?;
    check_len(OP, "running_var", running.var.len(), p.geo.c, shape)?;
    let moments = p.moments(x);
    let (r_max, d_max) = (cfg.r_max as f64, cfg.d_max as f64);
    let (mut r, mut d) = (Vec::with_capacity(p.geo.c), Vec::with_capacity(p.geo.c));
    for (k, m) in moments.iter().enumerate() {
        // 1/σ from the running variance, σ_B from the batch's.
        let inv_sigma = rstd(running.var[k] as f64, cfg.eps);
        let sigma_b = 1.0 / rstd(m.var, cfg.eps);
        r.push((sigma_b * inv_sigma).clamp(1.0 / r_max, r_max) as f32);
        d.push(((m.mean - running.mean[k] as f64) * inv_sigma).clamp(-d_max, d_max) as f32);
    }
    let (weight, bias) = effective_affine(affine, &r, &d);
    let (stats, _) = p.forward_train(y, x, Affine::new(&weight, &bias), cfg.eps);
    update_running(running, &moments, cfg.momentum.factor());
    Ok(RenormStats { stats, r, d })
}

/// Backward of [`batch_renorm_forward_train`]: gradients of `sum(y · dy)`,
/// with `r` and `d` held constant.
pub fn batch_renorm_backward_train<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &RenormStats,
    cfg: &BatchRenormConfig,
) -> Result<()> {
    let p = plan(shape, cfg)?;
    p.check_backward(OP, &grads, dy, x, weight, &stats.stats, shape)?;
    let c = p.geo.c;
    check_len(OP, "r", stats.r.len(), c, shape)?;
    check_len(OP, "d", stats.d.len(), c, shape)?;
    let affine = Affine { weight, bias: None };
    let (eff_weight, _) = effective_affine(affine, &stats.r, &stats.d);
    let Grads { dx, dweight, dbias } = grads;
    // d(weight · r) and d(weight · d + bias): the chain rule to `weight`
    // needs both, whatever the caller asked for.
    let (mut dw_eff, mut db_eff) = (vec![0.0f32; c], vec![0.0f32; c]);
    let inner = Grads {
        dx,
        dweight: Some(&mut dw_eff),
        dbias: Some(&mut db_eff),
    };
    p.backward_train(inner, dy, x, Some(&eff_weight), &stats.stats);
    if let Some(dweight) = dweight {
        for k in 0..c {
            dweight[k] = dw_eff[k] * stats.r[k] + db_eff[k] * stats.d[k];
        }
    }
    if let Some(dbias) = dbias {
        dbias.copy_from_slice(&db_eff);
    }
    Ok(())
}

/// Evaluation forward: BatchNorm's, with the running statistics (the
/// corrections only exist in training). Checks the configuration as
/// training does.
pub fn batch_renorm_forward_eval<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    running_mean: &[f32],
    running_var: &[f32],
    cfg: &BatchRenormConfig,
) -> Result<Stats> {
    check_limits(cfg)?;
    crate::batch_norm_forward_eval(
        y,
        x,
        shape,
        affine,
        running_mean,
        running_var,
        &cfg.batch_norm(),
    )
    .map_err(rename)
}

/// Backward of [`batch_renorm_forward_eval`]: BatchNorm's evaluation
/// backward.
pub fn batch_renorm_backward_eval<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &BatchRenormConfig,
) -> Result<()> {
    check_limits(cfg)?;
    crate::batch_norm_backward_eval(grads, dy, x, shape, weight, stats, &cfg.batch_norm())
        .map_err(rename)
}

/// Errors of the BatchNorm kernels evaluation delegates to, named after
/// this op.
fn rename(e: NormError) -> NormError {
    e.with_op(OP)
}

/// The Batch Renormalization entry points as a [`NormOp`]. Training needs
/// running statistics (the corrections `r` and `d` come from them) and
/// updates them; evaluation is BatchNorm's with them. The evaluation's
/// saved state has empty `r` and `d`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchRenormOp {
    pub cfg: BatchRenormConfig,
    pub training: bool,
    pub weight: bool,
    pub bias: bool,
}

impl NormOp for BatchRenormOp {
    type Saved = RenormStats;

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let channels = if self.training {
            self.cfg.momentum.validate(OP)?;
            plan(shape, &self.cfg)?.geo.c
        } else {
            check_eps(OP, self.cfg.eps)?;
            check_limits(&self.cfg)?;
            Geometry::channels(OP, shape, self.cfg.channel_axis)?.c
        };
        checked_signature(
            self.name(),
            shape,
            affine_params(self.weight, self.bias, channels),
            if self.training {
                Running::Requires { channels }
            } else {
                Running::Reads { channels }
            },
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
    ) -> Result<RenormStats> {
        let affine = affine_of(sig, params);
        let Some(r) = running else {
            return Err(NormError::Missing {
                op: OP,
                name: "running_mean",
            });
        };
        if self.training {
            batch_renorm_forward_train(y, x, shape, affine, r, &self.cfg)
        } else {
            let stats = batch_renorm_forward_eval(y, x, shape, affine, r.mean, r.var, &self.cfg)?;
            Ok(RenormStats {
                stats,
                r: Vec::new(),
                d: Vec::new(),
            })
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
        saved: &RenormStats,
    ) -> Result<()> {
        let weight = affine_of(sig, params).weight;
        let (grads, _) = affine_grads(sig, grads);
        if self.training {
            batch_renorm_backward_train(grads, dy, x, shape, weight, saved, &self.cfg)
        } else {
            batch_renorm_backward_eval(grads, dy, x, shape, weight, &saved.stats, &self.cfg)
        }
    }
}
