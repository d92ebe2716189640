//! Input and parameter gradients of every layer: burn's autodiff through
//! the fused path against the composed path (same layer, same values) and
//! against central finite differences of the op in `f64`.

use burn::module::{Param, RunningState};
use burn::nn::LinearConfig;
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use normkit::Momentum;
use normkit_burn::functional;
use normkit_burn::*;

use crate::common::*;

/// A parameter of `c` values around 1 (scales) or 0 (shifts).
fn param(c: usize, seed: u64, around: f32) -> Param<Tensor<1>> {
    Param::from_tensor(from_vec(values(c, seed, 0.5, around), [c], &ad()))
}

fn f64_tensor<const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<D> {
    let opts = TensorCreationOptions::new(Device::flex()).with_dtype(DType::F64);
    Tensor::from_data(TensorData::new(v.to_vec(), shape), opts)
}

/// `(dx, dparams)` of `sum(layer(x) · r)` through burn's autodiff.
fn autodiff_grads<const D: usize>(
    x: &[f32],
    shape: [usize; D],
    r: &Tensor<D>,
    params: &[Tensor<1>],
    layer: &dyn Fn(Tensor<D>) -> Tensor<D>,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let x = from_vec(x.to_vec(), shape, &ad()).require_grad();
    let grads = (layer(x.clone()) * r.clone()).sum().backward();
    let dx = read(x.grad(&grads).expect("input gradient"));
    let dparams = params
        .iter()
        .map(|p| read(p.grad(&grads).expect("parameter gradient")))
        .collect();
    (dx, dparams)
}

/// Checks a layer's gradients three ways. `layer` runs the layer (whose
/// parameters are `params`); `op` computes the same function from explicit
/// tensors, used in `f64` for the finite differences.
fn check<const D: usize>(
    name: &str,
    shape: [usize; D],
    params: Vec<Tensor<1>>,
    layer: impl Fn(Tensor<D>) -> Tensor<D>,
    op: impl Fn(Tensor<D>, &[Tensor<1>]) -> Tensor<D>,
) {
    let n: usize = shape.iter().product();
    let x = values(n, 11, 1.5, 0.3);
    let r_vals = values(n, 12, 1.0, 0.0);
    let r = from_vec(r_vals.clone(), shape, &ad());

    let before = fused_calls();
    let (dx, dp) = autodiff_grads(&x, shape, &r, &params, &layer);
    let after = fused_calls();
    assert!(after.forward > before.forward, "{name}: fused forward ran");
    assert!(
        after.backward > before.backward,
        "{name}: fused backward ran"
    );
    let (dx_c, dp_c) = with_route(Route::Composed, || {
        autodiff_grads(&x, shape, &r, &params, &layer)
    });
    assert_close(&format!("{name} dx fused/composed"), &dx, &dx_c, 2e-5, 2e-4);
    for (k, (a, b)) in dp.iter().zip(&dp_c).enumerate() {
        assert_close(
            &format!("{name} dparam{k} fused/composed"),
            a,
            b,
            2e-5,
            2e-4,
        );
    }

    // Finite differences of L = Σ op(x, p) · r in f64.
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let p64: Vec<Vec<f64>> = params.iter().map(|p| read(p.clone())).collect();
    let r64 = f64_tensor(&r_vals.iter().map(|&v| v as f64).collect::<Vec<_>>(), shape);
    let loss = |x: &[f64], p: &[Vec<f64>]| -> f64 {
        let pt: Vec<Tensor<1>> = p.iter().map(|v| f64_tensor(v, [v.len()])).collect();
        read((op(f64_tensor(x, shape), &pt) * r64.clone()).sum())[0]
    };
    let fd = |perturb: &dyn Fn(f64) -> f64, h: f64| (perturb(h) - perturb(-h)) / (2.0 * h);
    let picks = |len: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (0..len).step_by((len / 5).max(1)).collect();
        v.push(len - 1);
        v.dedup();
        v
    };
    for i in picks(n) {
        let h = 1e-4 * x64[i].abs().max(1.0);
        let g = fd(
            &|d| {
                let mut xp = x64.clone();
                xp[i] += d;
                loss(&xp, &p64)
            },
            h,
        );
        assert_close(
            &format!("{name} dx[{i}] vs finite difference"),
            &[dx[i]],
            &[g],
            1e-5,
            1e-4,
        );
    }
    for (k, pv) in p64.iter().enumerate() {
        for j in picks(pv.len()) {
            let h = 1e-4 * pv[j].abs().max(1.0);
            let g = fd(
                &|d| {
                    let mut pp = p64.clone();
                    pp[k][j] += d;
                    loss(&x64, &pp)
                },
                h,
            );
            assert_close(
                &format!("{name} dparam{k}[{j}] vs finite difference"),
                &[dp[k][j]],
                &[g],
                1e-5,
                1e-4,
            );
        }
    }
}

