//! The Dynamic erf (Derf) layer.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::{check_positive, Error, Result};
use crate::functional;
use crate::ChannelAxis;

/// Configuration of a [`Derf`] layer, with the paper's defaults.
#[derive(Config, Debug)]
pub struct DerfConfig {
    /// Number of channels `C`.
    pub num_features: usize,
    /// Initial value of the scalar `alpha`. Paper: `0.5`.
    #[config(default = 0.5)]
    pub alpha_init: f64,
    /// Initial value of the scalar `shift`. Paper: `0`.
    #[config(default = 0.0)]
    pub shift_init: f64,
    /// Learnable per-channel `weight` (ones) and `bias` (zeros). Paper: yes.
    #[config(default = true)]
    pub affine: bool,
    /// Position of the channel axis. Paper: channels last (`[*, C]`, as
    /// tokens × features); channels first takes `[N, C, *]`.
    #[config(default = "ChannelAxis::Last")]
    pub channel_axis: ChannelAxis,
}

/// Dynamic erf (Chen, Lu, Zhu, Sun & Liu, 2025, "Stronger
/// Normalization-Free Transformers", arXiv 2512.10938), an elementwise
/// stand-in for LayerNorm:
///
/// ```text
/// y = weight · erf(alpha · x + shift) + bias
/// ```
///
/// where `alpha` and `shift` are learnable scalars and `weight`, `bias` are
/// per channel.
///
/// # Shapes
/// - input, output: `[*, C]` (channels last) or `[N, C, *]`;
/// - `alpha`, `shift`: `[1]`; `weight`, `bias`: `[C]`.
#[derive(Module, Debug)]
pub struct Derf {
    /// The scalar `alpha`.
    pub alpha: Param<Tensor<1>>,
    /// The scalar `shift`.
    pub shift: Param<Tensor<1>>,
    /// Per-channel scale, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// Per-channel shift, `None` without affine parameters.
    pub bias: Option<Param<Tensor<1>>>,
    /// Number of channels.
    pub num_features: usize,
    /// Position of the channel axis.
    #[module(skip)]
    pub channel_axis: ChannelAxis,
}

impl DerfConfig {
    /// Builds the layer: alpha `alpha_init`, shift `shift_init`, weight
    /// ones, bias zeros.
    ///
    /// # Errors
    /// Zero features or a non-finite `alpha_init` or `shift_init`.
    pub fn try_init(&self, device: &Device) -> Result<Derf> {
        check_positive("Derf", "num_features", self.num_features)?;
        for (name, value) in [
            ("alpha_init", self.alpha_init),
            ("shift_init", self.shift_init),
        ] {
            if !value.is_finite() {
                return Err(Error::Config {
                    op: "Derf",
                    name,
                    domain: "finite",
                    value,
                });
            }
        }
        let c = self.num_features;
        let affine = |v: f32| {
            self.affine
                .then(|| Param::from_tensor(Tensor::full([c], v, device)))
        };
        let scalar = |v: f64| Param::from_tensor(Tensor::full([1], v as f32, device));
        Ok(Derf {
            alpha: scalar(self.alpha_init),
            shift: scalar(self.shift_init),
            weight: affine(1.0),
            bias: affine(0.0),
            num_features: c,
            channel_axis: self.channel_axis,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> Derf {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Derf {
    /// Applies `weight · erf(alpha · x + shift) + bias`.
    ///
    /// # Errors
    /// An input whose channel count is not `num_features`, or of too low a
    /// rank for the channel axis.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let shape = x.dims();
        let got = match (self.channel_axis, D) {
            (_, 0) => None,
            (ChannelAxis::Last, _) => Some(shape[D - 1]),
            (ChannelAxis::First, 1) => None,
            (ChannelAxis::First, _) => Some(shape[1]),
        };
        if let Some(got) = got.filter(|&c| c != self.num_features) {
            return Err(Error::Channels {
                op: "Derf",
                expected: self.num_features,
                got,
                shape: shape.to_vec(),
            });
        }
        functional::derf(
            x,
            self.alpha.val(),
            self.shift.val(),
            self.weight.as_ref().map(Param::val),
            self.bias.as_ref().map(Param::val),
            self.channel_axis.into(),
        )
    }

    /// Applies `weight · erf(alpha · x + shift) + bias`.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}
