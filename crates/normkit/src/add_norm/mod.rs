//! Residual add fused with LayerNorm or RMSNorm, as a pre-norm
//! transformer's residual stream uses them.

mod backward;
mod forward;

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layer_norm::plan;
use crate::layout::{check_affine, check_grads, check_len, Affine, Grads, Stats};
use crate::normalize::Plan;
use crate::op::{
    affine_grads, affine_of, affine_params, OpGrads, ResidualNormOp, Running, Signature,
};

/// The arguments every forward call checks, for one op.
#[allow(clippy::too_many_arguments)]
fn forward<T: Elem>(
    op: &'static str,
    centered: bool,
    y: &mut [T],
    sum: &mut [T],
    x: &[T],
    residual: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    affine: Affine<'_>,
    eps: f32,
) -> Result<Stats> {
    let p = plan(op, shape, normalized_shape, eps, centered)?;
    p.check_forward(op, y.len(), x.len(), affine, shape)?;
    check_len(op, "residual", residual.len(), p.geo.len(), shape)?;
    check_len(op, "sum", sum.len(), p.geo.len(), shape)?;
    Ok(forward::forward(forward::Forward {
        y,
        sum,
        x,
        residual,
        d: p.geo.c,
        weight: affine.weight,
        bias: affine.bias,
        eps,
        centered,
    }))
}

/// The arguments every backward call checks, for one op.
#[allow(clippy::too_many_arguments)]
fn backward<T: Elem>(
    op: &'static str,
    centered: bool,
    grads: Grads<'_, T>,
    dy: &[T],
    dsum: Option<&[T]>,
    sum: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
) -> Result<()> {
    // eps does not enter the backward pass: rstd already holds it.
    let p: Plan = plan(op, shape, normalized_shape, 0.0, centered)?;
    let (len, d, rows) = (p.geo.len(), p.geo.c, p.num_groups());
    check_len(op, "sum", sum.len(), len, shape)?;
    check_len(op, "dy", dy.len(), len, shape)?;
    if let Some(g) = dsum {
        check_len(op, "dsum", g.len(), len, shape)?;
    }
    if !centered && grads.dbias.is_some() {
        return Err(NormError::NoSuchParameter { op, name: "dbias" });
    }
    check_grads(op, &grads, len, d, shape)?;
    check_affine(op, Affine { weight, bias: None }, d, shape)?;
    if centered {
        check_len(op, "mean", stats.mean.len(), rows, shape)?;
    }
    check_len(op, "rstd", stats.rstd.len(), rows, shape)?;
    let b = backward::Backward {
        dy,
        dsum,
        sum,
        d,
        weight,
        stats,
        centered,
    };
    backward::backward(b, grads);
    Ok(())
}

/// Residual add fused with Layer Normalization: what a pre-norm
/// transformer block computes at its input, in one pass over memory.
///
/// ```text
/// sum = x + residual
/// y   = (sum - E[sum]) / sqrt(Var[sum] + eps) · weight + bias
/// ```
///
/// where
/// - `sum` is computed in `f32` and rounded to `T` once, and the norm
///   normalizes that rounded `sum`: exactly what PyTorch's
///   `layer_norm(x + residual)` computes in `T` (`y` is bit for bit
///   [`crate::layer_norm_forward`] of `sum`);
/// - `E`, `Var` (biased) are over the trailing `normalized_shape`
///   dimensions of each row; `weight`, `bias` are optional, shaped like
///   `normalized_shape`.
///
/// Both outputs are written: `sum` is the residual stream going on past
/// the norm. Memory sees two reads and two writes, against three reads and
/// two writes for an add followed by a norm.
///
/// # Shapes
/// - `x`, `residual`, `y`, `sum`: `[*, *normalized_shape]`;
/// - `weight`, `bias`: `normalized_shape` (flattened);
/// - returned [`Stats`]: one mean and rstd per row, for the backward.
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm_forward<T: Elem>(
    y: &mut [T],
    sum: &mut [T],
    x: &[T],
    residual: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    affine: Affine<'_>,
    eps: f32,
) -> Result<Stats> {
    const OP: &str = "add_layer_norm";
    forward(
        OP,
        true,
        y,
        sum,
        x,
        residual,
        shape,
        normalized_shape,
        affine,
        eps,
    )
}

