//! The adaptive layers (AdaIN, adaLN, Switchable Normalization, Batch
//! Renormalization): gradients of every input and parameter, fused against
//! composed against central finite differences in `f64`; the golden cases
//! 037–073 through the layers by both routes; the identities the layers
//! promise; and a small model training with each.

use std::collections::HashMap;

use burn::module::{Module, Param, RunningState};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{DType, Device, Gradients, Tensor, TensorCreationOptions, TensorData};
use normkit::Momentum;
use normkit_burn::functional;
use normkit_burn::*;

use crate::common::*;
use crate::golden::{cases, Case};

// ---------------------------------------------------------------------------
// Gradients three ways.

/// A differentiable quantity of a check: its values and how to read its
/// gradient after a backward pass.
struct Probe {
    name: &'static str,
    values: Vec<f64>,
    grad: Reader,
}

/// A probe on `t`, a leaf of the graph (an input or a parameter's value).
fn probe<const D: usize>(name: &'static str, t: Tensor<D>) -> Probe {
    let values = read(t.clone());
    Probe {
        name,
        values,
        grad: Box::new(move |g| read(t.grad(g).unwrap_or_else(|| panic!("{name}: no gradient")))),
    }
}

/// A leaf on the autodiff flex device that takes gradients.
fn leaf<const D: usize>(shape: [usize; D], seed: u64, scale: f32, shift: f32) -> Tensor<D> {
    let n = shape.iter().product();
    from_vec(values(n, seed, scale, shift), shape, &ad()).require_grad()
}

fn param<const D: usize>(shape: [usize; D], seed: u64, scale: f32, shift: f32) -> Param<Tensor<D>> {
    let n = shape.iter().product();
    Param::from_tensor(from_vec(values(n, seed, scale, shift), shape, &ad()))
}

fn f64_tensor(v: &[f64]) -> Tensor<1> {
    let opts = TensorCreationOptions::new(Device::flex()).with_dtype(DType::F64);
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), opts)
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n: usize = t.dims().iter().product();
    t.reshape([n])
}

/// The gradients of `sum(run() · r)` at each probe.
fn gradients(run: &dyn Fn() -> Tensor<1>, probes: &[Probe]) -> Vec<Vec<f64>> {
    let y = run();
    let n = y.dims()[0];
    let r = from_vec(values(n, 12, 1.0, 0.0), [n], &y.device());
    let grads = (y * r).sum().backward();
    probes.iter().map(|p| (p.grad)(&grads)).collect()
}

