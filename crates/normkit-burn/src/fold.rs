//! Folding an inference-mode BatchNorm into the layer before it.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, TensorData};
use normkit::BatchNormEval;

use crate::error::{Error, Result};
use crate::{BatchNorm, ChannelAxis};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// `weight'` and `bias'` of the layer before `bn`, whose output channel
/// `c` is row `c` of `weight` (`[out, *]`): normkit's fold, in `f64`, of
/// the inference-mode BatchNorm into it.
fn fold<const D: usize>(
    weight: Tensor<D>,
    bias: Option<Tensor<1>>,
    bn: &BatchNorm,
    op: &'static str,
) -> Result<(Tensor<D>, Tensor<1>)> {
    let (Some(mean), Some(var)) = (&bn.running_mean, &bn.running_var) else {
        return Err(Error::Config {
            op,
            name: "track_running_stats",
            domain: "true (folding uses the running statistics)",
            value: 0.0,
        });
    };
    let param = |p: &Option<Param<Tensor<1>>>| p.as_ref().map(|p| values(p.val()));
    let (gamma, beta) = (param(&bn.weight), param(&bn.bias));
    let (mean, var) = (values(mean.value_sync()), values(var.value_sync()));
    let (device, dtype, dims) = (weight.device(), weight.dtype(), weight.dims());
    let w = values(weight);
    let b = bias.map(values);
    let (mut w_out, mut b_out) = (vec![0.0f32; w.len()], vec![0.0f32; mean.len()]);
    let eval = BatchNormEval {
        running_mean: &mean,
        running_var: &var,
        weight: gamma.as_deref(),
        bias: beta.as_deref(),
        eps: bn.eps as f32,
    };
    normkit::fold_batch_norm(&mut w_out, &mut b_out, &w, b.as_deref(), eval)?;
    let typed = |t: Tensor<D>| {
        if dtype == DType::F32 {
            t
        } else {
            t.cast(dtype)
        }
    };
    let w = typed(Tensor::from_data(TensorData::new(w_out, dims), &device));
    let n = b_out.len();
    let b = Tensor::<1>::from_data(TensorData::new(b_out, [n]), &device);
    let b = if dtype == DType::F32 {
        b
    } else {
        b.cast(dtype)
    };
    Ok((w, b))
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
    let out = weight.dims()[0];
    if out != bn.num_features {
        return Err(channel_mismatch(OP, bn.num_features, out));
    }
    let bias = conv.bias.as_ref().map(|b| b.val().detach());
    let (weight, bias) = fold(weight, bias, bn, OP)?;
    Ok(Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
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
    // burn stores `[d_input, d_output]`: one column per output channel.
    let bias = linear.bias.as_ref().map(|b| b.val().detach());
    let (weight, bias) = fold(weight.transpose(), bias, bn, OP)?;
    Ok(Linear {
        weight: Param::from_tensor(weight.transpose()),
        bias: Some(Param::from_tensor(bias)),
    })
}
