//! candle-nn's constructors, free functions and configs, called with the
//! same arguments, build layers that compute what candle-nn's compute.

use std::collections::HashMap;

use candle_core::{DType, Module, ModuleT, Tensor};
use candle_nn::VarBuilder;
use normkit_candle::*;

use crate::common::*;

/// A `VarBuilder` over `tensors`, as a loaded checkpoint.
fn file(tensors: &[(&str, Tensor)]) -> VarBuilder<'static> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    VarBuilder::from_tensors(map, DType::F32, &CPU)
}

#[track_caller]
fn same(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
    assert_close(what, &flat(ours), &flat(theirs), 1e-5);
}

#[test]
fn layer_norm_takes_candle_nn_configs() {
    let mut rng = Rng::new(31);
    let x = rng.tensor(&[3, 5, 8], -2.0, 2.0);
    let vb = file(&[
        ("weight", rng.tensor(&[8], 0.5, 1.5)),
        ("bias", rng.tensor(&[8], -0.5, 0.5)),
    ]);
    let configs = [
        candle_nn::LayerNormConfig::default(),
        // A weight, no bias.
        candle_nn::LayerNormConfig {
            affine: false,
            ..Default::default()
        },
        // RMSNorm with a bias.
        candle_nn::LayerNormConfig {
            remove_mean: false,
            eps: 1e-3,
            ..Default::default()
        },
        // RMSNorm alone, as `candle_nn::rms_norm` builds it.
        candle_nn::LayerNormConfig {
            remove_mean: false,
            affine: false,
            eps: 1e-6,
        },
    ];
    for c in configs {
        let theirs = candle_nn::layer_norm(8, c, vb.clone()).unwrap();
        let ours = layer_norm(8, c, vb.clone()).unwrap();
        assert_eq!(ours.bias().is_some(), c.affine);
        assert_eq!(ours.remove_mean(), c.remove_mean);
        same(
            &format!("{c:?}"),
            &ours.forward(&x).unwrap(),
            &theirs.forward(&x).unwrap(),
        );
    }
    // An f64 eps, and the candle-nn functions of the same names.
    let ours = layer_norm(8, 1e-4, vb.clone()).unwrap();
    let theirs = candle_nn::layer_norm(8, 1e-4, vb.clone()).unwrap();
    same(
        "eps",
        &ours.forward(&x).unwrap(),
        &theirs.forward(&x).unwrap(),
    );
    let ours = layer_norm_no_bias(8, 1e-5, vb.clone()).unwrap();
    let theirs = candle_nn::layer_norm_no_bias(8, 1e-5, vb.clone()).unwrap();
    same(
        "no bias",
        &ours.forward(&x).unwrap(),
        &theirs.forward(&x).unwrap(),
    );
    let ours = rms_norm(8, 1e-6, vb.clone()).unwrap();
    let theirs = candle_nn::rms_norm(8, 1e-6, vb.clone()).unwrap();
    same(
        "rms_norm",
        &ours.forward(&x).unwrap(),
        &theirs.forward(&x).unwrap(),
    );
}

#[test]
fn layer_norm_constructors_match_candle_nn() {
    let mut rng = Rng::new(32);
    let x = rng.tensor(&[4, 6], -2.0, 2.0);
    let (w, b) = (rng.tensor(&[6], 0.5, 1.5), rng.tensor(&[6], -0.5, 0.5));
    let pairs: [(LayerNorm, candle_nn::LayerNorm); 3] = [
        (
            LayerNorm::new(w.clone(), b.clone(), 1e-5),
            candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-5),
        ),
        (
            LayerNorm::new_no_bias(w.clone(), 1e-5),
            candle_nn::LayerNorm::new_no_bias(w.clone(), 1e-5),
        ),
        (
            LayerNorm::rms_norm(w.clone(), 1e-5),
            candle_nn::LayerNorm::rms_norm(w.clone(), 1e-5),
        ),
    ];
    for (i, (ours, theirs)) in pairs.iter().enumerate() {
        same(
            &format!("constructor {i}"),
            &ours.forward(&x).unwrap(),
            &theirs.forward(&x).unwrap(),
        );
    }
}

#[test]
fn old_checkpoint_names_load() {
    let mut rng = Rng::new(33);
    let (g, b) = (rng.tensor(&[4], 0.5, 1.5), rng.tensor(&[4], -0.5, 0.5));
    let vb = file(&[("gamma", g.clone()), ("beta", b.clone())]);
    let ours = layer_norm(4, 1e-5, vb.clone()).unwrap();
    let theirs = candle_nn::layer_norm(4, 1e-5, vb).unwrap();
    assert_eq!(flat(ours.weight().unwrap()), flat(&g));
    assert_eq!(flat(ours.bias().unwrap()), flat(&b));
    let x = rng.tensor(&[2, 4], -1.0, 1.0);
    same(
        "gamma/beta",
        &ours.forward(&x).unwrap(),
        &theirs.forward(&x).unwrap(),
    );
}