fn vals(p: &Option<Param<Tensor<1>>>) -> Tensor<1> {
    p.as_ref().expect("parameter").val()
}

fn bn_cfg(momentum: Momentum, axis: normkit::ChannelAxis) -> normkit::BatchNormConfig {
    normkit::BatchNormConfig {
        eps: 1e-5,
        momentum,
        channel_axis: axis,
    }
}

#[test]
fn batch_norm_training_channels_first() {
    let mut bn = BatchNormConfig::new(3).init(&ad());
    bn.weight = Some(param(3, 1, 1.0));
    bn.bias = Some(param(3, 2, 0.0));
    let params = vec![vals(&bn.weight), vals(&bn.bias)];
    let cfg = bn_cfg(Momentum::Exponential(0.1), normkit::ChannelAxis::First);
    check(
        "batch_norm train NCHW",
        [4, 3, 5, 2],
        params,
        |x| bn.forward(x),
        |x, p| {
            functional::batch_norm(x, Some(p[0].clone()), Some(p[1].clone()), None, true, &cfg)
                .unwrap()
                .0
        },
    );
}

#[test]
fn batch_norm_training_channels_last_without_affine() {
    let bn = BatchNormConfig::new(4)
        .with_affine(false)
        .with_channel_axis(ChannelAxis::Last)
        .init(&ad());
    let cfg = bn_cfg(Momentum::Exponential(0.1), normkit::ChannelAxis::Last);
    check(
        "batch_norm train NHWC no affine",
        [6, 3, 4],
        vec![],
        |x| bn.forward(x),
        |x, _| {
            functional::batch_norm(x, None, None, None, true, &cfg)
                .unwrap()
                .0
        },
    );
}

#[test]
fn batch_norm_frozen_uses_running_statistics() {
    // A frozen layer on an autodiff device: running statistics are
    // constants, gradients still flow to the input and the parameters.
    let mut bn = BatchNormConfig::new(3).init(&ad());
    bn.weight = Some(param(3, 3, 1.0));
    bn.bias = Some(param(3, 4, 0.0));
    let mean = values(3, 5, 0.5, 0.0);
    let var = values(3, 6, 0.5, 1.0);
    bn.running_mean = Some(RunningState::new(from_vec(mean.clone(), [3], &ad())));
    bn.running_var = Some(RunningState::new(from_vec(var.clone(), [3], &ad())));
    bn.training = Param::from_bool(false);
    let params = vec![vals(&bn.weight), vals(&bn.bias)];
    let cfg = bn_cfg(Momentum::Exponential(0.1), normkit::ChannelAxis::First);
    let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    let (m64, v64) = (to64(&mean), to64(&var));
    check(
        "batch_norm eval",
        [2, 3, 4],
        params,
        |x| bn.forward(x),
        |x, p| {
            let running = Some((f64_tensor(&m64, [3]), f64_tensor(&v64, [3])));
            functional::batch_norm(
                x,
                Some(p[0].clone()),
                Some(p[1].clone()),
                running,
                false,
                &cfg,
            )
            .unwrap()
            .0
        },
    );
    assert!(!bn.training.is_enabled());
}

#[test]
fn instance_norm_affine() {
    let mut inorm = InstanceNormConfig::new(4).with_affine(true).init(&ad());
    inorm.weight = Some(param(4, 7, 1.0));
    inorm.bias = Some(param(4, 8, 0.0));
    let params = vec![vals(&inorm.weight), vals(&inorm.bias)];
    let cfg = normkit::InstanceNormConfig::default();
    check(
        "instance_norm affine",
        [3, 4, 6],
        params,
        |x| inorm.forward(x),
        |x, p| {
            functional::instance_norm(x, Some(p[0].clone()), Some(p[1].clone()), None, true, &cfg)
                .unwrap()
                .0
        },
    );
}

