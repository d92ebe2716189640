//! Modulated LayerNorm and RMSNorm (adaLN, adaLN-Zero, FiLM) as candle
//! layers and ops.

use std::collections::HashMap;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use normkit::op::{AdaNormOp, ErasedOp};

use crate::error::{self, LayerError};
use crate::fused;
use crate::state::{insert, StateDict};

/// Settings of an [`AdaLayerNorm`] layer; the defaults are DiT's adaLN-Zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaLayerNormConfig {
    /// Added to the variance (mean square for RMSNorm). DiT: `1e-6`.
    pub eps: f64,
    /// `false`: LayerNorm; `true`: RMSNorm. Default: `false`.
    pub rms: bool,
    /// Learnable `weight` (and, for LayerNorm, `bias`) of the norm itself,
    /// under the modulation. DiT: `false`.
    pub elementwise_affine: bool,
    /// Produce a third chunk, the gate `[N, d_model]` of DiT's residual
    /// branch. Default: `false`.
    pub gate: bool,
    /// adaLN-Zero: the modulation's weight and bias start at zero, so the
    /// layer starts as the plain norm (and the gate at zero). `false`
    /// initializes the modulation as `candle_nn::linear` does. Default:
    /// `true`.
    pub zero_init: bool,
}

impl Default for AdaLayerNormConfig {
    fn default() -> Self {
        AdaLayerNormConfig {
            eps: 1e-6,
            rms: false,
            elementwise_affine: false,
            gate: false,
            zero_init: true,
        }
    }
}

/// What [`AdaLayerNorm::forward`] returns.
#[derive(Debug, Clone)]
pub struct AdaLayerNormOutput {
    /// The modulated norm, shaped like the input.
    pub y: Tensor,
    /// The gate `[N, d_model]`, when the layer has one: DiT multiplies the
    /// residual branch's output by it (`x + gate · branch(y)`, the gate
    /// broadcast over the positions).
    pub gate: Option<Tensor>,
}

/// A LayerNorm or RMSNorm modulated per sample by a conditioning vector:
/// adaLN of DiT (Peebles & Xie, 2023), with adaLN-Zero's initialization,
/// and FiLM (Perez et al., 2018).
///
/// ```text
/// (shift, scale[, gate]) = chunk(modulation(cond))
/// y = norm(x) · (1 + scale[n]) + shift[n]
/// ```
///
/// where
/// - `modulation` is a linear map `d_cond → k · d_model` (`k` = 3 with a
///   gate, else 2), chunked along its output in DiT's order shift, scale,
///   gate. An activation on `cond` (DiT applies SiLU) is the caller's;
/// - `norm` is LayerNorm (`(x - E[x]) / sqrt(Var[x] + eps) · weight + bias`,
///   biased variance) or RMSNorm (`x / sqrt(mean(x²) + eps) · weight`) over
///   the last dimension, with `weight`, `bias` only when
///   `elementwise_affine`;
/// - `n` is the sample (first dimension) a row belongs to: `scale` and
///   `shift` are broadcast over every dimension between the first and the
///   last.
///
/// With `zero_init`, the modulation outputs zeros at first: the layer is
/// the plain norm and the gate is zero, and the modulation still receives
/// its gradient. The norm and its modulation run as one fused op whose
/// backward writes the gradients of the input, the norm's parameters and
/// `scale`, `shift` at once; [`ada_layer_norm_op`] and [`ada_rms_norm_op`]
/// are that op for scale and shift from any source.
///
/// Parameters: `modulation.weight` `[k · d_model, d_cond]`,
/// `modulation.bias` `[k · d_model]`, and `weight`, `bias` `[d_model]`.
///
/// # Shapes
/// - `x`, `y`: `[N, *, d_model]`, rank ≥ 2;
/// - `cond`: `[N, d_cond]`; `gate`: `[N, d_model]`.
#[derive(Debug, Clone)]
pub struct AdaLayerNorm {
    d_model: usize,
    d_cond: usize,
    modulation: Linear,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    config: AdaLayerNormConfig,
}