/// Backward of [`add_layer_norm_forward`]: the gradients of
/// `sum(y · dy) + sum(sum · dsum)`, where `dsum` (optional: `None` means
/// zero) is the gradient the residual stream brings back past the norm.
///
/// ```text
/// dx = dresidual = dsum + rstd · (g - mean(g) - x̂ · mean(g · x̂)),   g = dy · weight
/// dweight = Σ dy · x̂        dbias = Σ dy
/// ```
///
/// `grads.dx` receives `dx`, which is also the gradient of `residual`
/// (the sum treats both inputs alike): one buffer serves both. The pass
/// reads `dy`, `sum` and `dsum` and writes `dx` once; `sum` is the forward
/// pass's output and `stats` what it returned.
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm_backward<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    dsum: Option<&[T]>,
    sum: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
) -> Result<()> {
    const OP: &str = "add_layer_norm";
    backward(
        OP,
        true,
        grads,
        dy,
        dsum,
        sum,
        shape,
        normalized_shape,
        weight,
        stats,
    )
}

/// Residual add fused with RMSNorm (as in Llama's blocks):
///
/// ```text
/// sum = x + residual
/// y   = sum / sqrt(mean(sum²) + eps) · weight
/// ```
///
/// with `sum` rounded to `T` once and normalized as rounded, as
/// [`add_layer_norm_forward`] does; `weight` is optional, shaped like
/// `normalized_shape`.
///
/// # Shapes
/// - `x`, `residual`, `y`, `sum`: `[*, *normalized_shape]`;
/// - `weight`: `normalized_shape`; returned [`Stats`]: `rstd` per row,
///   `mean` empty.
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm_forward<T: Elem>(
    y: &mut [T],
    sum: &mut [T],
    x: &[T],
    residual: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    eps: f32,
) -> Result<Stats> {
    const OP: &str = "add_rms_norm";
    let affine = Affine { weight, bias: None };
    forward(
        OP,
        false,
        y,
        sum,
        x,
        residual,
        shape,
        normalized_shape,
        affine,
        eps,
    )
}

/// Backward of [`add_rms_norm_forward`], as [`add_layer_norm_backward`]
/// without the mean terms: `dx = dresidual = dsum + rstd · (g - x̂ ·
/// mean(g · x̂))`. `grads.dbias` must be `None`.
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm_backward<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    dsum: Option<&[T]>,
    sum: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
) -> Result<()> {
    const OP: &str = "add_rms_norm";
    backward(
        OP,
        false,
        grads,
        dy,
        dsum,
        sum,
        shape,
        normalized_shape,
        weight,
        stats,
    )
}

/// Which norm follows the residual add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddNorm {
    /// [`add_layer_norm_forward`]: weight and bias both optional.
    LayerNorm,
    /// [`add_rms_norm_forward`]: a weight, no bias.
    RmsNorm,
}

/// The fused residual norms as a [`ResidualNormOp`]: PyTorch's
/// `x + residual` followed by `LayerNorm(normalized_shape, eps,
/// elementwise_affine, bias)` or `RMSNorm(normalized_shape, eps,
/// elementwise_affine)`. Packed parameters: `weight`?, `bias`?.
#[derive(Debug, Clone, PartialEq)]
pub struct AddNormOp {
    pub norm: AddNorm,
    pub normalized_shape: Vec<usize>,
    /// PyTorch's default: `1e-5` for LayerNorm; RMSNorm's is the input
    /// dtype's machine epsilon ([`crate::op::Precision::machine_eps`]).
    pub eps: f32,
    pub weight: bool,
    /// Refused for RMSNorm, which has no bias.
    pub bias: bool,
}

impl AddNormOp {
    fn centered(&self) -> bool {
        self.norm == AddNorm::LayerNorm
    }
}

impl ResidualNormOp for AddNormOp {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        match self.norm {
            AddNorm::LayerNorm => "add_layer_norm",
            AddNorm::RmsNorm => "add_rms_norm",
        }
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let op = self.name();
        let p = plan(op, shape, &self.normalized_shape, self.eps, self.centered())?;
        if self.bias && !self.centered() {
            return Err(NormError::NoSuchParameter { op, name: "bias" });
        }
        Ok(Signature {
            params: affine_params(self.weight, self.bias, p.geo.c),
            running: Running::None,
        })
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        sum: &mut [T],
        x: &[T],
        residual: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> Result<Stats> {
        let affine = affine_of(sig, params);
        let (op, ns, centered) = (self.name(), &self.normalized_shape, self.centered());
        forward(
            op, centered, y, sum, x, residual, shape, ns, affine, self.eps,
        )
    }

    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        dsum: Option<&[T]>,
        sum: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> Result<()> {
        let weight = affine_of(sig, params).weight;
        let (grads, _) = affine_grads(sig, grads);
        let (op, ns, centered) = (self.name(), &self.normalized_shape, self.centered());
        backward(op, centered, grads, dy, dsum, sum, shape, ns, weight, saved)
    }
}