#[test]
fn instance_norm_tracked_channels_last() {
    let inorm = InstanceNormConfig::new(3)
        .with_track_running_stats(true)
        .with_channel_axis(ChannelAxis::Last)
        .init(&ad());
    let cfg = normkit::InstanceNormConfig {
        channel_axis: normkit::ChannelAxis::Last,
        ..Default::default()
    };
    check(
        "instance_norm tracked NHWC",
        [2, 5, 3],
        vec![],
        |x| inorm.forward(x),
        |x, _| {
            functional::instance_norm(x, None, None, None, true, &cfg)
                .unwrap()
                .0
        },
    );
}

#[test]
fn group_norm_channels_first_and_last() {
    for (axis, nk_axis, shape) in [
        (ChannelAxis::First, normkit::ChannelAxis::First, [2, 6, 5]),
        (ChannelAxis::Last, normkit::ChannelAxis::Last, [2, 5, 6]),
    ] {
        let mut gn = GroupNormConfig::new(3, 6)
            .with_channel_axis(axis)
            .init(&ad());
        gn.weight = Some(param(6, 9, 1.0));
        gn.bias = Some(param(6, 10, 0.0));
        let params = vec![vals(&gn.weight), vals(&gn.bias)];
        let cfg = normkit::GroupNormConfig {
            channel_axis: nk_axis,
            ..normkit::GroupNormConfig::new(3)
        };
        check(
            &format!("group_norm {axis:?}"),
            shape,
            params,
            |x| gn.forward(x),
            |x, p| functional::group_norm(x, Some(p[0].clone()), Some(p[1].clone()), &cfg).unwrap(),
        );
    }
}

#[test]
fn layer_norm_over_two_trailing_dims() {
    let mut ln = LayerNormConfig::new(vec![3, 4]).init(&ad());
    ln.weight = Some(param(12, 13, 1.0));
    ln.bias = Some(param(12, 14, 0.0));
    let params = vec![vals(&ln.weight), vals(&ln.bias)];
    check(
        "layer_norm [3, 4]",
        [2, 3, 3, 4],
        params,
        |x| ln.forward(x),
        |x, p| {
            functional::layer_norm(x, &[3, 4], Some(p[0].clone()), Some(p[1].clone()), 1e-5)
                .unwrap()
        },
    );
}

#[test]
fn layer_norm_without_bias() {
    let mut ln = LayerNormConfig::new(vec![9]).with_bias(false).init(&ad());
    assert!(ln.bias.is_none());
    ln.weight = Some(param(9, 15, 1.0));
    let params = vec![vals(&ln.weight)];
    check(
        "layer_norm no bias",
        [5, 9],
        params,
        |x| ln.forward(x),
        |x, p| functional::layer_norm(x, &[9], Some(p[0].clone()), None, 1e-5).unwrap(),
    );
}

#[test]
fn rms_norm() {
    let mut rms = RmsNormConfig::new(vec![16])
        .with_eps(Some(1e-6))
        .init(&ad());
    rms.weight = Some(param(16, 16, 1.0));
    let params = vec![vals(&rms.weight)];
    check(
        "rms_norm",
        [2, 3, 16],
        params,
        |x| rms.forward(x),
        |x, p| functional::rms_norm(x, &[16], Some(p[0].clone()), 1e-6).unwrap(),
    );
}

#[test]
fn dyt_channels_last_and_first() {
    for (axis, nk_axis, shape) in [
        (ChannelAxis::Last, normkit::ChannelAxis::Last, [3, 4, 5]),
        (ChannelAxis::First, normkit::ChannelAxis::First, [3, 5, 4]),
    ] {
        let mut dyt = DytConfig::new(5).with_channel_axis(axis).init(&ad());
        dyt.alpha = param(1, 17, 0.7);
        dyt.weight = Some(param(5, 18, 1.0));
        dyt.bias = Some(param(5, 19, 0.0));
        let params = vec![dyt.alpha.val(), vals(&dyt.weight), vals(&dyt.bias)];
        check(
            &format!("dyt {axis:?}"),
            shape,
            params,
            |x| dyt.forward(x),
            |x, p| {
                functional::dyt(
                    x,
                    p[0].clone(),
                    Some(p[1].clone()),
                    Some(p[2].clone()),
                    nk_axis,
                )
                .unwrap()
            },
        );
    }
}

