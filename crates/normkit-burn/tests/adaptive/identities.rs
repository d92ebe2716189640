//! What the layers promise: identities, errors, other backends and types.

use burn::module::{Module, Param, RunningState};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use normkit_burn::functional;
use normkit_burn::*;

use super::gradients::{leaf, param, sn_cfg};
use crate::common::*;

// ---------------------------------------------------------------------------
// Identities.

/// `(y, dx, dweight, dbias, running_mean, running_var)` of one training
/// step of BatchNorm or BatchRenorm built alike.
pub(super) fn bn_step(renorm: bool, axis: ChannelAxis) -> Vec<Vec<f64>> {
    let device = ad();
    let c = 4;
    let rm = values(c, 30, 0.5, 0.3);
    let rv = values(c, 31, 0.5, 1.5);
    let w = param([c], 32, 0.5, 1.0);
    let b = param([c], 33, 0.5, 0.0);
    let shape = match axis {
        ChannelAxis::First => [5, c, 6],
        ChannelAxis::Last => [5, 6, c],
    };
    let x = leaf(shape, 34, 2.0, 0.7);
    let (y, running, count) = if renorm {
        let mut brn = BatchRenormConfig::new(c)
            .with_r_max(1.0)
            .with_d_max(0.0)
            .with_channel_axis(axis)
            .init(&device);
        brn.weight = Some(w.clone());
        brn.bias = Some(b.clone());
        brn.running_mean = RunningState::new(from_vec(rm, [c], &device));
        brn.running_var = RunningState::new(from_vec(rv, [c], &device));
        let y = brn.forward(x.clone());
        let running = (brn.running_mean.value_sync(), brn.running_var.value_sync());
        (y, running, brn.num_batches_tracked.value_sync())
    } else {
        let mut bn = BatchNormConfig::new(c)
            .with_channel_axis(axis)
            .init(&device);
        bn.weight = Some(w.clone());
        bn.bias = Some(b.clone());
        bn.running_mean = Some(RunningState::new(from_vec(rm, [c], &device)));
        bn.running_var = Some(RunningState::new(from_vec(rv, [c], &device)));
        let y = bn.forward(x.clone());
        let running = (
            bn.running_mean.unwrap().value_sync(),
            bn.running_var.unwrap().value_sync(),
        );
        (y, running, bn.num_batches_tracked.unwrap().value_sync())
    };
    let r = tensor(shape, 35, &device);
    let grads = (y.clone() * r).sum().backward();
    vec![
        read(y),
        read(x.grad(&grads).unwrap()),
        read(w.val().grad(&grads).unwrap()),
        read(b.val().grad(&grads).unwrap()),
        read(running.0),
        read(running.1),
        read(count),
    ]
}

#[test]
fn batch_renorm_with_unit_bounds_is_batch_norm() {
    let names = [
        "y",
        "dx",
        "dweight",
        "dbias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ];
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        // Fused: the same kernels with r = 1, d = 0, bit for bit.
        let (brn, bn) = (bn_step(true, axis), bn_step(false, axis));
        for ((name, a), b) in names.iter().zip(&brn).zip(&bn) {
            assert_close(&format!("fused {axis:?} {name}"), a, b, 0.0, 0.0);
        }
        let (brn, bn) = with_route(Route::Composed, || {
            (bn_step(true, axis), bn_step(false, axis))
        });
        for ((name, a), b) in names.iter().zip(&brn).zip(&bn) {
            assert_close(&format!("composed {axis:?} {name}"), a, b, 1e-6, 1e-6);
        }
    }
}

