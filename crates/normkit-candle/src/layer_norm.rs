//! Layer Normalization and RMSNorm as candle layers.

use std::collections::HashMap;

use candle_core::{DType, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::{LayerNormOp, Precision, RmsNormOp};

use crate::error::{self, LayerError};
use crate::fused;
use crate::state::{insert, StateDict};

/// Settings of a [`LayerNorm`] layer; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormConfig {
    /// PyTorch: `1e-5`.
    pub eps: f64,
    /// Learnable `weight` (and `bias`, see below). PyTorch: `true`.
    pub elementwise_affine: bool,
    /// Learnable `bias`, when `elementwise_affine`. PyTorch: `true`.
    pub bias: bool,
}

impl Default for LayerNormConfig {
    fn default() -> Self {
        LayerNormConfig {
            eps: 1e-5,
            elementwise_affine: true,
            bias: true,
        }
    }
}

impl From<f64> for LayerNormConfig {
    fn from(eps: f64) -> Self {
        LayerNormConfig {
            eps,
            ..Default::default()
        }
    }
}

/// Layer Normalization (Ba, Kiros & Hinton, 2016):
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where `E[x]`, `Var[x]` (biased) are over the trailing
/// `normalized_shape` dimensions of each row, and `weight`, `bias` are
/// optional, shaped like `normalized_shape`.
///
/// Unlike `candle_nn::LayerNorm`, gradients reach the input and both
/// parameters whatever the input's layout: the forward is one fused op and
/// so is its backward.
///
/// # Shapes
/// - `x`, `y`: `[*, *normalized_shape]`;
/// - `weight`, `bias`: `normalized_shape`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    normalized_shape: Vec<usize>,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
}

/// Creates a [`LayerNorm`] over the trailing `normalized_shape` (a size or
/// a shape), loading or initializing (weight 1, bias 0) its tensors through
/// `vb`.
pub fn layer_norm<S: Into<Shape>, C: Into<LayerNormConfig>>(
    normalized_shape: S,
    config: C,
    vb: VarBuilder,
) -> Result<LayerNorm> {
    let shape = normalized_shape.into();
    let config = config.into();
    let weight = if config.elementwise_affine {
        Some(vb.get_with_hints(shape.clone(), "weight", Init::Const(1.0))?)
    } else {
        None
    };
    let bias = if config.elementwise_affine && config.bias {
        Some(vb.get_with_hints(shape.clone(), "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(LayerNorm {
        normalized_shape: shape.dims().to_vec(),
        weight,
        bias,
        eps: config.eps,
    })
}

impl LayerNorm {
    /// A LayerNorm over `weight`'s shape, with this weight and bias (the
    /// signature of `candle_nn::LayerNorm::new`).
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        check_param_shape("layer_norm", "bias", weight.dims(), &bias)?;
        Ok(LayerNorm {
            normalized_shape: weight.dims().to_vec(),
            weight: Some(weight),
            bias: Some(bias),
            eps,
        })
    }

    /// A LayerNorm over `weight`'s shape without bias.
    pub fn new_no_bias(weight: Tensor, eps: f64) -> Self {
        LayerNorm {
            normalized_shape: weight.dims().to_vec(),
            weight: Some(weight),
            bias: None,
            eps,
        }
    }

    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm_op(
            x,
            &self.normalized_shape,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
        )
    }
}

impl StateDict for LayerNorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
    }
}

