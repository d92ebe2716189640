//! Weight Normalization of `Linear` and `Conv2d` as candle layers.

use std::collections::HashMap;

use candle_core::{DType, Module, Result, Tensor, Var, D};
use candle_nn::{Conv2dConfig, Init, VarBuilder};
use normkit::op::{NormOp, WeightNormOp};

use crate::error::{self, LayerError};
use crate::fused;
use crate::state::{insert, StateDict};

/// The names under which a weight-normalized layer keeps `g` and `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightNormNames {
    /// `torch.nn.utils.parametrizations.weight_norm`:
    /// `parametrizations.weight.original0` (g) and `…original1` (v).
    #[default]
    Parametrizations,
    /// The older `torch.nn.utils.weight_norm`: `weight_g` and `weight_v`.
    Legacy,
}

impl WeightNormNames {
    fn g(self) -> &'static str {
        match self {
            WeightNormNames::Parametrizations => "parametrizations.weight.original0",
            WeightNormNames::Legacy => "weight_g",
        }
    }

    fn v(self) -> &'static str {
        match self {
            WeightNormNames::Parametrizations => "parametrizations.weight.original1",
            WeightNormNames::Legacy => "weight_v",
        }
    }
}

/// Settings of a weight-normalized layer; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightNormConfig {
    /// The dimension of `v` kept by the norm: one norm per index along it.
    /// `None` takes one norm over the whole tensor. A negative value counts
    /// from the end (unlike PyTorch, where `-1` means `None`).
    /// PyTorch: `Some(0)`, one norm per output unit.
    pub dim: Option<isize>,
    /// Whether the layer has a `bias`. PyTorch: `true`.
    pub bias: bool,
    /// The names used when the tensors do not exist yet. Loading finds
    /// either naming on its own.
    pub names: WeightNormNames,
}

impl Default for WeightNormConfig {
    fn default() -> Self {
        WeightNormConfig {
            dim: Some(0),
            bias: true,
            names: WeightNormNames::default(),
        }
    }
}

/// Functional Weight Normalization (Salimans & Kingma, 2016):
///
/// ```text
/// w = g · v / ‖v‖
/// ```
///
/// where `‖v‖` is the Euclidean norm over every dimension but `dim` (or
/// over all of `v` when `dim` is `None`), and `g` holds one value per
/// index along `dim` in any shape (PyTorch's: `v`'s rank with ones
/// elsewhere). One fused op; its backward gives `dv` and `dg`.
pub fn weight_norm_op(v: &Tensor, g: &Tensor, dim: Option<isize>) -> Result<Tensor> {
    fused::apply(WeightNormOp { dim }, v, &[g])
}

/// The shape PyTorch gives `g`: `v`'s rank with ones but along `dim`, or
/// a scalar for `None`.
fn g_shape(v_shape: &[usize], dim: Option<isize>) -> Result<Vec<usize>> {
    // The op's own check of `dim` against `v`'s shape.
    WeightNormOp { dim }
        .signature(v_shape)
        .map_err(error::kernel)?;
    let Some(d) = dim else {
        return Ok(Vec::new());
    };
    let k = if d < 0 { d + v_shape.len() as isize } else { d };
    Ok(v_shape
        .iter()
        .enumerate()
        .map(|(i, &n)| if i as isize == k { n } else { 1 })
        .collect())
}

/// Variance added under the square root of the data-dependent
/// initialization, so a constant pre-activation gives a finite scale.
const INIT_EPS: f64 = 1e-10;

/// The `(g, v)` pair shared by both layers.
#[derive(Debug, Clone)]
struct Reparam {
    g: Tensor,
    v: Tensor,
    dim: Option<isize>,
    names: WeightNormNames,
}

