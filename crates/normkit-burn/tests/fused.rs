//! The fused path is the one that runs on flex: the fused kernels' counters
//! move, and the gradients are bit for bit the normkit kernels' own.

use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use normkit::{Affine, Grads};
use normkit_burn::*;

use crate::common::*;

#[test]
fn layer_norm_backward_is_the_normkit_kernel() {
    let device = ad();
    let (rows, d) = (16, 64);
    let mut ln = LayerNormConfig::new(vec![d]).init(&device);
    let w = values(d, 31, 0.5, 1.0);
    let b = values(d, 32, 0.5, 0.0);
    ln.weight = Some(burn::module::Param::from_tensor(from_vec(
        w.clone(),
        [d],
        &device,
    )));
    ln.bias = Some(burn::module::Param::from_tensor(from_vec(
        b.clone(),
        [d],
        &device,
    )));
    let xv = values(rows * d, 33, 2.0, 1.0);
    let dyv = values(rows * d, 34, 1.0, 0.0);

    let before = fused_calls();
    let x = from_vec(xv.clone(), [rows, d], &device).require_grad();
    let y = ln.forward(x.clone());
    let grads = (y.clone() * from_vec(dyv.clone(), [rows, d], &device))
        .sum()
        .backward();
    let after = fused_calls();
    assert!(after.forward > before.forward, "no fused forward ran");
    assert!(after.backward > before.backward, "no fused backward ran");

    // The same computation straight through normkit.
    let shape = [rows, d];
    let mut y_ref = vec![0.0f32; rows * d];
    let stats =
        normkit::layer_norm_forward(&mut y_ref, &xv, &shape, &[d], Affine::new(&w, &b), 1e-5)
            .unwrap();
    let (mut dx, mut dw, mut db) = (vec![0.0f32; rows * d], vec![0.0f32; d], vec![0.0f32; d]);
    let g = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    normkit::layer_norm_backward(g, &dyv, &xv, &shape, &[d], Some(&w), &stats).unwrap();

    let exact = |a: Vec<f64>, b: &[f32]| a.iter().zip(b).all(|(x, &y)| *x == y as f64);
    assert!(
        exact(read(y), &y_ref),
        "forward output differs from normkit"
    );
    assert!(
        exact(read(x.grad(&grads).unwrap()), &dx),
        "dx differs from normkit"
    );
    let gw = ln.weight.as_ref().unwrap().val().grad(&grads).unwrap();
    let gb = ln.bias.as_ref().unwrap().val().grad(&grads).unwrap();
    assert!(exact(read(gw), &dw), "dweight differs from normkit");
    assert!(exact(read(gb), &db), "dbias differs from normkit");
}

#[test]
fn batch_norm_backward_is_the_normkit_kernel() {
    let device = ad();
    let shape = [6, 4, 3, 3];
    let n: usize = shape.iter().product();
    let bn = BatchNormConfig::new(4).init(&device);
    let xv = values(n, 41, 3.0, -2.0);
    let dyv = values(n, 42, 1.0, 0.0);
    let before = fused_calls().backward;
    let x = from_vec(xv.clone(), shape, &device).require_grad();
    let grads = (bn.forward(x.clone()) * from_vec(dyv.clone(), shape, &device))
        .sum()
        .backward();
    assert!(fused_calls().backward > before, "no fused backward ran");

    let cfg = normkit::BatchNormConfig::default();
    let mut y = vec![0.0f32; n];
    let stats =
        normkit::batch_norm_forward_train(&mut y, &xv, &shape, Affine::NONE, None, &cfg).unwrap();
    let mut dx = vec![0.0f32; n];
    let ones = vec![1.0f32; 4];
    normkit::batch_norm_backward_train(
        Grads::dx(&mut dx),
        &dyv,
        &xv,
        &shape,
        Some(&ones),
        &stats,
        &cfg,
    )
    .unwrap();
    let got = read(x.grad(&grads).unwrap());
    assert!(
        got.iter().zip(&dx).all(|(a, &b)| *a == b as f64),
        "dx differs from normkit"
    );
}

