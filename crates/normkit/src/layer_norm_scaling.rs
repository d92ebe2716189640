//! LayerNorm Scaling: a norm's output scaled down by the square root of
//! its layer's depth.

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layer_norm::{LayerNormOp, RmsNormOp};
use crate::layout::{RunningStats, Stats};
use crate::op::{NormOp, OpGrads, Signature};

/// A norm whose output is `x̂ · weight (+ bias)`, so that scaling the
/// output is scaling its parameters: LayerNorm and RMSNorm.
pub trait DepthScalable: NormOp<Saved = Stats> {
    /// The same norm with a weight, which the scaling needs when the
    /// layer itself has none.
    fn with_weight(&self) -> Self;
}

impl DepthScalable for LayerNormOp {
    fn with_weight(&self) -> Self {
        LayerNormOp {
            weight: true,
            ..self.clone()
        }
    }
}

impl DepthScalable for RmsNormOp {
    fn with_weight(&self) -> Self {
        RmsNormOp {
            weight: true,
            ..self.clone()
        }
    }
}

/// LayerNorm Scaling (Sun, Song, Li, Yin, Zheng & Liu, 2025, "The Curse of
/// Depth in Large Language Models", arXiv 2502.05795): the norm of the
/// `layer`-th block (counted from 1) scaled by `1/√layer`, which keeps
/// the output variance of a pre-norm Transformer from growing with depth.
///
/// ```text
/// y = norm(x) / √layer = x̂ · (weight / √layer) + bias / √layer
/// ```
///
/// where `norm` is the wrapped [`LayerNormOp`] or [`RmsNormOp`] with its
/// own parameters (packed as it packs them), and `x̂` its normalized input.
/// The scaling is folded into the affine transform, so the kernels run
/// unchanged: a layer without a weight runs with `1/√layer` in its place.
/// The backward scales `dweight` and `dbias` by the same factor (`dx`
/// comes through the scaled weight).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormScaling<O> {
    pub norm: O,
    /// The block's depth `ℓ ≥ 1`.
    pub layer: usize,
}

impl<O: DepthScalable> LayerNormScaling<O> {
    /// `1/√ℓ`, rounded to `f32` once.
    fn factor(&self) -> f32 {
        (1.0 / (self.layer as f64).sqrt()) as f32
    }

    /// The norm with a weight, its signature, and its packed parameters:
    /// the layer's own times `1/√ℓ`, or `1/√ℓ` alone where it has no
    /// weight.
    ///
    /// `None` when those parameters would outnumber the values of an input
    /// of `x_len` (twice over: a weight and a bias of one row each): the
    /// input holds no row, so it is an empty batch, which has nothing to
    /// scale, or a wrong length, which the norm refuses. The norm itself
    /// then runs, and no weight of a row's length — which may be an extent
    /// no allocation holds — is built.
    fn inner(
        &self,
        sig: &Signature,
        shape: &[usize],
        params: &[f32],
        x_len: usize,
    ) -> Result<Option<Inner<O>>> {
        let op = self.norm.with_weight();
        let sig_inner = op.signature(shape)?;
        if sig_inner.packed_len() > x_len.saturating_mul(2) {
            return Ok(None);
        }
        let s = self.factor();
        let mut packed = Vec::with_capacity(sig_inner.packed_len());
        for p in &sig_inner.params {
            match sig.get(params, p.name) {
                Some(v) => packed.extend(v.iter().map(|&v| v * s)),
                None => packed.extend(std::iter::repeat_n(s, p.len)),
            }
        }
        Ok(Some(Inner {
            op,
            sig: sig_inner,
            packed,
        }))
    }
}

/// What the scaled layer runs: the norm with a weight and its parameters.
struct Inner<O> {
    op: O,
    sig: Signature,
    packed: Vec<f32>,
}

impl<O: DepthScalable> NormOp for LayerNormScaling<O> {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        self.norm.name()
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        if self.layer == 0 {
            return Err(NormError::Param {
                op: self.name(),
                name: "layer",
                domain: "at least 1 (the first block is layer 1)",
                value: 0.0,
            });
        }
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
        match self.inner(sig, shape, params, x.len())? {
            Some(inner) => inner.op.forward(y, x, shape, &inner.packed, running),
            None => self.norm.run_forward(sig, y, x, shape, params, running),
        }
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
        let Some(Inner {
            op,
            sig: sig_inner,
            packed,
        }) = self.inner(sig, shape, params, x.len())?
        else {
            return self
                .norm
                .run_backward(sig, grads, dy, x, shape, params, saved);
        };
        let Some(dparams) = grads.dparams else {
            let grads = OpGrads {
                dx: grads.dx,
                dparams: None,
            };
            return op.backward(grads, dy, x, shape, &packed, saved);
        };
        // Gradients of the scaled parameters, then by the chain rule those
        // of the layer's own: d(v · s)/dv = s.
        let mut inner_d = vec![0.0f32; sig_inner.packed_len()];
        let g = OpGrads {
            dx: grads.dx,
            dparams: Some(&mut inner_d),
        };
        op.backward(g, dy, x, shape, &packed, saved)?;
        let s = self.factor();
        for (p, out) in sig.params.iter().zip(sig.split_mut(dparams)) {
            if let Some(d) = sig_inner.get(&inner_d, p.name) {
                for (o, &d) in out.iter_mut().zip(d) {
                    *o = d * s;
                }
            }
        }
        Ok(())
    }
}