impl Reparam {
    fn load(
        v_shape: &[usize],
        init_v: Init,
        config: &WeightNormConfig,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let names = if vb.contains_tensor(WeightNormNames::Legacy.g())
            || vb.contains_tensor(WeightNormNames::Legacy.v())
        {
            WeightNormNames::Legacy
        } else if vb.contains_tensor(WeightNormNames::Parametrizations.g()) {
            WeightNormNames::Parametrizations
        } else {
            config.names
        };
        let fresh = !vb.contains_tensor(names.g());
        let v = vb.get_with_hints(v_shape, names.v(), init_v)?;
        let shape = g_shape(v_shape, config.dim)?;
        let g = match vb.get_with_hints(shape.clone(), names.g(), Init::Const(1.0)) {
            Ok(g) => g,
            // A saved g with a different layout of the same values
            // (a `[1, 1]` scalar, say) still loads.
            Err(e) => match vb.get_unchecked(names.g()) {
                Ok(g) if g.elem_count() == shape.iter().product::<usize>() => g,
                _ => return Err(e),
            },
        };
        if fresh && g.is_variable() {
            // A new layer starts with w = v, as PyTorch's weight_norm does
            // when applied to an existing module.
            let norms = norms_of(&v, config.dim)?.reshape(g.shape())?;
            Var::from_tensor(&g)?.set(&norms.to_dtype(g.dtype())?)?;
        }
        Ok(Reparam {
            g,
            v,
            dim: config.dim,
            names,
        })
    }

    fn weight(&self) -> Result<Tensor> {
        weight_norm_op(&self.v, &self.g, self.dim)
    }

    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        insert(out, prefix, self.names.g(), &self.g);
        insert(out, prefix, self.names.v(), &self.v);
    }

    /// Sets `g` to `1/σ`, reshaped like `g`, in place when it is a variable.
    fn set_g(&mut self, inv_std: &Tensor) -> Result<()> {
        let g = inv_std.reshape(self.g.shape())?.to_dtype(self.g.dtype())?;
        assign(&mut self.g, g)
    }

    /// The unit-norm weight `v / ‖v‖`, detached.
    fn unit_weight(&self) -> Result<Tensor> {
        if self.dim != Some(0) {
            return Err(error::layer(LayerError::Unsupported {
                op: "weight_norm",
                reason: "the data-dependent initialization needs dim = Some(0) (one scale per output unit)",
            }));
        }
        let v = self.v.detach();
        weight_norm_op(&v, &self.g.ones_like()?.detach(), self.dim)
    }
}

/// `‖v‖` over every dimension but `dim` (all of them for `None`), in f64,
/// with the reduced dimensions kept as ones.
fn norms_of(v: &Tensor, dim: Option<isize>) -> Result<Tensor> {
    let sq = v.detach().to_dtype(DType::F64)?.sqr()?;
    let rank = sq.rank() as isize;
    let keep = dim.map(|d| if d < 0 { d + rank } else { d });
    let mut sum = sq;
    for i in (0..rank).filter(|&i| Some(i) != keep) {
        sum = sum.sum_keepdim(i as usize)?;
    }
    sum.sqrt()
}

/// Writes `value` into `slot`: in place when `slot` is a variable (so a
/// `VarMap` sees it), by replacing the tensor otherwise.
fn assign(slot: &mut Tensor, value: Tensor) -> Result<()> {
    if slot.is_variable() {
        Var::from_tensor(slot)?.set(&value)
    } else {
        *slot = value;
        Ok(())
    }
}

/// Per-channel mean and `1/σ` of `t` laid out `[channels, values]`, in f64.
fn moments(t: &Tensor) -> Result<(Tensor, Tensor)> {
    let t = t.detach().to_dtype(DType::F64)?;
    let mean = t.mean_keepdim(D::Minus1)?;
    let var = t.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_std = (var + INIT_EPS)?.sqrt()?.recip()?;
    Ok((mean.flatten_all()?, inv_std.flatten_all()?))
}

/// A weight-normalized `Linear`: `y = x · wᵀ + bias` with
/// `w = g · v / ‖v‖` (see [`weight_norm_op`]).
///
/// Loads PyTorch's `weight_g`/`weight_v` or
/// `parametrizations.weight.original0`/`original1`, plus `bias`.
///
/// # Shapes
/// - `x`: `[*, in]`, `y`: `[*, out]`;
/// - `v`: `[out, in]`, `g`: `[out, 1]` (dim 0), `bias`: `[out]`.
#[derive(Debug, Clone)]
pub struct WeightNormLinear {
    reparam: Reparam,
    bias: Option<Tensor>,
}