#[test]
fn batch_norm_matches_candle_nn_in_both_modes() {
    let mut rng = Rng::new(34);
    let c = 5;
    let tensors = |rng: &mut Rng| {
        [
            rng.tensor(&[c], -0.5, 0.5),
            rng.tensor(&[c], 0.5, 1.5),
            rng.tensor(&[c], 0.5, 1.5),
            rng.tensor(&[c], -0.5, 0.5),
        ]
    };
    let [mean, var, w, b] = tensors(&mut rng);
    let x = rng.tensor(&[3, c, 4, 2], -2.0, 2.0);
    let ours = BatchNorm::new_with_momentum(
        c,
        mean.clone(),
        var.clone(),
        w.clone(),
        b.clone(),
        1e-3,
        0.2,
    )
    .unwrap();
    let theirs = candle_nn::BatchNorm::new_with_momentum(
        c,
        mean.clone(),
        var.clone(),
        w.clone(),
        b.clone(),
        1e-3,
        0.2,
    )
    .unwrap();
    assert_eq!(ours.eps(), theirs.eps());
    assert!(ours.weight_and_bias().is_some());
    same(
        "eval",
        &ours.forward_t(&x, false).unwrap(),
        &theirs.forward_t(&x, false).unwrap(),
    );
    same(
        "train",
        &ours.forward_t(&x, true).unwrap(),
        &theirs.forward_t(&x, true).unwrap(),
    );
    same(
        "running mean",
        ours.running_mean().unwrap(),
        theirs.running_mean(),
    );
    same(
        "running var",
        ours.running_var().unwrap(),
        theirs.running_var(),
    );
    // The inputs the layers were built from are copies, untouched.
    assert_eq!(flat(&mean), flat(&tensors(&mut Rng::new(34))[0]));

    let ours = BatchNorm::new_no_bias(c, mean.clone(), var.clone(), 1e-5).unwrap();
    let theirs = candle_nn::BatchNorm::new_no_bias(c, mean.clone(), var.clone(), 1e-5).unwrap();
    assert!(ours.weight_and_bias().is_none());
    same(
        "no affine",
        &ours.forward_t(&x, false).unwrap(),
        &theirs.forward_t(&x, false).unwrap(),
    );

    // candle-nn's config and an f64 through `batch_norm`.
    let vb = file(&[
        ("running_mean", mean.clone()),
        ("running_var", var.clone()),
        ("weight", w.clone()),
        ("bias", b.clone()),
    ]);
    let cfg = candle_nn::BatchNormConfig {
        eps: 1e-4,
        momentum: 0.3,
        ..Default::default()
    };
    let ours = batch_norm(c, cfg, vb.clone()).unwrap();
    let theirs = candle_nn::batch_norm(c, cfg, vb.clone()).unwrap();
    assert_eq!(ours.config().momentum, Some(0.3));
    same(
        "config",
        &ours.forward_t(&x, false).unwrap(),
        &theirs.forward_t(&x, false).unwrap(),
    );
    let ours = batch_norm(c, 1e-4, vb.clone()).unwrap();
    let theirs = candle_nn::batch_norm(c, 1e-4, vb).unwrap();
    same(
        "eps",
        &ours.forward_t(&x, false).unwrap(),
        &theirs.forward_t(&x, false).unwrap(),
    );

    // A misshapen tensor is an error of the forward, naming it.
    let bad = BatchNorm::new(c, mean, var, w, rng.tensor(&[c + 1], 0.0, 1.0), 1e-5).unwrap();
    let e = bad.forward_t(&x, false).unwrap_err().to_string();
    assert!(e.contains("`bias`") && e.contains("expected 5"), "{e}");
}

#[test]
fn group_norm_matches_candle_nn() {
    let mut rng = Rng::new(35);
    let (w, b) = (rng.tensor(&[6], 0.5, 1.5), rng.tensor(&[6], -0.5, 0.5));
    let x = rng.tensor(&[2, 6, 5], -2.0, 2.0);
    let ours = GroupNorm::new(w.clone(), b.clone(), 6, 3, 1e-5).unwrap();
    let theirs = candle_nn::GroupNorm::new(w.clone(), b.clone(), 6, 3, 1e-5).unwrap();
    same(
        "new",
        &ours.forward(&x).unwrap(),
        &theirs.forward(&x).unwrap(),
    );
    let vb = file(&[("weight", w.clone()), ("bias", b.clone())]);
    let ours = group_norm(2, 6, 1e-3, vb.clone()).unwrap();
    let theirs = candle_nn::group_norm(2, 6, 1e-3, vb).unwrap();
    same(
        "group_norm",
        &ours.forward(&x).unwrap(),
        &theirs.forward(&x).unwrap(),
    );
    assert!(GroupNorm::new(w.clone(), b.clone(), 6, 4, 1e-5).is_err());
    assert!(candle_nn::GroupNorm::new(w, b, 6, 4, 1e-5).is_err());
}
