//! Dynamic erf (Derf) as a candle layer.

use std::collections::HashMap;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::DerfOp;
use normkit::ChannelAxis;

use crate::fused;
use crate::state::{insert, StateDict};

/// Settings of a [`Derf`] layer; the defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DerfConfig {
    /// Initial value of `alpha`. The paper: `0.5`.
    pub alpha_init: f64,
    /// Initial value of `shift`. The paper: `0`.
    pub shift_init: f64,
    /// Learnable per-channel `weight` and `bias`. The paper: `true`.
    pub elementwise_affine: bool,
    /// The paper: channels last (`[*, C]`), replacing LayerNorm.
    pub channel_axis: ChannelAxis,
}

impl Default for DerfConfig {
    fn default() -> Self {
        DerfConfig {
            alpha_init: 0.5,
            shift_init: 0.0,
            elementwise_affine: true,
            channel_axis: ChannelAxis::Last,
        }
    }
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
/// per channel. Parameter names: `alpha`, `shift`, `weight`, `bias`.
///
/// # Shapes
/// - `x`, `y`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2);
/// - `alpha`, `shift`: `[1]`; `weight`, `bias`: `[C]`.
#[derive(Debug, Clone)]
pub struct Derf {
    num_features: usize,
    alpha: Tensor,
    shift: Tensor,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    channel_axis: ChannelAxis,
}

/// Creates a [`Derf`] over `num_features` channels, loading or
/// initializing (alpha `alpha_init`, shift `shift_init`, weight 1, bias 0)
/// its tensors through `vb`.
pub fn derf(num_features: usize, config: DerfConfig, vb: VarBuilder) -> Result<Derf> {
    let alpha = vb.get_with_hints(1, "alpha", Init::Const(config.alpha_init))?;
    let shift = vb.get_with_hints(1, "shift", Init::Const(config.shift_init))?;
    let (weight, bias) = if config.elementwise_affine {
        (
            Some(vb.get_with_hints(num_features, "weight", Init::Const(1.0))?),
            Some(vb.get_with_hints(num_features, "bias", Init::Const(0.0))?),
        )
    } else {
        (None, None)
    };
    Ok(Derf {
        num_features,
        alpha,
        shift,
        weight,
        bias,
        channel_axis: config.channel_axis,
    })
}

impl Derf {
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn alpha(&self) -> &Tensor {
        &self.alpha
    }

    pub fn shift(&self) -> &Tensor {
        &self.shift
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

impl Module for Derf {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::check_channels("derf", x, self.channel_axis, self.num_features)?;
        derf_op(
            x,
            &self.alpha,
            &self.shift,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.channel_axis,
        )
    }
}

impl StateDict for Derf {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        insert(out, prefix, "alpha", &self.alpha);
        insert(out, prefix, "shift", &self.shift);
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
    }
}

/// Functional Derf; `alpha` and `shift` hold one value each.
pub fn derf_op(
    x: &Tensor,
    alpha: &Tensor,
    shift: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    channel_axis: ChannelAxis,
) -> Result<Tensor> {
    let op = DerfOp {
        channel_axis,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params: Vec<&Tensor> = [alpha, shift]
        .into_iter()
        .chain(weight)
        .chain(bias)
        .collect();
    fused::apply(op, x, &params)
}
