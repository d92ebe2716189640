//! Weight Normalization as a burn parameter reparameterization, with
//! wrappers for `Linear` and `Conv2d` and the data-dependent
//! initialization.

use std::cell::RefCell;
use std::rc::Rc;

use burn::config::Config;
use burn::module::{Module, Param, Reparameterization, Reparameterizer};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::functional;

/// Which dimension of a weight keeps its own norm.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum WeightNormDim {
    /// One norm per output unit of burn's layers: the last axis of a rank-2
    /// weight (burn's `Linear` stores `[d_input, d_output]`), the first axis
    /// otherwise (`Conv1d`/`Conv2d`/`Conv3d` store `[out, in, *kernel]`).
    /// This is PyTorch's default `dim=0` on PyTorch's layouts.
    OutputUnits,
    /// One norm per index along this axis; negative counts from the end.
    Axis(isize),
    /// One norm over the whole tensor (PyTorch: `dim=None`).
    Whole,
}

impl WeightNormDim {
    /// The kept axis for a weight of rank `rank`, `None` for the whole tensor.
    pub fn resolve(self, rank: usize) -> Option<isize> {
        match self {
            WeightNormDim::OutputUnits if rank == 2 => Some(1),
            WeightNormDim::OutputUnits => Some(0),
            WeightNormDim::Axis(d) => Some(d),
            WeightNormDim::Whole => None,
        }
    }
}

/// Configuration of weight normalization, applied to the parameters named
/// `param_name` of any module with [`Module::apply_reparameterization`].
#[derive(Config, Debug)]
pub struct WeightNormConfig {
    /// The kept dimension. PyTorch: `dim=0`, one norm per output unit.
    #[config(default = "WeightNormDim::OutputUnits")]
    pub dim: WeightNormDim,
    /// Name of the parameters to reparameterize (the last component of
    /// their path). PyTorch: `name='weight'`.
    #[config(default = "String::from(\"weight\")")]
    pub param_name: String,
}

/// Weight Normalization (Salimans & Kingma, 2016, "Weight Normalization: A
/// Simple Reparameterization to Accelerate Training of Deep Neural
/// Networks"), attached to a weight `v` as a burn reparameterization:
///
/// ```text
/// w = g · v / ‖v‖
/// ```
///
/// where `‖v‖` is the Euclidean norm over every axis but `dim` (one per
/// index along it), or over the whole tensor when `dim` is `None`. The
/// parameter keeps `v` as its stored base; this module holds `g`.
///
/// # Shapes
/// - `v`, `w`: the weight's shape; `g`: `[v.dims()[dim]]`, or `[1]`.
#[derive(Module, Debug)]
pub struct WeightNorm {
    /// The magnitudes `g`, one per index along `dim`. PyTorch: `weight_g`.
    pub g: Param<Tensor<1>>,
    /// The kept axis, `None` for one norm over the whole tensor.
    pub dim: Option<isize>,
}

impl Reparameterization for WeightNorm {
    const NAME: &'static str = "weight_norm";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        // `g` was sized from this very base when attached; a mismatch can
        // only come from hand-assembled modules.
        functional::weight_norm(base, self.g.val(), self.dim)
            .unwrap_or_else(|e| panic!("weight norm reparameterization: {e}"))
    }
}

/// `‖v‖` per index along `dim`, the `g` that leaves `w = v`.
fn norms<const D: usize>(v: Tensor<D>, dim: Option<isize>) -> Result<Tensor<1>> {
    let dims = v.dims();
    let view = match dim {
        None => [1, 1, dims.iter().product()],
        Some(d) => {
            let k = if d < 0 { d + D as isize } else { d };
            if k < 0 || k >= D as isize {
                return Err(normkit::NormError::Dim {
                    op: "weight_norm",
                    dim: d,
                    shape: dims.to_vec(),
                }
                .into());
            }
            let k = k as usize;
            [
                dims[..k].iter().product(),
                dims[k],
                dims[k + 1..].iter().product(),
            ]
        }
    };
    let sq = v.clone() * v;
    Ok(sq
        .reshape(view)
        .sum_dim(0)
        .sum_dim(2)
        .sqrt()
        .reshape([view[1]]))
}