#[test]
fn ada_layer_norm_zero_init_starts_as_the_plain_norm() {
    let device = ad();
    let (n, t, d, d_cond) = (3, 4, 8, 6);
    for route in [Route::Auto, Route::Composed] {
        for rms in [false, true] {
            let layer = AdaLayerNormConfig::new(d, d_cond)
                .with_rms(rms)
                .with_gate(true)
                .init(&device);
            assert!(
                layer.weight.is_none() && layer.bias.is_none(),
                "DiT's norm has no affine"
            );
            let x = leaf([n, t, d], 40, 2.0, 0.5);
            let cond = leaf([n, d_cond], 41, 1.0, 0.0);
            let (out, plain) = with_route(route, || {
                let out = layer.forward(x.clone(), cond.clone());
                let plain = if rms {
                    functional::rms_norm(x.clone(), &[d], None, 1e-6)
                } else {
                    functional::layer_norm(x.clone(), &[d], None, None, 1e-6)
                };
                (out, plain.unwrap())
            });
            let name = format!("{route:?} rms={rms}");
            assert_close(
                &format!("{name} output"),
                &read(out.output.clone()),
                &read(plain),
                1e-6,
                0.0,
            );
            let gate = out.gate.expect("gate");
            assert_eq!(gate.dims(), [n, d]);
            assert!(
                read(gate.clone()).iter().all(|&g| g == 0.0),
                "{name}: gate starts at zero"
            );
            // The modulation learns: its weight and bias take gradient
            // from both the output and the gate.
            let r = tensor([n, t, d], 42, &device);
            let rg = tensor([n, d], 43, &device);
            let grads = with_route(route, || {
                ((out.output * r).sum() + (gate * rg).sum()).backward()
            });
            let dw = read(
                layer
                    .modulation
                    .weight
                    .val()
                    .grad(&grads)
                    .expect("modulation.weight gradient"),
            );
            let db = read(
                layer
                    .modulation
                    .bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .grad(&grads)
                    .expect("modulation.bias gradient"),
            );
            assert_eq!(dw.len(), d_cond * 3 * d);
            // Every column (shift, scale and gate) moves.
            let cols = 3 * d;
            for j in 0..cols {
                let col = (0..d_cond)
                    .map(|i| dw[i * cols + j].abs())
                    .fold(0.0, f64::max);
                assert!(
                    col > 1e-4,
                    "{name}: modulation.weight column {j} has no gradient"
                );
                assert!(
                    db[j].abs() > 1e-6,
                    "{name}: modulation.bias[{j}] has no gradient"
                );
            }
            assert!(x.grad(&grads).is_some() && cond.grad(&grads).is_some());
        }
    }
}

#[test]
fn switch_norm_importances_and_running_statistics() {
    let device = ad();
    let sn = SwitchNormConfig::new(3).init(&device);
    let (m, v) = sn.importances();
    for w in m.iter().chain(&v) {
        assert!((w - 1.0 / 3.0).abs() < 1e-7);
    }
    let mut sn = sn;
    sn.mean_weight = Param::from_tensor(from_vec(vec![0.0, 1.0, 2.0], [3], &device));
    let (m, _) = sn.importances();
    let z: f64 = [0.0f64, 1.0, 2.0].iter().map(|v| v.exp()).sum();
    for (k, w) in m.iter().enumerate() {
        assert!(
            (*w as f64 - (k as f64).exp() / z).abs() < 1e-7,
            "importance {k}: {w}"
        );
    }
    // A training step moves the running statistics; inference does not.
    let x = tensor([4, 3, 5], 44, &device)
        .mul_scalar(3.0)
        .add_scalar(1.0);
    sn.forward(x.clone());
    let after = read(sn.running_mean.value_sync());
    assert!(
        after.iter().all(|&v| v != 0.0),
        "running mean moved: {after:?}"
    );
    let eval = sn.valid();
    eval.forward(tensor([4, 3, 5], 45, &Device::flex()));
    assert_close(
        "eval keeps running_mean",
        &read(eval.running_mean.value()),
        &after,
        0.0,
        0.0,
    );
}

#[test]
fn batch_renorm_schedule_relaxes_with_the_step_count() {
    let device = ad();
    let brn = BatchRenormConfig::new(2)
        .with_r_max(3.0)
        .with_d_max(5.0)
        .with_schedule(Some(
            RenormScheduleConfig::new()
                .with_warmup(1)
                .with_r_max_at(5)
                .with_d_max_at(3),
        ))
        .init(&device);
    let schedule = normkit::RenormSchedule {
        warmup: 1,
        r_max_at: 5,
        d_max_at: 3,
        r_max: 3.0,
        d_max: 5.0,
    };
    assert_eq!(brn.limits(), (1.0, 0.0), "BatchNorm during warmup");
    for step in 0..6u64 {
        let (r, d) = schedule.limits(step);
        assert_eq!(brn.limits(), (r as f64, d as f64), "step {step}");
        brn.forward(tensor([4, 2, 3], 46 + step, &device));
    }
    assert_eq!(brn.limits(), (3.0, 5.0));
    assert_eq!(read(brn.num_batches_tracked.value_sync()), [6.0]);
    let fixed = BatchRenormConfig::new(2).init(&device);
    assert_eq!(fixed.limits(), (3.0, 5.0));
}

