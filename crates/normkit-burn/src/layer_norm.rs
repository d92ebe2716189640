//! The LayerNorm and RMSNorm layers.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};
use normkit::op::{LayerNormOp, NormOp, Precision, RmsNormOp};

use crate::error::{check_eps, Result};
use crate::functional;

/// Configuration of a [`LayerNorm`] layer, with PyTorch's defaults.
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// The trailing dimensions normalized over. PyTorch: `normalized_shape`.
    pub normalized_shape: Vec<usize>,
    /// Added to the variance inside the square root. PyTorch: `eps=1e-5`.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Learnable `weight` (ones), and `bias` (zeros) when `bias` is set.
    /// PyTorch: `elementwise_affine=True`.
    #[config(default = true)]
    pub elementwise_affine: bool,
    /// Learnable `bias` alongside the weight. PyTorch: `bias=True`.
    #[config(default = true)]
    pub bias: bool,
}

/// Layer Normalization (Ba, Kiros & Hinton, 2016):
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where `E[x]`, `Var[x]` (biased) are over the trailing `normalized_shape`
/// dimensions of each row, and `weight`, `bias` hold one value per
/// normalized element.
///
/// # Shapes
/// - input, output: `[*, *normalized_shape]`;
/// - `weight`, `bias`: `[prod(normalized_shape)]`, `normalized_shape`
///   flattened (PyTorch keeps it unflattened; the PyTorch loader reshapes).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Per-element scale, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// Per-element shift, `None` without affine parameters or bias.
    pub bias: Option<Param<Tensor<1>>>,
    /// The trailing dimensions normalized over.
    pub normalized_shape: Vec<usize>,
    /// Variance floor inside the square root.
    pub eps: f64,
}

impl LayerNormConfig {
    /// Builds the layer: weight ones, bias zeros.
    ///
    /// # Errors
    /// An empty `normalized_shape` or product, a negative or non-finite eps.
    pub fn try_init(&self, device: &Device) -> Result<LayerNorm> {
        check_eps("LayerNorm", self.eps)?;
        let op = LayerNormOp {
            normalized_shape: self.normalized_shape.clone(),
            eps: self.eps as f32,
            weight: self.elementwise_affine,
            bias: self.elementwise_affine && self.bias,
        };
        // normkit's validation, on one row.
        op.signature(&self.normalized_shape)?;
        let d: usize = self.normalized_shape.iter().product();
        let param = |v: f32| Param::from_tensor(Tensor::full([d], v, device));
        Ok(LayerNorm {
            weight: self.elementwise_affine.then(|| param(1.0)),
            bias: (self.elementwise_affine && self.bias).then(|| param(0.0)),
            normalized_shape: self.normalized_shape.clone(),
            eps: self.eps,
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
    /// Normalizes `x`.
    ///
    /// # Errors
    /// An input that does not end with `normalized_shape`.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        functional::layer_norm(
            x,
            &self.normalized_shape,
            self.weight.as_ref().map(Param::val),
            self.bias.as_ref().map(Param::val),
            self.eps as f32,
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

/// Configuration of an [`RmsNorm`] layer, with PyTorch's defaults.
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// The trailing dimensions normalized over. PyTorch: `normalized_shape`.
    pub normalized_shape: Vec<usize>,
    /// Added to the mean square inside the square root; `None` takes the
    /// machine epsilon of the input's element type (`f32`: 1.19e-7).
    /// PyTorch: `eps=None`, the same rule.
    #[config(default = "None")]
    pub eps: Option<f64>,
    /// Learnable `weight` (ones). PyTorch: `elementwise_affine=True`.
    #[config(default = true)]
    pub elementwise_affine: bool,
}

/// Root Mean Square Layer Normalization (Zhang & Sennrich, 2019):
///
/// ```text
/// y = x / sqrt(mean(x²) + eps) · weight
/// ```
///
/// where the mean is over the trailing `normalized_shape` dimensions of each
/// row and `weight` holds one value per normalized element.
///
/// # Shapes
/// - input, output: `[*, *normalized_shape]`;
/// - `weight`: `[prod(normalized_shape)]`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-element scale, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// The trailing dimensions normalized over.
    pub normalized_shape: Vec<usize>,
    /// Floor inside the square root; `None` for the input type's epsilon.
    pub eps: Option<f64>,
}

impl RmsNormConfig {
    /// Builds the layer: weight ones.
    ///
    /// # Errors
    /// An empty `normalized_shape` or product, a negative or non-finite eps.
    pub fn try_init(&self, device: &Device) -> Result<RmsNorm> {
        if let Some(eps) = self.eps {
            check_eps("RmsNorm", eps)?;
        }
        let op = RmsNormOp {
            normalized_shape: self.normalized_shape.clone(),
            eps: self.eps.unwrap_or(0.0) as f32,
            weight: self.elementwise_affine,
        };
        // normkit's validation, on one row.
        op.signature(&self.normalized_shape)?;
        let d: usize = self.normalized_shape.iter().product();
        Ok(RmsNorm {
            weight: self
                .elementwise_affine
                .then(|| Param::from_tensor(Tensor::ones([d], device))),
            normalized_shape: self.normalized_shape.clone(),
            eps: self.eps,
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

/// The normkit precision of a burn float type (`f32` for any other).
fn precision(dtype: DType) -> Precision {
    match dtype {
        DType::F64 => Precision::F64,
        DType::F16 => Precision::F16,
        DType::BF16 => Precision::Bf16,
        _ => Precision::F32,
    }
}

impl RmsNorm {
    /// Normalizes `x`.
    ///
    /// # Errors
    /// An input that does not end with `normalized_shape`.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let eps = self
            .eps
            .unwrap_or_else(|| precision(x.dtype()).machine_eps());
        functional::rms_norm(
            x,
            &self.normalized_shape,
            self.weight.as_ref().map(Param::val),
            eps as f32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_epsilon_follows_the_input_type() {
        assert_eq!(precision(DType::F32).machine_eps(), 1.1920928955078125e-7);
        assert_eq!(precision(DType::F64).machine_eps(), f64::EPSILON);
        assert_eq!(precision(DType::F16).machine_eps(), 2f64.powi(-10));
        assert_eq!(precision(DType::BF16).machine_eps(), 2f64.powi(-7));
    }
}
