//! QK-norm as one candle layer: the norms of attention's queries and keys.

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::{LayerNormOp, QkScope, RmsNormOp, UnitOffsetRmsNorm};

use crate::fused;
use crate::state::{insert, StateDict};

/// Which norm a [`QkNorm`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNormKind {
    /// RMSNorm with a weight (Qwen3, OLMo 2).
    Rms,
    /// LayerNorm with a weight and a bias.
    Layer,
    /// Gemma's RMSNorm: the weight is stored as an offset from one, so it
    /// starts at zero and scales by `1 + weight` (Gemma 3).
    UnitOffsetRms,
}

/// Settings of a [`QkNorm`]. The defaults are Qwen3's: RMSNorm over each
/// head, eps `1e-6`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QkNormConfig {
    pub kind: QkNormKind,
    /// Each head on its own (Qwen3, Gemma 3) or the whole projection of a
    /// token (OLMo 2).
    pub scope: QkScope,
    pub eps: f64,
}

impl Default for QkNormConfig {
    fn default() -> Self {
        QkNormConfig {
            kind: QkNormKind::Rms,
            scope: QkScope::Head,
            eps: 1e-6,
        }
    }
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
/// dimensions: `[head_dim]` per head, or `[heads, head_dim]` for the whole
/// projection. Parameter names, as the models' PyTorch code has them:
/// `q_norm.weight`, `k_norm.weight` (and `.bias` for LayerNorm), each a
/// vector of `head_dim` values per head or `heads · head_dim` over the
/// projection.
///
/// # Shapes
/// - `q`, `k`: `[batch, tokens, heads, head_dim]` (per head, any layout
///   ending in `head_dim` works too, `[batch, heads, tokens, head_dim]`);
///   `q` and `k` may differ in heads where the scope is per head (grouped
///   queries);
/// - outputs: as the inputs.
#[derive(Debug, Clone)]
pub struct QkNorm {
    config: QkNormConfig,
    q_shape: Vec<usize>,
    k_shape: Vec<usize>,
    q: Params,
    k: Params,
}

/// One norm's parameters.
#[derive(Debug, Clone)]
struct Params {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Params {
    fn new(kind: QkNormKind, size: usize, vb: VarBuilder) -> Result<Params> {
        let weight_init = match kind {
            QkNormKind::UnitOffsetRms => 0.0,
            QkNormKind::Rms | QkNormKind::Layer => 1.0,
        };
        let weight = vb.get_with_hints(size, "weight", Init::Const(weight_init))?;
        let bias = match kind {
            QkNormKind::Layer => Some(vb.get_with_hints(size, "bias", Init::Const(0.0))?),
            QkNormKind::Rms | QkNormKind::UnitOffsetRms => None,
        };
        Ok(Params { weight, bias })
    }
}

/// Creates a [`QkNorm`] for `q_heads` query heads and `k_heads` key heads
/// of `head_dim` values, loading or initializing its tensors through `vb`
/// (`q_norm.*`, `k_norm.*`).
pub fn qk_norm(
    q_heads: usize,
    k_heads: usize,
    head_dim: usize,
    config: QkNormConfig,
    vb: VarBuilder,
) -> Result<QkNorm> {
    let q_shape = config.scope.normalized_shape(q_heads, head_dim);
    let k_shape = config.scope.normalized_shape(k_heads, head_dim);
    let size = |s: &[usize]| s.iter().product::<usize>();
    Ok(QkNorm {
        q: Params::new(config.kind, size(&q_shape), vb.pp("q_norm"))?,
        k: Params::new(config.kind, size(&k_shape), vb.pp("k_norm"))?,
        config,
        q_shape,
        k_shape,
    })
}

impl QkNorm {
    pub fn config(&self) -> QkNormConfig {
        self.config
    }

    /// The trailing dimensions the query norm normalizes over.
    pub fn q_normalized_shape(&self) -> &[usize] {
        &self.q_shape
    }

    /// The trailing dimensions the key norm normalizes over.
    pub fn k_normalized_shape(&self) -> &[usize] {
        &self.k_shape
    }

    /// The queries and keys, normalized.
    pub fn forward(&self, q: &Tensor, k: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.norm(q, &self.q_shape, &self.q)?,
            self.norm(k, &self.k_shape, &self.k)?,
        ))
    }

    fn norm(&self, x: &Tensor, shape: &[usize], p: &Params) -> Result<Tensor> {
        let eps = self.config.eps as f32;
        let rms = RmsNormOp {
            normalized_shape: shape.to_vec(),
            eps,
            weight: true,
        };
        match self.config.kind {
            QkNormKind::Rms => fused::apply(rms, x, &[&p.weight]),
            QkNormKind::UnitOffsetRms => {
                fused::apply(UnitOffsetRmsNorm { norm: rms }, x, &[&p.weight])
            }
            QkNormKind::Layer => {
                let op = LayerNormOp {
                    normalized_shape: shape.to_vec(),
                    eps,
                    weight: true,
                    bias: p.bias.is_some(),
                };
                let params: Vec<&Tensor> = std::iter::once(&p.weight).chain(&p.bias).collect();
                fused::apply(op, x, &params)
            }
        }
    }
}

impl StateDict for QkNorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        for (name, p) in [("q_norm", &self.q), ("k_norm", &self.k)] {
            let mut inner = HashMap::new();
            insert(&mut inner, name, "weight", &p.weight);
            if let Some(b) = &p.bias {
                insert(&mut inner, name, "bias", b);
            }
            for (key, t) in inner {
                insert(out, prefix, &key, &t);
            }
        }
    }
}