#[test]
fn bad_configurations_and_inputs_are_errors() {
    let device = ad();
    assert!(BatchRenormConfig::new(2)
        .with_r_max(0.5)
        .try_init(&device)
        .is_err());
    assert!(BatchRenormConfig::new(2)
        .with_d_max(-1.0)
        .try_init(&device)
        .is_err());
    assert!(BatchRenormConfig::new(2)
        .with_r_max(f64::INFINITY)
        .try_init(&device)
        .is_err());
    assert!(SwitchNormConfig::new(0).try_init(&device).is_err());
    assert!(AdaLayerNormConfig::new(4, 0).try_init(&device).is_err());
    assert!(AdaInConfig::new().with_eps(-1.0).try_init(&device).is_err());

    let ada = AdaLayerNormConfig::new(4, 3).init(&device);
    let e = ada
        .try_forward(tensor([2, 5, 4], 50, &device), tensor([3, 3], 51, &device))
        .unwrap_err();
    assert!(e.to_string().contains("cond"), "{e}");
    assert!(ada
        .try_forward(tensor([2, 5, 6], 52, &device), tensor([2, 3], 53, &device))
        .is_err());
    let adain = AdaInConfig::new().init(&device);
    let e = adain
        .try_forward(
            tensor([2, 3, 4], 54, &device),
            tensor([2, 4, 4], 55, &device),
        )
        .unwrap_err();
    assert!(e.to_string().contains("adain"), "{e}");
    let sn = SwitchNormConfig::new(3).init(&device);
    assert!(matches!(
        sn.try_forward(tensor([2, 4, 5], 56, &device)),
        Err(Error::Channels { .. })
    ));
    let e = functional::switch_norm(
        tensor([2, 3, 5], 57, &device),
        None,
        None,
        tensor([2], 58, &device),
        tensor([3], 59, &device),
        None,
        true,
        &sn_cfg(normkit::ChannelAxis::First),
    )
    .unwrap_err();
    assert!(e.to_string().contains("mean_weight"), "{e}");
    // A refused training step leaves the running statistics and the count
    // as they were.
    let brn = BatchRenormConfig::new(3).init(&device);
    assert!(brn.try_forward(tensor([1, 3], 60, &device)).is_err());
    assert_eq!(read(brn.num_batches_tracked.value_sync()), [0.0]);
    assert_eq!(read(brn.running_mean.value_sync()), [0.0; 3]);
}

#[test]
fn composed_path_matches_on_another_backend() {
    // ndarray has no fused kernels: the composed path, with burn's own
    // autodiff, against the fused path on flex.
    #[allow(deprecated)]
    let nd = Device::ndarray().autodiff();
    assert!(!is_flex(&nd));
    let run = |device: &Device| -> Vec<Vec<f64>> {
        let x = from_vec(values(60, 61, 1.5, 0.2), [3, 4, 5], device).require_grad();
        let style = from_vec(values(24, 62, 1.0, 0.5), [3, 4, 2], device).require_grad();
        let cond = from_vec(values(6, 63, 1.0, 0.0), [3, 2], device).require_grad();
        let mut ada = AdaLayerNormConfig::new(5, 2)
            .with_gate(true)
            .with_zero_init(false)
            .init(device);
        ada.modulation.weight =
            Param::from_tensor(from_vec(values(30, 64, 0.5, 0.0), [2, 15], device));
        ada.modulation.bias = Some(Param::from_tensor(from_vec(
            values(15, 66, 0.5, 0.0),
            [15],
            device,
        )));
        let sn = SwitchNormConfig::new(4).init(device);
        let brn = BatchRenormConfig::new(4)
            .with_r_max(1.2)
            .with_d_max(0.1)
            .init(device);
        let out = ada.forward(x.clone(), cond.clone());
        let y = AdaInConfig::new()
            .init(device)
            .forward(x.clone(), style.clone())
            + out.output
            + sn.forward(x.clone())
            + brn.forward(x.clone().mul_scalar(2.0).add_scalar(1.0));
        let r = from_vec(values(60, 65, 1.0, 0.0), [3, 4, 5], device);
        let grads = ((y.clone() * r).sum() + out.gate.unwrap().sum()).backward();
        vec![
            read(y),
            read(x.grad(&grads).unwrap()),
            read(style.grad(&grads).unwrap()),
            read(cond.grad(&grads).unwrap()),
            read(sn.mean_weight.val().grad(&grads).unwrap()),
            read(brn.weight.as_ref().unwrap().val().grad(&grads).unwrap()),
            read(brn.running_var.value_sync()),
        ]
    };
    let before = fused_calls();
    let flex = run(&ad());
    assert!(
        fused_calls().backward >= before.backward + 4,
        "fused backward of all four ran"
    );
    let other = run(&nd);
    for (k, (a, b)) in flex.iter().zip(&other).enumerate() {
        assert_close(&format!("output {k} flex/ndarray"), b, a, 2e-5, 2e-4);
    }
}

