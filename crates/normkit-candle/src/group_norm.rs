//! Group Normalization and Instance Normalization as candle layers.

use std::collections::HashMap;

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::{ErasedOp, GroupNormOp, InstanceNormOp};
use normkit::{ChannelAxis, Momentum};

use crate::fused;
use crate::running::Running;
use crate::state::{insert, StateDict};

/// Settings of a [`GroupNorm`] layer; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormConfig {
    /// PyTorch: `1e-5`.
    pub eps: f64,
    /// Learnable per-channel `weight` and `bias`. PyTorch: `true`.
    pub affine: bool,
    /// PyTorch: channels first (`[N, C, *]`).
    pub channel_axis: ChannelAxis,
}

impl Default for GroupNormConfig {
    fn default() -> Self {
        GroupNormConfig {
            eps: 1e-5,
            affine: true,
            channel_axis: ChannelAxis::First,
        }
    }
}

impl From<f64> for GroupNormConfig {
    fn from(eps: f64) -> Self {
        GroupNormConfig {
            eps,
            ..Default::default()
        }
    }
}

/// Group Normalization (Wu & He, 2018):
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where the channels are split into `num_groups` contiguous groups,
/// `E[x]`, `Var[x]` (biased) are per (sample, group) over the group's
/// channels and every position, and `weight`, `bias` are per channel.
/// Channels may come first (PyTorch) or last ([`ChannelAxis::Last`]).
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `weight`, `bias`: `[C]`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    num_groups: usize,
    num_channels: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    config: GroupNormConfig,
}

/// Creates a [`GroupNorm`] of `num_groups` groups over `num_channels`
/// channels, loading or initializing (weight 1, bias 0) its tensors
/// through `vb`. `num_groups` must divide `num_channels`.
pub fn group_norm<C: Into<GroupNormConfig>>(
    num_groups: usize,
    num_channels: usize,
    config: C,
    vb: VarBuilder,
) -> Result<GroupNorm> {
    let config = config.into();
    let (weight, bias) = if config.affine {
        (
            Some(vb.get_with_hints(num_channels, "weight", Init::Const(1.0))?),
            Some(vb.get_with_hints(num_channels, "bias", Init::Const(0.0))?),
        )
    } else {
        (None, None)
    };
    GroupNorm {
        num_groups,
        num_channels,
        weight,
        bias,
        config,
    }
    .checked()
}

impl GroupNorm {
    /// A GroupNorm from its weight and bias (`candle_nn::GroupNorm::new`).
    /// `num_groups` must divide `num_channels`; parameter shapes are
    /// checked by the forward.
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        num_channels: usize,
        num_groups: usize,
        eps: f64,
    ) -> Result<Self> {
        GroupNorm {
            num_groups,
            num_channels,
            weight: Some(weight),
            bias: Some(bias),
            config: GroupNormConfig::from(eps),
        }
        .checked()
    }

    /// The layer, once the op's own checks (groups, eps) pass on one
    /// sample.
    fn checked(self) -> Result<Self> {
        self.op()
            .signature_erased(&[1, self.num_channels])
            .map_err(crate::error::kernel)?;
        Ok(self)
    }

    pub fn num_groups(&self) -> usize {
        self.num_groups
    }

    pub fn num_channels(&self) -> usize {
        self.num_channels
    }

    pub fn config(&self) -> &GroupNormConfig {
        &self.config
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl GroupNorm {
    fn op(&self) -> GroupNormOp {
        GroupNormOp {
            cfg: normkit::GroupNormConfig {
                num_groups: self.num_groups,
                eps: self.config.eps as f32,
                channel_axis: self.config.channel_axis,
            },
            weight: self.weight.is_some(),
            bias: self.bias.is_some(),
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::check_channels("group_norm", x, self.config.channel_axis, self.num_channels)?;
        let params: Vec<&Tensor> = self.weight.iter().chain(&self.bias).collect();
        fused::apply(self.op(), x, &params)
    }
}

impl StateDict for GroupNorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
    }
}

/// Settings of an [`InstanceNorm`] layer; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceNormConfig {
    /// PyTorch: `1e-5`.
    pub eps: f64,
    /// Weight of the batch statistics in the running-statistics update.
    /// `None` means `0.0` (the running statistics never move), as in
    /// PyTorch's InstanceNorm. PyTorch: `Some(0.1)`.
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` and `bias`. PyTorch: `false`.
    pub affine: bool,
    /// Keep running statistics, update them in training and normalize with
    /// them in evaluation. PyTorch: `false`.
    pub track_running_stats: bool,
    /// PyTorch: channels first (`[N, C, *]`).
    pub channel_axis: ChannelAxis,
}

impl Default for InstanceNormConfig {
    fn default() -> Self {
        InstanceNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: false,
            track_running_stats: false,
            channel_axis: ChannelAxis::First,
        }
    }
}

impl From<f64> for InstanceNormConfig {
    fn from(eps: f64) -> Self {
        InstanceNormConfig {
            eps,
            ..Default::default()
        }
    }
}

/// Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016) over
/// `[N, C, *]` input (InstanceNorm1d, 2d and 3d alike) or `[N, *, C]`:
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - `E[x]`, `Var[x]` (biased) are per (sample, channel) over the spatial
///   positions, in training or without running statistics;
/// - with running statistics, a training step moves them towards the batch
///   mean of the per-instance statistics (unbiased variance), and
///   evaluation normalizes with them.
///
/// Train or evaluate through [`ModuleT::forward_t`]. Buffers, when
/// tracked, carry PyTorch's names (`running_mean`, `running_var`,
/// `num_batches_tracked`); like PyTorch's, this layer never increments
/// `num_batches_tracked`.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2, more than one
///   position per instance when using instance statistics;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`.
#[derive(Debug, Clone)]
pub struct InstanceNorm {
    num_features: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running: Option<Running>,
    config: InstanceNormConfig,
}

/// Creates an [`InstanceNorm`] over `num_features` channels, loading or
/// initializing its tensors through `vb`.
pub fn instance_norm<C: Into<InstanceNormConfig>>(
    num_features: usize,
    config: C,
    vb: VarBuilder,
) -> Result<InstanceNorm> {
    let config = config.into();
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
    Ok(InstanceNorm {
        num_features,
        weight,
        bias,
        running,
        config,
    })
}

impl InstanceNorm {
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn config(&self) -> &InstanceNormConfig {
        &self.config
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn running_mean(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| r.mean.as_tensor())
    }

    pub fn running_var(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| r.var.as_tensor())
    }

    /// The op of one call: instance statistics in training and whenever
    /// there are no running ones (PyTorch), the running ones otherwise.
    fn op(&self, train: bool) -> InstanceNormOp {
        InstanceNormOp {
            cfg: normkit::InstanceNormConfig {
                eps: self.config.eps as f32,
                momentum: Momentum::Exponential(self.config.momentum.unwrap_or(0.0) as f32),
                channel_axis: self.config.channel_axis,
            },
            training: train || self.running.is_none(),
            weight: self.weight.is_some(),
            bias: self.bias.is_some(),
        }
    }
}

impl ModuleT for InstanceNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        const OP: &str = "instance_norm";
        crate::check_channels(OP, x, self.config.channel_axis, self.num_features)?;
        let params: Vec<&Tensor> = self.weight.iter().chain(&self.bias).collect();
        fused::apply_running(self.op(train), x, &params, self.running.as_ref())
    }
}

impl StateDict for InstanceNorm {
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
