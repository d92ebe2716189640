//! The GroupNorm layer.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use normkit::NormError;

use crate::error::{check_channels, check_eps, check_positive, Result};
use crate::functional;
use crate::ChannelAxis;

/// Configuration of a [`GroupNorm`] layer, with PyTorch's defaults.
#[derive(Config, Debug)]
pub struct GroupNormConfig {
    /// Number of channel groups; must divide `num_channels`. PyTorch:
    /// `num_groups`.
    pub num_groups: usize,
    /// Number of channels `C`. PyTorch: `num_channels`.
    pub num_channels: usize,
    /// Added to the variance inside the square root. PyTorch: `eps=1e-5`.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Learnable per-channel `weight` (ones) and `bias` (zeros). PyTorch:
    /// `affine=True`.
    #[config(default = true)]
    pub affine: bool,
    /// Position of the channel axis. PyTorch: channels first (`[N, C, *]`);
    /// channels last (`[N, *, C]`) normalizes the same groups in NHWC data.
    #[config(default = "ChannelAxis::First")]
    pub channel_axis: ChannelAxis,
}

/// Group Normalization (Wu & He, 2018):
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where the channels are split into `num_groups` contiguous groups and
/// `E[x]`, `Var[x]` (biased) are per (sample, group), over the group's
/// channels and every spatial position; `weight`, `bias` are per channel.
///
/// # Shapes
/// - input, output: `[N, C, *]` or `[N, *, C]`;
/// - `weight`, `bias`: `[C]`.
#[derive(Module, Debug)]
pub struct GroupNorm {
    /// Per-channel scale, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// Per-channel shift, `None` without affine parameters.
    pub bias: Option<Param<Tensor<1>>>,
    /// Number of groups.
    pub num_groups: usize,
    /// Number of channels.
    pub num_channels: usize,
    /// Variance floor inside the square root.
    pub eps: f64,
    /// Position of the channel axis.
    #[module(skip)]
    pub channel_axis: ChannelAxis,
}

impl GroupNormConfig {
    /// Builds the layer: weight ones, bias zeros.
    ///
    /// # Errors
    /// Zero groups or channels, groups not dividing the channels, a
    /// negative or non-finite eps.
    pub fn try_init(&self, device: &Device) -> Result<GroupNorm> {
        const OP: &str = "GroupNorm";
        check_positive(OP, "num_channels", self.num_channels)?;
        check_eps(OP, self.eps)?;
        if self.num_groups == 0 || !self.num_channels.is_multiple_of(self.num_groups) {
            return Err(NormError::Groups {
                op: "group_norm",
                num_groups: self.num_groups,
                channels: self.num_channels,
                shape: vec![],
            }
            .into());
        }
        let c = self.num_channels;
        let affine = |v: f32| {
            self.affine
                .then(|| Param::from_tensor(Tensor::full([c], v, device)))
        };
        Ok(GroupNorm {
            weight: affine(1.0),
            bias: affine(0.0),
            num_groups: self.num_groups,
            num_channels: c,
            eps: self.eps,
            channel_axis: self.channel_axis,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> GroupNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl GroupNorm {
    /// Normalizes `x`.
    ///
    /// # Errors
    /// An input whose channel count is not `num_channels`, or of rank
    /// below 2.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_channels("GroupNorm", &x.dims(), self.channel_axis, self.num_channels)?;
        let cfg = normkit::GroupNormConfig {
            num_groups: self.num_groups,
            eps: self.eps as f32,
            channel_axis: self.channel_axis.into(),
        };
        functional::group_norm(
            x,
            self.weight.as_ref().map(Param::val),
            self.bias.as_ref().map(Param::val),
            &cfg,
        )
    }

    /// Normalizes `x`.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}
