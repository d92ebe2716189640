//! The BatchNorm layer.

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use normkit::Momentum;

use crate::error::{check_channels, check_eps, check_momentum, check_positive, Result};
use crate::functional;
use crate::step;
use crate::ChannelAxis;

/// Configuration of a [`BatchNorm`] layer, with PyTorch's defaults.
#[derive(Config, Debug)]
pub struct BatchNormConfig {
    /// Number of channels `C`. PyTorch: `num_features`.
    pub num_features: usize,
    /// Added to the variance inside the square root. PyTorch: `eps=1e-5`.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Weight of the batch statistic in the running update, or `None` for
    /// a cumulative moving average over all batches seen. PyTorch:
    /// `momentum=0.1`.
    #[config(default = "Some(0.1)")]
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` (ones) and `bias` (zeros). PyTorch:
    /// `affine=True`.
    #[config(default = true)]
    pub affine: bool,
    /// Keep running statistics, updated in training and used in
    /// inference. Without them, inference also normalizes with the
    /// batch's statistics. PyTorch: `track_running_stats=True`.
    #[config(default = true)]
    pub track_running_stats: bool,
    /// Position of the channel axis. PyTorch: channels first (`[N, C, *]`).
    #[config(default = "ChannelAxis::First")]
    pub channel_axis: ChannelAxis,
}

/// Batch Normalization (Ioffe & Szegedy, 2015):
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - `E[x]`, `Var[x]` are per channel over the batch and every spatial
///   position, `Var` biased (divide by n);
/// - in training (an autodiff device and the `training` flag on), they are
///   the batch's statistics, and the running statistics follow them:
///   `running = (1 - m) · running + m · batch`, with the *unbiased*
///   variance (divide by n - 1) and `m` the momentum or, without one,
///   `1 / (num_batches_tracked + 1)`;
/// - in inference they are the running statistics (or the batch's own
///   when the layer does not track them).
///
/// `forward` runs one fused normkit kernel on the flex backend (its
/// backward another), composed tensor operations elsewhere.
///
/// # Shapes
/// - input, output: `[N, C, *]` (channels first) or `[N, *, C]`;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
///   `num_batches_tracked`: `[1]`.
#[derive(Module, Debug)]
pub struct BatchNorm {
    /// Per-channel scale, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// Per-channel shift, `None` without affine parameters.
    pub bias: Option<Param<Tensor<1>>>,
    /// Running mean, `None` when not tracked.
    pub running_mean: Option<RunningState<Tensor<1>>>,
    /// Running (unbiased) variance, `None` when not tracked.
    pub running_var: Option<RunningState<Tensor<1>>>,
    /// Training steps taken, counted exactly up to 2^24, `None` when not
    /// tracked.
    pub num_batches_tracked: Option<RunningState<Tensor<1>>>,
    /// Whether training behavior is enabled (burn's `Module::valid` turns
    /// it off).
    pub training: Param<Flag>,
    /// Number of channels.
    pub num_features: usize,
    /// Variance floor inside the square root.
    pub eps: f64,
    /// Running-update weight; `None` for the cumulative average.
    pub momentum: Option<f64>,
    /// Position of the channel axis.
    #[module(skip)]
    pub channel_axis: ChannelAxis,
}

impl BatchNormConfig {
    /// Builds the layer: weight ones, bias zeros, running mean zeros,
    /// running variance ones.
    ///
    /// # Errors
    /// Zero features, a negative or non-finite eps, a non-finite momentum.
    pub fn try_init(&self, device: &Device) -> Result<BatchNorm> {
        const OP: &str = "BatchNorm";
        check_positive(OP, "num_features", self.num_features)?;
        check_eps(OP, self.eps)?;
        check_momentum(OP, self.momentum)?;
        let c = self.num_features;
        let affine = |v: f32| {
            self.affine
                .then(|| Param::from_tensor(Tensor::full([c], v, device)))
        };
        let running = |v: f32| {
            self.track_running_stats
                .then(|| RunningState::new(Tensor::full([c], v, device)))
        };
        Ok(BatchNorm {
            weight: affine(1.0),
            bias: affine(0.0),
            running_mean: running(0.0),
            running_var: running(1.0),
            num_batches_tracked: self
                .track_running_stats
                .then(|| RunningState::new(Tensor::zeros([1], device))),
            training: Param::from_bool(true),
            num_features: c,
            eps: self.eps,
            momentum: self.momentum,
            channel_axis: self.channel_axis,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> BatchNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Reads a step counter kept as a one-element float tensor.
pub(crate) fn read_count(state: &RunningState<Tensor<1>>) -> u64 {
    let count: f64 = state
        .value_sync()
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap_or(0.0);
    count.max(0.0) as u64
}

impl BatchNorm {
    /// Normalizes `x`; in training, updates the running statistics.
    ///
    /// # Errors
    /// An input whose channel count is not `num_features`, of rank below 2,
    /// or with a single value per channel when using batch statistics.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_channels("BatchNorm", &x.dims(), self.channel_axis, self.num_features)?;
        let training = step::training(&x.device(), &self.training);
        let running = match (&self.running_mean, &self.running_var) {
            (Some(m), Some(v)) => Some(step::read(m, v, training)),
            _ => None,
        };
        let momentum = match (self.momentum, &self.num_batches_tracked) {
            (Some(m), _) => Momentum::Exponential(m as f32),
            (None, Some(count)) if training => Momentum::CumulativeAverage {
                num_batches_tracked: read_count(count),
            },
            (None, _) => Momentum::CumulativeAverage {
                num_batches_tracked: 0,
            },
        };
        let cfg = normkit::BatchNormConfig {
            eps: self.eps as f32,
            momentum,
            channel_axis: self.channel_axis.into(),
        };
        let (y, updated) = functional::batch_norm(
            x,
            self.weight.as_ref().map(Param::val),
            self.bias.as_ref().map(Param::val),
            running,
            training,
            &cfg,
        )?;
        if let Some(new) = updated {
            if let (Some(m), Some(v)) = (&self.running_mean, &self.running_var) {
                step::write(m, v, new);
            }
            if let Some(count) = &self.num_batches_tracked {
                count.update(count.value_sync().add_scalar(1.0).detach());
            }
        }
        Ok(y)
    }

    /// Normalizes `x`; in training, updates the running statistics.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}