/// Functional LayerNorm: [`LayerNorm`]'s formula over the trailing
/// `normalized_shape` of `x`, as one fused op with a fused backward.
pub fn layer_norm_op(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let op = LayerNormOp {
        normalized_shape: normalized_shape.to_vec(),
        eps: eps as f32,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let params: Vec<&Tensor> = weight.into_iter().chain(bias).collect();
    fused::apply(op, x, &params)
}

fn check_param_shape(
    op: &'static str,
    name: &'static str,
    expected: &[usize],
    t: &Tensor,
) -> Result<()> {
    if t.dims() == expected {
        Ok(())
    } else {
        Err(error::layer(LayerError::ParamShape {
            op,
            name,
            expected: expected.to_vec(),
            got: t.dims().to_vec(),
        }))
    }
}

/// Settings of an [`RmsNorm`] layer; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsNormConfig {
    /// Added to the mean square. PyTorch: `None`, the machine epsilon of
    /// the input's dtype (`f32`: 2⁻²³, `bf16`: 2⁻⁷, `f16`: 2⁻¹⁰).
    pub eps: Option<f64>,
    /// Learnable `weight`. PyTorch: `true`.
    pub elementwise_affine: bool,
}

impl Default for RmsNormConfig {
    fn default() -> Self {
        RmsNormConfig {
            eps: None,
            elementwise_affine: true,
        }
    }
}

impl RmsNormConfig {
    /// PyTorch's defaults, as [`Default`].
    pub fn new() -> Self {
        Self::default()
    }
}

impl From<f64> for RmsNormConfig {
    fn from(eps: f64) -> Self {
        RmsNormConfig {
            eps: Some(eps),
            elementwise_affine: true,
        }
    }
}

/// Root Mean Square Layer Normalization (Zhang & Sennrich, 2019):
///
/// ```text
/// y = x / sqrt(mean(x²) + eps) · weight
/// ```
///
/// where the mean is over the trailing `normalized_shape` dimensions and
/// `weight` is optional, shaped like `normalized_shape`.
///
/// # Shapes
/// - `x`, `y`: `[*, *normalized_shape]`; `weight`: `normalized_shape`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    normalized_shape: Vec<usize>,
    weight: Option<Tensor>,
    eps: Option<f64>,
}

/// Creates an [`RmsNorm`] over the trailing `normalized_shape`, loading or
/// initializing (weight 1) its weight through `vb`.
pub fn rms_norm<S: Into<Shape>, C: Into<RmsNormConfig>>(
    normalized_shape: S,
    config: C,
    vb: VarBuilder,
) -> Result<RmsNorm> {
    let shape = normalized_shape.into();
    let config = config.into();
    let weight = if config.elementwise_affine {
        Some(vb.get_with_hints(shape.clone(), "weight", Init::Const(1.0))?)
    } else {
        None
    };
    Ok(RmsNorm {
        normalized_shape: shape.dims().to_vec(),
        weight,
        eps: config.eps,
    })
}

impl RmsNorm {
    /// An RMSNorm over `weight`'s shape (the signature of
    /// `candle_nn::RmsNorm::new`).
    pub fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm {
            normalized_shape: weight.dims().to_vec(),
            weight: Some(weight),
            eps: Some(eps),
        }
    }

    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn eps(&self) -> Option<f64> {
        self.eps
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm_op(x, &self.normalized_shape, self.weight.as_ref(), self.eps)
    }
}

impl StateDict for RmsNorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
    }
}

/// The format of a dtype, for its machine epsilon; dtypes without kernels
/// are refused by the op itself.
fn precision(dtype: DType) -> Precision {
    match dtype {
        DType::BF16 => Precision::Bf16,
        DType::F16 => Precision::F16,
        DType::F64 => Precision::F64,
        _ => Precision::F32,
    }
}

/// Functional RMSNorm over the trailing `normalized_shape` of `x`; `eps`
/// `None` is the machine epsilon of `x`'s dtype, as PyTorch.
pub fn rms_norm_op(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    eps: Option<f64>,
) -> Result<Tensor> {
    let op = RmsNormOp {
        normalized_shape: normalized_shape.to_vec(),
        eps: eps.unwrap_or_else(|| precision(x.dtype()).machine_eps()) as f32,
        weight: weight.is_some(),
    };
    let params: Vec<&Tensor> = weight.into_iter().collect();
    fused::apply(op, x, &params)
}
