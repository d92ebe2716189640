//! Dynamic Tanh as a candle layer.

use std::collections::HashMap;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::DytOp;
use normkit::ChannelAxis;

use crate::fused;
use crate::state::{insert, StateDict};

/// Settings of a [`Dyt`] layer; the defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DytConfig {
    /// Initial value of `alpha`. The paper: `0.5`.
    pub alpha_init: f64,
    /// Learnable per-channel `weight` and `bias`. The paper: `true`.
    pub elementwise_affine: bool,
    /// The paper: channels last (`[*, C]`), replacing LayerNorm.
    pub channel_axis: ChannelAxis,
}

impl Default for DytConfig {
    fn default() -> Self {
        DytConfig {
            alpha_init: 0.5,
            elementwise_affine: true,
            channel_axis: ChannelAxis::Last,
        }
    }
}

/// Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025, "Transformers without
/// Normalization"), an elementwise stand-in for LayerNorm:
///
/// ```text
/// y = weight · tanh(alpha · x) + bias
/// ```
///
/// where `alpha` is one learnable scalar and `weight`, `bias` are per
/// channel. Parameter names follow the paper's code: `alpha`, `weight`,
/// `bias`.
///
/// # Shapes
/// - `x`, `y`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2);
/// - `alpha`: `[1]`; `weight`, `bias`: `[C]`.
#[derive(Debug, Clone)]
pub struct Dyt {
    num_features: usize,
    alpha: Tensor,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    channel_axis: ChannelAxis,
}

/// Creates a [`Dyt`] over `num_features` channels, loading or initializing
/// (alpha `alpha_init`, weight 1, bias 0) its tensors through `vb`.
pub fn dyt(num_features: usize, config: DytConfig, vb: VarBuilder) -> Result<Dyt> {
    let alpha = vb.get_with_hints(1, "alpha", Init::Const(config.alpha_init))?;
    let (weight, bias) = if config.elementwise_affine {
        (
            Some(vb.get_with_hints(num_features, "weight", Init::Const(1.0))?),
            Some(vb.get_with_hints(num_features, "bias", Init::Const(0.0))?),
        )
    } else {
        (None, None)
    };
    Ok(Dyt {
        num_features,
        alpha,
        weight,
        bias,
        channel_axis: config.channel_axis,
    })
}

impl Dyt {
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn alpha(&self) -> &Tensor {
        &self.alpha
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn channel_axis(&self) -> ChannelAxis {
        self.channel_axis
    }
}

impl Module for Dyt {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::check_channels("dyt", x, self.channel_axis, self.num_features)?;
        dyt_op(
            x,
            &self.alpha,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.channel_axis,
        )
    }
}

impl StateDict for Dyt {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        insert(out, prefix, "alpha", &self.alpha);
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
    }
}

/// Functional Dynamic Tanh; `alpha` holds one value.
pub fn dyt_op(
    x: &Tensor,
    alpha: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    channel_axis: ChannelAxis,
) -> Result<Tensor> {
    let op = DytOp {
        channel_axis,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params: Vec<&Tensor> = std::iter::once(alpha).chain(weight).chain(bias).collect();
    fused::apply(op, x, &params)
}
