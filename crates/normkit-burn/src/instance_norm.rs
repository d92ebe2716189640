//! The InstanceNorm layer.

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use normkit::Momentum;

use crate::error::{check_channels, check_eps, check_momentum, check_positive, Result};
use crate::functional;
use crate::step;
use crate::ChannelAxis;

/// Configuration of an [`InstanceNorm`] layer, with PyTorch's defaults.
#[derive(Config, Debug)]
pub struct InstanceNormConfig {
    /// Number of channels `C`. PyTorch: `num_features`.
    pub num_features: usize,
    /// Added to the variance inside the square root. PyTorch: `eps=1e-5`.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Weight of the batch's statistic in the running update. `None`, as in
    /// PyTorch, means 0: the running statistics never move. PyTorch:
    /// `momentum=0.1`.
    #[config(default = "Some(0.1)")]
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` (ones) and `bias` (zeros). PyTorch:
    /// `affine=False`.
    #[config(default = false)]
    pub affine: bool,
    /// Keep running statistics, updated in training and used in inference.
    /// PyTorch: `track_running_stats=False`.
    #[config(default = false)]
    pub track_running_stats: bool,
    /// Position of the channel axis. PyTorch: channels first (`[N, C, *]`).
    #[config(default = "ChannelAxis::First")]
    pub channel_axis: ChannelAxis,
}

/// Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016):
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - `E[x]`, `Var[x]` are per (sample, channel) over the spatial positions,
///   `Var` biased: GroupNorm with one channel per group;
/// - with running statistics, training updates them with the batch mean
///   of the per-instance mean and unbiased variance,
///   `running = (1 - m) · running + m · batch`, and inference normalizes
///   with them, as BatchNorm does.
///
/// # Shapes
/// - input, output: `[N, C, *]` or `[N, *, C]`, more than one spatial
///   position when normalizing with instance statistics;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`.
#[derive(Module, Debug)]
pub struct InstanceNorm {
    /// Per-channel scale, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// Per-channel shift, `None` without affine parameters.
    pub bias: Option<Param<Tensor<1>>>,
    /// Running mean, `None` when not tracked.
    pub running_mean: Option<RunningState<Tensor<1>>>,
    /// Running (unbiased) variance, `None` when not tracked.
    pub running_var: Option<RunningState<Tensor<1>>>,
    /// Whether training behavior is enabled.
    pub training: Param<Flag>,
    /// Number of channels.
    pub num_features: usize,
    /// Variance floor inside the square root.
    pub eps: f64,
    /// Running-update weight (`None`: the statistics never move).
    pub momentum: Option<f64>,
    /// Position of the channel axis.
    #[module(skip)]
    pub channel_axis: ChannelAxis,
}

impl InstanceNormConfig {
    /// Builds the layer: weight ones, bias zeros, running mean zeros,
    /// running variance ones.
    ///
    /// # Errors
    /// Zero features, a negative or non-finite eps, a non-finite momentum.
    pub fn try_init(&self, device: &Device) -> Result<InstanceNorm> {
        const OP: &str = "InstanceNorm";
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
        Ok(InstanceNorm {
            weight: affine(1.0),
            bias: affine(0.0),
            running_mean: running(0.0),
            running_var: running(1.0),
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
    pub fn init(&self, device: &Device) -> InstanceNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl InstanceNorm {
    /// Normalizes `x`; in training, updates the running statistics.
    ///
    /// # Errors
    /// An input whose channel count is not `num_features`, of rank below 2,
    /// or with one spatial position when using instance statistics.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_channels(
            "InstanceNorm",
            &x.dims(),
            self.channel_axis,
            self.num_features,
        )?;
        let training = step::training(&x.device(), &self.training);
        let running = match (&self.running_mean, &self.running_var) {
            (Some(m), Some(v)) => Some(step::read(m, v, training)),
            _ => None,
        };
        let cfg = normkit::InstanceNormConfig {
            eps: self.eps as f32,
            momentum: Momentum::Exponential(self.momentum.unwrap_or(0.0) as f32),
            channel_axis: self.channel_axis.into(),
        };
        let (y, updated) = functional::instance_norm(
            x,
            self.weight.as_ref().map(Param::val),
            self.bias.as_ref().map(Param::val),
            running,
            training,
            &cfg,
        )?;
        if let (Some(new), Some(m), Some(v)) = (updated, &self.running_mean, &self.running_var) {
            step::write(m, v, new);
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
