//! Parameter initialization from the study's own generator.
//!
//! Parameters are drawn from [`SplitMix64`] rather than burn's generator:
//! burn seeds one process-wide generator, which concurrent work (other
//! jobs, other threads) would advance, while a stream of our own makes a
//! model a pure function of its seed.

use crate::study::data::SplitMix64;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{Linear, PaddingConfig1d, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use normkit_burn::WeightNormConfig;

/// `U(-bound, bound)` values of `shape` from `rng`.
pub fn uniform<const D: usize>(
    rng: &mut SplitMix64,
    shape: [usize; D],
    bound: f64,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `N(0, std²)` values of `shape` from `rng`.
pub fn normal<const D: usize>(
    rng: &mut SplitMix64,
    shape: [usize; D],
    std: f64,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A linear layer with PyTorch's default initialization: weight and bias
/// `U(-1/√fan_in, 1/√fan_in)` (Kaiming-uniform with `a = √5`), weight laid
/// out `[d_in, d_out]` as burn's is. With `weight_norm`, the weight is
/// reparameterized `w = g · v / ‖v‖` per output unit, `g` starting at
/// `‖v‖`, so the initial function is the same.
pub fn linear(
    rng: &mut SplitMix64,
    d_in: usize,
    d_out: usize,
    weight_norm: bool,
    device: &Device,
) -> Linear {
    let bound = 1.0 / (d_in as f64).sqrt();
    let layer = Linear {
        weight: Param::from_tensor(uniform(rng, [d_in, d_out], bound, device)),
        bias: Some(Param::from_tensor(uniform(rng, [d_out], bound, device))),
    };
    if weight_norm {
        with_weight_norm(layer)
    } else {
        layer
    }
}

fn with_weight_norm<M: Module>(module: M) -> M {
    WeightNormConfig::new()
        .apply(module)
        .unwrap_or_else(|e| panic!("weight norm on a layer with an output axis: {e}"))
}

/// A 1-D convolution with PyTorch's default initialization (bound
/// `1/√(in · kernel)`).
pub fn conv1d(
    rng: &mut SplitMix64,
    (c_in, c_out, kernel, stride, padding): (usize, usize, usize, usize, usize),
    weight_norm: bool,
    device: &Device,
) -> Conv1d {
    let bound = 1.0 / ((c_in * kernel) as f64).sqrt();
    let layer = Conv1d {
        weight: Param::from_tensor(uniform(rng, [c_out, c_in, kernel], bound, device)),
        bias: Some(Param::from_tensor(uniform(rng, [c_out], bound, device))),
        stride,
        kernel_size: kernel,
        dilation: 1,
        groups: 1,
        padding: PaddingConfig1d::Explicit(padding, padding),
    };
    if weight_norm {
        with_weight_norm(layer)
    } else {
        layer
    }
}

/// A 2-D convolution with PyTorch's default initialization.
pub fn conv2d(
    rng: &mut SplitMix64,
    (c_in, c_out, kernel, stride, padding): (usize, usize, usize, usize, usize),
    weight_norm: bool,
    device: &Device,
) -> Conv2d {
    let bound = 1.0 / ((c_in * kernel * kernel) as f64).sqrt();
    let layer = Conv2d {
        weight: Param::from_tensor(uniform(rng, [c_out, c_in, kernel, kernel], bound, device)),
        bias: Some(Param::from_tensor(uniform(rng, [c_out], bound, device))),
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(padding, padding, padding, padding),
    };
    if weight_norm {
        with_weight_norm(layer)
    } else {
        layer
    }
}

/// A linear layer with weights `N(0, gain² / fan_in)` and zero bias: the
/// initialization a deep plain network explodes or vanishes under when
/// `gain` is away from its activation's critical value.
pub fn linear_scaled(
    rng: &mut SplitMix64,
    d_in: usize,
    d_out: usize,
    gain: f64,
    device: &Device,
) -> Linear {
    let std = gain / (d_in as f64).sqrt();
    Linear {
        weight: Param::from_tensor(normal(rng, [d_in, d_out], std, device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}
