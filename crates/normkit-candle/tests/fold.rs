//! Folding an evaluation-mode BatchNorm into the preceding layer.

use candle_core::{DType, Module, ModuleT};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};
use normkit_candle::*;

use crate::common::*;

/// Float32 precision for outputs of order one: a few units in the last
/// place, relative to the largest output.
const TOL: f64 = 4.0 * f32::EPSILON as f64;

/// A BatchNorm over `c` channels with random, non-trivial statistics.
fn trained_bn(rng: &mut Rng, c: usize, config: BatchNormConfig) -> BatchNorm {
    let (bn, _map, _params) = build(rng, |vb| batch_norm(c, config, vb));
    bn
}

#[test]
fn conv2d_then_batch_norm() {
    let mut rng = Rng::new(1);
    let cfg = Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let conv = Conv2d::new(
        rng.tensor(&[6, 3, 3, 3], -0.5, 0.5),
        Some(rng.tensor(&[6], -0.5, 0.5)),
        cfg,
    );
    let bn = trained_bn(&mut rng, 6, BatchNormConfig::default());
    let folded = fold_batch_norm_conv2d(&conv, &bn).unwrap();
    let x = rng.tensor(&[2, 3, 9, 9], -1.0, 1.0);
    let want = flat(&bn.forward_t(&conv.forward(&x).unwrap(), false).unwrap());
    let got = flat(&folded.forward(&x).unwrap());
    assert_close("conv2d + bn", &got, &want, TOL);
    assert_eq!(folded.config().stride, 2);
}

#[test]
fn conv2d_without_bias_then_batch_norm_without_affine() {
    let mut rng = Rng::new(2);
    let conv = Conv2d::new(
        rng.tensor(&[4, 2, 1, 1], -1.0, 1.0),
        None,
        Conv2dConfig::default(),
    );
    let cfg = BatchNormConfig {
        affine: false,
        eps: 1e-3,
        ..Default::default()
    };
    let bn = trained_bn(&mut rng, 4, cfg);
    let folded = fold_batch_norm_conv2d(&conv, &bn).unwrap();
    assert!(folded.bias().is_some());
    let x = rng.tensor(&[3, 2, 4, 4], -1.0, 1.0);
    let want = flat(&bn.forward_t(&conv.forward(&x).unwrap(), false).unwrap());
    assert_close(
        "conv2d (no bias) + bn",
        &flat(&folded.forward(&x).unwrap()),
        &want,
        TOL,
    );
}

#[test]
fn linear_then_batch_norm_channels_first_and_last() {
    let mut rng = Rng::new(3);
    let lin = Linear::new(
        rng.tensor(&[5, 7], -1.0, 1.0),
        Some(rng.tensor(&[5], -1.0, 1.0)),
    );
    let bn = trained_bn(&mut rng, 5, BatchNormConfig::default());
    let folded = fold_batch_norm_linear(&lin, &bn).unwrap();
    let x = rng.tensor(&[4, 7], -1.0, 1.0);
    let want = flat(&bn.forward_t(&lin.forward(&x).unwrap(), false).unwrap());
    assert_close(
        "linear + bn",
        &flat(&folded.forward(&x).unwrap()),
        &want,
        TOL,
    );

    let cfg = BatchNormConfig {
        channel_axis: ChannelAxis::Last,
        ..Default::default()
    };
    let bn = trained_bn(&mut rng, 5, cfg);
    let folded = fold_batch_norm_linear(&lin, &bn).unwrap();
    let x = rng.tensor(&[2, 3, 7], -1.0, 1.0);
    let want = flat(&bn.forward_t(&lin.forward(&x).unwrap(), false).unwrap());
    assert_close(
        "linear + bn (tokens)",
        &flat(&folded.forward(&x).unwrap()),
        &want,
        TOL,
    );
}

#[test]
fn bf16_layers_fold_in_f64_and_round_once() {
    let mut rng = Rng::new(4);
    let lin = Linear::new(rng.tensor(&[3, 4], -1.0, 1.0), None);
    let bn = trained_bn(&mut rng, 3, BatchNormConfig::default());
    let lin16 = Linear::new(lin.weight().to_dtype(DType::BF16).unwrap(), None);
    let folded = fold_batch_norm_linear(&lin16, &bn).unwrap();
    assert_eq!(folded.weight().dtype(), DType::BF16);
    assert_eq!(folded.bias().unwrap().dtype(), DType::BF16);
}

#[test]
fn folding_refuses_what_it_cannot_fold() {
    let mut rng = Rng::new(5);
    let conv = Conv2d::new(
        rng.tensor(&[4, 2, 3, 3], -1.0, 1.0),
        None,
        Conv2dConfig::default(),
    );
    let untracked = BatchNormConfig {
        track_running_stats: false,
        ..Default::default()
    };
    let bn = batch_norm(4, untracked, VarBuilder::zeros(DType::F32, &CPU)).unwrap();
    let e = fold_batch_norm_conv2d(&conv, &bn).unwrap_err().to_string();
    assert!(e.contains("running statistics"), "{e}");

    let bn = batch_norm(
        5,
        BatchNormConfig::default(),
        VarBuilder::zeros(DType::F32, &CPU),
    )
    .unwrap();
    let e = fold_batch_norm_conv2d(&conv, &bn).unwrap_err().to_string();
    assert!(
        e.contains("expected 5") && e.contains("[4, 2, 3, 3]"),
        "{e}"
    );

    let last = BatchNormConfig {
        channel_axis: ChannelAxis::Last,
        ..Default::default()
    };
    let bn = batch_norm(4, last, VarBuilder::zeros(DType::F32, &CPU)).unwrap();
    assert!(fold_batch_norm_conv2d(&conv, &bn).is_err());
}
