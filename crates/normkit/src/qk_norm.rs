//! QK-norm: the norm of attention's queries and keys, and Gemma's RMSNorm
//! whose weight is stored as an offset from one.

use crate::elem::Elem;
use crate::error::Result;
use crate::layer_norm::{LayerNormOp, RmsNormOp};
use crate::layout::{RunningStats, Stats};
use crate::op::{NormOp, OpGrads, Signature};

/// What a QK-norm normalizes over, for queries or keys laid out
/// `[batch, tokens, heads, head_dim]` (the projection's output before
/// attention transposes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkScope {
    /// Each head's vector on its own, one weight of `head_dim` shared by
    /// the heads (Qwen3, Gemma 3). Any layout ending in `head_dim` works,
    /// `[batch, heads, tokens, head_dim]` too.
    Head,
    /// The whole projection of a token, `heads · head_dim` values with a
    /// weight of that many (OLMo 2).
    Projection,
}

impl QkScope {
    /// The trailing dimensions normalized over.
    pub fn normalized_shape(self, heads: usize, head_dim: usize) -> Vec<usize> {
        match self {
            QkScope::Head => vec![head_dim],
            QkScope::Projection => vec![heads, head_dim],
        }
    }
}

impl RmsNormOp {
    /// RMSNorm as a QK-norm over `scope`, with a weight; shapes are
    /// checked by the norm against `[batch, tokens, heads, head_dim]`.
    pub fn qk(scope: QkScope, heads: usize, head_dim: usize, eps: f32) -> Self {
        RmsNormOp {
            normalized_shape: scope.normalized_shape(heads, head_dim),
            eps,
            weight: true,
        }
    }
}

impl LayerNormOp {
    /// LayerNorm as a QK-norm over `scope`, with a weight and a bias.
    pub fn qk(scope: QkScope, heads: usize, head_dim: usize, eps: f32) -> Self {
        LayerNormOp {
            normalized_shape: scope.normalized_shape(heads, head_dim),
            eps,
            weight: true,
            bias: true,
        }
    }
}

/// RMSNorm with Gemma's weight: stored as an offset from one, so that a
/// weight initialized to zero is the identity scale.
///
/// ```text
/// y = x / sqrt(mean(x²) + eps) · (1 + weight)
/// ```
///
/// where the wrapped [`RmsNormOp`] gives `normalized_shape` and `eps`, and
/// `1 + weight` is rounded to `f32` once (as Gemma computes it in float32)
/// before the norm's kernels run unchanged. The gradient of `weight` is
/// the norm's gradient of its scale (`d(1 + w)/dw = 1`). Packed as the
/// norm: `weight`? (without one the layer is the plain norm).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitOffsetRmsNorm {
    pub norm: RmsNormOp,
}

impl UnitOffsetRmsNorm {
    /// The packed parameters the norm runs with: `1 + weight`.
    fn scale(params: &[f32]) -> Vec<f32> {
        params.iter().map(|&w| 1.0 + w).collect()
    }
}

impl NormOp for UnitOffsetRmsNorm {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        self.norm.name()
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        self.norm.signature(shape)
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        running: Option<RunningStats<'_>>,
    ) -> Result<Stats> {
        // The signature is the norm's own: already checked against params.
        let scale = Self::scale(params);
        self.norm.run_forward(sig, y, x, shape, &scale, running)
    }

    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> Result<()> {
        let scale = Self::scale(params);
        self.norm
            .run_backward(sig, grads, dy, x, shape, &scale, saved)
    }
}
