//! The Batch Renormalization layer.

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use normkit::{Momentum, RenormSchedule};

use crate::batch_norm::read_count;
use crate::error::{check_channels, check_eps, check_momentum, check_positive, Error, Result};
use crate::functional;
use crate::step;
use crate::ChannelAxis;

/// When the clip bounds of a [`BatchRenorm`] relax (see
/// [`normkit::RenormSchedule`]): plain BatchNorm (`r_max = 1`,
/// `d_max = 0`) for `warmup` steps, then each bound rises linearly to the
/// layer's `r_max`/`d_max`, reached at step `r_max_at`/`d_max_at`. Steps
/// are counted by `num_batches_tracked`. Defaults: the paper's.
#[derive(Config, Debug, PartialEq)]
pub struct RenormScheduleConfig {
    /// Steps of plain BatchNorm. Paper: `5000`.
    #[config(default = 5000)]
    pub warmup: u64,
    /// Step at which `r_max` reaches its final value. Paper: `40000`.
    #[config(default = 40000)]
    pub r_max_at: u64,
    /// Step at which `d_max` reaches its final value. Paper: `25000`.
    #[config(default = 25000)]
    pub d_max_at: u64,
}

/// Configuration of a [`BatchRenorm`] layer, with PyTorch's BatchNorm
/// defaults and the paper's final clip bounds.
#[derive(Config, Debug)]
pub struct BatchRenormConfig {
    /// Number of channels `C`.
    pub num_features: usize,
    /// Added to the variances inside the square roots. PyTorch: `1e-5`.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Weight of the batch statistic in the running update, or `None` for
    /// a cumulative moving average over all batches seen. PyTorch:
    /// `momentum=0.1`.
    #[config(default = "Some(0.1)")]
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` (ones) and `bias` (zeros).
    #[config(default = true)]
    pub affine: bool,
    /// Position of the channel axis. PyTorch: channels first (`[N, C, *]`).
    #[config(default = "ChannelAxis::First")]
    pub channel_axis: ChannelAxis,
    /// Largest `r` (at least 1): `r` stays within `[1/r_max, r_max]`.
    /// Paper: `3`.
    #[config(default = 3.0)]
    pub r_max: f64,
    /// Largest `|d|` (at least 0). Paper: `5`.
    #[config(default = 5.0)]
    pub d_max: f64,
    /// Relax the bounds from BatchNorm's to `r_max`, `d_max` over training;
    /// `None` uses `r_max`, `d_max` from the first step.
    #[config(default = "None")]
    pub schedule: Option<RenormScheduleConfig>,
}

/// Batch Renormalization (Ioffe, 2017, "Batch Renormalization: Towards
/// Reducing Minibatch Dependence in Batch-Normalized Models"):
///
/// ```text
/// training:  y = ((x - μ_B) / σ_B · r + d) · weight + bias
/// inference: y = (x - μ) / σ · weight + bias            (BatchNorm's)
/// ```
///
/// where
/// - `μ_B`, `σ_B = sqrt(Var_B + eps)` are the batch's per-channel mean and
///   standard deviation (biased variance);
/// - `μ = running_mean`, `σ = sqrt(running_var + eps)`, read before this
///   step's update;
/// - `r = clip(σ_B / σ, 1/r_max, r_max)`,
///   `d = clip((μ_B - μ) / σ, -d_max, d_max)`, per channel, constants of
///   the backward pass (no gradient flows through them);
/// - the running statistics follow the batch as BatchNorm's do (momentum
///   or cumulative average, unbiased variance), and `num_batches_tracked`
///   counts the steps, driving the optional schedule of the bounds.
///
/// With `r_max = 1` and `d_max = 0` it is BatchNorm. Training means an
/// autodiff device with the `training` flag on, as for [`crate::BatchNorm`].
///
/// # Shapes
/// - input, output: `[N, C, *]` (channels first) or `[N, *, C]`;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
///   `num_batches_tracked`: `[1]`.
#[derive(Module, Debug)]
pub struct BatchRenorm {
    /// Per-channel scale, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// Per-channel shift, `None` without affine parameters.
    pub bias: Option<Param<Tensor<1>>>,
    /// Running mean.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance.
    pub running_var: RunningState<Tensor<1>>,
    /// Training steps taken, counted exactly up to 2^24.
    pub num_batches_tracked: RunningState<Tensor<1>>,
    /// Whether training behavior is enabled.
    pub training: Param<Flag>,
    /// Number of channels.
    pub num_features: usize,
    /// Variance floor inside the square roots.
    pub eps: f64,
    /// Running-update weight; `None` for the cumulative average.
    pub momentum: Option<f64>,
    /// Final bound of `r`.
    pub r_max: f64,
    /// Final bound of `|d|`.
    pub d_max: f64,
    /// How the bounds relax, `None` for fixed bounds.
    #[module(skip)]
    pub schedule: Option<RenormScheduleConfig>,
    /// Position of the channel axis.
    #[module(skip)]
    pub channel_axis: ChannelAxis,
}

fn check_limits(r_max: f64, d_max: f64) -> Result<()> {
    const OP: &str = "BatchRenorm";
    if !(r_max.is_finite() && r_max >= 1.0) {
        return Err(Error::Config {
            op: OP,
            name: "r_max",
            domain: "finite and at least 1",
            value: r_max,
        });
    }
    if !(d_max.is_finite() && d_max >= 0.0) {
        return Err(Error::Config {
            op: OP,
            name: "d_max",
            domain: "finite and non-negative",
            value: d_max,
        });
    }
    Ok(())
}

impl BatchRenormConfig {
    /// Builds the layer: weight ones, bias zeros, running mean zeros,
    /// running variance ones, no steps taken.
    ///
    /// # Errors
    /// Zero features, a negative or non-finite eps, a non-finite momentum,
    /// `r_max < 1`, `d_max < 0` or a non-finite bound.
    pub fn try_init(&self, device: &Device) -> Result<BatchRenorm> {
        const OP: &str = "BatchRenorm";
        check_positive(OP, "num_features", self.num_features)?;
        check_eps(OP, self.eps)?;
        check_momentum(OP, self.momentum)?;
        check_limits(self.r_max, self.d_max)?;
        let c = self.num_features;
        let affine = |v: f32| {
            self.affine
                .then(|| Param::from_tensor(Tensor::full([c], v, device)))
        };
        Ok(BatchRenorm {
            weight: affine(1.0),
            bias: affine(0.0),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            num_batches_tracked: RunningState::new(Tensor::zeros([1], device)),
            training: Param::from_bool(true),
            num_features: c,
            eps: self.eps,
            momentum: self.momentum,
            r_max: self.r_max,
            d_max: self.d_max,
            schedule: self.schedule.clone(),
            channel_axis: self.channel_axis,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> BatchRenorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl BatchRenorm {
    /// The bounds `(r_max, d_max)` the next training step uses: the
    /// schedule's at `num_batches_tracked`, or the fixed ones.
    pub fn limits(&self) -> (f64, f64) {
        match &self.schedule {
            None => (self.r_max, self.d_max),
            Some(s) => {
                let schedule = RenormSchedule {
                    warmup: s.warmup,
                    r_max_at: s.r_max_at,
                    d_max_at: s.d_max_at,
                    r_max: self.r_max as f32,
                    d_max: self.d_max as f32,
                };
                let (r, d) = schedule.limits(read_count(&self.num_batches_tracked));
                (r as f64, d as f64)
            }
        }
    }

    /// Normalizes `x`; in training, updates the running statistics and the
    /// step count.
    ///
    /// # Errors
    /// An input whose channel count is not `num_features`, of rank below 2,
    /// or with a single value per channel in training; bounds out of their
    /// domain.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_channels(
            "BatchRenorm",
            &x.dims(),
            self.channel_axis,
            self.num_features,
        )?;
        let training = step::training(&x.device(), &self.training);
        let running = step::read(&self.running_mean, &self.running_var, training);
        let momentum = match self.momentum {
            Some(m) => Momentum::Exponential(m as f32),
            None if training => Momentum::CumulativeAverage {
                num_batches_tracked: read_count(&self.num_batches_tracked),
            },
            None => Momentum::CumulativeAverage {
                num_batches_tracked: 0,
            },
        };
        let (r_max, d_max) = self.limits();
        let cfg = normkit::BatchRenormConfig {
            eps: self.eps as f32,
            momentum,
            channel_axis: self.channel_axis.into(),
            r_max: r_max as f32,
            d_max: d_max as f32,
        };
        let (y, updated) = functional::batch_renorm(
            x,
            self.weight.as_ref().map(Param::val),
            self.bias.as_ref().map(Param::val),
            running,
            training,
            &cfg,
        )?;
        if let Some(new) = updated {
            step::write(&self.running_mean, &self.running_var, new);
            let count = self.num_batches_tracked.value_sync();
            self.num_batches_tracked
                .update(count.add_scalar(1.0).detach());
        }
        Ok(y)
    }

    /// Normalizes `x`; in training, updates the running statistics and the
    /// step count.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}
