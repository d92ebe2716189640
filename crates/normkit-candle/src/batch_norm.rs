//! Batch Normalization as a candle layer.

use std::collections::HashMap;

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::BatchNormOp;
use normkit::ChannelAxis;

use crate::fused;
use crate::running::{self, Running};
use crate::state::{insert, StateDict};

/// Settings of a [`BatchNorm`] layer; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance inside the square root. PyTorch: `1e-5`.
    pub eps: f64,
    /// Weight of the batch statistics in the running-statistics update;
    /// `None` is the cumulative moving average over `num_batches_tracked`.
    /// PyTorch: `Some(0.1)`.
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` and `bias`. PyTorch: `true`.
    pub affine: bool,
    /// Keep running statistics, update them in training and normalize with
    /// them in evaluation. Without them, evaluation uses the batch's own
    /// statistics. PyTorch: `true`.
    pub track_running_stats: bool,
    /// Position of the channel axis. PyTorch: channels first (`[N, C, *]`).
    pub channel_axis: ChannelAxis,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
            channel_axis: ChannelAxis::First,
        }
    }
}

impl From<f64> for BatchNormConfig {
    /// The defaults with this `eps`, as candle-nn's config converts.
    fn from(eps: f64) -> Self {
        BatchNormConfig {
            eps,
            ..Default::default()
        }
    }
}

impl From<candle_nn::BatchNormConfig> for BatchNormConfig {
    /// candle-nn's `eps`, `momentum` and `affine`, with running statistics
    /// (candle-nn always keeps them). Its `remove_mean: false`, which only
    /// its training pass honours, has no counterpart: normkit's BatchNorm
    /// always centers, as PyTorch's.
    fn from(c: candle_nn::BatchNormConfig) -> Self {
        BatchNormConfig {
            eps: c.eps,
            momentum: Some(c.momentum),
            affine: c.affine,
            ..Default::default()
        }
    }
}

/// What [`batch_norm`] takes as its configuration: a [`BatchNormConfig`],
/// or anything candle-nn's `batch_norm` takes (`candle_nn::BatchNormConfig`,
/// an `f64` eps), so that code generic over
/// `C: Into<candle_nn::BatchNormConfig>` calls [`batch_norm`] unchanged.
pub trait IntoBatchNormConfig {
    fn into_batch_norm_config(self) -> BatchNormConfig;
}

impl IntoBatchNormConfig for BatchNormConfig {
    fn into_batch_norm_config(self) -> BatchNormConfig {
        self
    }
}

impl<C: Into<candle_nn::BatchNormConfig>> IntoBatchNormConfig for C {
    fn into_batch_norm_config(self) -> BatchNormConfig {
        self.into().into()
    }
}

/// Batch Normalization (Ioffe & Szegedy, 2015) over `[N, C, *]` input
/// (BatchNorm1d, 2d and 3d alike) or `[N, *, C]` with
/// [`ChannelAxis::Last`]:
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - `E[x]`, `Var[x]` are per channel over the batch and every spatial
///   position (`Var` biased), in training or without running statistics;
/// - otherwise (evaluation with running statistics) they are `running_mean`
///   and `running_var`;
/// - a training step moves the running statistics towards the batch's,
///   with the unbiased variance, and increments `num_batches_tracked`.
///
/// Train or evaluate through [`ModuleT::forward_t`]. Half-precision input
/// is normalized in f32 in both modes. Parameters and buffers carry
/// PyTorch's names: `weight`, `bias`, `running_mean`, `running_var`,
/// `num_batches_tracked`.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
///   `num_batches_tracked`: `[]` (i64).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    num_features: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running: Option<Running>,
    config: BatchNormConfig,
}

/// Creates a [`BatchNorm`] over `num_features` channels, loading or
/// initializing (weight 1, bias 0, running mean 0, running variance 1) its
/// tensors through `vb`. Running statistics are f32 whatever `vb`'s dtype.
pub fn batch_norm<C: IntoBatchNormConfig>(
    num_features: usize,
    config: C,
    vb: VarBuilder,
) -> Result<BatchNorm> {
    let config = config.into_batch_norm_config();
    let (weight, bias) = if config.affine {
        (
            Some(vb.get_with_hints(num_features, "weight", Init::Const(1.0))?),
            Some(vb.get_with_hints(num_features, "bias", Init::Const(0.0))?),
        )
    } else {
        (None, None)
    };
    let running = if config.track_running_stats {
        Some(Running::load(num_features, &vb)?)
    } else {
        None
    };
    Ok(BatchNorm {
        num_features,
        weight,
        bias,
        running,
        config,
    })
}

impl BatchNorm {
    /// A BatchNorm over `num_features` channels from its tensors, momentum
    /// 0.1 (`candle_nn::BatchNorm::new`). Shapes are checked by the forward.
    pub fn new(
        num_features: usize,
        running_mean: Tensor,
        running_var: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    ) -> Result<Self> {
        Self::new_with_momentum(
            num_features,
            running_mean,
            running_var,
            weight,
            bias,
            eps,
            0.1,
        )
    }

    /// [`BatchNorm::new`] without weight and bias.
    pub fn new_no_bias(
        num_features: usize,
        running_mean: Tensor,
        running_var: Tensor,
        eps: f64,
    ) -> Result<Self> {
        Self::new_no_bias_with_momentum(num_features, running_mean, running_var, eps, 0.1)
    }

    /// [`BatchNorm::new`] with this momentum.
    pub fn new_with_momentum(
        num_features: usize,
        running_mean: Tensor,
        running_var: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: f64,
        momentum: f64,
    ) -> Result<Self> {
        Ok(BatchNorm {
            weight: Some(weight),
            bias: Some(bias),
            ..Self::new_no_bias_with_momentum(
                num_features,
                running_mean,
                running_var,
                eps,
                momentum,
            )?
        })
    }

    /// [`BatchNorm::new_no_bias`] with this momentum.
    pub fn new_no_bias_with_momentum(
        num_features: usize,
        running_mean: Tensor,
        running_var: Tensor,
        eps: f64,
        momentum: f64,
    ) -> Result<Self> {
        Ok(BatchNorm {
            num_features,
            weight: None,
            bias: None,
            running: Some(Running::from_tensors(&running_mean, &running_var)?),
            config: BatchNormConfig {
                eps,
                momentum: Some(momentum),
                affine: false,
                ..Default::default()
            },
        })
    }

    pub fn config(&self) -> &BatchNormConfig {
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

    /// Both affine parameters, when the layer has them.
    pub fn weight_and_bias(&self) -> Option<(&Tensor, &Tensor)> {
        self.weight.as_ref().zip(self.bias.as_ref())
    }

    pub fn eps(&self) -> f64 {
        self.config.eps
    }

    /// `running_mean`, when the layer tracks running statistics.
    pub fn running_mean(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| r.mean.as_tensor())
    }

    /// `running_var`, when the layer tracks running statistics.
    pub fn running_var(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| r.var.as_tensor())
    }

    /// `num_batches_tracked`, when the layer tracks running statistics.
    pub fn num_batches_tracked(&self) -> Result<Option<u64>> {
        self.running.as_ref().map(Running::count).transpose()
    }

    /// The op of one call: batch statistics in training and whenever there
    /// are no running ones (PyTorch), the running ones otherwise.
    fn op(&self, train: bool) -> Result<BatchNormOp> {
        let update = self.running.as_ref().filter(|_| train);
        let momentum = running::momentum(self.config.momentum, update)?;
        Ok(BatchNormOp {
            cfg: normkit::BatchNormConfig {
                eps: self.config.eps as f32,
                momentum,
                channel_axis: self.config.channel_axis,
            },
            training: train || self.running.is_none(),
            weight: self.weight.is_some(),
            bias: self.bias.is_some(),
        })
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        crate::check_channels("batch_norm", x, self.config.channel_axis, self.num_features)?;
        let params: Vec<&Tensor> = self.weight.iter().chain(&self.bias).collect();
        let y = fused::apply_running(self.op(train)?, x, &params, self.running.as_ref())?;
        if let Some(r) = self.running.as_ref().filter(|_| train) {
            r.set_count(r.count()? + 1)?;
        }
        Ok(y)
    }
}

impl StateDict for BatchNorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
        for (name, t) in self.running.iter().flat_map(Running::named) {
            insert(out, prefix, name, &t);
        }
    }
}
