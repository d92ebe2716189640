//! The adaLN layer: LayerNorm or RMSNorm modulated by a conditioning
//! vector (adaLN, adaLN-Zero, FiLM).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use normkit::NormError;

use crate::error::{check_eps, check_positive, Error, Result};
use crate::functional;

/// Configuration of an [`AdaLayerNorm`] layer, with DiT's defaults.
#[derive(Config, Debug)]
pub struct AdaLayerNormConfig {
    /// Size of the normalized (last) dimension of the input.
    pub d_model: usize,
    /// Size of the conditioning vector.
    pub d_cond: usize,
    /// Added to the variance (mean square for RMSNorm) inside the square
    /// root. DiT: `1e-6`.
    #[config(default = 1e-6)]
    pub eps: f64,
    /// Normalize with RMSNorm instead of LayerNorm.
    #[config(default = false)]
    pub rms: bool,
    /// Learnable `weight` (ones) and, for LayerNorm, `bias` (zeros) of the
    /// norm itself. DiT: `elementwise_affine=False`.
    #[config(default = false)]
    pub elementwise_affine: bool,
    /// Also produce a gate for the residual branch (DiT's `gate_msa`,
    /// `gate_mlp`).
    #[config(default = false)]
    pub gate: bool,
    /// adaLN-Zero: start the modulation's weight and bias at zero, so that
    /// the layer starts as the plain norm with a zero gate. Otherwise
    /// burn's default `Linear` initialization.
    #[config(default = true)]
    pub zero_init: bool,
}

/// Adaptive Layer Normalization (adaLN of Peebles & Xie, 2023, "Scalable
/// Diffusion Models with Transformers"; FiLM of Perez et al., 2018):
///
/// ```text
/// (shift, scale[, gate]) = modulation(cond)
/// y = norm(x) · (1 + scale[n]) + shift[n]
/// ```
///
/// where
/// - `norm` is LayerNorm `(x - E[x]) / sqrt(Var[x] + eps) · weight + bias`
///   or, with `rms`, RMSNorm `x / sqrt(mean(x²) + eps) · weight`, over the
///   last dimension, `weight`/`bias` present with `elementwise_affine`;
/// - `modulation` is one `Linear` `d_cond → k · d_model` whose output is
///   split, in DiT's order, into `shift`, `scale` and (`k = 3`, with
///   `gate`) `gate`, each `[N, d_model]`;
/// - `n` is the sample a row of `x` belongs to;
/// - with adaLN-Zero (`zero_init`) the modulation starts at zero: `y` is
///   the plain norm and the gate is zero, so a gated residual block
///   `x + gate · block(y)` starts as the identity.
///
/// The gate is returned, not applied: it scales the block's output, not
/// the norm's. [`functional::ada_layer_norm`] and
/// [`functional::ada_rms_norm`] take `scale` and `shift` from any source.
///
/// # Shapes
/// - `x`, output: `[N, *, d_model]`; `cond`: `[N, d_cond]`;
/// - gate: `[N, d_model]`;
/// - `modulation.weight`: `[d_cond, k · d_model]`, `modulation.bias`:
///   `[k · d_model]`; `weight`, `bias`: `[d_model]`.
#[derive(Module, Debug)]
pub struct AdaLayerNorm {
    /// The map from the conditioning vector to (shift, scale[, gate]).
    pub modulation: Linear,
    /// Per-element scale of the norm, `None` without affine parameters.
    pub weight: Option<Param<Tensor<1>>>,
    /// Per-element shift of the norm, `None` without affine parameters or
    /// with RMSNorm.
    pub bias: Option<Param<Tensor<1>>>,
    /// Size of the normalized dimension.
    pub d_model: usize,
    /// Size of the conditioning vector.
    pub d_cond: usize,
    /// Floor inside the square root.
    pub eps: f64,
    /// RMSNorm instead of LayerNorm.
    pub rms: bool,
    /// Whether the modulation also produces a gate.
    pub gate: bool,
}

