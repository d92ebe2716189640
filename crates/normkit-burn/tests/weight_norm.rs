//! Weight normalization on burn's `Linear` and `Conv2d`: attaching keeps the
//! outputs, the data-dependent initialization standardizes them.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use normkit_burn::*;

use crate::common::*;

#[test]
fn attaching_keeps_the_outputs() {
    let device = Device::flex();
    let x = tensor([4, 6], 91, &device);
    let linear = LinearConfig::new(6, 5).init(&device);
    let before = read(linear.forward(x.clone()));
    let wn = weight_norm_linear(linear);
    let g = wn.weight.reparameterization::<WeightNorm>().unwrap();
    assert_eq!(
        g.dim,
        Some(1),
        "one norm per output unit of [d_input, d_output]"
    );
    assert_eq!(g.g.val().dims(), [5]);
    assert_close("linear", &read(wn.forward(x)), &before, 1e-6, 1e-5);

    let x = tensor([2, 3, 6, 6], 92, &device);
    let conv = Conv2dConfig::new([3, 4], [3, 3]).init(&device);
    let before = read(conv.forward(x.clone()));
    let wn = weight_norm_conv2d(conv);
    let g = wn.weight.reparameterization::<WeightNorm>().unwrap();
    assert_eq!((g.dim, g.g.val().dims()), (Some(0), [4]));
    assert_close("conv2d", &read(wn.forward(x)), &before, 1e-6, 1e-5);
}

#[test]
fn materialize_merges_the_effective_weight() {
    let device = Device::flex();
    let wn = weight_norm_linear(LinearConfig::new(3, 2).init(&device));
    let x = tensor([2, 3], 93, &device);
    let y = read(wn.forward(x.clone()));
    let merged: Linear = wn.materialize();
    assert!(merged.weight.reparameterization::<WeightNorm>().is_none());
    assert_close("merged", &read(merged.forward(x)), &y, 1e-6, 1e-6);
}

/// Per-unit mean and standard deviation of `y` over every axis but `unit`.
fn unit_stats(y: &[f64], dims: &[usize], unit: usize) -> Vec<(f64, f64)> {
    let inner: usize = dims[unit + 1..].iter().product();
    let k = dims[unit];
    (0..k)
        .map(|u| {
            let vals: Vec<f64> = y
                .iter()
                .enumerate()
                .filter(|(i, _)| (i / inner) % k == u)
                .map(|(_, &v)| v)
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64;
            (m, var.sqrt())
        })
        .collect()
}

#[test]
fn data_dependent_init_standardizes_linear_outputs() {
    let device = ad();
    let x = tensor([64, 6], 94, &device).mul_scalar(3.0).add_scalar(1.0);
    let linear = LinearConfig::new(6, 4).with_bias(false).init(&device);
    let init = weight_norm_linear_data_init(linear, x.clone(), 0.5).unwrap();
    assert!(init.weight.reparameterization::<WeightNorm>().is_some());
    let y = read(init.forward(x));
    for (u, (m, s)) in unit_stats(&y, &[64, 4], 1).into_iter().enumerate() {
        assert!(m.abs() < 1e-5, "unit {u} mean {m}");
        assert!((s - 0.5).abs() < 1e-4, "unit {u} std {s}");
    }
    // Still trainable after the initialization.
    let wn = init.weight.reparameterization::<WeightNorm>().unwrap();
    let grads = init.forward(tensor([2, 6], 95, &device)).sum().backward();
    assert!(wn.g.val().grad(&grads).is_some() && init.weight.base().grad(&grads).is_some());
}

#[test]
fn data_dependent_init_standardizes_conv_outputs() {
    let device = Device::flex();
    let x = tensor([8, 2, 7, 7], 96, &device).add_scalar(0.5);
    let conv = Conv2dConfig::new([2, 3], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let conv: Conv2d = weight_norm_conv2d(conv);
    let init = weight_norm_conv2d_data_init(conv, x.clone(), 1.0).unwrap();
    let y = init.forward(x);
    let dims = y.dims();
    for (u, (m, s)) in unit_stats(&read(y), &dims, 1).into_iter().enumerate() {
        assert!(m.abs() < 1e-5, "channel {u} mean {m}");
        assert!((s - 1.0).abs() < 1e-4, "channel {u} std {s}");
    }
}

#[test]
fn bad_dims_and_inputs_are_errors() {
    let device = Device::flex();
    let err = WeightNormConfig::new()
        .with_dim(WeightNormDim::Axis(2))
        .apply(LinearConfig::new(3, 2).init(&device))
        .unwrap_err();
    assert!(
        matches!(err, Error::Norm(normkit::NormError::Dim { .. })),
        "{err}"
    );
    let err = weight_norm_linear_data_init(
        LinearConfig::new(3, 2).init(&device),
        Tensor::zeros([4, 5], &device),
        1.0,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Channels {
                expected: 3,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    let whole = WeightNormConfig::new()
        .with_dim(WeightNormDim::Whole)
        .apply(LinearConfig::new(3, 2).init(&device))
        .unwrap();
    let wn = whole.weight.reparameterization::<WeightNorm>().unwrap();
    assert_eq!((wn.dim, wn.g.val().dims()), (None, [1]));
}
