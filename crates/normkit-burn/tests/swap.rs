//! A model written against `burn::nn` switches to normkit's layers by one
//! `use` line: it builds, loads the other's record by the same names,
//! computes the same outputs and gradients, and saves a record the other
//! loads back.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};
use normkit_burn::fused_calls;

use crate::common::*;

mod burn_nn {
    use burn::nn::{
        BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
        LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig,
    };
    include!("swap_model.rs");
}

mod normkit_nn {
    use normkit_burn::nn::{
        BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
        LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig,
    };
    include!("swap_model.rs");
}

/// `sum(y · r)` for fixed `r`, backward; the gradients of the input and of
/// the named parameters.
fn step(
    y: Tensor<2>,
    x: &Tensor<2>,
    params: Vec<(&'static str, Tensor<1>)>,
    weight: Tensor<2>,
) -> Vec<(&'static str, Vec<f64>)> {
    let [n, d] = y.dims();
    let grads = (y * tensor([n, d], 7, &ad())).sum().backward();
    let mut out = vec![("x", read(x.grad(&grads).unwrap()))];
    out.push(("fc1.weight", read(weight.grad(&grads).unwrap())));
    for (name, p) in params {
        out.push((name, read(p.grad(&grads).unwrap())));
    }
    out
}

/// Gives a linear layer fixed weights and bias in `±1/√fan_in` (burn's
/// default init draws from a process-wide generator that other tests share,
/// so the model would differ from run to run).
fn fix(linear: &mut Linear, seed: u64, device: &Device) {
    let [fan_in, fan_out] = linear.weight.dims();
    let k = 1.0 / (fan_in as f32).sqrt();
    let w = values(fan_in * fan_out, seed, k, 0.0);
    linear.weight = Param::from_tensor(from_vec(w, [fan_in, fan_out], device));
    let b = values(fan_out, seed + 1, k, 0.0);
    linear.bias = Some(Param::from_tensor(from_vec(b, [fan_out], device)));
}

/// Every norm parameter of a model, by record name. One macro for both
/// models: they are different types with the same fields.
macro_rules! norm_params {
    ($m:expr) => {{
        let m = &$m;
        let some = |p: &Option<burn::module::Param<Tensor<1>>>| p.as_ref().unwrap().val();
        vec![
            ("bn.gamma", m.bn.gamma.val()),
            ("bn.beta", m.bn.beta.val()),
            ("gn.gamma", some(&m.gn.gamma)),
            ("gn.beta", some(&m.gn.beta)),
            ("inorm.gamma", some(&m.inorm.gamma)),
            ("inorm.beta", some(&m.inorm.beta)),
            ("ln.gamma", m.ln.gamma.val()),
            ("ln.beta", some(&m.ln.beta)),
            ("rms.gamma", m.rms.gamma.val()),
        ]
    }};
}

#[test]
fn a_burn_nn_model_switches_by_its_use_line() {
    let device = ad();
    let mut theirs = burn_nn::Model::new(&device);
    fix(&mut theirs.fc1, 21, &device);
    fix(&mut theirs.fc2, 23, &device);
    // The same parameters, by the same record names.
    let ours = normkit_nn::Model::new(&device).load_record(theirs.clone().into_record());

    let x = tensor([16, 6], 3, &device).require_grad();
    let before = fused_calls();
    let y_ours = ours.forward(x.clone());
    let after = fused_calls();
    assert_eq!(after.forward - before.forward, 5, "every norm layer fused");
    let y_theirs = theirs.forward(x.clone());
    assert_close(
        "training output",
        &read(y_ours.clone()),
        &read(y_theirs.clone()),
        1e-5,
        1e-5,
    );

    let grads_ours = step(y_ours, &x, norm_params!(ours), ours.fc1.weight.val());
    let grads_theirs = step(y_theirs, &x, norm_params!(theirs), theirs.fc1.weight.val());
    assert_eq!(grads_ours.len(), 11);
    // Two f32 evaluations in different orders through six normalizations
    // of 2 to 8 values each: an element of a gradient that is a small
    // difference of large terms keeps little relative accuracy, so the
    // bound is relative to the gradient's largest element (1e-4 of it,
    // about 800 f32 ulps), far below what a wrong term would change.
    for ((name, a), (_, b)) in grads_ours.iter().zip(&grads_theirs) {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert_close(&format!("d{name}"), a, b, 1e-4 * scale, 1e-4);
    }
    assert!(
        fused_calls().backward > after.backward,
        "fused backward ran"
    );

    // The step moved both running means alike; the variance follows the
    // unbiased batch variance here (PyTorch's rule), the biased one in
    // burn::nn: their moves differ by n / (n - 1).
    let mean = |m: &normkit_nn::Model| read(m.bn.running_mean.value_sync());
    assert_close(
        "running_mean",
        &mean(&ours),
        &read(theirs.bn.running_mean.value_sync()),
        1e-6,
        1e-5,
    );
    let moved = |v: Vec<f64>| v.into_iter().map(|v| v - 0.8).collect::<Vec<_>>();
    let ours_var = moved(read(ours.bn.running_var.value_sync()));
    let theirs_var: Vec<f64> = moved(read(theirs.bn.running_var.value_sync()))
        .into_iter()
        .map(|v| v * 16.0 / 15.0)
        .collect();
    assert_close("running_var move", &ours_var, &theirs_var, 1e-6, 1e-4);

    // Inference from the same record computes the same thing, and our
    // record loads back into the burn::nn model.
    let plain = Device::flex();
    let theirs = burn_nn::Model::new(&plain).load_record(theirs.valid().into_record());
    let ours = normkit_nn::Model::new(&plain).load_record(theirs.clone().into_record());
    let back = burn_nn::Model::new(&plain).load_record(ours.clone().into_record());
    let x = tensor([4, 6], 4, &plain);
    let want = read(theirs.forward(x.clone()));
    assert_close(
        "inference",
        &read(ours.forward(x.clone())),
        &want,
        1e-5,
        1e-5,
    );
    assert_close("round trip", &read(back.forward(x)), &want, 0.0, 0.0);
}