/// Attaches [`WeightNorm`] to the selected parameters, with `g = ‖v‖` (so
/// the effective weights are unchanged) or with given magnitudes.
struct Attach {
    dim: WeightNormDim,
    param_name: String,
    magnitude: Option<Tensor<1>>,
    /// The first failure, read back after the traversal.
    error: Rc<RefCell<Option<Error>>>,
}

impl Attach {
    /// Applies the reparameterization to `module`, or returns its failure.
    fn run<M: Module>(self, module: M) -> Result<M> {
        let error = Rc::clone(&self.error);
        let module = module.apply_reparameterization(self);
        let failure = error.borrow_mut().take();
        match failure {
            Some(e) => Err(e),
            None => Ok(module),
        }
    }
}

impl Reparameterizer for Attach {
    type Reparam = WeightNorm;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<WeightNorm>) {
        let name = path.rsplit('.').next().unwrap_or(path);
        if name != self.param_name || self.error.borrow().is_some() {
            return (param, None);
        }
        let dim = self.dim.resolve(D);
        let g = match self.magnitude.take() {
            Some(g) => Ok(g),
            None => norms(param.val().detach(), dim),
        };
        match g {
            Ok(g) => (
                param,
                Some(WeightNorm {
                    g: Param::from_tensor(g.detach()),
                    dim,
                }),
            ),
            Err(e) => {
                *self.error.borrow_mut() = Some(e);
                (param, None)
            }
        }
    }
}

impl WeightNormConfig {
    /// Reparameterizes every parameter of `module` named `param_name` as
    /// `g · v / ‖v‖`, starting from `g = ‖v‖` so the module computes what
    /// it computed before, as PyTorch's `weight_norm` does.
    ///
    /// # Errors
    /// A `dim` out of range for a selected parameter.
    pub fn apply<M: Module>(&self, module: M) -> Result<M> {
        Attach {
            dim: self.dim,
            param_name: self.param_name.clone(),
            magnitude: None,
            error: Rc::default(),
        }
        .run(module)
    }
}

/// `linear` with its weight reparameterized by [`WeightNorm`], one norm
/// per output unit.
pub fn weight_norm_linear(linear: Linear) -> Linear {
    WeightNormConfig::new()
        .apply(linear)
        .expect("a rank-2 weight has an output axis")
}

/// `conv` with its weight reparameterized by [`WeightNorm`], one norm per
/// output channel.
pub fn weight_norm_conv2d(conv: Conv2d) -> Conv2d {
    WeightNormConfig::new()
        .apply(conv)
        .expect("a rank-4 weight has an output axis")
}

/// The stored direction `v` and kept axis of a weight, whether or not it
/// is already weight-normalized.
fn direction<const D: usize>(weight: &Param<Tensor<D>>) -> (Tensor<D>, Option<isize>) {
    match weight.reparameterization::<WeightNorm>() {
        Some(wn) => (weight.base(), wn.dim),
        None => (weight.val(), WeightNormDim::OutputUnits.resolve(D)),
    }
}

/// Per-unit mean and `init_scale / sqrt(var + 1e-10)` of the pre-activations
/// `t` over every axis but `unit`.
fn data_scale<const D: usize>(
    t: Tensor<D>,
    unit: usize,
    init_scale: f64,
) -> (Tensor<1>, Tensor<1>) {
    let dims = t.dims();
    let k = dims[unit];
    let view = [
        dims[..unit].iter().product(),
        k,
        dims[unit + 1..].iter().product(),
    ];
    let t3 = t.reshape(view);
    let mean = t3.clone().mean_dim(0).mean_dim(2);
    let centered = t3 - mean.clone();
    let var = (centered.clone() * centered).mean_dim(0).mean_dim(2);
    let scale = var.add_scalar(1e-10).sqrt().recip().mul_scalar(init_scale);
    (mean.reshape([k]), scale.reshape([k]))
}

