//! Layer Normalization and its mean-free variant RMSNorm.

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::RunningStats;
use crate::layout::{check_eps, numel, Affine, ChannelAxis, Geometry, Grads, Stats};
use crate::normalize::{Plan, Scope};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Running, Signature,
};

/// Rows × row length, after checking that `shape` ends with a non-empty
/// `normalized_shape`.
pub(crate) fn plan(
    op: &'static str,
    shape: &[usize],
    normalized_shape: &[usize],
    eps: f32,
    centered: bool,
) -> Result<Plan> {
    check_eps(op, eps)?;
    let total = numel(op, shape)?;
    // PyTorch also refuses an empty normalized_shape.
    if normalized_shape.is_empty()
        || normalized_shape.len() > shape.len()
        || !shape.ends_with(normalized_shape)
    {
        return Err(NormError::NormalizedShape {
            op,
            shape: shape.to_vec(),
            normalized_shape: normalized_shape.to_vec(),
        });
    }
    // Checked apart from `total`, which is 0 for an empty batch.
    let d = numel(op, normalized_shape)?;
    if d == 0 {
        return Err(NormError::Empty {
            op,
            shape: shape.to_vec(),
        });
    }
    // A row is one sample of channels-last data with a single position and
    // one group: each element is its own "channel" of the affine transform.
    Ok(Plan {
        geo: Geometry {
            n: total / d,
            c: d,
            s: 1,
            axis: ChannelAxis::Last,
        },
        scope: Scope::PerSample { groups: 1 },
        centered,
    })
}

/// Layer Normalization (Ba, Kiros & Hinton, 2016, "Layer Normalization").
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - `E[x]`, `Var[x]` are over the trailing `normalized_shape` dimensions of
///   each row, `Var` biased (divide by n);
/// - `weight`, `bias` are optional, shaped like `normalized_shape`
///   (PyTorch: `elementwise_affine=True`, `bias=True`, `eps=1e-5`).
///
/// # Shapes
/// - `x`, `y`: `[*, *normalized_shape]`;
/// - `weight`, `bias`: `normalized_shape` (flattened);
/// - returned [`Stats`]: one mean and rstd per row.
pub fn layer_norm_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    affine: Affine<'_>,
    eps: f32,
) -> Result<Stats> {
    const OP: &str = "layer_norm";
    let p = plan(OP, shape, normalized_shape, eps, true)?;
    p.check_forward(OP, y.len(), x.len(), affine, shape)?;
    Ok(p.forward_train(y, x, affine, eps).0)
}

/// Backward of [`layer_norm_forward`]: gradients of `sum(y · dy)`.
pub fn layer_norm_backward<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
) -> Result<()> {
    const OP: &str = "layer_norm";
    // eps does not enter the backward pass: rstd already holds it.
    let p = plan(OP, shape, normalized_shape, 0.0, true)?;
    p.check_backward(OP, &grads, dy, x, weight, stats, shape)?;
    p.backward_train(grads, dy, x, weight, stats);
    Ok(())
}

/// Root Mean Square Layer Normalization (Zhang & Sennrich, 2019).
///
/// ```text
/// y = x / sqrt(mean(x²) + eps) · weight
/// ```
///
/// where the mean is over the trailing `normalized_shape` dimensions and
/// `weight` is optional, shaped like `normalized_shape`. It is LayerNorm
/// without the mean: no centering and no bias.
///
/// # Shapes
/// - `x`, `y`: `[*, *normalized_shape]`; `weight`: `normalized_shape`;
/// - returned [`Stats`]: `rstd` per row, `mean` empty.
pub fn rms_norm_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    eps: f32,
) -> Result<Stats> {
    const OP: &str = "rms_norm";
    let p = plan(OP, shape, normalized_shape, eps, false)?;
    let affine = Affine { weight, bias: None };
    p.check_forward(OP, y.len(), x.len(), affine, shape)?;
    Ok(p.forward_train(y, x, affine, eps).0)
}

/// Backward of [`rms_norm_forward`]. `grads.dbias` must be `None`.
pub fn rms_norm_backward<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
) -> Result<()> {
    const OP: &str = "rms_norm";
    let p = plan(OP, shape, normalized_shape, 0.0, false)?;
    if grads.dbias.is_some() {
        return Err(NormError::NoSuchParameter {
            op: OP,
            name: "dbias",
        });
    }
    p.check_backward(OP, &grads, dy, x, weight, stats, shape)?;
    p.backward_train(grads, dy, x, weight, stats);
    Ok(())
}

/// [`layer_norm_forward`] and [`layer_norm_backward`] as a [`NormOp`]:
/// PyTorch's `LayerNorm(normalized_shape, eps, elementwise_affine, bias)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormOp {
    pub normalized_shape: Vec<usize>,
    /// PyTorch's default: `1e-5`.
    pub eps: f32,
    pub weight: bool,
    pub bias: bool,
}

impl NormOp for LayerNormOp {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        "layer_norm"
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = plan(self.name(), shape, &self.normalized_shape, self.eps, true)?;
        checked_signature(
            self.name(),
            shape,
            affine_params(self.weight, self.bias, p.geo.c),
            Running::None,
        )
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _running: Option<RunningStats<'_>>,
    ) -> Result<Stats> {
        let affine = affine_of(sig, params);
        layer_norm_forward(y, x, shape, &self.normalized_shape, affine, self.eps)
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
        let weight = affine_of(sig, params).weight;
        let (grads, _) = affine_grads(sig, grads);
        layer_norm_backward(grads, dy, x, shape, &self.normalized_shape, weight, saved)
    }
}

/// [`rms_norm_forward`] and [`rms_norm_backward`] as a [`NormOp`]:
/// PyTorch's `RMSNorm(normalized_shape, eps, elementwise_affine)`. PyTorch
/// defaults `eps` to the input dtype's machine epsilon
/// ([`crate::op::Precision::machine_eps`]); the adapters resolve that.
#[derive(Debug, Clone, PartialEq)]
pub struct RmsNormOp {
    pub normalized_shape: Vec<usize>,
    pub eps: f32,
    pub weight: bool,
}

impl NormOp for RmsNormOp {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = plan(self.name(), shape, &self.normalized_shape, self.eps, false)?;
        checked_signature(
            self.name(),
            shape,
            affine_params(self.weight, false, p.geo.c),
            Running::None,
        )
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _running: Option<RunningStats<'_>>,
    ) -> Result<Stats> {
        let weight = affine_of(sig, params).weight;
        rms_norm_forward(y, x, shape, &self.normalized_shape, weight, self.eps)
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
        let weight = affine_of(sig, params).weight;
        let (grads, _) = affine_grads(sig, grads);
        rms_norm_backward(grads, dy, x, shape, &self.normalized_shape, weight, saved)
    }
}