/// A leaf of element type `dtype` on the autodiff flex device.
pub(super) fn typed<const D: usize>(shape: [usize; D], seed: u64, dtype: DType) -> Tensor<D> {
    let n = shape.iter().product();
    let opts = TensorCreationOptions::new(ad()).with_dtype(dtype);
    Tensor::from_data(TensorData::new(values(n, seed, 1.5, 0.3), shape), opts).require_grad()
}

/// Outputs and gradients of the four layers on inputs of `dtype` (the
/// parameters and the condition stay `f32`), checking that every output
/// and gradient keeps the element type of what it belongs to.
pub(super) fn half_run(dtype: DType) -> Vec<Vec<f64>> {
    let device = ad();
    let x = typed([3, 4, 6], 80, dtype);
    let style = typed([3, 4, 5], 81, dtype);
    let cond = leaf([3, 2], 82, 1.0, 0.0);
    let mut ada = AdaLayerNormConfig::new(6, 2)
        .with_elementwise_affine(true)
        .with_zero_init(false)
        .init(&device);
    ada.modulation.weight = param([2, 12], 83, 0.5, 0.0);
    ada.modulation.bias = Some(param([12], 84, 0.5, 0.0));
    let mut sn = SwitchNormConfig::new(4).init(&device);
    sn.mean_weight = param([3], 85, 1.0, 0.0);
    let brn = BatchRenormConfig::new(4)
        .with_r_max(1.3)
        .with_d_max(0.2)
        .init(&device);

    let before = fused_calls();
    let y_adain = AdaInConfig::new()
        .init(&device)
        .forward(x.clone(), style.clone());
    let y_ada = ada.forward(x.clone(), cond.clone()).output;
    let y_sn = sn.forward(x.clone());
    let y_brn = brn.forward(x.clone());
    for y in [&y_adain, &y_ada, &y_sn, &y_brn] {
        assert_eq!(y.dtype(), dtype);
    }
    let r = tensor([3, 4, 6], 86, &device).cast(dtype);
    let total = y_adain.clone() + y_ada.clone() * 0.5 + y_sn.clone() * 0.25 + y_brn.clone() * 2.0;
    let grads = (total * r).sum().backward();
    let after = fused_calls();
    assert!(after.forward >= before.forward + 4 && after.backward >= before.backward + 4);
    let dx = x.grad(&grads).unwrap();
    let dstyle = style.grad(&grads).unwrap();
    assert_eq!((dx.dtype(), dstyle.dtype()), (dtype, dtype));
    let dcond = cond.grad(&grads).unwrap();
    let dmod = ada.modulation.weight.val().grad(&grads).unwrap();
    let dmean_weight = sn.mean_weight.val().grad(&grads).unwrap();
    let dweight = brn.weight.as_ref().unwrap().val().grad(&grads).unwrap();
    for g in [
        dmean_weight.dtype(),
        dweight.dtype(),
        dcond.dtype(),
        dmod.dtype(),
    ] {
        assert_eq!(
            g,
            DType::F32,
            "parameter gradients keep the parameters' type"
        );
    }
    vec![
        read(y_adain),
        read(y_ada),
        read(y_sn),
        read(y_brn),
        read(dx),
        read(dstyle),
        read(dcond),
        read(dmod),
        read(dmean_weight),
        read(dweight),
    ]
}

#[test]
fn half_precision_inputs_take_the_fused_kernels() {
    let exact = half_run(DType::F32);
    for (dtype, atol, rtol) in [(DType::BF16, 0.1, 0.05), (DType::F16, 0.02, 0.01)] {
        let half = half_run(dtype);
        for (k, (a, b)) in half.iter().zip(&exact).enumerate() {
            assert_close(&format!("{dtype:?} result {k} vs f32"), a, b, atol, rtol);
        }
    }
}
