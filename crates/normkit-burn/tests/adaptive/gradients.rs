//! Gradients three ways: fused, composed, and central finite differences.

use burn::module::{Param, RunningState};
use burn::tensor::{DType, Device, Gradients, Tensor, TensorCreationOptions, TensorData};
use normkit::Momentum;
use normkit_burn::functional;
use normkit_burn::*;

use crate::common::*;

// ---------------------------------------------------------------------------
// Gradients three ways.

/// Reads one gradient after a backward pass.
pub(super) type Reader = Box<dyn Fn(&Gradients) -> Vec<f64>>;

/// A differentiable quantity of a check: its values and how to read its
/// gradient after a backward pass.
pub(super) struct Probe {
    name: &'static str,
    values: Vec<f64>,
    grad: Reader,
}

/// A probe on `t`, a leaf of the graph (an input or a parameter's value).
pub(super) fn probe<const D: usize>(name: &'static str, t: Tensor<D>) -> Probe {
    let values = read(t.clone());
    Probe {
        name,
        values,
        grad: Box::new(move |g| read(t.grad(g).unwrap_or_else(|| panic!("{name}: no gradient")))),
    }
}

/// A leaf on the autodiff flex device that takes gradients.
pub(super) fn leaf<const D: usize>(
    shape: [usize; D],
    seed: u64,
    scale: f32,
    shift: f32,
) -> Tensor<D> {
    let n = shape.iter().product();
    from_vec(values(n, seed, scale, shift), shape, &ad()).require_grad()
}

pub(super) fn param<const D: usize>(
    shape: [usize; D],
    seed: u64,
    scale: f32,
    shift: f32,
) -> Param<Tensor<D>> {
    let n = shape.iter().product();
    Param::from_tensor(from_vec(values(n, seed, scale, shift), shape, &ad()))
}

pub(super) fn f64_tensor(v: &[f64]) -> Tensor<1> {
    let opts = TensorCreationOptions::new(Device::flex()).with_dtype(DType::F64);
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), opts)
}

pub(super) fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n: usize = t.dims().iter().product();
    t.reshape([n])
}

/// The gradients of `sum(run() · r)` at each probe.
pub(super) fn gradients(run: &dyn Fn() -> Tensor<1>, probes: &[Probe]) -> Vec<Vec<f64>> {
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
pub(super) fn check(
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

pub(super) fn adain_cfg(unbiased: bool, axis: normkit::ChannelAxis) -> normkit::AdaInConfig {
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
pub(super) fn linear64(
    cond: Tensor<1>,
    w: Tensor<1>,
    b: Tensor<1>,
    n: usize,
    d_in: usize,
) -> Tensor<2> {
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

pub(super) fn sn_cfg(axis: normkit::ChannelAxis) -> normkit::SwitchNormConfig {
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
pub(super) fn renorm64(
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
pub(super) fn corrections(
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