#[test]
fn plain_flex_runs_the_fused_forward_and_f64_composes() {
    let device = Device::flex();
    let gn = GroupNormConfig::new(2, 4).init(&device);
    let before = fused_calls().forward;
    let x = tensor([2, 4, 5], 51, &device);
    let y = gn.forward(x.clone());
    assert!(
        fused_calls().forward > before,
        "no fused forward on plain flex"
    );

    // f64 is not a kernel element type: the layer composes, with the same
    // result up to f32 rounding.
    let opts = TensorCreationOptions::new(device.clone()).with_dtype(DType::F64);
    let x64 = Tensor::<3>::from_data(TensorData::new(read(x), [2, 4, 5]), opts);
    let gn64 = GroupNormConfig::new(2, 4).init(&device);
    let gn64 = normkit_burn::GroupNorm {
        weight: gn64.weight.map(|p| p.map(|t| t.cast(DType::F64))),
        bias: gn64.bias.map(|p| p.map(|t| t.cast(DType::F64))),
        ..gn64
    };
    let y64 = gn64.forward(x64);
    assert_eq!(y64.dtype(), DType::F64);
    assert_close(
        "f64 composed vs f32 fused",
        &read(y64),
        &read(y),
        1e-5,
        1e-5,
    );
}

#[test]
fn bf16_inputs_take_the_fused_kernels() {
    let device = ad();
    let shape = [3, 32];
    let xv = values(96, 61, 2.0, 0.5);
    let opts = TensorCreationOptions::new(device.clone()).with_dtype(DType::BF16);
    let x = Tensor::<2>::from_data(TensorData::new(xv.clone(), shape), opts).require_grad();
    let rms = RmsNormConfig::new(vec![32]).init(&device);
    let y = rms.forward(x.clone());
    assert_eq!(y.dtype(), DType::BF16);
    let grads = y.clone().sum().backward();
    let dx = x.grad(&grads).unwrap();
    assert_eq!(dx.dtype(), DType::BF16);

    let xb: Vec<half::bf16> = xv.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let mut yb = vec![half::bf16::ZERO; 96];
    let ones = vec![1.0f32; 32];
    let stats =
        normkit::rms_norm_forward(&mut yb, &xb, &shape, &[32], Some(&ones), 0.0078125).unwrap();
    let dyb = vec![half::bf16::ONE; 96];
    let mut dxb = vec![half::bf16::ZERO; 96];
    normkit::rms_norm_backward(
        Grads::dx(&mut dxb),
        &dyb,
        &xb,
        &shape,
        &[32],
        Some(&ones),
        &stats,
    )
    .unwrap();
    let as64 = |v: &[half::bf16]| v.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
    assert_eq!(read(y), as64(&yb), "bf16 forward differs from normkit");
    assert_eq!(read(dx), as64(&dxb), "bf16 dx differs from normkit");
}

#[test]
fn composed_route_is_scoped() {
    assert_eq!(current_route(), Route::Auto);
    let inner = with_route(Route::Composed, current_route);
    assert_eq!(inner, Route::Composed);
    assert_eq!(current_route(), Route::Auto);
    let caught = std::panic::catch_unwind(|| with_route(Route::Composed, || panic!("unwinds")));
    assert!(caught.is_err());
    assert_eq!(current_route(), Route::Auto, "restored after a panic");
    assert!(is_flex(&ad()) && is_flex(&Device::flex()));
}

#[test]
fn gradient_checkpointing_keeps_the_fused_backward() {
    // With burn's balanced checkpointing the fused node is compute-bound:
    // its saved statistics are kept, and the gradients do not change.
    let grads_on = |device: Device| {
        let gn = GroupNormConfig::new(2, 4).init(&device);
        let x = tensor([3, 4, 5], 71, &device).require_grad();
        let y = gn.forward(x.clone()).tanh();
        let grads = (y * tensor([3, 4, 5], 72, &device)).sum().backward();
        read(x.grad(&grads).unwrap())
    };
    let before = fused_calls().backward;
    let checkpointed = grads_on(Device::flex().autodiff().gradient_checkpointing());
    assert!(fused_calls().backward > before);
    assert_close("checkpointed dx", &checkpointed, &grads_on(ad()), 0.0, 0.0);
}
