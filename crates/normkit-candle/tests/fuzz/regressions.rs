//! The crashes the fuzz suite found, each as a plain test: these inputs
//! once panicked inside candle through a layer; now they return.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder, VarMap};
use normkit_candle::*;

const CPU: Device = Device::Cpu;

/// A view of no values whose start offset lies past its empty storage.
fn empty_view_past_storage() -> Tensor {
    let t = Tensor::zeros((0, 4), DType::F32, &CPU)
        .unwrap()
        .narrow(1, 3, 1)
        .unwrap();
    assert_eq!(t.elem_count(), 0);
    assert_eq!(t.layout().start_offset(), 3);
    t
}

#[test]
fn empty_input_view_is_normalized() {
    let x = empty_view_past_storage();
    let y = layer_norm_op(&x, &[1], None, None, 1e-5).unwrap();
    assert_eq!(y.dims(), [0, 1]);
}

#[test]
fn empty_modulation_views_are_packed() {
    let x = Tensor::zeros((0, 3, 4), DType::F32, &CPU).unwrap();
    // AdaLayerNorm's own chunks of a batch of no samples are such views.
    let chunks = Tensor::zeros((0, 8), DType::F32, &CPU).unwrap();
    let (shift, scale) = (
        chunks.narrow(1, 0, 4).unwrap(),
        chunks.narrow(1, 4, 4).unwrap(),
    );
    let y = ada_layer_norm_op(&x, &[4], &scale, &shift, None, None, 1e-6).unwrap();
    assert_eq!(y.dims(), [0, 3, 4]);
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let l = ada_layer_norm(4, 2, AdaLayerNormConfig::default(), vb).unwrap();
    let cond = Tensor::zeros((0, 2), DType::F32, &CPU).unwrap();
    assert_eq!(l.forward(&x, &cond).unwrap().y.dims(), [0, 3, 4]);
}

#[test]
fn empty_weight_view_folds() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let bn = batch_norm(2, BatchNormConfig::default(), vb).unwrap();
    let w = Tensor::zeros((2, 0, 4), DType::F32, &CPU)
        .unwrap()
        .narrow(2, 3, 1)
        .unwrap();
    let folded = fold_batch_norm_linear(&Linear::new(w, None), &bn).unwrap();
    assert_eq!(folded.bias().unwrap().dims(), [2]);
}

#[test]
fn weight_norm_conv2d_refuses_what_candle_cannot_compute() {
    let conv2d = |conv: Conv2dConfig| {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
        weight_norm_conv2d(2, 2, 3, conv, WeightNormConfig::default(), vb).unwrap()
    };
    let x = Tensor::ones((1, 2, 5, 5), DType::F32, &CPU).unwrap();
    for conv in [
        Conv2dConfig {
            stride: 0,
            ..Default::default()
        },
        Conv2dConfig {
            dilation: 0,
            ..Default::default()
        },
        Conv2dConfig {
            groups: 0,
            ..Default::default()
        },
    ] {
        let err = conv2d(conv).forward(&x).unwrap_err().to_string();
        assert!(
            err.contains("weight_norm_conv2d") && err.contains("[1, 2, 5, 5]"),
            "{err}"
        );
    }
    let layer = conv2d(Conv2dConfig::default());
    // Smaller than the kernel, and empty.
    for dims in [(1, 2, 2, 5), (0, 2, 5, 5)] {
        let x = Tensor::ones(dims, DType::F32, &CPU).unwrap();
        assert!(layer.forward(&x).is_err(), "{dims:?}");
    }
    assert_eq!(layer.forward(&x).unwrap().dims(), [1, 2, 3, 3]);
}
