//! Folding an inference-mode BatchNorm into the layer before it.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::{BatchNorm, ChannelAxis};

/// Per-channel `scale = weight / sqrt(running_var + eps)` and
/// `shift = bias - running_mean · scale` of an inference-mode BatchNorm.
fn scale_shift(bn: &BatchNorm, op: &'static str) -> Result<(Tensor<1>, Tensor<1>)> {
    let (Some(mean), Some(var)) = (&bn.running_mean, &bn.running_var) else {
        return Err(Error::Config {
            op,
            name: "track_running_stats",
            domain: "true (folding uses the running statistics)",
            value: 0.0,
        });
    };
    let mean = mean.value_sync().detach();
    let var = var.value_sync().detach();
    let device = mean.device();
    let c = bn.num_features;
    let weight = bn
        .weight
        .as_ref()
        .map_or_else(|| Tensor::ones([c], &device), |w| w.val().detach());
    let bias = bn
        .bias
        .as_ref()
        .map_or_else(|| Tensor::zeros([c], &device), |b| b.val().detach());
    let scale = weight / var.add_scalar(bn.eps).sqrt();
    let shift = bias - mean * scale.clone();
    Ok((scale, shift))
}

fn channel_mismatch(op: &'static str, expected: usize, got: usize) -> Error {
    Error::Channels {
        op,
        expected,
        got,
        shape: vec![got],
    }
}

/// The `Conv2d` that computes `bn(conv(x))` as BatchNorm computes in
/// inference:
///
/// ```text
/// weight' = weight · s        bias' = (bias - running_mean) · s + bn.bias
/// ```
///
/// where `s = bn.weight / sqrt(running_var + eps)` per output channel. A
/// weight-normalized convolution folds its effective weight; the result
/// is a plain convolution.
///
/// # Errors
/// A BatchNorm without running statistics, with channels last, or whose
/// channel count is not the convolution's output channels.
pub fn fold_batch_norm_conv2d(conv: Conv2d, bn: &BatchNorm) -> Result<Conv2d> {
    const OP: &str = "fold_batch_norm_conv2d";
    if bn.channel_axis != ChannelAxis::First {
        return Err(Error::Config {
            op: OP,
            name: "channel_axis",
            domain: "channels first, as Conv2d outputs",
            value: 1.0,
        });
    }
    let weight = conv.weight.val().detach();
    let [out, cin, kh, kw] = weight.dims();
    if out != bn.num_features {
        return Err(channel_mismatch(OP, bn.num_features, out));
    }
    let (scale, shift) = scale_shift(bn, OP)?;
    let device = weight.device();
    let (scale, shift) = (scale.to_device(&device), shift.to_device(&device));
    let bias = conv
        .bias
        .as_ref()
        .map_or_else(|| Tensor::zeros([out], &device), |b| b.val().detach());
    let folded_weight = weight * scale.clone().reshape([out, 1, 1, 1]);
    let folded_bias = bias * scale + shift;
    debug_assert_eq!(folded_weight.dims(), [out, cin, kh, kw]);
    Ok(Conv2d {
        weight: Param::from_tensor(folded_weight),
        bias: Some(Param::from_tensor(folded_bias)),
        ..conv
    })
}

/// The `Linear` that computes `bn(linear(x))` as BatchNorm computes in
/// inference, the BatchNorm normalizing the linear layer's output features
/// (`[N, d_output]` with either channel axis, or `[N, *, d_output]` with
/// channels last). A weight-normalized layer folds its effective weight.
///
/// # Errors
/// A BatchNorm without running statistics or whose channel count is not
/// `d_output`.
pub fn fold_batch_norm_linear(linear: Linear, bn: &BatchNorm) -> Result<Linear> {
    const OP: &str = "fold_batch_norm_linear";
    let weight = linear.weight.val().detach();
    let [_, out] = weight.dims();
    if out != bn.num_features {
        return Err(channel_mismatch(OP, bn.num_features, out));
    }
    let (scale, shift) = scale_shift(bn, OP)?;
    let device = weight.device();
    let (scale, shift) = (scale.to_device(&device), shift.to_device(&device));
    let bias = linear
        .bias
        .as_ref()
        .map_or_else(|| Tensor::zeros([out], &device), |b| b.val().detach());
    Ok(Linear {
        weight: Param::from_tensor(weight * scale.clone().reshape([1, out])),
        bias: Some(Param::from_tensor(bias * scale + shift)),
    })
}