#[test]
fn weight_norm_direction_and_magnitude() {
    // The "input" is v; g is the parameter. One norm per row, per column,
    // and over the whole tensor.
    for (dim, k) in [(Some(0), 4usize), (Some(-1), 6), (None, 1)] {
        let g = param(k, 20, 1.0);
        check(
            &format!("weight_norm dim {dim:?}"),
            [4, 6],
            vec![g.val()],
            |v| functional::weight_norm(v, g.val(), dim).unwrap(),
            |v, p| functional::weight_norm(v, p[0].clone(), dim).unwrap(),
        );
    }
}

#[test]
fn weight_normalized_linear_gradients_reach_v_and_g() {
    let linear = weight_norm_linear(LinearConfig::new(5, 3).init(&ad()));
    let wn = linear
        .weight
        .reparameterization::<WeightNorm>()
        .expect("weight norm attached");
    let run = |route| {
        with_route(route, || {
            let x = tensor([4, 5], 21, &ad()).require_grad();
            let grads = (linear.forward(x.clone()) * tensor([4, 3], 22, &ad()))
                .sum()
                .backward();
            (
                read(x.grad(&grads).unwrap()),
                read(linear.weight.base().grad(&grads).unwrap()),
                read(wn.g.val().grad(&grads).unwrap()),
            )
        })
    };
    let before = fused_calls().backward;
    let fused = run(Route::Auto);
    assert!(
        fused_calls().backward > before,
        "fused weight-norm backward ran"
    );
    let composed = run(Route::Composed);
    assert_close("dx", &fused.0, &composed.0, 1e-5, 1e-4);
    assert_close("dv", &fused.1, &composed.1, 1e-5, 1e-4);
    assert_close("dg", &fused.2, &composed.2, 1e-5, 1e-4);
}

#[test]
fn frozen_parameters_or_input_take_no_gradient() {
    // Parameters that do not require gradients are constants of the fused
    // node; an input that does not is one too.
    let device = ad();
    let frozen = |c: usize, around: f32| {
        Some(
            Param::from_tensor(from_vec(values(c, 23, 0.5, around), [c], &device))
                .set_require_grad(false),
        )
    };
    let mut ln = LayerNormConfig::new(vec![6]).init(&device);
    ln.weight = frozen(6, 1.0);
    let mut dyt = DytConfig::new(6).init(&device);
    dyt.weight = frozen(6, 1.0);
    dyt.bias = frozen(6, 0.0);
    let mut bn = BatchNormConfig::new(3).init(&device);
    bn.bias = frozen(3, 0.0);
    let r = tensor([4, 3, 6], 24, &device);
    for route in [Route::Auto, Route::Composed] {
        let x = tensor([4, 3, 6], 25, &device).require_grad();
        let grads = with_route(route, || {
            let y = ln.forward(x.clone()) + dyt.forward(x.clone()) + bn.forward(x.clone());
            (y * r.clone()).sum().backward()
        });
        assert!(x.grad(&grads).is_some(), "{route:?}: dx");
        assert!(ln.weight.as_ref().unwrap().val().grad(&grads).is_none());
        assert!(ln.bias.as_ref().unwrap().val().grad(&grads).is_some());
        assert!(dyt.alpha.val().grad(&grads).is_some());
        assert!(dyt.weight.as_ref().unwrap().val().grad(&grads).is_none());
        assert!(bn.weight.as_ref().unwrap().val().grad(&grads).is_some());
        assert!(bn.bias.as_ref().unwrap().val().grad(&grads).is_none());
    }
    // A constant input: only the parameters get gradients.
    let x = tensor([4, 3, 6], 26, &device);
    let grads = (ln.forward(x.clone()) * r.clone()).sum().backward();
    assert!(x.grad(&grads).is_none());
    assert!(ln.bias.as_ref().unwrap().val().grad(&grads).is_some());
}