/// Creates a [`WeightNormLinear`] from `in_dim` to `out_dim` features. New
/// tensors are initialized like `candle_nn::linear`, with `g = ‖v‖`.
pub fn weight_norm_linear(
    in_dim: usize,
    out_dim: usize,
    config: WeightNormConfig,
    vb: VarBuilder,
) -> Result<WeightNormLinear> {
    let reparam = Reparam::load(
        &[out_dim, in_dim],
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
        &config,
        &vb,
    )?;
    let bias = if config.bias {
        let bound = 1.0 / (in_dim as f64).sqrt();
        Some(vb.get_with_hints(
            out_dim,
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    Ok(WeightNormLinear { reparam, bias })
}

impl WeightNormLinear {
    /// `g`.
    pub fn g(&self) -> &Tensor {
        &self.reparam.g
    }

    /// `v`.
    pub fn v(&self) -> &Tensor {
        &self.reparam.v
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The effective weight `g · v / ‖v‖`, differentiable in `g` and `v`.
    pub fn weight(&self) -> Result<Tensor> {
        self.reparam.weight()
    }

    /// The plain `Linear` this layer computes, with its current weight.
    pub fn to_linear(&self) -> Result<candle_nn::Linear> {
        Ok(candle_nn::Linear::new(self.weight()?, self.bias.clone()))
    }

    /// Data-dependent initialization (Salimans & Kingma, 2016, §3): with
    /// `t = x · (v / ‖v‖)ᵀ` on a batch `x`, sets `g = 1 / σ[t]` and
    /// `bias = -μ[t] / σ[t]` per output unit, so the layer's outputs on
    /// this batch have mean 0 and variance 1 per unit. Returns those
    /// outputs. Needs `dim = Some(0)`; without a bias only `g` is set.
    pub fn initialize_from_batch(&mut self, x: &Tensor) -> Result<Tensor> {
        let w = self.reparam.unit_weight()?;
        let t = candle_nn::Linear::new(w, None).forward(&fresh_if_empty(&x.detach())?)?;
        let out = t.dim(D::Minus1)?;
        let t = t.reshape(((), out))?.t()?;
        let (mean, inv_std) = moments(&t)?;
        self.reparam.set_g(&inv_std)?;
        if let Some(bias) = &mut self.bias {
            let b = (mean.neg()? * &inv_std)?.to_dtype(bias.dtype())?;
            assign(bias, b)?;
        }
        self.forward(x)
    }
}

impl Module for WeightNormLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.to_linear()?.forward(&fresh_if_empty(x)?)
    }
}

impl StateDict for WeightNormLinear {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        self.reparam.state_dict(prefix, out);
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
    }
}

/// A weight-normalized `Conv2d`: candle's convolution with
/// `w = g · v / ‖v‖` (see [`weight_norm_op`]).
///
/// # Shapes
/// - `x`: `[N, in, H, W]`, `y`: `[N, out, H', W']`;
/// - `v`: `[out, in / groups, k, k]`, `g`: `[out, 1, 1, 1]` (dim 0),
///   `bias`: `[out]`.
#[derive(Debug, Clone)]
pub struct WeightNormConv2d {
    reparam: Reparam,
    bias: Option<Tensor>,
    conv: Conv2dConfig,
}

/// Creates a [`WeightNormConv2d`]. New tensors are initialized like
/// `candle_nn::conv2d`, with `g = ‖v‖`.
pub fn weight_norm_conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    conv: Conv2dConfig,
    config: WeightNormConfig,
    vb: VarBuilder,
) -> Result<WeightNormConv2d> {
    let groups = conv.groups.max(1);
    let reparam = Reparam::load(
        &[out_channels, in_channels / groups, kernel_size, kernel_size],
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
        &config,
        &vb,
    )?;
    let bias = if config.bias {
        let bound = 1.0 / (in_channels as f64).sqrt();
        Some(vb.get_with_hints(
            out_channels,
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    Ok(WeightNormConv2d {
        reparam,
        bias,
        conv,
    })
}

impl WeightNormConv2d {
    /// `g`.
    pub fn g(&self) -> &Tensor {
        &self.reparam.g
    }

    /// `v`.
    pub fn v(&self) -> &Tensor {
        &self.reparam.v
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The effective weight `g · v / ‖v‖`, differentiable in `g` and `v`.
    pub fn weight(&self) -> Result<Tensor> {
        self.reparam.weight()
    }

    /// The plain `Conv2d` this layer computes, with its current weight.
    pub fn to_conv2d(&self) -> Result<candle_nn::Conv2d> {
        Ok(candle_nn::Conv2d::new(
            self.weight()?,
            self.bias.clone(),
            self.conv,
        ))
    }

    /// Data-dependent initialization (Salimans & Kingma, 2016, §3): as
    /// [`WeightNormLinear::initialize_from_batch`], with the statistics of
    /// each output channel over the batch and every position.
    pub fn initialize_from_batch(&mut self, x: &Tensor) -> Result<Tensor> {
        let w = self.reparam.unit_weight()?;
        check_conv(x, &w, &self.conv)?;
        let t = candle_nn::Conv2d::new(w, None, self.conv).forward(&x.detach())?;
        let t = t.transpose(0, 1)?.flatten_from(1)?;
        let (mean, inv_std) = moments(&t)?;
        self.reparam.set_g(&inv_std)?;
        if let Some(bias) = &mut self.bias {
            let b = (mean.neg()? * &inv_std)?.to_dtype(bias.dtype())?;
            assign(bias, b)?;
        }
        self.forward(x)
    }
}

impl Module for WeightNormConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let conv = self.to_conv2d()?;
        check_conv(x, conv.weight(), &self.conv)?;
        conv.forward(x)
    }
}

/// `x`, or for an input of no values a fresh one of its shape: candle's
/// matmul slices their input from its start offset, which
/// in an empty view (a narrow beside a zero extent) may lie past its empty
/// storage. An empty input has no gradient to receive.
fn fresh_if_empty(x: &Tensor) -> Result<Tensor> {
    if x.elem_count() == 0 {
        x.zeros_like()
    } else {
        Ok(x.clone())
    }
}

/// What candle's convolution takes on trust: it divides by the stride and
/// the groups and subtracts the dilated kernel from the padded input
/// without checks, so a zero there, groups that do not divide the output
/// channels or an input smaller than the kernel panic (or wrap to a huge
/// allocation) inside it. Ranks and channel counts it checks itself.
fn check_conv(x: &Tensor, w: &Tensor, conv: &Conv2dConfig) -> Result<()> {
    let (xd, wd) = (x.dims(), w.dims());
    let reason = if x.elem_count() == 0 || w.elem_count() == 0 {
        // candle splits both by groups into views whose offsets lie past
        // their empty storage, and reads them from there.
        Some("candle's convolution takes no input or weight of zero values")
    } else if conv.stride == 0 || conv.dilation == 0 || conv.groups == 0 {
        Some("stride, dilation and groups must be at least 1")
    } else if wd.first().is_some_and(|out| out % conv.groups != 0) {
        Some("groups must divide the output channels")
    } else if let ([.., h, w], [.., kh, kw]) = (xd, wd) {
        let fits = |i: usize, k: usize| {
            let padded = i.saturating_add(conv.padding.saturating_mul(2));
            k > 0 && conv.dilation.saturating_mul(k - 1) < padded
        };
        (xd.len() == 4 && !(fits(*h, *kh) && fits(*w, *kw))).then_some(
            "the padded input is smaller than the dilated kernel (or the kernel is empty)",
        )
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(error::layer(LayerError::Conv {
            op: "weight_norm_conv2d",
            input: xd.to_vec(),
            weight: wd.to_vec(),
            reason,
        })),
    }
}

impl StateDict for WeightNormConv2d {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        self.reparam.state_dict(prefix, out);
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
    }
}
