//! Batch Renormalization as a candle layer.

use std::collections::HashMap;

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::{BatchRenormOp, ErasedOp};
use normkit::ChannelAxis;

use crate::fused;
use crate::running::{self, Running};
use crate::state::{insert, StateDict};

const OP: &str = "batch_renorm";

/// How the limits of `r` and `d` grow with `num_batches_tracked`: plain
/// BatchNorm (`r_max = 1`, `d_max = 0`) for `warmup` steps, then each
/// limit rises linearly to the configured [`BatchRenormConfig::r_max`] /
/// [`BatchRenormConfig::d_max`], reached at step `r_max_at` / `d_max_at`
/// ([`normkit::RenormSchedule::limits`]).
///
/// The default is the paper's: 5,000 warmup steps, `r_max` reached at
/// 40,000 steps and `d_max` at 25,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRenormSchedule {
    pub warmup: u64,
    pub r_max_at: u64,
    pub d_max_at: u64,
}

impl Default for BatchRenormSchedule {
    fn default() -> Self {
        let paper = normkit::RenormSchedule::default();
        BatchRenormSchedule {
            warmup: paper.warmup,
            r_max_at: paper.r_max_at,
            d_max_at: paper.d_max_at,
        }
    }
}

/// Settings of a [`BatchRenorm`] layer; the defaults are BatchNorm's
/// (PyTorch) and the paper's final limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchRenormConfig {
    /// Default: `1e-5`.
    pub eps: f64,
    /// Weight of the batch statistics in the running-statistics update;
    /// `None` is the cumulative moving average over `num_batches_tracked`.
    /// Default: `Some(0.1)`.
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` and `bias`. Default: `true`.
    pub affine: bool,
    /// Position of the channel axis. Default: channels first.
    pub channel_axis: ChannelAxis,
    /// Largest `r` (finite, ≥ 1): `r` stays within `[1/r_max, r_max]`.
    /// Default: `3`.
    pub r_max: f64,
    /// Largest `|d|` (finite, ≥ 0). Default: `5`.
    pub d_max: f64,
    /// Ramp the limits up from BatchNorm's to `r_max`, `d_max` over the
    /// training steps; `None` uses `r_max`, `d_max` from the first step.
    /// Default: `None`.
    pub schedule: Option<BatchRenormSchedule>,
}

impl Default for BatchRenormConfig {
    fn default() -> Self {
        BatchRenormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            channel_axis: ChannelAxis::First,
            r_max: 3.0,
            d_max: 5.0,
            schedule: None,
        }
    }
}

impl From<f64> for BatchRenormConfig {
    fn from(eps: f64) -> Self {
        BatchRenormConfig {
            eps,
            ..Default::default()
        }
    }
}

/// Batch Renormalization (Ioffe, 2017, "Batch Renormalization: Towards
/// Reducing Minibatch Dependence in Batch-Normalized Models"):
///
/// ```text
/// training:   y = ((x - μ_B) / σ_B · r + d) · weight + bias
/// evaluation: y = (x - μ) / σ · weight + bias            (BatchNorm's)
/// ```
///
/// where
/// - `μ_B`, `σ_B = sqrt(Var_B + eps)` are the batch's per-channel mean and
///   standard deviation (biased variance);
/// - `μ = running_mean`, `σ = sqrt(running_var + eps)`, taken before this
///   step's update;
/// - `r = clip(σ_B / σ, 1/r_max, r_max)`, `d = clip((μ_B - μ) / σ, -d_max,
///   d_max)` per channel, constants for the gradient;
/// - a training step updates the running statistics exactly as BatchNorm's
///   (momentum, unbiased variance) and increments `num_batches_tracked`;
///   with a [`BatchRenormSchedule`], `r_max` and `d_max` are those of step
///   `num_batches_tracked`.
///
/// With `r_max = 1` and `d_max = 0` this is BatchNorm. Train or evaluate
/// through [`ModuleT::forward_t`]; tensors carry BatchNorm's names
/// (`weight`, `bias`, `running_mean`, `running_var`,
/// `num_batches_tracked`), so a BatchNorm state dict loads as is.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
///   `num_batches_tracked`: `[]` (i64).
#[derive(Debug, Clone)]
pub struct BatchRenorm {
    num_features: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running: Running,
    config: BatchRenormConfig,
}

/// Creates a [`BatchRenorm`] over `num_features` channels, loading or
/// initializing (weight 1, bias 0, running mean 0, running variance 1) its
/// tensors through `vb`. Refuses `r_max < 1`, `d_max < 0` and non-finite
/// limits.
pub fn batch_renorm<C: Into<BatchRenormConfig>>(
    num_features: usize,
    config: C,
    vb: VarBuilder,
) -> Result<BatchRenorm> {
    let config = config.into();
    let (weight, bias) = if config.affine {
        (
            Some(vb.get_with_hints(num_features, "weight", Init::Const(1.0))?),
            Some(vb.get_with_hints(num_features, "bias", Init::Const(0.0))?),
        )
    } else {
        (None, None)
    };
    let layer = BatchRenorm {
        num_features,
        weight,
        bias,
        running: Running::load(num_features, &vb)?,
        config,
    };
    // The op's own checks (limits, eps) on one sample, before any input.
    layer
        .op(false)?
        .signature_erased(&[1, num_features])
        .map_err(crate::error::kernel)?;
    Ok(layer)
}

impl BatchRenorm {
    pub fn config(&self) -> &BatchRenormConfig {
        &self.config
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running.mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running.var.as_tensor()
    }

    pub fn num_batches_tracked(&self) -> Result<u64> {
        self.running.count()
    }

    /// `(r_max, d_max)` of the next training step: the configured limits,
    /// or the schedule's at step `num_batches_tracked`.
    pub fn limits(&self) -> Result<(f64, f64)> {
        let (r_max, d_max) = (self.config.r_max, self.config.d_max);
        Ok(match self.config.schedule {
            None => (r_max, d_max),
            Some(s) => {
                let schedule = normkit::RenormSchedule {
                    warmup: s.warmup,
                    r_max_at: s.r_max_at,
                    d_max_at: s.d_max_at,
                    r_max: r_max as f32,
                    d_max: d_max as f32,
                };
                let (r, d) = schedule.limits(self.running.count()?);
                (r as f64, d as f64)
            }
        })
    }
}

impl BatchRenorm {
    fn op(&self, train: bool) -> Result<BatchRenormOp> {
        let momentum = running::momentum(self.config.momentum, Some(&self.running))?;
        let (r_max, d_max) = self.limits()?;
        Ok(BatchRenormOp {
            cfg: normkit::BatchRenormConfig {
                eps: self.config.eps as f32,
                momentum,
                channel_axis: self.config.channel_axis,
                r_max: r_max as f32,
                d_max: d_max as f32,
            },
            training: train,
            weight: self.weight.is_some(),
            bias: self.bias.is_some(),
        })
    }
}

impl ModuleT for BatchRenorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        crate::check_channels(OP, x, self.config.channel_axis, self.num_features)?;
        let params: Vec<&Tensor> = self.weight.iter().chain(&self.bias).collect();
        let r = &self.running;
        let y = fused::apply_running(self.op(train)?, x, &params, Some(r))?;
        if train {
            r.set_count(r.count()? + 1)?;
        }
        Ok(y)
    }
}

impl StateDict for BatchRenorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
        for (name, t) in self.running.named() {
            insert(out, prefix, name, &t);
        }
    }
}
