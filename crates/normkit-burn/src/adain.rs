//! The AdaIN layer.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::error::{check_eps, Result};
use crate::functional;
use crate::ChannelAxis;

/// Configuration of an [`AdaIn`] layer, with the paper's defaults.
#[derive(Config, Debug)]
pub struct AdaInConfig {
    /// Added to each variance inside the square root. Paper's code: `1e-5`.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Divide the variances by `M - 1` (the paper's code, `torch.var`)
    /// instead of `M`.
    #[config(default = true)]
    pub unbiased: bool,
    /// Position of the channel axis. Paper: channels first (`[N, C, *]`).
    #[config(default = "ChannelAxis::First")]
    pub channel_axis: ChannelAxis,
}

/// Adaptive Instance Normalization (Huang & Belongie, 2017, "Arbitrary
/// Style Transfer in Real-time with Adaptive Instance Normalization"):
///
/// ```text
/// y = σ(style) · (content - μ(content)) / σ(content) + μ(style)
/// ```
///
/// where
/// - `μ`, `σ` are per (sample, channel) over the spatial positions,
///   `σ = sqrt(Var + eps)`;
/// - `Var` divides by `M - 1` when `unbiased` (else by `M`), `M` the
///   number of spatial positions of its own operand;
/// - gradients flow to both the content and the style.
///
/// The layer has no parameters. `forward` runs one fused normkit kernel on
/// the flex backend (its backward another), composed tensor operations
/// elsewhere.
///
/// # Shapes
/// - content, output: `[N, C, *]` (channels first) or `[N, *, C]`;
/// - style: the same `N` and `C` in the same layout; its spatial sizes
///   (and rank) may differ from the content's.
#[derive(Module, Debug)]
pub struct AdaIn {
    /// Variance floor inside the square roots.
    pub eps: f64,
    /// Whether the variances divide by `M - 1`.
    pub unbiased: bool,
    /// Position of the channel axis.
    #[module(skip)]
    pub channel_axis: ChannelAxis,
}

impl AdaInConfig {
    /// Builds the layer. It holds no tensors; `device` is taken for the
    /// idiom's sake.
    ///
    /// # Errors
    /// A negative or non-finite eps.
    pub fn try_init(&self, _device: &Device) -> Result<AdaIn> {
        check_eps("AdaIn", self.eps)?;
        Ok(AdaIn {
            eps: self.eps,
            unbiased: self.unbiased,
            channel_axis: self.channel_axis,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> AdaIn {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl AdaIn {
    /// Gives `content` the per-channel statistics of `style`.
    ///
    /// # Errors
    /// Ranks below 2, a style of another batch size or channel count, an
    /// empty input, or (unbiased) one spatial position in either input.
    pub fn try_forward<const D: usize, const E: usize>(
        &self,
        content: Tensor<D>,
        style: Tensor<E>,
    ) -> Result<Tensor<D>> {
        let cfg = normkit::AdaInConfig {
            eps: self.eps as f32,
            unbiased: self.unbiased,
            channel_axis: self.channel_axis.into(),
        };
        functional::adain(content, style, &cfg)
    }

    /// Gives `content` the per-channel statistics of `style`.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize, const E: usize>(
        &self,
        content: Tensor<D>,
        style: Tensor<E>,
    ) -> Tensor<D> {
        self.try_forward(content, style)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
