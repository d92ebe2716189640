//! Layer Normalization and RMSNorm as candle layers.

use std::collections::HashMap;

use candle_core::{DType, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::{LayerNormOp, Precision, RmsNormOp};

use crate::fused;
use crate::state::{insert, StateDict};

/// Settings of a [`LayerNorm`] layer; the defaults are PyTorch's.
///
/// candle-nn's `LayerNormConfig` converts into it (its `affine` is this
/// `bias`; its `remove_mean: false` is RMSNorm with an optional bias), and
/// [`layer_norm`] takes either.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormConfig {
    /// PyTorch: `1e-5`.
    pub eps: f64,
    /// Learnable `weight` (and `bias`, see below). PyTorch: `true`.
    pub elementwise_affine: bool,
    /// Learnable `bias`, when `elementwise_affine`. PyTorch: `true`.
    pub bias: bool,
    /// Subtract the mean; `false` normalizes by the root mean square
    /// (RMSNorm), as candle-nn's option of the same name. PyTorch: `true`.
    pub remove_mean: bool,
}

impl Default for LayerNormConfig {
    fn default() -> Self {
        LayerNormConfig {
            eps: 1e-5,
            elementwise_affine: true,
            bias: true,
            remove_mean: true,
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

impl From<candle_nn::LayerNormConfig> for LayerNormConfig {
    /// candle-nn always has a weight; its `affine` says whether there is a
    /// bias.
    fn from(c: candle_nn::LayerNormConfig) -> Self {
        LayerNormConfig {
            eps: c.eps,
            elementwise_affine: true,
            bias: c.affine,
            remove_mean: c.remove_mean,
        }
    }
}

/// What [`layer_norm`] takes as its configuration: a [`LayerNormConfig`],
/// or anything candle-nn's `layer_norm` takes (`candle_nn::LayerNormConfig`,
/// an `f64` eps), so that code generic over
/// `C: Into<candle_nn::LayerNormConfig>` calls [`layer_norm`] unchanged.
pub trait IntoLayerNormConfig {
    fn into_layer_norm_config(self) -> LayerNormConfig;
}

impl IntoLayerNormConfig for LayerNormConfig {
    fn into_layer_norm_config(self) -> LayerNormConfig {
        self
    }
}

impl<C: Into<candle_nn::LayerNormConfig>> IntoLayerNormConfig for C {
    fn into_layer_norm_config(self) -> LayerNormConfig {
        self.into().into()
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
/// optional, shaped like `normalized_shape`. Without `remove_mean`
/// (candle-nn's RMS variant) `E[x]` is 0.
///
/// Unlike `candle_nn::LayerNorm`, gradients reach the input and both
/// parameters whatever the input's layout: the forward is one fused op and
/// so is its backward. Built like candle-nn's (`LayerNorm::new(weight,
/// bias, eps)`, `layer_norm(size, config, vb)`), it replaces it by an
/// import; a wrongly shaped parameter is an error of the forward.
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
    remove_mean: bool,
}

/// Creates a [`LayerNorm`] over the trailing `normalized_shape` (a size or
/// a shape), loading or initializing (weight 1, bias 0) its tensors through
/// `vb`. `config` is a [`LayerNormConfig`], a `candle_nn::LayerNormConfig`
/// or an `f64` eps. Like candle-nn's, it loads `gamma` and `beta` (older
/// checkpoints' names) when the file has them instead of `weight` and `bias`.
pub fn layer_norm<S: Into<Shape>, C: IntoLayerNormConfig>(
    normalized_shape: S,
    config: C,
    vb: VarBuilder,
) -> Result<LayerNorm> {
    let shape = normalized_shape.into();
    let config = config.into_layer_norm_config();
    let load = |names: [&str; 2], init: f64| {
        let name = names
            .into_iter()
            .find(|n| vb.contains_tensor(n))
            .unwrap_or(names[0]);
        vb.get_with_hints(shape.clone(), name, Init::Const(init))
    };
    let weight = if config.elementwise_affine {
        Some(load(["weight", "gamma"], 1.0)?)
    } else {
        None
    };
    let bias = if config.elementwise_affine && config.bias {
        Some(load(["bias", "beta"], 0.0)?)
    } else {
        None
    };
    Ok(LayerNorm {
        normalized_shape: shape.dims().to_vec(),
        weight,
        bias,
        eps: config.eps,
        remove_mean: config.remove_mean,
    })
}

/// A [`LayerNorm`] with a weight and no bias (candle-nn's function of the
/// same name).
pub fn layer_norm_no_bias(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let config = LayerNormConfig {
        eps,
        bias: false,
        ..Default::default()
    };
    layer_norm(size, config, vb)
}

impl LayerNorm {
    /// A LayerNorm over `weight`'s shape, with this weight and bias
    /// (`candle_nn::LayerNorm::new`). A `bias` of another shape is an error
    /// of the forward.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        LayerNorm {
            bias: Some(bias),
            ..LayerNorm::new_no_bias(weight, eps)
        }
    }

    /// A LayerNorm over `weight`'s shape without bias.
    pub fn new_no_bias(weight: Tensor, eps: f64) -> Self {
        LayerNorm {
            normalized_shape: weight.dims().to_vec(),
            weight: Some(weight),
            bias: None,
            eps,
            remove_mean: true,
        }
    }

    /// RMSNorm as a LayerNorm that keeps the mean
    /// (`candle_nn::LayerNorm::rms_norm`).
    pub fn rms_norm(weight: Tensor, eps: f64) -> Self {
        LayerNorm {
            remove_mean: false,
            ..LayerNorm::new_no_bias(weight, eps)
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

    pub fn remove_mean(&self) -> bool {
        self.remove_mean
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ns, weight, bias) = (
            &self.normalized_shape,
            self.weight.as_ref(),
            self.bias.as_ref(),
        );
        if self.remove_mean {
            return layer_norm_op(x, ns, weight, bias, self.eps);
        }
        // RMSNorm has no bias of its own: candle-nn adds it after.
        let y = rms_norm_op(x, ns, weight, Some(self.eps))?;
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
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