/// Salimans & Kingma's data-dependent initialization of a weight-normalized
/// `Linear` (it is reparameterized first when it is not yet): with
/// `t = x · v / ‖v‖` on the batch `x`, sets
/// `g = init_scale / σ[t]` and `bias = -μ[t] · g`, so the layer's outputs on
/// `x` have mean 0 and standard deviation `init_scale` per unit.
///
/// # Shapes
/// - `x`: `[N, d_input]`.
///
/// # Errors
/// `x` whose last axis is not `d_input`.
pub fn weight_norm_linear_data_init(
    linear: Linear,
    x: Tensor<2>,
    init_scale: f64,
) -> Result<Linear> {
    let (v, _) = direction(&linear.weight);
    let [d_input, d_output] = v.dims();
    if x.dims()[1] != d_input {
        return Err(Error::Channels {
            op: "weight_norm_linear_data_init",
            expected: d_input,
            got: x.dims()[1],
            shape: x.dims().to_vec(),
        });
    }
    let v = v.detach();
    let unit = functional::weight_norm(v.clone(), Tensor::ones([d_output], &v.device()), Some(1))?;
    let t = burn::tensor::module::linear(x.detach(), unit, None);
    let (mean, g) = data_scale(t, 1, init_scale);
    let bias = (mean * g.clone()).neg();
    let plain = Linear {
        weight: Param::from_tensor(v),
        bias: Some(Param::from_tensor(bias.detach())),
    };
    attach_with(plain, g, WeightNormDim::Axis(1))
}

/// Salimans & Kingma's data-dependent initialization of a weight-normalized
/// `Conv2d` (reparameterized first when it is not yet): with `t` the
/// convolution of `x` by `v / ‖v‖` without bias, sets `g = init_scale / σ[t]`
/// and `bias = -μ[t] · g`, the statistics per output channel over the batch
/// and every position.
///
/// # Shapes
/// - `x`: `[N, channels_in, H, W]`.
///
/// # Errors
/// `x` whose channel count is not the convolution's input channels.
pub fn weight_norm_conv2d_data_init(conv: Conv2d, x: Tensor<4>, init_scale: f64) -> Result<Conv2d> {
    let (v, _) = direction(&conv.weight);
    let [out, per_group, _, _] = v.dims();
    let expected = per_group * conv.groups;
    if x.dims()[1] != expected {
        return Err(Error::Channels {
            op: "weight_norm_conv2d_data_init",
            expected,
            got: x.dims()[1],
            shape: x.dims().to_vec(),
        });
    }
    let v = v.detach();
    let unit = functional::weight_norm(v.clone(), Tensor::ones([out], &v.device()), Some(0))?;
    let probe = Conv2d {
        weight: Param::from_tensor(unit),
        bias: None,
        stride: conv.stride,
        kernel_size: conv.kernel_size,
        dilation: conv.dilation,
        groups: conv.groups,
        padding: conv.padding.clone(),
    };
    let t = probe.forward(x.detach());
    let (mean, g) = data_scale(t, 1, init_scale);
    let bias = (mean * g.clone()).neg();
    let plain = Conv2d {
        weight: Param::from_tensor(v),
        bias: Some(Param::from_tensor(bias.detach())),
        ..conv
    };
    attach_with(plain, g, WeightNormDim::Axis(0))
}

pub(crate) fn attach_with<M: Module>(module: M, g: Tensor<1>, dim: WeightNormDim) -> Result<M> {
    Attach {
        dim,
        param_name: "weight".into(),
        magnitude: Some(g),
        error: Rc::default(),
    }
    .run(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_units_follow_burns_layouts() {
        // Linear: [d_input, d_output]; convolutions: [out, in, *kernel].
        assert_eq!(WeightNormDim::OutputUnits.resolve(2), Some(1));
        assert_eq!(WeightNormDim::OutputUnits.resolve(3), Some(0));
        assert_eq!(WeightNormDim::OutputUnits.resolve(4), Some(0));
        assert_eq!(WeightNormDim::Axis(-1).resolve(4), Some(-1));
        assert_eq!(WeightNormDim::Whole.resolve(2), None);
    }

    #[test]
    fn norms_per_kept_axis() {
        let device = burn::tensor::Device::flex();
        let v = Tensor::<2>::from_floats([[3.0, 4.0], [0.0, 1.0]], &device);
        let rows = norms(v.clone(), Some(0)).unwrap().into_data();
        rows.assert_approx_eq::<f32>(&[5.0f32, 1.0].into(), Default::default());
        let cols = norms(v.clone(), Some(-1)).unwrap().into_data();
        cols.assert_approx_eq::<f32>(&[3.0f32, 17f32.sqrt()].into(), Default::default());
        let whole = norms(v.clone(), None).unwrap().into_data();
        whole.assert_approx_eq::<f32>(&[26f32.sqrt()].into(), Default::default());
        assert!(norms(v, Some(2)).is_err());
    }
}
