//! Weight-normalized layers: initialization, PyTorch's two namings, and
//! the data-dependent initialization.

use std::collections::HashMap;

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use normkit_candle::*;

use crate::common::*;

/// A new layer computes `w = v`, so wrapping changes nothing at first.
#[test]
fn a_new_layer_starts_with_w_equal_to_v() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let lin = weight_norm_linear(6, 4, WeightNormConfig::default(), vb.pp("fc")).unwrap();
    assert_eq!(lin.g().dims(), &[4, 1]);
    assert_close("w = v", &flat(&lin.weight().unwrap()), &flat(lin.v()), 1e-6);
    let conv = weight_norm_conv2d(
        2,
        3,
        3,
        Conv2dConfig::default(),
        WeightNormConfig::default(),
        vb.pp("conv"),
    )
    .unwrap();
    assert_eq!(conv.g().dims(), &[3, 1, 1, 1]);
    assert_close(
        "w = v",
        &flat(&conv.weight().unwrap()),
        &flat(conv.v()),
        1e-6,
    );
    let names: Vec<String> = {
        let mut n: Vec<_> = varmap.data().lock().unwrap().keys().cloned().collect();
        n.sort();
        n
    };
    assert_eq!(
        names,
        [
            "conv.bias",
            "conv.parametrizations.weight.original0",
            "conv.parametrizations.weight.original1",
            "fc.bias",
            "fc.parametrizations.weight.original0",
            "fc.parametrizations.weight.original1",
        ]
    );
}

/// Either PyTorch naming loads, whatever the config says, and the layer
/// saves under the names it loaded.
#[test]
fn both_pytorch_namings_load() {
    let mut rng = Rng::new(1);
    let (g, v, b) = (
        rng.tensor(&[3, 1], 0.5, 2.0),
        rng.tensor(&[3, 5], -1.0, 1.0),
        rng.tensor(&[3], -1.0, 1.0),
    );
    let x = rng.tensor(&[2, 5], -1.0, 1.0);
    let mut outputs = Vec::new();
    for (gn, vn) in [
        ("weight_g", "weight_v"),
        (
            "parametrizations.weight.original0",
            "parametrizations.weight.original1",
        ),
    ] {
        let mut sd = HashMap::new();
        sd.insert(format!("fc.{gn}"), g.clone());
        sd.insert(format!("fc.{vn}"), v.clone());
        sd.insert("fc.bias".to_string(), b.clone());
        let file = TempFile::safetensors(gn, &sd);
        let vb = VarBuilder::from_buffered_safetensors(file.bytes(), DType::F32, &CPU).unwrap();
        let lin = weight_norm_linear(5, 3, WeightNormConfig::default(), vb.pp("fc")).unwrap();
        outputs.push(flat(&lin.forward(&x).unwrap()));
        let mut out = HashMap::new();
        lin.state_dict("fc", &mut out);
        let mut keys: Vec<_> = out.into_keys().collect();
        keys.sort();
        let mut want = vec![
            "fc.bias".to_string(),
            format!("fc.{gn}"),
            format!("fc.{vn}"),
        ];
        want.sort();
        assert_eq!(keys, want);
    }
    assert_eq!(outputs[0], outputs[1]);
    // And it is x · (g v / ‖v‖)ᵀ + b.
    let norm = v.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    let w = v.broadcast_div(&norm).unwrap().broadcast_mul(&g).unwrap();
    let want = x
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    assert_close("weight-normalized linear", &outputs[0], &flat(&want), 1e-6);
}

/// Per output unit (the last axis after `to_rows`), the mean and variance.
fn unit_moments(rows: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let rows = rows.to_dtype(DType::F64).unwrap();
    let mean = rows.mean_keepdim(0).unwrap();
    let var = rows
        .broadcast_sub(&mean)
        .unwrap()
        .sqr()
        .unwrap()
        .mean(0)
        .unwrap();
    (flat(&mean), flat(&var))
}

#[test]
fn data_dependent_initialization_of_linear() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let mut lin = weight_norm_linear(8, 5, WeightNormConfig::default(), vb.pp("fc")).unwrap();
    let x = Rng::new(2).tensor(&[64, 8], 1.0, 4.0);
    let y = lin.initialize_from_batch(&x).unwrap();
    let (mean, var) = unit_moments(&y);
    assert!(mean.iter().all(|m| m.abs() < 1e-5), "means {mean:?}");
    assert!(
        var.iter().all(|v| (v - 1.0).abs() < 1e-4),
        "variances {var:?}"
    );
    // The VarMap's own g and bias were set in place.
    let data = varmap.data().lock().unwrap();
    assert_eq!(
        flat(data["fc.parametrizations.weight.original0"].as_tensor()),
        flat(lin.g())
    );
    assert_eq!(flat(data["fc.bias"].as_tensor()), flat(lin.bias().unwrap()));
}

#[test]
fn data_dependent_initialization_of_conv2d() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let cfg = Conv2dConfig {
        stride: 2,
        ..Default::default()
    };
    let mut conv = weight_norm_conv2d(2, 4, 3, cfg, WeightNormConfig::default(), vb).unwrap();
    let x = Rng::new(3).tensor(&[6, 2, 9, 9], -1.0, 3.0);
    let y = conv.initialize_from_batch(&x).unwrap();
    // Channels last, then one row per (sample, position).
    let rows = y.permute((0, 2, 3, 1)).unwrap().reshape(((), 4)).unwrap();
    let (mean, var) = unit_moments(&rows);
    assert!(mean.iter().all(|m| m.abs() < 1e-5), "means {mean:?}");
    assert!(
        var.iter().all(|v| (v - 1.0).abs() < 1e-4),
        "variances {var:?}"
    );
    assert_eq!(y.dim(D::Minus1).unwrap(), 4);
}

#[test]
fn data_dependent_initialization_of_a_file_loaded_layer() {
    let mut rng = Rng::new(4);
    let mut sd = HashMap::new();
    sd.insert("weight_g".to_string(), rng.tensor(&[2, 1], 0.5, 2.0));
    sd.insert("weight_v".to_string(), rng.tensor(&[2, 3], -1.0, 1.0));
    let vb = VarBuilder::from_tensors(sd, DType::F32, &CPU);
    let cfg = WeightNormConfig {
        bias: false,
        ..Default::default()
    };
    let mut lin = weight_norm_linear(3, 2, cfg, vb).unwrap();
    let x = rng.tensor(&[32, 3], -1.0, 1.0);
    let y = lin.initialize_from_batch(&x).unwrap();
    // Without a bias only the scale is set: unit variance, mean kept.
    let (_, var) = unit_moments(&y);
    assert!(
        var.iter().all(|v| (v - 1.0).abs() < 1e-4),
        "variances {var:?}"
    );
}

#[test]
fn data_dependent_initialization_needs_dim_zero() {
    let cfg = WeightNormConfig {
        dim: Some(1),
        ..Default::default()
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let mut lin = weight_norm_linear(3, 2, cfg, vb).unwrap();
    assert_eq!(lin.g().dims(), &[1, 3]);
    let e = lin
        .initialize_from_batch(&Tensor::ones((4, 3), DType::F32, &CPU).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("dim = Some(0)"), "{e}");
}

#[test]
fn one_norm_over_the_whole_tensor() {
    let cfg = WeightNormConfig {
        dim: None,
        ..Default::default()
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let lin = weight_norm_linear(3, 2, cfg, vb).unwrap();
    assert_eq!(lin.g().dims(), &[] as &[usize]);
    let v = flat(lin.v());
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((flat(lin.g())[0] - norm).abs() < 1e-5 * norm);
}
