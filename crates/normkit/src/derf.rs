//! Dynamic erf.

use crate::elem::Elem;
use crate::erf::{erf, exp_neg_sq, TWO_OVER_SQRT_PI};
use crate::error::Result;
use crate::layout::{Affine, ChannelAxis, Grads, RunningStats};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Param, Running,
    Signature,
};
use crate::pointwise::{self, Pointwise};
use crate::simd::Isa;

const OP: &str = "derf";

/// `erf(alpha · x + shift)`, the argument rounded once (a multiply-add).
struct Erf {
    alpha: f32,
    shift: f32,
}

impl Erf {
    #[inline(always)]
    fn arg<S: Isa>(&self, s: S, x: S::V) -> S::V {
        s.fma(s.splat(self.alpha), x, s.splat(self.shift))
    }
}

impl Pointwise for Erf {
    #[inline(always)]
    fn value<S: Isa>(&self, s: S, x: S::V) -> S::V {
        erf(s, self.arg(s, x))
    }

    /// `dt = g · 2/√π · e^(-u²)`; `dx = dt · alpha`, and `dt · x`, `dt`
    /// sum to `dalpha`, `dshift`.
    #[inline(always)]
    fn grad<S: Isa>(&self, s: S, g: S::V, x: S::V) -> (S::V, [S::V; 2], S::V) {
        let u = self.arg(s, x);
        let slope = s.mul(s.splat(TWO_OVER_SQRT_PI), exp_neg_sq(s, u));
        let dt = s.mul(g, slope);
        (
            s.mul(dt, s.splat(self.alpha)),
            [s.mul(dt, x), dt],
            erf(s, u),
        )
    }
}

/// Dynamic erf (Chen, Lu, Zhu, Sun & Liu, 2025, "Stronger
/// Normalization-Free Transformers", arXiv 2512.10938): an elementwise
/// replacement for LayerNorm, DyT with the Gaussian error function and a
/// learnable shift.
///
/// ```text
/// y = weight · erf(alpha · x + shift) + bias
/// ```
///
/// where
/// - `alpha` and `shift` are learnable scalars;
/// - `weight`, `bias` are optional and per channel (1 and 0 when absent);
/// - `alpha · x + shift` is rounded once, and erf is computed in `f32`
///   within 1.5 ulp (`crate::erf`, see `docs/derf.md`).
///
/// # Shapes
/// - `x`, `y`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2);
/// - `weight`, `bias`: `[C]`.
pub fn derf_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    alpha: f32,
    shift: f32,
    affine: Affine<'_>,
    channel_axis: ChannelAxis,
) -> Result<()> {
    let f = Erf { alpha, shift };
    pointwise::forward(OP, &f, y, x, shape, affine, channel_axis)
}

/// The gradients of Derf's scalar parameters, which [`derf_backward`]
/// returns (the per-channel ones go into its [`Grads`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DerfScalarGrads {
    pub dalpha: f32,
    pub dshift: f32,
}

/// Backward of [`derf_forward`]: gradients of `sum(y · dy)`. With
/// `u = alpha · x + shift` and `erf'(u) = 2/√π · e^(-u²)`:
///
/// ```text
/// dx      = dy · weight · erf'(u) · alpha
/// dalpha  = Σ dy · weight · erf'(u) · x
/// dshift  = Σ dy · weight · erf'(u)
/// dweight = Σ dy · erf(u)        dbias = Σ dy      (per channel)
/// ```
#[allow(clippy::too_many_arguments)]
pub fn derf_backward<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    alpha: f32,
    shift: f32,
    weight: Option<&[f32]>,
    channel_axis: ChannelAxis,
) -> Result<DerfScalarGrads> {
    let f = Erf { alpha, shift };
    let [dalpha, dshift] = pointwise::backward(OP, &f, grads, dy, x, shape, weight, channel_axis)?;
    Ok(DerfScalarGrads {
        dalpha: dalpha as f32,
        dshift: dshift as f32,
    })
}

/// [`derf_forward`] and [`derf_backward`] as a [`NormOp`]. The packed
/// parameters start with the scalars `alpha` and `shift`, one value each
/// (as PyTorch-style modules keep them), then `weight`? and `bias`?.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DerfOp {
    pub channel_axis: ChannelAxis,
    pub weight: bool,
    pub bias: bool,
}

impl NormOp for DerfOp {
    type Saved = ();

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = pointwise::plan(OP, shape, self.channel_axis)?;
        let scalar = |name| Param { name, len: 1 };
        let mut params = vec![scalar("alpha"), scalar("shift")];
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
        let affine = affine_of(sig, params);
        derf_forward(y, x, shape, params[0], params[1], affine, self.channel_axis)
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
        let weight = affine_of(sig, params).weight;
        let (grads, mut rest) = affine_grads(sig, grads);
        let (alpha, shift, axis) = (params[0], params[1], self.channel_axis);
        let d = derf_backward(grads, dy, x, shape, alpha, shift, weight, axis)?;
        for (name, slot) in rest.iter_mut() {
            match *name {
                "alpha" => slot[0] = d.dalpha,
                "shift" => slot[0] = d.dshift,
                _ => {}
            }
        }
        Ok(())
    }
}
