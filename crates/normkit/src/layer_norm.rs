//! Layer Normalization and its mean-free variant RMSNorm.

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::{check_eps, numel, Affine, ChannelAxis, Geometry, Grads, Stats};
use crate::normalize::{Plan, Scope};

/// Rows × row length, after checking that `shape` ends with a non-empty
/// `normalized_shape`.
fn plan(
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
