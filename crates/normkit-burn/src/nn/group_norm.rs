//! `burn::nn::GroupNorm` and `burn::nn::InstanceNorm` by normkit.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use normkit::NormError;

use super::affine;
use crate::error::{check_channels, check_eps, check_positive, Result};
use crate::{functional, ChannelAxis};

/// Configuration of a [`GroupNorm`], as `burn::nn::GroupNormConfig`.
#[derive(Config, Debug)]
pub struct GroupNormConfig {
    /// Number of channel groups; divides `num_channels`.
    pub num_groups: usize,
    /// Number of channels `C` (dimension 1 of the input).
    pub num_channels: usize,
    /// Added to the variance inside the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Learnable per-channel `gamma` (ones) and `beta` (zeros).
    #[config(default = true)]
    pub affine: bool,
}

/// Group Normalization with `burn::nn::GroupNorm`'s fields:
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + epsilon) · gamma + beta
/// ```
///
/// where `E[x]`, `Var[x]` (biased) are per (sample, group of
/// `num_channels / num_groups` contiguous channels) over the group's
/// channels and positions.
///
/// # Shapes
/// - input, output: `[N, C, *]`; `gamma`, `beta`: `[C]`.
#[derive(Module, Debug)]
pub struct GroupNorm {
    /// Per-channel scale, `None` without affine parameters.
    pub gamma: Option<Param<Tensor<1>>>,
    /// Per-channel shift, `None` without affine parameters.
    pub beta: Option<Param<Tensor<1>>>,
    /// Number of groups.
    pub num_groups: usize,
    /// Number of channels.
    pub num_channels: usize,
    /// Variance floor inside the square root.
    pub epsilon: f64,
    /// Whether `gamma` and `beta` exist.
    pub affine: bool,
}

impl GroupNormConfig {
    /// Builds the layer: gamma ones, beta zeros.
    ///
    /// # Errors
    /// Zero channels, groups zero or not dividing the channels, a negative
    /// or non-finite epsilon.
    pub fn try_init(&self, device: &Device) -> Result<GroupNorm> {
        check_positive("GroupNorm", "num_channels", self.num_channels)?;
        check_eps("GroupNorm", self.epsilon)?;
        if self.num_groups == 0 || !self.num_channels.is_multiple_of(self.num_groups) {
            return Err(NormError::Groups {
                op: "group_norm",
                num_groups: self.num_groups,
                channels: self.num_channels,
                shape: vec![],
            }
            .into());
        }
        let (gamma, beta) = affine(self.affine, self.num_channels, device);
        Ok(GroupNorm {
            gamma,
            beta,
            num_groups: self.num_groups,
            num_channels: self.num_channels,
            epsilon: self.epsilon,
            affine: self.affine,
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
    /// An input whose dimension 1 is not `num_channels`, or of rank below 2.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_channels(
            "GroupNorm",
            &x.dims(),
            ChannelAxis::First,
            self.num_channels,
        )?;
        let cfg = normkit::GroupNormConfig {
            num_groups: self.num_groups,
            eps: self.epsilon as f32,
            channel_axis: normkit::ChannelAxis::First,
        };
        let (gamma, beta) = (&self.gamma, &self.beta);
        functional::group_norm(
            x,
            gamma.as_ref().map(Param::val),
            beta.as_ref().map(Param::val),
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

/// Configuration of an [`InstanceNorm`], as
/// `burn::nn::InstanceNormConfig`.
#[derive(Config, Debug)]
pub struct InstanceNormConfig {
    /// Number of channels `C` (dimension 1 of the input).
    pub num_channels: usize,
    /// Added to the variance inside the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Learnable per-channel `gamma` (ones) and `beta` (zeros).
    #[config(default = true)]
    pub affine: bool,
}

/// Instance Normalization with `burn::nn::InstanceNorm`'s fields: each
/// (sample, channel) normalized over its positions, with no running
/// statistics.
///
/// # Shapes
/// - input, output: `[N, C, *]`, more than one position;
///   `gamma`, `beta`: `[C]`.
#[derive(Module, Debug)]
pub struct InstanceNorm {
    /// Per-channel scale, `None` without affine parameters.
    pub gamma: Option<Param<Tensor<1>>>,
    /// Per-channel shift, `None` without affine parameters.
    pub beta: Option<Param<Tensor<1>>>,
    /// Number of channels.
    pub num_channels: usize,
    /// Variance floor inside the square root.
    pub epsilon: f64,
    /// Whether `gamma` and `beta` exist.
    pub affine: bool,
}

impl InstanceNormConfig {
    /// Builds the layer: gamma ones, beta zeros.
    ///
    /// # Errors
    /// Zero channels, a negative or non-finite epsilon.
    pub fn try_init(&self, device: &Device) -> Result<InstanceNorm> {
        check_positive("InstanceNorm", "num_channels", self.num_channels)?;
        check_eps("InstanceNorm", self.epsilon)?;
        let (gamma, beta) = affine(self.affine, self.num_channels, device);
        Ok(InstanceNorm {
            gamma,
            beta,
            num_channels: self.num_channels,
            epsilon: self.epsilon,
            affine: self.affine,
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
    /// Normalizes each (sample, channel) of `x` over its positions.
    ///
    /// # Errors
    /// An input whose dimension 1 is not `num_channels`, of rank below 2,
    /// or with a single position.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        check_channels(
            "InstanceNorm",
            &x.dims(),
            ChannelAxis::First,
            self.num_channels,
        )?;
        let cfg = normkit::InstanceNormConfig {
            eps: self.epsilon as f32,
            ..Default::default()
        };
        let (gamma, beta) = (&self.gamma, &self.beta);
        let (gamma, beta) = (
            gamma.as_ref().map(Param::val),
            beta.as_ref().map(Param::val),
        );
        Ok(functional::instance_norm(x, gamma, beta, None, true, &cfg)?.0)
    }

    /// Normalizes each (sample, channel) of `x` over its positions.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}
