//! QK-norm as one burn layer: the norms of attention's queries and keys.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::{check_eps, check_positive, Result};
use crate::functional;

/// Which norm a [`QkNorm`] applies.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum QkNormKind {
    /// RMSNorm with a weight (Qwen3, OLMo 2).
    Rms,
    /// LayerNorm with a weight and a bias.
    Layer,
    /// Gemma's RMSNorm: the weight is stored as an offset from one, so it
    /// starts at zero and scales by `1 + weight` (Gemma 3).
    UnitOffsetRms,
}

/// What each norm of a [`QkNorm`] normalizes over.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum QkScope {
    /// Each head's `head_dim` values on their own, one weight shared by
    /// the heads (Qwen3, Gemma 3).
    Head,
    /// A token's whole projection, `heads · head_dim` values (OLMo 2).
    Projection,
}

impl From<QkScope> for normkit::op::QkScope {
    fn from(scope: QkScope) -> Self {
        match scope {
            QkScope::Head => normkit::op::QkScope::Head,
            QkScope::Projection => normkit::op::QkScope::Projection,
        }
    }
}

/// Configuration of a [`QkNorm`]; the defaults are Qwen3's (RMSNorm over
/// each head, eps `1e-6`).
#[derive(Config, Debug)]
pub struct QkNormConfig {
    /// Query heads.
    pub q_heads: usize,
    /// Key heads (fewer than `q_heads` with grouped queries).
    pub k_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    #[config(default = "QkNormKind::Rms")]
    pub kind: QkNormKind,
    #[config(default = "QkScope::Head")]
    pub scope: QkScope,
    #[config(default = 1e-6)]
    pub epsilon: f64,
}

/// One norm's parameters: `weight` (and `bias` for LayerNorm), each of the
/// scope's size.
#[derive(Module, Debug)]
pub struct QkNormParams {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
}

/// QK-norm (Dehghani et al., 2023; as in Qwen3, Gemma 3, OLMo 2): queries
/// and keys normalized, each by its own norm, before their dot products,
/// so the attention logits cannot grow without bound.
///
/// ```text
/// q ← norm_q(q),  k ← norm_k(k)
/// ```
///
/// where each norm is [`QkNormKind`]'s over [`QkScope`]'s trailing
/// dimensions. Record names, as the models' PyTorch code has them:
/// `q_norm.weight`, `k_norm.weight` (and `.bias` for LayerNorm).
///
/// # Shapes
/// - `q`: `[batch, tokens, q_heads, head_dim]`, `k`: `[batch, tokens,
///   k_heads, head_dim]` (per head, any layout ending in `head_dim`);
/// - outputs: as the inputs.
#[derive(Module, Debug)]
pub struct QkNorm {
    pub q_norm: QkNormParams,
    pub k_norm: QkNormParams,
    #[module(skip)]
    pub kind: QkNormKind,
    #[module(skip)]
    pub q_shape: Vec<usize>,
    #[module(skip)]
    pub k_shape: Vec<usize>,
    #[module(skip)]
    pub epsilon: f64,
}

impl QkNormConfig {
    /// Builds the layer: weights of ones (zeros for Gemma's offset),
    /// biases of zeros.
    ///
    /// # Errors
    /// A zero head count or `head_dim`, or an eps that is negative or not
    /// finite in f32.
    pub fn try_init(&self, device: &Device) -> Result<QkNorm> {
        check_positive("QkNorm", "q_heads", self.q_heads)?;
        check_positive("QkNorm", "k_heads", self.k_heads)?;
        check_positive("QkNorm", "head_dim", self.head_dim)?;
        check_eps("QkNorm", self.epsilon)?;
        let scope = normkit::op::QkScope::from(self.scope);
        let q_shape = scope.normalized_shape(self.q_heads, self.head_dim);
        let k_shape = scope.normalized_shape(self.k_heads, self.head_dim);
        let params = |shape: &[usize]| {
            let n = shape.iter().product::<usize>();
            let w = match self.kind {
                QkNormKind::UnitOffsetRms => 0.0,
                QkNormKind::Rms | QkNormKind::Layer => 1.0,
            };
            QkNormParams {
                weight: Param::from_tensor(Tensor::full([n], w, device)),
                bias: (self.kind == QkNormKind::Layer)
                    .then(|| Param::from_tensor(Tensor::zeros([n], device))),
            }
        };
        Ok(QkNorm {
            q_norm: params(&q_shape),
            k_norm: params(&k_shape),
            kind: self.kind,
            q_shape,
            k_shape,
            epsilon: self.epsilon,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// Where [`try_init`](Self::try_init) returns an error.
    pub fn init(&self, device: &Device) -> QkNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl QkNorm {
    /// The queries and keys, normalized.
    ///
    /// # Errors
    /// An input that does not end with its norm's dimensions.
    pub fn try_forward<const D: usize>(
        &self,
        q: Tensor<D>,
        k: Tensor<D>,
    ) -> Result<(Tensor<D>, Tensor<D>)> {
        Ok((
            self.norm(q, &self.q_shape, &self.q_norm)?,
            self.norm(k, &self.k_shape, &self.k_norm)?,
        ))
    }

    /// The queries and keys, normalized.
    ///
    /// # Panics
    /// Where [`try_forward`](Self::try_forward) returns an error.
    pub fn forward<const D: usize>(&self, q: Tensor<D>, k: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        self.try_forward(q, k).unwrap_or_else(|e| panic!("{e}"))
    }

    fn norm<const D: usize>(
        &self,
        x: Tensor<D>,
        shape: &[usize],
        p: &QkNormParams,
    ) -> Result<Tensor<D>> {
        let eps = self.epsilon as f32;
        let weight = p.weight.val();
        match self.kind {
            QkNormKind::Rms => functional::rms_norm(x, shape, Some(weight), eps),
            // `1 + weight` in the graph: its gradient is the norm's
            // gradient of its scale.
            QkNormKind::UnitOffsetRms => {
                functional::rms_norm(x, shape, Some(weight.add_scalar(1.0)), eps)
            }
            QkNormKind::Layer => {
                let bias = p.bias.as_ref().map(Param::val);
                functional::layer_norm(x, shape, Some(weight), bias, eps)
            }
        }
    }
}
