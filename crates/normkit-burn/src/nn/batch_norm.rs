//! `burn::nn::BatchNorm` by normkit.

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use normkit::Momentum;

use super::filled;
use crate::error::{check_channels, check_eps, check_momentum, check_positive, Result};
use crate::{functional, step, ChannelAxis};

/// Configuration of a [`BatchNorm`], as `burn::nn::BatchNormConfig`.
#[derive(Config, Debug)]
pub struct BatchNormConfig {
    /// Number of channels `C` (dimension 1 of the input).
    pub num_features: usize,
    /// Added to the variance inside the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of the batch statistic in the running update, within
    /// `[0, 1]`.
    #[config(default = 0.1)]
    pub momentum: f64,
}

/// Batch Normalization with `burn::nn::BatchNorm`'s fields:
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + epsilon) · gamma + beta
/// ```
///
/// where `E[x]`, `Var[x]` (biased) are per channel over the batch and the
/// positions in training (an autodiff device and the `training` flag on),
/// and the running statistics otherwise; training moves them by
/// `running = (1 - momentum) · running + momentum · batch`, the variance
/// unbiased.
///
/// # Shapes
/// - input, output: `[N, C, *]`;
/// - `gamma`, `beta`, `running_mean`, `running_var`: `[C]`.
#[derive(Module, Debug)]
pub struct BatchNorm {
    /// Per-channel scale.
    pub gamma: Param<Tensor<1>>,
    /// Per-channel shift.
    pub beta: Param<Tensor<1>>,
    /// Whether training behavior is enabled.
    pub training: Param<Flag>,
    /// Running mean.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance.
    pub running_var: RunningState<Tensor<1>>,
    /// Running-update weight.
    pub momentum: f64,
    /// Variance floor inside the square root.
    pub epsilon: f64,
}

impl BatchNormConfig {
    /// Builds the layer: gamma ones, beta zeros, running mean zeros,
    /// running variance ones.
    ///
    /// # Errors
    /// Zero features, a negative or non-finite epsilon, a momentum outside
    /// `[0, 1]`.
    pub fn try_init(&self, device: &Device) -> Result<BatchNorm> {
        const OP: &str = "BatchNorm";
        check_positive(OP, "num_features", self.num_features)?;
        check_eps(OP, self.epsilon)?;
        check_momentum(OP, Some(self.momentum))?;
        let c = self.num_features;
        Ok(BatchNorm {
            gamma: filled(c, 1.0, device),
            beta: filled(c, 0.0, device),
            training: Param::from_bool(true),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            momentum: self.momentum,
            epsilon: self.epsilon,
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

impl BatchNorm {
    /// Normalizes `x`; in training, updates the running statistics.
    ///
    /// # Errors
    /// An input whose dimension 1 is not the layer's channels, of rank
    /// below 2, or with a single value per channel in training.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let [c] = self.gamma.shape().dims();
        check_channels("BatchNorm", &x.dims(), ChannelAxis::First, c)?;
        let training = step::training(&x.device(), &self.training);
        let running = step::read(&self.running_mean, &self.running_var, training);
        let cfg = normkit::BatchNormConfig {
            eps: self.epsilon as f32,
            momentum: Momentum::Exponential(self.momentum as f32),
            channel_axis: normkit::ChannelAxis::First,
        };
        let (gamma, beta) = (Some(self.gamma.val()), Some(self.beta.val()));
        let (y, updated) = functional::batch_norm(x, gamma, beta, Some(running), training, &cfg)?;
        if let Some(new) = updated {
            step::write(&self.running_mean, &self.running_var, new);
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