/// Checks the gradients of `run` (a layer's output, flattened) at every
/// probe: the fused path against the composed path, and both against
/// central finite differences of `op`, the same function of the probes'
/// values (flattened, in order) evaluated in `f64`.
fn check(
    name: &str,
    probes: &[Probe],
    run: impl Fn() -> Tensor<1>,
    op: impl Fn(&[Tensor<1>]) -> Tensor<1>,
) {
    let before = fused_calls();
    let fused = gradients(&run, probes);
    let after = fused_calls();
    assert!(after.forward > before.forward, "{name}: fused forward ran");
    assert!(
        after.backward > before.backward,
        "{name}: fused backward ran"
    );
    let composed = with_route(Route::Composed, || gradients(&run, probes));
    for ((p, a), b) in probes.iter().zip(&fused).zip(&composed) {
        assert_close(
            &format!("{name} d{} fused/composed", p.name),
            a,
            b,
            2e-5,
            2e-4,
        );
    }

    let n = read(run()).len();
    let r: Vec<f64> = values(n, 12, 1.0, 0.0).iter().map(|&v| v as f64).collect();
    let r = f64_tensor(&r);
    let loss = |vals: &[Vec<f64>]| -> f64 {
        let inputs: Vec<Tensor<1>> = vals.iter().map(|v| f64_tensor(v)).collect();
        read((op(&inputs) * r.clone()).sum())[0]
    };
    let base: Vec<Vec<f64>> = probes.iter().map(|p| p.values.clone()).collect();
    for (k, p) in probes.iter().enumerate() {
        let len = p.values.len();
        let mut picks: Vec<usize> = (0..len).step_by((len / 6).max(1)).collect();
        picks.push(len - 1);
        picks.dedup();
        for j in picks {
            let h = 1e-4 * base[k][j].abs().max(1.0);
            let at = |d: f64| {
                let mut v = base.clone();
                v[k][j] += d;
                loss(&v)
            };
            let g = (at(h) - at(-h)) / (2.0 * h);
            for (route, got) in [("fused", &fused), ("composed", &composed)] {
                assert_close(
                    &format!("{name} d{}[{j}] ({route}) vs finite difference", p.name),
                    &[got[k][j]],
                    &[g],
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

fn adain_cfg(unbiased: bool, axis: normkit::ChannelAxis) -> normkit::AdaInConfig {
    normkit::AdaInConfig {
        eps: 1e-5,
        unbiased,
        channel_axis: axis,
    }
}

#[test]
fn adain_gradients_reach_content_and_style() {
    // Channels first with a style of another spatial size; channels last
    // with the biased variance.
    for (axis, nk_axis, unbiased, x_shape, s_shape) in [
        (
            ChannelAxis::First,
            normkit::ChannelAxis::First,
            true,
            [2, 3, 4, 5],
            [2, 3, 6, 3],
        ),
        (
            ChannelAxis::Last,
            normkit::ChannelAxis::Last,
            false,
            [2, 5, 2, 4],
            [2, 3, 3, 4],
        ),
    ] {
        let layer = AdaInConfig::new()
            .with_unbiased(unbiased)
            .with_channel_axis(axis)
            .init(&ad());
        let x = leaf(x_shape, 1, 1.5, 0.3);
        let style = leaf(s_shape, 2, 2.0, -0.5);
        let probes = [probe("content", x.clone()), probe("style", style.clone())];
        let cfg = adain_cfg(unbiased, nk_axis);
        check(
            &format!("AdaIn {axis:?}"),
            &probes,
            || flat(layer.forward(x.clone(), style.clone())),
            |p| {
                let x = p[0].clone().reshape(x_shape);
                let s = p[1].clone().reshape(s_shape);
                flat(functional::adain(x, s, &cfg).unwrap())
            },
        );
    }
}

/// `modulation(cond)` in `f64` for the finite differences: `cond · W + b`.
fn linear64(cond: Tensor<1>, w: Tensor<1>, b: Tensor<1>, n: usize, d_in: usize) -> Tensor<2> {
    let d_out = w.dims()[0] / d_in;
    cond.reshape([n, d_in]).matmul(w.reshape([d_in, d_out])) + b.reshape([1, d_out])
}

#[test]
fn ada_layer_norm_gradients_reach_input_condition_and_every_parameter() {
    let (n, t, d, d_cond) = (2, 3, 8, 5);
    for rms in [false, true] {
        let mut layer = AdaLayerNormConfig::new(d, d_cond)
            .with_rms(rms)
            .with_elementwise_affine(true)
            .with_gate(true)
            .with_zero_init(false)
            .init(&ad());
        layer.modulation.weight = param([d_cond, 3 * d], 3, 0.4, 0.0);
        layer.modulation.bias = Some(param([3 * d], 4, 0.3, 0.0));
        layer.weight = Some(param([d], 5, 0.5, 1.0));
        if !rms {
            layer.bias = Some(param([d], 6, 0.5, 0.0));
        }
        assert_eq!(layer.bias.is_some(), !rms);
        let x = leaf([n, t, d], 7, 1.5, 0.3);
        let cond = leaf([n, d_cond], 8, 1.0, 0.0);
        let mut probes = vec![
            probe("x", x.clone()),
            probe("cond", cond.clone()),
            probe("modulation.weight", layer.modulation.weight.val()),
            probe(
                "modulation.bias",
                layer.modulation.bias.as_ref().unwrap().val(),
            ),
            probe("weight", layer.weight.as_ref().unwrap().val()),
        ];
        if let Some(b) = &layer.bias {
            probes.push(probe("bias", b.val()));
        }
        let eps = layer.eps as f32;
        check(
            &format!("AdaLayerNorm rms={rms}"),
            &probes,
            || {
                let out = layer.forward(x.clone(), cond.clone());
                // The gate is part of the output: its gradient reaches the
                // modulation too.
                Tensor::cat(vec![flat(out.output), flat(out.gate.expect("gate"))], 0)
            },
            |p| {
                let m = linear64(p[1].clone(), p[2].clone(), p[3].clone(), n, d_cond);
                let shift = m.clone().narrow(1, 0, d);
                let scale = m.clone().narrow(1, d, d);
                let gate = m.narrow(1, 2 * d, d);
                let x = p[0].clone().reshape([n, t, d]);
                let w = Some(p[4].clone());
                let y = if rms {
                    functional::ada_rms_norm(x, &[d], scale, shift, w, eps)
                } else {
                    functional::ada_layer_norm(x, &[d], scale, shift, w, Some(p[5].clone()), eps)
                };
                Tensor::cat(vec![flat(y.unwrap()), flat(gate)], 0)
            },
        );
    }
}

#[test]
fn film_over_two_trailing_dims_gradients() {
    // The functional form with scale and shift from anywhere, no affine
    // parameters, normalized_shape of two dimensions.
    let (n, t) = (2, 3);
    let ns = [3, 4];
    let x = leaf([n, t, 3, 4], 9, 2.0, -0.4);
    let scale = leaf([n, 12], 10, 0.5, 0.0);
    let shift = leaf([n, 12], 11, 0.5, 0.0);
    let probes = [
        probe("x", x.clone()),
        probe("scale", scale.clone()),
        probe("shift", shift.clone()),
    ];
    for rms in [false, true] {
        let run = |x: Tensor<4>, scale: Tensor<2>, shift: Tensor<2>| {
            if rms {
                functional::ada_rms_norm(x, &ns, scale, shift, None, 1e-5).unwrap()
            } else {
                functional::ada_layer_norm(x, &ns, scale, shift, None, None, 1e-5).unwrap()
            }
        };
        check(
            &format!("film rms={rms}"),
            &probes,
            || flat(run(x.clone(), scale.clone(), shift.clone())),
            |p| {
                flat(run(
                    p[0].clone().reshape([n, t, 3, 4]),
                    p[1].clone().reshape([n, 12]),
                    p[2].clone().reshape([n, 12]),
                ))
            },
        );
    }
}

fn sn_cfg(axis: normkit::ChannelAxis) -> normkit::SwitchNormConfig {
    normkit::SwitchNormConfig {
        eps: 1e-5,
        momentum: Momentum::Exponential(0.1),
        channel_axis: axis,
    }
}

#[test]
fn switch_norm_gradients_in_training_and_inference() {
    for (training, axis, nk_axis, shape) in [
        (
            true,
            ChannelAxis::First,
            normkit::ChannelAxis::First,
            [3, 4, 5],
        ),
        (
            false,
            ChannelAxis::Last,
            normkit::ChannelAxis::Last,
            [3, 5, 4],
        ),
    ] {
        let mut sn = SwitchNormConfig::new(4).with_channel_axis(axis).init(&ad());
        sn.weight = Some(param([4], 13, 0.5, 1.0));
        sn.bias = Some(param([4], 14, 0.5, 0.0));
        sn.mean_weight = param([3], 15, 1.0, 0.0);
        sn.var_weight = param([3], 16, 1.0, 0.0);
        let rm = values(4, 17, 0.5, 0.2);
        let rv = values(4, 18, 0.5, 1.2);
        sn.running_mean = RunningState::new(from_vec(rm.clone(), [4], &ad()));
        sn.running_var = RunningState::new(from_vec(rv.clone(), [4], &ad()));
        if !training {
            sn.training = Param::from_bool(false);
        }
        let x = leaf(shape, 19, 1.5, 0.3);
        let probes = [
            probe("x", x.clone()),
            probe("weight", sn.weight.as_ref().unwrap().val()),
            probe("bias", sn.bias.as_ref().unwrap().val()),
            probe("mean_weight", sn.mean_weight.val()),
            probe("var_weight", sn.var_weight.val()),
        ];
        let cfg = sn_cfg(nk_axis);
        let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
        let (rm64, rv64) = (to64(&rm), to64(&rv));
        check(
            &format!("SwitchNorm training={training}"),
            &probes,
            || flat(sn.forward(x.clone())),
            |p| {
                let running = Some((f64_tensor(&rm64), f64_tensor(&rv64)));
                functional::switch_norm(
                    p[0].clone().reshape(shape),
                    Some(p[1].clone()),
                    Some(p[2].clone()),
                    p[3].clone(),
                    p[4].clone(),
                    running,
                    training,
                    &cfg,
                )
                .map(|(y, _)| flat(y))
                .unwrap()
            },
        );
    }
}

/// Batch Renormalization's training output in `f64` with `r` and `d`
/// given: the function whose derivative the layer's backward computes.
fn renorm64(
    x: Tensor<1>,
    shape: [usize; 3],
    w: Tensor<1>,
    b: Tensor<1>,
    r: &[f64],
    d: &[f64],
    eps: f64,
) -> Tensor<1> {
    let c = shape[1];
    let x = x.reshape(shape);
    let mean = x.clone().mean_dim(0).mean_dim(2);
    let centered = x - mean;
    let var = (centered.clone() * centered.clone())
        .mean_dim(0)
        .mean_dim(2);
    let per_channel = |v: Tensor<1>| v.reshape([1, c, 1]);
    let y = centered / var.add_scalar(eps).sqrt() * per_channel(f64_tensor(r))
        + per_channel(f64_tensor(d));
    flat(y * per_channel(w) + per_channel(b))
}

/// `r` and `d` of a training step in `f64`, from the batch `x` (`[n, c, s]`)
/// and the running statistics before the step.
fn corrections(
    x: &[f64],
    shape: [usize; 3],
    rm: &[f64],
    rv: &[f64],
    eps: f64,
    r_max: f64,
    d_max: f64,
) -> (Vec<f64>, Vec<f64>) {
    let [n, c, s] = shape;
    let (mut r, mut d) = (vec![], vec![]);
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| (0..s).map(move |j| (i, j)))
            .map(|(i, j)| x[(i * c + ch) * s + j])
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        let sigma = (rv[ch] + eps).sqrt();
        r.push(((var + eps).sqrt() / sigma).clamp(1.0 / r_max, r_max));
        d.push(((mean - rm[ch]) / sigma).clamp(-d_max, d_max));
    }
    (r, d)
}

#[test]
fn batch_renorm_gradients_hold_r_and_d_constant() {
    let shape = [4, 3, 5];
    // Tight bounds and running statistics away from the batch's, so that
    // some channels clip and others do not.
    let (r_max, d_max) = (1.5, 0.25);
    let mut brn = BatchRenormConfig::new(3)
        .with_r_max(r_max)
        .with_d_max(d_max)
        .init(&ad());
    brn.weight = Some(param([3], 20, 0.5, 1.0));
    brn.bias = Some(param([3], 21, 0.5, 0.0));
    let rm = vec![0.1f32, 0.9, -0.05];
    let rv = vec![0.9f32, 4.0, 0.2];
    let x = leaf(shape, 22, 1.5, 0.3);
    let probes = [
        probe("x", x.clone()),
        probe("weight", brn.weight.as_ref().unwrap().val()),
        probe("bias", brn.bias.as_ref().unwrap().val()),
    ];
    let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    let (r, d) = corrections(
        &probes[0].values,
        shape,
        &to64(&rm),
        &to64(&rv),
        1e-5,
        r_max,
        d_max,
    );
    assert!(
        r.iter().any(|&v| v == r_max || v == 1.0 / r_max),
        "some r clips: {r:?}"
    );
    assert!(
        r.iter().any(|&v| v != r_max && v != 1.0 / r_max),
        "some r does not: {r:?}"
    );
    assert!(d.iter().any(|&v| v.abs() == d_max), "some d clips: {d:?}");
    check(
        "BatchRenorm training",
        &probes,
        || {
            // Every run starts from the same running statistics.
            brn.running_mean.update(from_vec(rm.clone(), [3], &ad()));
            brn.running_var.update(from_vec(rv.clone(), [3], &ad()));
            flat(brn.forward(x.clone()))
        },
        |p| {
            renorm64(
                p[0].clone(),
                shape,
                p[1].clone(),
                p[2].clone(),
                &r,
                &d,
                1e-5,
            )
        },
    );
}

#[test]
fn batch_renorm_inference_gradients_are_batch_norms() {
    let shape = [2, 3, 4];
    let mut brn = BatchRenormConfig::new(3).init(&ad());
    brn.weight = Some(param([3], 23, 0.5, 1.0));
    brn.bias = Some(param([3], 24, 0.5, 0.0));
    let rm = values(3, 25, 0.5, 0.0);
    let rv = values(3, 26, 0.5, 1.0);
    brn.running_mean = RunningState::new(from_vec(rm.clone(), [3], &ad()));
    brn.running_var = RunningState::new(from_vec(rv.clone(), [3], &ad()));
    brn.training = Param::from_bool(false);
    let x = leaf(shape, 27, 1.5, 0.3);
    let probes = [
        probe("x", x.clone()),
        probe("weight", brn.weight.as_ref().unwrap().val()),
        probe("bias", brn.bias.as_ref().unwrap().val()),
    ];
    let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    let (rm64, rv64) = (to64(&rm), to64(&rv));
    let cfg = normkit::BatchNormConfig::default();
    check(
        "BatchRenorm eval",
        &probes,
        || flat(brn.forward(x.clone())),
        |p| {
            let running = Some((f64_tensor(&rm64), f64_tensor(&rv64)));
            let x = p[0].clone().reshape(shape);
            let (y, _) = functional::batch_norm(
                x,
                Some(p[1].clone()),
                Some(p[2].clone()),
                running,
                false,
                &cfg,
            )
            .unwrap();
            flat(y)
        },
    );
    // Inference leaves the statistics and the count alone.
    assert_close(
        "running_mean",
        &read(brn.running_mean.value()),
        &to64(&rm),
        0.0,
        0.0,
    );
    assert_eq!(read(brn.num_batches_tracked.value()), [0.0]);
}

// ---------------------------------------------------------------------------
// Golden cases 037–073.

const ADAPTIVE_OPS: [&str; 5] = [
    "adain",
    "ada_layer_norm",
    "ada_rms_norm",
    "switch_norm",
    "batch_renorm",
];

/// Whether a golden case belongs to this module.
pub fn is_adaptive(case: &Case) -> bool {
    case.get("op").is_some_and(|op| ADAPTIVE_OPS.contains(&op))
}

type Outputs = HashMap<&'static str, Vec<f64>>;
type Reader = Box<dyn Fn(&Gradients) -> Vec<f64>>;

fn reader<const D: usize>(t: Tensor<D>) -> Reader {
    Box::new(move |g| read(t.grad(g).expect("gradient")))
}

fn f32s(case: &Case, key: &str) -> Vec<f32> {
    case.tensor(key).1.iter().map(|&v| v as f32).collect()
}

fn input<const D: usize>(case: &Case, key: &str, device: &Device) -> Tensor<D> {
    let (shape, _) = case.tensor(key);
    let shape: [usize; D] = shape
        .try_into()
        .unwrap_or_else(|_| panic!("{}: rank of {key}", case.name));
    from_vec(f32s(case, key), shape, device)
}

fn vector(case: &Case, key: &str, device: &Device) -> Tensor<1> {
    let v = f32s(case, key);
    let n = v.len();
    from_vec(v, [n], device)
}

fn param_of(case: &Case, key: &str, device: &Device) -> Option<Param<Tensor<1>>> {
    case.has(key)
        .then(|| Param::from_tensor(vector(case, key, device)))
}

fn normalized_shape(case: &Case) -> Vec<usize> {
    case.get("normalized_shape")
        .unwrap()
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

/// Runs `y` backward with the case's `dy` and collects the named gradients.
fn finish<const D: usize>(
    case: &Case,
    y: Tensor<D>,
    readers: Vec<(&'static str, Reader)>,
    mut out: Outputs,
) -> Outputs {
    let device = y.device();
    out.insert("y", read(y.clone()));
    if case.has("dy") {
        let grads = (y * input::<D>(case, "dy", &device)).sum().backward();
        for (name, r) in readers {
            out.insert(name, r(&grads));
        }
    }
    out
}

/// One case through one way of running it (`via`); `Err` when refused.
fn run<const D: usize>(case: &Case, via: &str) -> Result<Outputs> {
    let device = ad();
    let op = case.get("op").unwrap();
    let x = input::<D>(case, "x", &device).require_grad();
    let mut readers: Vec<(&'static str, Reader)> = vec![("dx", reader(x.clone()))];
    let mut out = Outputs::new();
    let y = match (op, via) {
        ("adain", _) => {
            let layer = AdaInConfig::new()
                .with_eps(case.eps())
                .with_unbiased(case.flag("unbiased"))
                .with_channel_axis(case.axis())
                .try_init(&device)?;
            let style = input::<D>(case, "style", &device).require_grad();
            readers.push(("dstyle", reader(style.clone())));
            layer.try_forward(x, style)?
        }
        ("ada_layer_norm" | "ada_rms_norm", "functional") => {
            let ns = normalized_shape(case);
            let rows = |key: &str| {
                let (shape, _) = case.tensor(key);
                let v = f32s(case, key);
                let n = shape[0];
                let len = v.len();
                from_vec(v, [n, len / n], &device).require_grad()
            };
            let (scale, shift) = (rows("scale"), rows("shift"));
            readers.push(("dscale", reader(scale.clone())));
            readers.push(("dshift", reader(shift.clone())));
            let weight = param_of(case, "weight", &device).map(|p| p.val());
            let bias = param_of(case, "bias", &device).map(|p| p.val());
            if let Some(w) = &weight {
                readers.push(("dweight", reader(w.clone())));
            }
            if let Some(b) = &bias {
                readers.push(("dbias", reader(b.clone())));
            }
            let eps = case.eps() as f32;
            if op == "ada_rms_norm" {
                assert!(bias.is_none(), "{}: RMSNorm has no bias", case.name);
                functional::ada_rms_norm(x, &ns, scale, shift, weight, eps)?
            } else {
                functional::ada_layer_norm(x, &ns, scale, shift, weight, bias, eps)?
            }
        }
        ("ada_layer_norm" | "ada_rms_norm", _) => {
            // The layer with an identity modulation: cond = (shift, scale)
            // per sample, so the condition's gradient is (dshift, dscale).
            let d = normalized_shape(case)[0];
            let mut layer = AdaLayerNormConfig::new(d, 2 * d)
                .with_eps(case.eps())
                .with_rms(op == "ada_rms_norm")
                .with_elementwise_affine(case.has("weight"))
                .try_init(&device)?;
            layer.modulation.weight = Param::from_tensor(Tensor::eye(2 * d, &device));
            layer.weight = param_of(case, "weight", &device);
            layer.bias = param_of(case, "bias", &device);
            let (scale, shift) = (f32s(case, "scale"), f32s(case, "shift"));
            let n = scale.len() / d;
            let cond: Vec<f32> = (0..n)
                .flat_map(|k| [&shift[k * d..(k + 1) * d], &scale[k * d..(k + 1) * d]].concat())
                .collect();
            let cond = from_vec(cond, [n, 2 * d], &device).require_grad();
            let c = cond.clone();
            readers.push((
                "dshift",
                Box::new(move |g| read(c.grad(g).unwrap().narrow(1, 0, d))),
            ));
            let c = cond.clone();
            readers.push((
                "dscale",
                Box::new(move |g| read(c.grad(g).unwrap().narrow(1, d, d))),
            ));
            if let Some(w) = &layer.weight {
                readers.push(("dweight", reader(w.val())));
            }
            if let Some(b) = &layer.bias {
                readers.push(("dbias", reader(b.val())));
            }
            let y = layer.try_forward(x, cond)?;
            assert!(y.gate.is_none());
            y.output
        }
        ("switch_norm", _) => {
            let c = case.tensor("running_mean").1.len();
            let mut sn = SwitchNormConfig::new(c)
                .with_eps(case.eps())
                .with_momentum(case.get("momentum").unwrap().parse().unwrap())
                .with_affine(case.has("weight"))
                .with_channel_axis(case.axis())
                .try_init(&device)?;
            sn.weight = param_of(case, "weight", &device);
            sn.bias = param_of(case, "bias", &device);
            sn.mean_weight = Param::from_tensor(vector(case, "mean_weight", &device));
            sn.var_weight = Param::from_tensor(vector(case, "var_weight", &device));
            sn.running_mean = RunningState::new(vector(case, "running_mean", &device));
            sn.running_var = RunningState::new(vector(case, "running_var", &device));
            if !case.flag("training") {
                sn.training = Param::from_bool(false);
            }
            for (name, p) in [("dweight", &sn.weight), ("dbias", &sn.bias)] {
                if let Some(p) = p {
                    readers.push((name, reader(p.val())));
                }
            }
            readers.push(("dmean_weight", reader(sn.mean_weight.val())));
            readers.push(("dvar_weight", reader(sn.var_weight.val())));
            let y = sn.try_forward(x)?;
            if case.flag("training") {
                out.insert("running_mean_out", read(sn.running_mean.value_sync()));
                out.insert("running_var_out", read(sn.running_var.value_sync()));
            }
            y
        }
        ("batch_renorm", _) => {
            let c = case.tensor("running_mean").1.len();
            let mut brn = BatchRenormConfig::new(c)
                .with_eps(case.eps())
                .with_momentum(Some(case.get("momentum").unwrap().parse().unwrap()))
                .with_affine(case.has("weight"))
                .with_channel_axis(case.axis())
                .with_r_max(case.get("r_max").unwrap().parse().unwrap())
                .with_d_max(case.get("d_max").unwrap().parse().unwrap())
                .try_init(&device)?;
            brn.weight = param_of(case, "weight", &device);
            brn.bias = param_of(case, "bias", &device);
            brn.running_mean = RunningState::new(vector(case, "running_mean", &device));
            brn.running_var = RunningState::new(vector(case, "running_var", &device));
            if !case.flag("training") {
                brn.training = Param::from_bool(false);
            }
            for (name, p) in [("dweight", &brn.weight), ("dbias", &brn.bias)] {
                if let Some(p) = p {
                    readers.push((name, reader(p.val())));
                }
            }
            let y = brn.try_forward(x)?;
            if case.flag("training") {
                out.insert("running_mean_out", read(brn.running_mean.value_sync()));
                out.insert("running_var_out", read(brn.running_var.value_sync()));
                assert_eq!(
                    read(brn.num_batches_tracked.value_sync()),
                    [1.0],
                    "{}: one step counted",
                    case.name
                );
            }
            y
        }
        (other, _) => panic!("{}: not an adaptive op: {other}", case.name),
    };
    Ok(finish(case, y, readers, out))
}

/// The ways a case runs: adaLN cases through the functional form and,
/// when they normalize one dimension, through the layer too.
fn ways(case: &Case) -> Vec<&'static str> {
    match case.get("op") {
        Some("ada_layer_norm" | "ada_rms_norm")
            if normalized_shape(case).len() == 1 && !case.flag("expect_error") =>
        {
            vec!["functional", "layer"]
        }
        Some("ada_layer_norm" | "ada_rms_norm") => vec!["functional"],
        _ => vec!["layer"],
    }
}

fn run_case(case: &Case, via: &str) -> Result<Outputs> {
    match case.tensor("x").0.len() {
        2 => run::<2>(case, via),
        3 => run::<3>(case, via),
        4 => run::<4>(case, via),
        5 => run::<5>(case, via),
        r => panic!("{}: rank {r}", case.name),
    }
}

const EXPECTED: [&str; 11] = [
    "y",
    "dx",
    "dstyle",
    "dscale",
    "dshift",
    "dweight",
    "dbias",
    "dmean_weight",
    "dvar_weight",
    "running_mean_out",
    "running_var_out",
];

fn check_golden(route: Route) {
    let (mut passed, mut refused) = (0, 0);
    for case in cases().into_iter().filter(is_adaptive) {
        for via in ways(&case) {
            let result = with_route(route, || run_case(&case, via));
            if case.flag("expect_error") {
                let e = result.err().unwrap_or_else(|| {
                    panic!(
                        "{} ({route:?}, {via}): accepted an invalid input",
                        case.name
                    )
                });
                assert!(!e.to_string().is_empty());
                refused += 1;
                continue;
            }
            let out = result.unwrap_or_else(|e| panic!("{} ({route:?}, {via}): {e}", case.name));
            let mut compared = 0;
            for name in EXPECTED.iter().filter(|n| case.has(n)) {
                let got = out.get(name).unwrap_or_else(|| {
                    panic!("{} ({route:?}, {via}): produced no {name}", case.name)
                });
                let (_, want) = case.tensor(name);
                assert_close(
                    &format!("{} ({route:?}, {via}) {name}", case.name),
                    got,
                    &want,
                    case.tol(name),
                    0.0,
                );
                compared += 1;
            }
            assert!(
                compared >= 2,
                "{}: only {compared} tensors compared",
                case.name
            );
            passed += 1;
        }
    }
    // 32 cases with expected values (the 10 adaLN cases over one
    // dimension also through the layer), 5 refused.
    assert_eq!((passed, refused), (32 + 10, 5), "adaptive golden cases run");
}

#[test]
fn golden_adaptive_cases_fused() {
    check_golden(Route::Auto);
}

#[test]
fn golden_adaptive_cases_composed() {
    check_golden(Route::Composed);
}

// ---------------------------------------------------------------------------
// Identities.

/// `(y, dx, dweight, dbias, running_mean, running_var)` of one training
/// step of BatchNorm or BatchRenorm built alike.
fn bn_step(renorm: bool, axis: ChannelAxis) -> Vec<Vec<f64>> {
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
fn typed<const D: usize>(shape: [usize; D], seed: u64, dtype: DType) -> Tensor<D> {
    let n = shape.iter().product();
    let opts = TensorCreationOptions::new(ad()).with_dtype(dtype);
    Tensor::from_data(TensorData::new(values(n, seed, 1.5, 0.3), shape), opts).require_grad()
}

/// Outputs and gradients of the four layers on inputs of `dtype` (the
/// parameters and the condition stay `f32`), checking that every output
/// and gradient keeps the element type of what it belongs to.
fn half_run(dtype: DType) -> Vec<Vec<f64>> {
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

// ---------------------------------------------------------------------------
// Training.

/// A tiny model around each layer: Adam on a fixed regression task.
trait Block: Module + burn::module::ModuleDisplay {
    /// `h`: `[batch, tokens, features]`; `cond`: `[batch, COND]`.
    fn apply(&self, h: Tensor<3>, cond: Tensor<2>) -> Tensor<3>;
}

const HIDDEN: usize = 8;
const COND: usize = 3;

impl Block for SwitchNorm {
    fn apply(&self, h: Tensor<3>, _: Tensor<2>) -> Tensor<3> {
        self.forward(h)
    }
}

impl Block for BatchRenorm {
    fn apply(&self, h: Tensor<3>, _: Tensor<2>) -> Tensor<3> {
        self.forward(h)
    }
}

impl Block for AdaLayerNorm {
    fn apply(&self, h: Tensor<3>, cond: Tensor<2>) -> Tensor<3> {
        let out = self.forward(h.clone(), cond);
        match out.gate {
            // A gated residual, as in DiT.
            Some(gate) => h + out.output * gate.unsqueeze_dim(1),
            None => out.output,
        }
    }
}

/// AdaIN of the features with a style computed from the condition.
#[derive(Module, Debug)]
struct StyleBlock {
    style: Linear,
    adain: AdaIn,
}

impl Block for StyleBlock {
    fn apply(&self, h: Tensor<3>, cond: Tensor<2>) -> Tensor<3> {
        // The style is [batch, 2 positions, HIDDEN] channels last.
        let [n, _] = cond.dims();
        let s = self.style.forward(cond).reshape([n, 2, HIDDEN]);
        self.adain.forward(h, s)
    }
}

#[derive(Module, Debug)]
struct Net<B: Block> {
    inp: Linear,
    block: B,
    out: Linear,
}

/// Trains `Net` with `block` for 80 steps; returns the first and last loss.
fn train<B: Block>(block: B) -> (f64, f64) {
    let device = ad();
    let mut net = Net {
        inp: LinearConfig::new(6, HIDDEN).init(&device),
        block,
        out: LinearConfig::new(HIDDEN, 1).init(&device),
    };
    let x = tensor([16, 4, 6], 71, &device).mul_scalar(2.0);
    let cond = tensor([16, COND], 73, &device);
    let teacher = tensor([6, 1], 72, &device);
    let target = x
        .clone()
        .tanh()
        .matmul(teacher.unsqueeze::<3>())
        .mul_scalar(2.0)
        + cond.clone().sum_dim(1).unsqueeze_dim::<3>(2);
    let mut optim = AdamConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..80 {
        let h = net.inp.forward(x.clone());
        let h = net.block.apply(h, cond.clone());
        let d = net.out.forward(burn::tensor::activation::relu(h)) - target.clone();
        let loss = (d.clone() * d).mean();
        losses.push(read(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(2e-2, net, grads);
    }
    (losses[0], *losses.last().unwrap())
}

fn assert_trains(name: &str, (first, last): (f64, f64)) {
    assert!(
        first.is_finite() && last.is_finite(),
        "{name}: {first} -> {last}"
    );
    assert!(last < 0.5 * first, "{name}: loss {first} -> {last}");
}

#[test]
fn trains_with_switch_norm() {
    let sn = SwitchNormConfig::new(HIDDEN)
        .with_channel_axis(ChannelAxis::Last)
        .init(&ad());
    assert_trains("SwitchNorm", train(sn));
}

#[test]
fn trains_with_batch_renorm() {
    let brn = BatchRenormConfig::new(HIDDEN)
        .with_channel_axis(ChannelAxis::Last)
        .with_schedule(Some(
            RenormScheduleConfig::new()
                .with_warmup(10)
                .with_r_max_at(40)
                .with_d_max_at(30),
        ))
        .init(&ad());
    assert_trains("BatchRenorm", train(brn));
}

#[test]
fn trains_with_ada_layer_norm() {
    for rms in [false, true] {
        let ada = AdaLayerNormConfig::new(HIDDEN, COND)
            .with_rms(rms)
            .with_gate(true)
            .init(&ad());
        assert_trains(&format!("AdaLayerNorm rms={rms}"), train(ada));
    }
}

#[test]
fn trains_with_adain() {
    let block = StyleBlock {
        style: LinearConfig::new(COND, 2 * HIDDEN).init(&ad()),
        adain: AdaInConfig::new()
            .with_channel_axis(ChannelAxis::Last)
            .init(&ad()),
    };
    assert_trains("AdaIn", train(block));
}
