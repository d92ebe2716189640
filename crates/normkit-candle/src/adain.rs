//! Adaptive Instance Normalization as a candle op.

use candle_core::{Result, Tensor};
use normkit::op::AdaInOp;
use normkit::ChannelAxis;

use crate::fused;

/// Settings of [`AdaIn`] and [`adain`]; the defaults are the paper's code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaInConfig {
    /// Added to the variance inside the square root. Default: `1e-5`.
    pub eps: f64,
    /// Divide the variances by `M - 1` (the paper's code, `torch.var`)
    /// rather than by `M`. Default: `true`.
    pub unbiased: bool,
    /// Position of the channel axis, the same for content and style.
    /// Default: channels first (`[N, C, *]`).
    pub channel_axis: ChannelAxis,
}

impl Default for AdaInConfig {
    fn default() -> Self {
        AdaInConfig {
            eps: 1e-5,
            unbiased: true,
            channel_axis: ChannelAxis::First,
        }
    }
}

impl From<f64> for AdaInConfig {
    fn from(eps: f64) -> Self {
        AdaInConfig {
            eps,
            ..Default::default()
        }
    }
}

/// Adaptive Instance Normalization (Huang & Belongie, 2017): the content's
/// per-channel statistics replaced by the style's.
///
/// ```text
/// y = σ(s) · (x - μ(x)) / σ(x) + μ(s)
/// ```
///
/// where
/// - `x` is the content and `s` the style, with the same `N` and `C` and
///   the same layout; their spatial sizes `M`, `M'` may differ;
/// - `μ`, `σ` are per (sample, channel) over the spatial positions, with
///   `σ = sqrt(Var + eps)` and `Var` divided by `M - 1` (`unbiased`) or `M`;
/// - gradients reach both the content and the style.
///
/// The layer has no parameters; [`AdaIn::forward`] is [`adain`] with the
/// layer's configuration.
///
/// # Shapes
/// - `content`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `style`: the same layout with its own spatial extent. Unbiased
///   variances need at least two positions in each.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AdaIn {
    config: AdaInConfig,
}

impl AdaIn {
    pub fn new(config: AdaInConfig) -> Self {
        AdaIn { config }
    }

    pub fn config(&self) -> &AdaInConfig {
        &self.config
    }

    /// `content` with the style's statistics, see [`AdaIn`].
    pub fn forward(&self, content: &Tensor, style: &Tensor) -> Result<Tensor> {
        adain(content, style, &self.config)
    }
}

/// Functional AdaIN: [`AdaIn`]'s formula as one fused op with a fused
/// backward that writes the gradients of both `content` and `style`.
///
/// The output has `content`'s dtype (`f32`, `bf16` or `f16`); the style may
/// be any float dtype and is read at the content's precision.
pub fn adain(content: &Tensor, style: &Tensor, config: &AdaInConfig) -> Result<Tensor> {
    let op = AdaInOp {
        cfg: normkit::AdaInConfig {
            eps: config.eps as f32,
            unbiased: config.unbiased,
            channel_axis: config.channel_axis,
        },
        style_shape: style.dims().to_vec(),
    };
    // The style travels as the op's packed parameter vector, so candle's
    // autograd hands its gradient back to `style` in its own shape and
    // dtype.
    fused::apply(op, content, &[style])
}
