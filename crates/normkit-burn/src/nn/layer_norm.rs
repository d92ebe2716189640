//! `burn::nn::LayerNorm` and `burn::nn::RmsNorm` by normkit.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use super::filled;
use crate::error::{check_channels, check_eps, check_positive, Result};
use crate::{functional, ChannelAxis};

/// Configuration of a [`LayerNorm`], as `burn::nn::LayerNormConfig`.
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Size of the normalized (last) dimension.
    pub d_model: usize,
    /// Added to the variance inside the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Learnable shift `beta` alongside the scale `gamma`.
    #[config(default = true)]
    pub bias: bool,
}

/// Layer Normalization over the last dimension with
/// `burn::nn::LayerNorm`'s fields:
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + epsilon) · gamma + beta
/// ```
///
/// where `E[x]`, `Var[x]` (biased) are over the last dimension of each row.
///
/// # Shapes
/// - input, output: `[*, d_model]`; `gamma`, `beta`: `[d_model]`.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Per-element scale.
    pub gamma: Param<Tensor<1>>,
    /// Per-element shift, `None` without bias.
    pub beta: Option<Param<Tensor<1>>>,
    /// Variance floor inside the square root.
    pub epsilon: f64,
}

impl LayerNormConfig {
    /// Builds the layer: gamma ones, beta zeros.
    ///
    /// # Errors
    /// Zero `d_model`, a negative or non-finite epsilon.
    pub fn try_init(&self, device: &Device) -> Result<LayerNorm> {
        check_positive("LayerNorm", "d_model", self.d_model)?;
        check_eps("LayerNorm", self.epsilon)?;
        let d = self.d_model;
        Ok(LayerNorm {
            gamma: filled(d, 1.0, device),
            beta: self.bias.then(|| filled(d, 0.0, device)),
            epsilon: self.epsilon,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> LayerNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl LayerNorm {
    /// Normalizes `x` over its last dimension.
    ///
    /// # Errors
    /// An input whose last dimension is not `d_model`.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let [d] = self.gamma.shape().dims();
        check_channels("LayerNorm", &x.dims(), ChannelAxis::Last, d)?;
        let beta = self.beta.as_ref().map(Param::val);
        let eps = self.epsilon as f32;
        functional::layer_norm(x, &[d], Some(self.gamma.val()), beta, eps)
    }

    /// Normalizes `x` over its last dimension.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Configuration of an [`RmsNorm`], as `burn::nn::RmsNormConfig`.
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Size of the normalized (last) dimension.
    pub d_model: usize,
    /// Added to the mean square inside the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

/// Root Mean Square Layer Normalization over the last dimension with
/// `burn::nn::RmsNorm`'s fields:
///
/// ```text
/// y = x / sqrt(mean(x²) + epsilon) · gamma
/// ```
///
/// # Shapes
/// - input, output: `[*, d_model]`; `gamma`: `[d_model]`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-element scale.
    pub gamma: Param<Tensor<1>>,
    /// Floor inside the square root.
    pub epsilon: f64,
}

impl RmsNormConfig {
    /// Builds the layer: gamma ones.
    ///
    /// # Errors
    /// Zero `d_model`, a negative or non-finite epsilon.
    pub fn try_init(&self, device: &Device) -> Result<RmsNorm> {
        check_positive("RmsNorm", "d_model", self.d_model)?;
        check_eps("RmsNorm", self.epsilon)?;
        Ok(RmsNorm {
            gamma: filled(self.d_model, 1.0, device),
            epsilon: self.epsilon,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> RmsNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl RmsNorm {
    /// Normalizes `x` over its last dimension.
    ///
    /// # Errors
    /// An input whose last dimension is not `d_model`.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let [d] = self.gamma.shape().dims();
        check_channels("RmsNorm", &x.dims(), ChannelAxis::Last, d)?;
        functional::rms_norm(x, &[d], Some(self.gamma.val()), self.epsilon as f32)
    }

    /// Normalizes `x` over its last dimension.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}
