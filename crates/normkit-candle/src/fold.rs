//! Folding an evaluation-mode BatchNorm into the layer before it.
//!
//! In evaluation BatchNorm is an affine map per channel,
//!
//! ```text
//! bn(z) = (z - running_mean) · s + bias_bn,   s = weight_bn / sqrt(running_var + eps)
//! ```
//!
//! so after a layer `z = W · x + b` whose output channel `c` is row `c` of
//! `W`, the pair is one layer with
//!
//! ```text
//! W' = W · s (row by row)      b' = (b - running_mean) · s + bias_bn
//! ```
//!
//! computed by [`normkit::fold_batch_norm`] (in f64, from the f32 values)
//! and rounded to the layer's dtype.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Conv2d, Linear};
use normkit::ChannelAxis;

use crate::batch_norm::BatchNorm;
use crate::error::{self, LayerError};

/// `(W', b')` for a layer with `weight` (output channels first) and `bias`.
fn fold(
    op: &'static str,
    weight: &Tensor,
    bias: Option<&Tensor>,
    bn: &BatchNorm,
) -> Result<(Tensor, Tensor)> {
    let (Some(mean), Some(var)) = (bn.running_mean(), bn.running_var()) else {
        return Err(error::layer(LayerError::Unsupported {
            op,
            reason: "the BatchNorm has no running statistics (track_running_stats = false), so its evaluation output depends on the batch",
        }));
    };
    // The rows of `weight` must be the BatchNorm's channels: from the
    // values alone normkit sees only that their count divides.
    let out = weight.dim(0)?;
    if out != bn.num_features() {
        return Err(error::layer(LayerError::Channels {
            op,
            shape: weight.dims().to_vec(),
            axis: 0,
            expected: bn.num_features(),
            got: out,
        }));
    }
    let values = |t: &Tensor| -> Result<Vec<f32>> {
        // candle reads an empty view from its start offset, which may lie
        // past its empty storage (a narrow beside a zero extent).
        if t.elem_count() == 0 {
            return Ok(Vec::new());
        }
        t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
    };
    let optional = |t: Option<&Tensor>| t.map(values).transpose();
    let (w, b) = (values(weight)?, optional(bias)?);
    let (mean, var) = (values(mean)?, values(var)?);
    let (bn_weight, bn_bias) = (optional(bn.weight())?, optional(bn.bias())?);
    let (mut w_out, mut b_out) = (vec![0.0f32; w.len()], vec![0.0f32; out]);
    let eval = normkit::BatchNormEval {
        running_mean: &mean,
        running_var: &var,
        weight: bn_weight.as_deref(),
        bias: bn_bias.as_deref(),
        eps: bn.config().eps as f32,
    };
    normkit::fold_batch_norm(&mut w_out, &mut b_out, &w, b.as_deref(), eval)
        .map_err(error::kernel)?;
    let dtype = bias.map_or(weight.dtype(), Tensor::dtype);
    Ok((
        Tensor::from_vec(w_out, weight.shape(), weight.device())?.to_dtype(weight.dtype())?,
        Tensor::from_vec(b_out, out, weight.device())?.to_dtype(dtype)?,
    ))
}

/// The `Conv2d` equal to `conv` followed by `bn` in evaluation mode.
///
/// `bn` must track running statistics and normalize channels first
/// (`[N, C, H, W]`, the convolution's output) over `conv`'s output
/// channels. The folded layer always has a bias.
pub fn fold_batch_norm_conv2d(conv: &Conv2d, bn: &BatchNorm) -> Result<Conv2d> {
    const OP: &str = "fold_batch_norm_conv2d";
    if bn.config().channel_axis != ChannelAxis::First {
        return Err(error::layer(LayerError::Unsupported {
            op: OP,
            reason: "a convolution's output has its channels first; the BatchNorm normalizes channels last",
        }));
    }
    let (weight, bias) = fold(OP, conv.weight(), conv.bias(), bn)?;
    Ok(Conv2d::new(weight, Some(bias), *conv.config()))
}

/// The `Linear` equal to `linear` followed by `bn` in evaluation mode.
///
/// `bn` must track running statistics over `linear`'s output features,
/// and see them on its channel axis: channels first for `[N, out]`
/// output, channels last for `[N, L, out]`. The folded layer always has a
/// bias.
pub fn fold_batch_norm_linear(linear: &Linear, bn: &BatchNorm) -> Result<Linear> {
    let (weight, bias) = fold("fold_batch_norm_linear", linear.weight(), linear.bias(), bn)?;
    Ok(Linear::new(weight, Some(bias)))
}