/// Creates an [`AdaLayerNorm`] normalizing `d_model` features under a
/// `d_cond`-dimensional condition, loading or initializing its tensors
/// through `vb` (modulation: zeros with `zero_init`, else
/// `candle_nn::linear`'s; norm weight 1, bias 0).
pub fn ada_layer_norm(
    d_model: usize,
    d_cond: usize,
    config: AdaLayerNormConfig,
    vb: VarBuilder,
) -> Result<AdaLayerNorm> {
    let chunks = if config.gate { 3 } else { 2 };
    let modulation = if config.zero_init {
        let m = vb.pp("modulation");
        let w = m.get_with_hints((chunks * d_model, d_cond), "weight", Init::Const(0.0))?;
        let b = m.get_with_hints(chunks * d_model, "bias", Init::Const(0.0))?;
        Linear::new(w, Some(b))
    } else {
        candle_nn::linear(d_cond, chunks * d_model, vb.pp("modulation"))?
    };
    let weight = if config.elementwise_affine {
        Some(vb.get_with_hints(d_model, "weight", Init::Const(1.0))?)
    } else {
        None
    };
    let bias = if config.elementwise_affine && !config.rms {
        Some(vb.get_with_hints(d_model, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(AdaLayerNorm {
        d_model,
        d_cond,
        modulation,
        weight,
        bias,
        config,
    })
}

impl AdaLayerNorm {
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    pub fn d_cond(&self) -> usize {
        self.d_cond
    }

    pub fn config(&self) -> &AdaLayerNormConfig {
        &self.config
    }

    /// The linear map from the condition to (shift, scale[, gate]).
    pub fn modulation(&self) -> &Linear {
        &self.modulation
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Normalizes `x` and modulates it with the shift, scale (and gate)
    /// computed from `cond`, see [`AdaLayerNorm`].
    pub fn forward(&self, x: &Tensor, cond: &Tensor) -> Result<AdaLayerNormOutput> {
        // The op's own checks of `x` first: the rank gives `N`, which `cond`
        // must match.
        let op = self.op();
        op.signature_erased(x.dims()).map_err(error::kernel)?;
        let n = x.dims()[0];
        if cond.dims() != [n, self.d_cond] {
            return Err(error::layer(LayerError::ParamShape {
                op: op.name_erased(),
                name: "cond",
                expected: vec![n, self.d_cond],
                got: cond.dims().to_vec(),
            }));
        }
        let chunks = self.modulation.forward(cond)?;
        let d = self.d_model;
        let shift = chunks.narrow(1, 0, d)?;
        let scale = chunks.narrow(1, d, d)?;
        let gate = if self.config.gate {
            Some(chunks.narrow(1, 2 * d, d)?)
        } else {
            None
        };
        let y = self.modulate(x, &scale, &shift)?;
        Ok(AdaLayerNormOutput { y, gate })
    }

    /// The layer's norm modulated by `scale` and `shift` given directly
    /// (FiLM from any source), each `[N, d_model]`:
    /// `y = norm(x) · (1 + scale[n]) + shift[n]`. The layer's modulation map
    /// is not used.
    pub fn modulate(&self, x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
        let norm = (self.weight.as_ref(), self.bias.as_ref());
        apply(self.op(), x, (scale, shift), norm)
    }

    fn op(&self) -> AdaNormOp {
        AdaNormOp {
            normalized_shape: vec![self.d_model],
            eps: self.config.eps as f32,
            rms: self.config.rms,
            weight: self.weight.is_some(),
            bias: self.bias.is_some(),
        }
    }
}

impl StateDict for AdaLayerNorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        insert(out, prefix, "modulation.weight", self.modulation.weight());
        if let Some(b) = self.modulation.bias() {
            insert(out, prefix, "modulation.bias", b);
        }
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
    }
}

/// Functional modulated LayerNorm over the trailing `normalized_shape` of
/// `x`, as one fused op with a fused backward:
///
/// ```text
/// y = LN(x; weight, bias, eps) · (1 + scale[n]) + shift[n]
/// ```
///
/// where `n` is the sample (first dimension) of each row and `LN` is
/// [`crate::layer_norm_op`]'s LayerNorm. Gradients reach `x`, `scale`,
/// `shift`, `weight` and `bias`.
///
/// # Shapes
/// - `x`, `y`: `[N, *, *normalized_shape]`, at least one dimension before
///   `normalized_shape`;
/// - `scale`, `shift`: `[N, D]` or `[N, *normalized_shape]`, `D` the
///   product of `normalized_shape`;
/// - `weight`, `bias`: `normalized_shape`.
pub fn ada_layer_norm_op(
    x: &Tensor,
    normalized_shape: &[usize],
    scale: &Tensor,
    shift: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let op = AdaNormOp {
        normalized_shape: normalized_shape.to_vec(),
        eps: eps as f32,
        rms: false,
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    apply(op, x, (scale, shift), (weight, bias))
}

/// Functional modulated RMSNorm: [`ada_layer_norm_op`] with RMSNorm
/// (`x / sqrt(mean(x²) + eps) · weight`) as the norm and no bias.
///
/// # Shapes
/// As [`ada_layer_norm_op`].
pub fn ada_rms_norm_op(
    x: &Tensor,
    normalized_shape: &[usize],
    scale: &Tensor,
    shift: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let op = AdaNormOp {
        normalized_shape: normalized_shape.to_vec(),
        eps: eps as f32,
        rms: true,
        weight: weight.is_some(),
        bias: false,
    };
    apply(op, x, (scale, shift), (weight, None))
}

/// Runs `op` with the modulation's shape checked: packing flattens `scale`
/// and `shift`, so the op sees only their lengths.
fn apply(
    op: AdaNormOp,
    x: &Tensor,
    (scale, shift): (&Tensor, &Tensor),
    (weight, bias): (Option<&Tensor>, Option<&Tensor>),
) -> Result<Tensor> {
    if let Some(&n) = x.dims().first() {
        let ns = &op.normalized_shape;
        let d: usize = ns.iter().product();
        for (name, t) in [("scale", scale), ("shift", shift)] {
            let dims = t.dims();
            if dims != [n, d] && (dims.first() != Some(&n) || &dims[1..] != ns.as_slice()) {
                let mut expected = vec![n];
                expected.extend_from_slice(ns);
                return Err(error::layer(LayerError::ParamShape {
                    op: op.name_erased(),
                    name,
                    expected,
                    got: dims.to_vec(),
                }));
            }
        }
    }
    let params: Vec<&Tensor> = weight
        .into_iter()
        .chain(bias)
        .chain([scale, shift])
        .collect();
    fused::apply(op, x, &params)
}
