//! Loading from PyTorch-named safetensors: weight-normalized `Linear` and
//! `Conv2d` (`weight_g`/`weight_v`), BatchNorm buffers under a prefix with
//! PyTorch's int64 `num_batches_tracked`, and the errors of a bad file.

use std::collections::HashMap;

use burn::nn::conv::Conv2dConfig;
use burn::nn::LinearConfig;
use burn::tensor::Device;
use normkit_burn::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::common::*;

/// A safetensors file of f32 tensors (and int64 ones, given as `i64`s).
fn file(f32s: &[(&str, Vec<usize>, Vec<f32>)], i64s: &[(&str, i64)]) -> Vec<u8> {
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = f32s
        .iter()
        .map(|(k, s, v)| {
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.to_string(), Dtype::F32, s.clone(), b)
        })
        .collect();
    for (k, v) in i64s {
        bytes.push((k.to_string(), Dtype::I64, vec![], v.to_le_bytes().to_vec()));
    }
    let views: HashMap<String, TensorView<'_>> = bytes
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// `g · v / ‖v‖` with one norm per row of `v` (`rows × cols`).
fn weight_norm_rows(v: &[f32], g: &[f32], cols: usize) -> Vec<f64> {
    v.chunks(cols)
        .zip(g)
        .flat_map(|(row, &g)| {
            let norm = row.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            row.iter().map(move |&a| g as f64 * a as f64 / norm)
        })
        .collect()
}

#[test]
fn weight_normalized_linear_loads_and_computes_pytorchs_weight() {
    let (d_in, d_out) = (5, 3);
    let v = values(d_in * d_out, 81, 1.0, 0.0);
    let g = values(d_out, 82, 0.5, 1.0);
    let b = values(d_out, 83, 0.5, 0.0);
    let ck = PytorchCheckpoint::from_bytes(file(
        &[
            ("head.weight_v", vec![d_out, d_in], v.clone()),
            ("head.weight_g", vec![d_out, 1], g.clone()),
            ("head.bias", vec![d_out], b.clone()),
        ],
        &[],
    ))
    .unwrap();
    let device = Device::flex();
    let linear = LinearConfig::new(d_in, d_out)
        .init(&device)
        .load_pytorch(&ck, "head")
        .unwrap();
    let wn = linear
        .weight
        .reparameterization::<WeightNorm>()
        .expect("loaded as a weight-normalized layer");
    assert_close(
        "g",
        &read(wn.g.val()),
        &g.iter().map(|&a| a as f64).collect::<Vec<_>>(),
        0.0,
        0.0,
    );
    // PyTorch's [out, in] weight, as the output of x = I.
    let w = weight_norm_rows(&v, &g, d_in);
    let eye: Vec<f32> = (0..d_in * d_in)
        .map(|i| if i / d_in == i % d_in { 1.0 } else { 0.0 })
        .collect();
    let y = read(linear.forward(from_vec(eye, [d_in, d_in], &device)));
    for i in 0..d_in {
        for o in 0..d_out {
            let want = w[o * d_in + i] + b[o] as f64;
            assert!((y[i * d_out + o] - want).abs() < 1e-6, "y[{i}, {o}]");
        }
    }
}

#[test]
fn weight_normalized_conv2d_loads() {
    let (cin, cout, k) = (2, 4, 3);
    let n = cout * cin * k * k;
    let v = values(n, 84, 1.0, 0.0);
    let g = values(cout, 85, 0.5, 1.0);
    let ck = PytorchCheckpoint::from_bytes(file(
        &[
            ("weight_v", vec![cout, cin, k, k], v.clone()),
            ("weight_g", vec![cout, 1, 1, 1], g.clone()),
            ("bias", vec![cout], vec![0.0; cout]),
        ],
        &[],
    ))
    .unwrap();
    let conv = Conv2dConfig::new([cin, cout], [k, k])
        .init(&Device::flex())
        .load_pytorch(&ck, "")
        .unwrap();
    assert!(conv.weight.reparameterization::<WeightNorm>().is_some());
    let want = weight_norm_rows(&v, &g, cin * k * k);
    assert_close(
        "effective weight",
        &read(conv.weight.val()),
        &want,
        1e-6,
        1e-6,
    );
}

#[test]
fn batch_norm_buffers_load_under_a_prefix() {
    let c = 3;
    let ck = PytorchCheckpoint::from_bytes(file(
        &[
            ("features.1.weight", vec![c], vec![2.0; c]),
            ("features.1.bias", vec![c], vec![0.5; c]),
            ("features.1.running_mean", vec![c], vec![1.0, 2.0, 3.0]),
            ("features.1.running_var", vec![c], vec![4.0, 5.0, 6.0]),
        ],
        &[("features.1.num_batches_tracked", 7)],
    ))
    .unwrap();
    let device = ad();
    let bn = BatchNormConfig::new(c)
        .with_momentum(None)
        .init(&device)
        .load_pytorch(&ck, "features.1")
        .unwrap();
    assert_eq!(
        read(bn.running_mean.as_ref().unwrap().value_sync()),
        [1.0, 2.0, 3.0]
    );
    assert_eq!(
        read(bn.running_var.as_ref().unwrap().value_sync()),
        [4.0, 5.0, 6.0]
    );
    assert_eq!(
        read(bn.num_batches_tracked.as_ref().unwrap().value_sync()),
        [7.0]
    );
    assert_eq!(read(bn.weight.as_ref().unwrap().val()), [2.0; 3]);
    assert!(
        bn.weight.as_ref().unwrap().val().is_require_grad(),
        "still trainable"
    );
    // The cumulative average resumes at step 8: a batch of constant 9s
    // moves the mean 1/8 of the way there.
    bn.forward(from_vec(vec![9.0; 2 * c * 2], [2, c, 2], &device));
    let mean = read(bn.running_mean.as_ref().unwrap().value_sync());
    assert_close("mean", &mean, &[2.0, 2.875, 3.75], 1e-6, 0.0);
}

#[test]
fn bad_checkpoints_are_errors() {
    let ck =
        PytorchCheckpoint::from_bytes(file(&[("weight", vec![4], vec![1.0; 4])], &[])).unwrap();
    let device = Device::flex();
    let err = BatchNormConfig::new(3)
        .init(&device)
        .load_pytorch(&ck, "")
        .unwrap_err();
    assert!(matches!(err, Error::TensorShape { .. }), "{err}");
    let err = GroupNormConfig::new(1, 4)
        .init(&device)
        .load_pytorch(&ck, "")
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingTensor { ref key } if key == "bias"),
        "{err}"
    );
    let err = PytorchCheckpoint::from_bytes(vec![1, 2, 3]).unwrap_err();
    assert!(matches!(err, Error::Safetensors(_)), "{err}");
    assert_eq!(ck.keys(), ["weight"]);
}
