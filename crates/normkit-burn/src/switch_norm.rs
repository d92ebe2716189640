//! The Switchable Normalization layer.

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use normkit::Momentum;

use crate::error::{check_channels, check_eps, check_momentum, check_positive, Result};
use crate::functional;
use crate::step;
use crate::ChannelAxis;

/// Configuration of a [`SwitchNorm`] layer, with the paper's defaults.
#[derive(Config, Debug)]
pub struct SwitchNormConfig {
    /// Number of channels `C`.
    pub num_features: usize,
    /// Added to the mixed variance inside the square root. Paper: `1e-5`.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Weight of the batch statistic in the running update,
    /// `running = (1 - m) · running + m · batch` (PyTorch's convention;
    /// the paper's `0.997` decay is `m = 0.003`).
    #[config(default = 0.1)]
    pub momentum: f64,
    /// Learnable per-channel `weight` (ones) and `bias` (zeros).
    #[config(default = true)]
    pub affine: bool,
    /// Position of the channel axis. Default: channels first (`[N, C, *]`).
    #[config(default = "ChannelAxis::First")]
    pub channel_axis: ChannelAxis,
}

/// Switchable Normalization (Luo, Ren, Peng, Zhang & Li, 2019,
/// "Differentiable Learning-to-Normalize via Switchable Normalization"):
///
/// ```text
/// y  = (x - μ) / sqrt(σ² + eps) · weight + bias
/// μ  = Σ_k softmax(mean_weight)_k · μ_k
/// σ² = Σ_k softmax(var_weight)_k · σ²_k,      k ∈ (IN, LN, BN)
/// ```
///
/// where
/// - `μ_IN`, `σ²_IN` are per (sample, channel) over the spatial positions,
///   `μ_LN`, `σ²_LN` per sample over the channels and positions, `μ_BN`,
///   `σ²_BN` per channel over the batch and positions; all biased;
/// - in training (an autodiff device and the `training` flag on) the BN
///   statistics are the batch's and the running statistics follow them,
///   `running = (1 - m) · running + m · batch` with the unbiased variance;
///   in inference the BN statistics are the running ones, while the IN and
///   LN statistics still come from the input;
/// - `mean_weight`, `var_weight` are learnable logits, ones at the start
///   (equal importances).
///
/// # Shapes
/// - input, output: `[N, C, *]` (channels first) or `[N, *, C]`;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
/// - `mean_weight`, `var_weight`: `[3]`, in the order IN, LN, BN.
#[derive(Module, Debug)]
pub struct SwitchNorm {
    /// Per-channel scale, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// Per-channel shift, `None` without affine parameters.
    pub bias: Option<Param<Tensor<1>>>,
    /// Importance logits of the means, IN, LN, BN.
    pub mean_weight: Param<Tensor<1>>,
    /// Importance logits of the variances, IN, LN, BN.
    pub var_weight: Param<Tensor<1>>,
    /// Running mean of the BN statistics.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance of the BN statistics.
    pub running_var: RunningState<Tensor<1>>,
    /// Whether training behavior is enabled.
    pub training: Param<Flag>,
    /// Number of channels.
    pub num_features: usize,
    /// Variance floor inside the square root.
    pub eps: f64,
    /// Running-update weight.
    pub momentum: f64,
    /// Position of the channel axis.
    #[module(skip)]
    pub channel_axis: ChannelAxis,
}

impl SwitchNormConfig {
    /// Builds the layer: weight ones, bias zeros, both logits ones, running
    /// mean zeros, running variance ones.
    ///
    /// # Errors
    /// Zero features, a negative or non-finite eps, a non-finite momentum.
    pub fn try_init(&self, device: &Device) -> Result<SwitchNorm> {
        const OP: &str = "SwitchNorm";
        check_positive(OP, "num_features", self.num_features)?;
        check_eps(OP, self.eps)?;
        check_momentum(OP, Some(self.momentum))?;
        let c = self.num_features;
        let affine = |v: f32| {
            self.affine
                .then(|| Param::from_tensor(Tensor::full([c], v, device)))
        };
        Ok(SwitchNorm {
            weight: affine(1.0),
            bias: affine(0.0),
            mean_weight: Param::from_tensor(Tensor::ones([3], device)),
            var_weight: Param::from_tensor(Tensor::ones([3], device)),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
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
    pub fn init(&self, device: &Device) -> SwitchNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The softmax of three logits, computed in `f64`.
fn softmax3(logits: &[f64]) -> [f32; 3] {
    let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e = [0, 1, 2].map(|k| (logits[k] - top).exp());
    let sum: f64 = e.iter().sum();
    e.map(|v| (v / sum) as f32)
}

impl SwitchNorm {
    /// Normalizes `x`; in training, updates the running statistics.
    ///
    /// # Errors
    /// An input whose channel count is not `num_features`, of rank below 2,
    /// empty, or with a single value per channel in training.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_channels(
            "SwitchNorm",
            &x.dims(),
            self.channel_axis,
            self.num_features,
        )?;
        let training = step::training(&x.device(), &self.training);
        let running = step::read(&self.running_mean, &self.running_var, training);
        let cfg = normkit::SwitchNormConfig {
            eps: self.eps as f32,
            momentum: Momentum::Exponential(self.momentum as f32),
            channel_axis: self.channel_axis.into(),
        };
        let (y, updated) = functional::switch_norm(
            x,
            self.weight.as_ref().map(Param::val),
            self.bias.as_ref().map(Param::val),
            self.mean_weight.val(),
            self.var_weight.val(),
            Some(running),
            training,
            &cfg,
        )?;
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

    /// The importances `(softmax(mean_weight), softmax(var_weight))`, each
    /// in the order IN, LN, BN: how much each family's statistic weighs in
    /// the mixture.
    pub fn importances(&self) -> ([f32; 3], [f32; 3]) {
        let read =
            |p: &Param<Tensor<1>>| -> Vec<f64> { p.val().into_data().iter::<f64>().collect() };
        (
            softmax3(&read(&self.mean_weight)),
            softmax3(&read(&self.var_weight)),
        )
    }
}
