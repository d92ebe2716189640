//! Folding an inference-mode BatchNorm into the preceding layer computes
//! what the pair computed.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::LinearConfig;
use burn::tensor::Device;
use normkit_burn::*;

use crate::common::*;

/// A BatchNorm with nontrivial running statistics and affine parameters.
fn trained_bn(c: usize, inputs: impl Fn(u64) -> burn::tensor::Tensor<2>) -> BatchNorm {
    let mut bn = BatchNormConfig::new(c).with_momentum(Some(0.5)).init(&ad());
    for step in 0..3 {
        bn.forward(inputs(step));
    }
    bn.weight = Some(Param::from_tensor(from_vec(
        values(c, 101, 0.5, 1.0),
        [c],
        &ad(),
    )));
    bn.bias = Some(Param::from_tensor(from_vec(
        values(c, 102, 0.5, 0.0),
        [c],
        &ad(),
    )));
    bn.valid()
}

#[test]
fn folds_into_conv2d() {
    let device = Device::flex();
    let conv = Conv2dConfig::new([2, 3], [3, 3]).init(&device);
    let bn = trained_bn(3, |s| {
        tensor([6, 3], 103 + s, &ad())
            .mul_scalar(2.0)
            .add_scalar(1.0)
    });
    let x = tensor([2, 2, 5, 5], 104, &device);
    let want = read(bn.forward(conv.forward(x.clone())));
    let folded = fold_batch_norm_conv2d(conv, &bn).unwrap();
    assert_close("conv + bn", &read(folded.forward(x)), &want, 1e-5, 1e-5);
}

#[test]
fn folds_into_linear_and_weight_normalized_layers() {
    let device = Device::flex();
    let linear = weight_norm_linear(LinearConfig::new(4, 3).init(&device));
    let bn = trained_bn(3, |s| tensor([8, 3], 105 + s, &ad()).add_scalar(-1.0));
    let x = tensor([5, 4], 106, &device);
    let want = read(bn.forward(linear.forward(x.clone())));
    let folded = fold_batch_norm_linear(linear, &bn).unwrap();
    assert!(folded.weight.reparameterization::<WeightNorm>().is_none());
    assert_close("linear + bn", &read(folded.forward(x)), &want, 1e-5, 1e-5);
}

#[test]
fn unfoldable_pairs_are_errors() {
    let device = Device::flex();
    let untracked = BatchNormConfig::new(3)
        .with_track_running_stats(false)
        .init(&device);
    let err =
        fold_batch_norm_linear(LinearConfig::new(4, 3).init(&device), &untracked).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                name: "track_running_stats",
                ..
            }
        ),
        "{err}"
    );
    let bn = BatchNormConfig::new(5).init(&device);
    let err = fold_batch_norm_linear(LinearConfig::new(4, 3).init(&device), &bn).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Channels {
                expected: 5,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    let last = BatchNormConfig::new(3)
        .with_channel_axis(ChannelAxis::Last)
        .init(&device);
    let err =
        fold_batch_norm_conv2d(Conv2dConfig::new([2, 3], [1, 1]).init(&device), &last).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                name: "channel_axis",
                ..
            }
        ),
        "{err}"
    );
}