/// What [`AdaLayerNorm::forward`] returns.
#[derive(Debug, Clone)]
pub struct AdaLayerNormOutput<const D: usize> {
    /// The modulated norm of the input, shaped like it.
    pub output: Tensor<D>,
    /// `[N, d_model]`, present when the layer has a gate: multiply the
    /// residual branch's output by it (broadcast over the middle
    /// dimensions).
    pub gate: Option<Tensor<2>>,
}

impl AdaLayerNormConfig {
    /// Builds the layer: the modulation zero (adaLN-Zero) or burn's default
    /// `Linear` initialization, the norm's weight ones and bias zeros.
    ///
    /// # Errors
    /// Zero `d_model` or `d_cond`, a negative or non-finite eps.
    pub fn try_init(&self, device: &Device) -> Result<AdaLayerNorm> {
        const OP: &str = "AdaLayerNorm";
        check_positive(OP, "d_model", self.d_model)?;
        check_positive(OP, "d_cond", self.d_cond)?;
        check_eps(OP, self.eps)?;
        let chunks = if self.gate { 3 } else { 2 };
        let mut linear = LinearConfig::new(self.d_cond, chunks * self.d_model);
        if self.zero_init {
            linear = linear.with_initializer(Initializer::Zeros);
        }
        let d = self.d_model;
        let param = |v: f32| Param::from_tensor(Tensor::full([d], v, device));
        Ok(AdaLayerNorm {
            modulation: linear.init(device),
            weight: self.elementwise_affine.then(|| param(1.0)),
            bias: (self.elementwise_affine && !self.rms).then(|| param(0.0)),
            d_model: d,
            d_cond: self.d_cond,
            eps: self.eps,
            rms: self.rms,
            gate: self.gate,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> AdaLayerNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl AdaLayerNorm {
    /// Normalizes `x` and modulates it by `cond`; returns the gate too when
    /// the layer has one.
    ///
    /// # Errors
    /// `x` of rank below 2 or whose last dimension is not `d_model`, or
    /// `cond` not `[N, d_cond]`.
    pub fn try_forward<const D: usize>(
        &self,
        x: Tensor<D>,
        cond: Tensor<2>,
    ) -> Result<AdaLayerNormOutput<D>> {
        const OP: &str = "AdaLayerNorm";
        let shape = x.dims();
        if D < 2 {
            return Err(NormError::Rank {
                op: OP,
                shape: shape.to_vec(),
                min_rank: 2,
            }
            .into());
        }
        if shape[D - 1] != self.d_model {
            return Err(Error::Channels {
                op: OP,
                expected: self.d_model,
                got: shape[D - 1],
                shape: shape.to_vec(),
            });
        }
        if shape.iter().product::<usize>() == 0 {
            // Refused before the modulation runs on an empty batch.
            return Err(NormError::Empty {
                op: OP,
                shape: shape.to_vec(),
            }
            .into());
        }
        let [n, d_cond] = cond.dims();
        if n != shape[0] || d_cond != self.d_cond {
            return Err(NormError::Length {
                op: OP,
                name: "cond",
                expected: shape[0] * self.d_cond,
                got: n * d_cond,
                shape: shape.to_vec(),
            }
            .into());
        }
        let d = self.d_model;
        let m = self.modulation.forward(cond);
        let shift = m.clone().narrow(1, 0, d);
        let scale = m.clone().narrow(1, d, d);
        let gate = self.gate.then(|| m.narrow(1, 2 * d, d));
        let weight = self.weight.as_ref().map(Param::val);
        let eps = self.eps as f32;
        let output = if self.rms {
            functional::ada_rms_norm(x, &[d], scale, shift, weight, eps)?
        } else {
            let bias = self.bias.as_ref().map(Param::val);
            functional::ada_layer_norm(x, &[d], scale, shift, weight, bias, eps)?
        };
        Ok(AdaLayerNormOutput { output, gate })
    }

    /// Normalizes `x` and modulates it by `cond`; returns the gate too when
    /// the layer has one.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, cond: Tensor<2>) -> AdaLayerNormOutput<D> {
        self.try_forward(x, cond).unwrap_or_else(|e| panic!("{e}"))
    }
}
