//! Dynamic Tanh.

use crate::elem::Elem;
use crate::error::Result;
use crate::layout::{Affine, ChannelAxis, Grads, RunningStats};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Param, Running,
    Signature,
};
use crate::pointwise::{self, Pointwise};
use crate::simd::Isa;
use crate::tanh::{tanh, tanh_sech2};

const OP: &str = "dyt";

/// `tanh(alpha · x)`.
struct Tanh {
    alpha: f32,
}

impl Pointwise for Tanh {
    #[inline(always)]
    fn value<S: Isa>(&self, s: S, x: S::V) -> S::V {
        tanh(s, s.mul(s.splat(self.alpha), x))
    }

    /// `dt = g · (1 - t²)` from [`tanh_sech2`], so it stays accurate as
    /// `|t|` nears 1; `dx = dt · alpha`, and `dt · x` sums to `dalpha`.
    #[inline(always)]
    fn grad<S: Isa>(&self, s: S, g: S::V, x: S::V) -> (S::V, [S::V; 2], S::V) {
        let alpha = s.splat(self.alpha);
        let (t, sech2) = tanh_sech2(s, s.mul(alpha, x));
        let dt = s.mul(g, sech2);
        (s.mul(dt, alpha), [s.mul(dt, x), s.splat(0.0)], t)
    }
}

/// Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025, "Transformers without
/// Normalization"): an elementwise replacement for LayerNorm.
///
/// ```text
/// y = weight · tanh(alpha · x) + bias
/// ```
///
/// where
/// - `alpha` is one learnable scalar (the paper initializes it to 0.5);
/// - `weight`, `bias` are optional and per channel (initialized to 1, 0);
/// - tanh is computed in `f32` within 3 ulp (see `tanh.rs`).
///
/// # Shapes
/// - `x`, `y`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2);
/// - `weight`, `bias`: `[C]`.
pub fn dyt_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    alpha: f32,
    affine: Affine<'_>,
    channel_axis: ChannelAxis,
) -> Result<()> {
    let f = Tanh { alpha };
    pointwise::forward(OP, &f, y, x, shape, affine, channel_axis)
}

/// Backward of [`dyt_forward`]; returns `dalpha`. With `t = tanh(alpha·x)`:
///
/// ```text
/// dx      = dy · weight · (1 - t²) · alpha
/// dalpha  = Σ dy · weight · (1 - t²) · x
/// dweight = Σ dy · t        dbias = Σ dy      (per channel)
/// ```
pub fn dyt_backward<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    alpha: f32,
    weight: Option<&[f32]>,
    channel_axis: ChannelAxis,
) -> Result<f32> {
    let f = Tanh { alpha };
    let [dalpha, _] = pointwise::backward(OP, &f, grads, dy, x, shape, weight, channel_axis)?;
    Ok(dalpha as f32)
}

/// [`dyt_forward`] and [`dyt_backward`] as a [`NormOp`]. The packed
/// parameters start with the scalar `alpha` (PyTorch-style modules keep it
/// as a one-element parameter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DytOp {
    pub channel_axis: ChannelAxis,
    pub weight: bool,
    pub bias: bool,
}

impl NormOp for DytOp {
    type Saved = ();

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = pointwise::plan(OP, shape, self.channel_axis)?;
        let mut params = vec![Param {
            name: "alpha",
            len: 1,
        }];
        params.extend(affine_params(self.weight, self.bias, p.geo.c));
        checked_signature(self.name(), shape, params, Running::None)
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _running: Option<RunningStats<'_>>,
    ) -> Result<()> {
        let alpha = params[0];
        dyt_forward(
            y,
            x,
            shape,
            alpha,
            affine_of(sig, params),
            self.channel_axis,
        )
    }

    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _saved: &(),
    ) -> Result<()> {
        let (alpha, weight) = (params[0], affine_of(sig, params).weight);
        let (grads, mut rest) = affine_grads(sig, grads);
        let dalpha = dyt_backward(grads, dy, x, shape, alpha, weight, self.channel_axis)?;
        if let Some((_, slot)) = rest.iter_mut().find(|(name, _)| *name == "alpha") {
            slot[0] = dalpha;
        }
        Ok(())
    }
}
