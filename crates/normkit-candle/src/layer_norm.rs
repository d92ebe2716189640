//! Layer Normalization and RMSNorm as candle layers.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::{Elem, Stats};

use crate::error::{self, LayerError};
use crate::fused::{self, Kernel, Slots};
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
    let kernel = LayerNormKernel {
        normalized_shape: normalized_shape.to_vec(),
        slots: Slots::of(weight, bias),
        eps: eps as f32,
    };
    let params: Vec<&Tensor> = weight.into_iter().chain(bias).collect();
    fused::apply(Arc::new(kernel), x, &params)
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

struct LayerNormKernel {
    normalized_shape: Vec<usize>,
    slots: Slots,
    eps: f32,
}

impl Kernel for LayerNormKernel {
    type Saved = Stats;
    const NAME: &'static str = "layer_norm";
    const BACKWARD_NAME: &'static str = "layer_norm_backward";

    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> normkit::Result<Stats> {
        self.slots.check(Self::NAME, params, shape)?;
        normkit::layer_norm_forward(
            y,
            x,
            shape,
            &self.normalized_shape,
            self.slots.affine(params),
            self.eps,
        )
    }

    fn backward<T: Elem>(
        &self,
        dx: &mut [T],
        dparams: &mut [f32],
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> normkit::Result<()> {
        let weight = self.slots.affine(params).weight;
        normkit::layer_norm_backward(
            self.slots.grads(dx, dparams),
            dy,
            x,
            shape,
            &self.normalized_shape,
            weight,
            saved,
        )
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

/// The machine epsilon PyTorch's RMSNorm adds when `eps` is `None`.
fn dtype_eps(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 0.0078125,
        DType::F16 => 0.0009765625,
        DType::F64 => f64::EPSILON,
        _ => f32::EPSILON as f64,
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
    let kernel = RmsNormKernel {
        normalized_shape: normalized_shape.to_vec(),
        has_weight: weight.is_some(),
        eps: eps.unwrap_or_else(|| dtype_eps(x.dtype())) as f32,
    };
    let params: Vec<&Tensor> = weight.into_iter().collect();
    fused::apply(Arc::new(kernel), x, &params)
}

struct RmsNormKernel {
    normalized_shape: Vec<usize>,
    has_weight: bool,
    eps: f32,
}

impl RmsNormKernel {
    fn weight<'a>(&self, params: &'a [f32]) -> Option<&'a [f32]> {
        self.has_weight.then_some(params)
    }
}

impl Kernel for RmsNormKernel {
    type Saved = Stats;
    const NAME: &'static str = "rms_norm";
    const BACKWARD_NAME: &'static str = "rms_norm_backward";

    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> normkit::Result<Stats> {
        normkit::rms_norm_forward(
            y,
            x,
            shape,
            &self.normalized_shape,
            self.weight(params),
            self.eps,
        )
    }

    fn backward<T: Elem>(
        &self,
        dx: &mut [T],
        dparams: &mut [f32],
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> normkit::Result<()> {
        let grads = normkit::Grads {
            dx,
            dweight: self.has_weight.then_some(dparams),
            dbias: None,
        };
        let weight = self.weight(params);
        normkit::rms_norm_backward(grads, dy, x, shape, &self.normalized_shape, weight, saved)
    }
}
