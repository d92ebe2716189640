//! Gradients of every layer: candle's `backward()` through the fused ops
//! against central finite differences and against the same formula built
//! from candle's own differentiable ops in f64, for the input and every
//! parameter.

use candle_core::{DType, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{Conv2dConfig, VarBuilder};
use normkit_candle::*;

use crate::common::*;

/// Finite-difference step, on values of order one.
const H: f32 = 1e-2;
/// Agreement with finite differences: the f32 forward's rounding divided
/// by the step, plus the O(h²) truncation.
const FD_TOL: f64 = 3e-3;
/// Agreement with the f64 composed version: f32 output rounding.
const COMPOSED_TOL: f64 = 2e-5;

fn f64t(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

/// `(x - E[x]) / sqrt(Var[x] + eps)` with the statistics over `reduce`.
fn normalize(x: &Tensor, reduce: &[usize], eps: f64) -> Result<Tensor> {
    let mut mean = x.clone();
    for &d in reduce {
        mean = mean.mean_keepdim(d)?;
    }
    let centered = x.broadcast_sub(&mean)?;
    let mut var = centered.sqr()?;
    for &d in reduce {
        var = var.mean_keepdim(d)?;
    }
    centered.broadcast_div(&(var + eps)?.sqrt()?)
}

/// `y · weight + bias` with both reshaped to `shape` for broadcasting.
fn affine(y: Tensor, weight: &Var, bias: &Var, shape: &[usize]) -> Result<Tensor> {
    y.broadcast_mul(&f64t(weight).reshape(shape)?)?
        .broadcast_add(&f64t(bias).reshape(shape)?)
}

fn param<'a>(params: &'a [(String, Var)], suffix: &str) -> &'a Var {
    &params
        .iter()
        .find(|(n, _)| n.ends_with(suffix))
        .unwrap_or_else(|| panic!("no parameter named *{suffix}"))
        .1
}

/// Runs both comparisons for the input `x` and every parameter.
fn check(
    name: &str,
    rng: &mut Rng,
    x: &Var,
    params: &[(String, Var)],
    fused: &dyn Fn() -> Result<Tensor>,
    composed: &dyn Fn() -> Result<Tensor>,
) {
    let y = fused().unwrap();
    assert_eq!(y.dtype(), DType::F32);
    assert_close(
        &format!("{name}: forward"),
        &flat(&y),
        &flat(&composed().unwrap()),
        COMPOSED_TOL,
    );
    let r = rng.tensor(y.dims(), -1.0, 1.0);
    let mut vars = vec![("x".to_string(), x.clone())];
    vars.extend(params.iter().cloned());
    let ours = autograd(fused, &r, &vars);
    let theirs = autograd(composed, &r, &vars);
    for (i, (var_name, var)) in vars.iter().enumerate() {
        let what = format!("{name}: d{var_name}");
        let ours = ours[i]
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no gradient from the fused op"));
        let theirs = theirs[i].as_ref().unwrap();
        assert!(max_abs(ours) > 0.0, "{what}: all zero");
        assert_close(
            &format!("{what} vs composed"),
            ours,
            theirs,
            COMPOSED_TOL * 10.0,
        );
        let fd = finite_differences(fused, &r, var, H);
        assert_close(&format!("{what} vs finite differences"), ours, &fd, FD_TOL);
    }
}

#[test]
fn batch_norm_train_channels_first() {
    let mut rng = Rng::new(1);
    let (bn, _map, params) = build(&mut rng, |vb| batch_norm(4, BatchNormConfig::default(), vb));
    let x = rng.var(&[3, 4, 5]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    check(
        "batch_norm train",
        &mut rng,
        &x,
        &params,
        &|| bn.forward_t(x.as_tensor(), true),
        &|| affine(normalize(&f64t(&x), &[0, 2], 1e-5)?, w, b, &[1, 4, 1]),
    );
}

#[test]
fn batch_norm_eval_uses_running_statistics() {
    let mut rng = Rng::new(2);
    let (bn, _map, params) = build(&mut rng, |vb| batch_norm(3, BatchNormConfig::default(), vb));
    let x = rng.var(&[2, 3, 2, 2]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    let rm = f64t(bn.running_mean().unwrap())
        .detach()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let rv = f64t(bn.running_var().unwrap())
        .detach()
        .reshape((1, 3, 1, 1))
        .unwrap();
    check(
        "batch_norm eval",
        &mut rng,
        &x,
        &params,
        &|| bn.forward_t(x.as_tensor(), false),
        &|| {
            let y = f64t(&x)
                .broadcast_sub(&rm)?
                .broadcast_div(&(&rv + 1e-5)?.sqrt()?)?;
            affine(y, w, b, &[1, 3, 1, 1])
        },
    );
}

#[test]
fn batch_norm_train_channels_last() {
    let mut rng = Rng::new(3);
    let cfg = BatchNormConfig {
        channel_axis: ChannelAxis::Last,
        ..Default::default()
    };
    let (bn, _map, params) = build(&mut rng, |vb| batch_norm(4, cfg, vb));
    let x = rng.var(&[2, 3, 4]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    check(
        "batch_norm channels last",
        &mut rng,
        &x,
        &params,
        &|| bn.forward_t(x.as_tensor(), true),
        &|| affine(normalize(&f64t(&x), &[0, 1], 1e-5)?, w, b, &[1, 1, 4]),
    );
}

#[test]
fn batch_norm_without_affine_or_tracking() {
    let mut rng = Rng::new(4);
    let cfg = BatchNormConfig {
        affine: false,
        track_running_stats: false,
        eps: 1e-3,
        ..Default::default()
    };
    let (bn, _map, params) = build(&mut rng, |vb| batch_norm(5, cfg, vb));
    assert!(params.is_empty());
    let x = rng.var(&[4, 5]);
    // Without running statistics, evaluation normalizes with the batch's.
    check(
        "batch_norm no affine",
        &mut rng,
        &x,
        &params,
        &|| bn.forward_t(x.as_tensor(), false),
        &|| normalize(&f64t(&x), &[0], 1e-3),
    );
}

#[test]
fn layer_norm_last_dim() {
    let mut rng = Rng::new(5);
    let (ln, _map, params) = build(&mut rng, |vb| layer_norm(6, LayerNormConfig::default(), vb));
    let x = rng.var(&[2, 3, 6]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    check(
        "layer_norm",
        &mut rng,
        &x,
        &params,
        &|| ln.forward(x.as_tensor()),
        &|| affine(normalize(&f64t(&x), &[2], 1e-5)?, w, b, &[6]),
    );
}

#[test]
fn layer_norm_two_dims_no_bias() {
    let mut rng = Rng::new(6);
    let cfg = LayerNormConfig {
        bias: false,
        ..Default::default()
    };
    let (ln, _map, params) = build(&mut rng, |vb| layer_norm((3, 4), cfg, vb));
    assert_eq!(params.len(), 1);
    let x = rng.var(&[2, 3, 4]);
    let w = param(&params, "weight");
    check(
        "layer_norm (3, 4) no bias",
        &mut rng,
        &x,
        &params,
        &|| ln.forward(x.as_tensor()),
        &|| normalize(&f64t(&x), &[1, 2], 1e-5)?.broadcast_mul(&f64t(w)),
    );
}

#[test]
fn rms_norm_last_dim() {
    let mut rng = Rng::new(7);
    let (rms, _map, params) = build(&mut rng, |vb| rms_norm(7, 1e-6, vb));
    let x = rng.var(&[3, 7]);
    let w = param(&params, "weight");
    check(
        "rms_norm",
        &mut rng,
        &x,
        &params,
        &|| rms.forward(x.as_tensor()),
        &|| {
            let x = f64t(&x);
            let ms = x.sqr()?.mean_keepdim(1)?;
            x.broadcast_div(&(ms + 1e-6)?.sqrt()?)?
                .broadcast_mul(&f64t(w))
        },
    );
}

#[test]
fn group_norm_channels_first() {
    let mut rng = Rng::new(8);
    let (gn, _map, params) = build(&mut rng, |vb| {
        group_norm(2, 6, GroupNormConfig::default(), vb)
    });
    let x = rng.var(&[2, 6, 3]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    check(
        "group_norm",
        &mut rng,
        &x,
        &params,
        &|| gn.forward(x.as_tensor()),
        &|| {
            let y = normalize(&f64t(&x).reshape((2, 2, 9))?, &[2], 1e-5)?.reshape((2, 6, 3))?;
            affine(y, w, b, &[1, 6, 1])
        },
    );
}

#[test]
fn group_norm_channels_last() {
    let mut rng = Rng::new(9);
    let cfg = GroupNormConfig {
        channel_axis: ChannelAxis::Last,
        ..Default::default()
    };
    let (gn, _map, params) = build(&mut rng, |vb| group_norm(3, 6, cfg, vb));
    let x = rng.var(&[2, 4, 6]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    check(
        "group_norm channels last",
        &mut rng,
        &x,
        &params,
        &|| gn.forward(x.as_tensor()),
        &|| {
            let first = f64t(&x).transpose(1, 2)?.contiguous()?;
            let y = normalize(&first.reshape((2, 3, 8))?, &[2], 1e-5)?.reshape((2, 6, 4))?;
            affine(y, w, b, &[1, 6, 1])?.transpose(1, 2)
        },
    );
}

#[test]
fn instance_norm_train_affine() {
    let mut rng = Rng::new(10);
    let cfg = InstanceNormConfig {
        affine: true,
        ..Default::default()
    };
    let (inorm, _map, params) = build(&mut rng, |vb| instance_norm(3, cfg, vb));
    let x = rng.var(&[2, 3, 5]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    check(
        "instance_norm",
        &mut rng,
        &x,
        &params,
        &|| inorm.forward_t(x.as_tensor(), true),
        &|| affine(normalize(&f64t(&x), &[2], 1e-5)?, w, b, &[1, 3, 1]),
    );
}

#[test]
fn instance_norm_eval_with_running_statistics() {
    let mut rng = Rng::new(11);
    let cfg = InstanceNormConfig {
        affine: true,
        track_running_stats: true,
        ..Default::default()
    };
    let (inorm, _map, params) = build(&mut rng, |vb| instance_norm(3, cfg, vb));
    let x = rng.var(&[2, 3, 2, 2]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    let rm = f64t(inorm.running_mean().unwrap())
        .detach()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let rv = f64t(inorm.running_var().unwrap())
        .detach()
        .reshape((1, 3, 1, 1))
        .unwrap();
    check(
        "instance_norm eval",
        &mut rng,
        &x,
        &params,
        &|| inorm.forward_t(x.as_tensor(), false),
        &|| {
            let y = f64t(&x)
                .broadcast_sub(&rm)?
                .broadcast_div(&(&rv + 1e-5)?.sqrt()?)?;
            affine(y, w, b, &[1, 3, 1, 1])
        },
    );
}

#[test]
fn dyt_channels_last() {
    let mut rng = Rng::new(12);
    let (layer, _map, params) = build(&mut rng, |vb| dyt(5, DytConfig::default(), vb));
    assert_eq!(params.len(), 3);
    let x = rng.var(&[2, 3, 5]);
    let (a, w, b) = (
        param(&params, "alpha"),
        param(&params, "weight"),
        param(&params, "bias"),
    );
    check(
        "dyt",
        &mut rng,
        &x,
        &params,
        &|| layer.forward(x.as_tensor()),
        &|| {
            let t = f64t(&x).broadcast_mul(&f64t(a))?.tanh()?;
            affine(t, w, b, &[5])
        },
    );
}

#[test]
fn dyt_channels_first() {
    let mut rng = Rng::new(13);
    let cfg = DytConfig {
        channel_axis: ChannelAxis::First,
        alpha_init: 0.8,
        ..Default::default()
    };
    let (layer, _map, params) = build(&mut rng, |vb| dyt(3, cfg, vb));
    let x = rng.var(&[2, 3, 4]);
    let (a, w, b) = (
        param(&params, "alpha"),
        param(&params, "weight"),
        param(&params, "bias"),
    );
    check(
        "dyt channels first",
        &mut rng,
        &x,
        &params,
        &|| layer.forward(x.as_tensor()),
        &|| {
            let t = f64t(&x).broadcast_mul(&f64t(a))?.tanh()?;
            affine(t, w, b, &[1, 3, 1])
        },
    );
}

/// `g · v / ‖v‖` with the norm over every dimension but 0, in f64.
fn weight_norm_composed(v: &Var, g: &Var) -> Result<Tensor> {
    let v = f64t(v);
    let mut sq = v.sqr()?;
    for d in (1..v.rank()).rev() {
        sq = sq.sum_keepdim(d)?;
    }
    v.broadcast_div(&sq.sqrt()?)?.broadcast_mul(&f64t(g))
}

#[test]
fn weight_norm_linear_grads() {
    let mut rng = Rng::new(14);
    let (layer, _map, params) = build(&mut rng, |vb| {
        weight_norm_linear(5, 3, WeightNormConfig::default(), vb)
    });
    assert_eq!(params.len(), 3);
    let x = rng.var(&[4, 5]);
    let (g, v, b) = (
        param(&params, "original0"),
        param(&params, "original1"),
        param(&params, "bias"),
    );
    check(
        "weight_norm linear",
        &mut rng,
        &x,
        &params,
        &|| layer.forward(x.as_tensor()),
        &|| {
            let w = weight_norm_composed(v, g)?;
            f64t(&x).matmul(&w.t()?)?.broadcast_add(&f64t(b))
        },
    );
}

#[test]
fn weight_norm_conv2d_grads() {
    let mut rng = Rng::new(15);
    let conv = Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let cfg = WeightNormConfig {
        names: WeightNormNames::Legacy,
        ..Default::default()
    };
    let (layer, _map, params) = build(&mut rng, |vb| weight_norm_conv2d(2, 3, 3, conv, cfg, vb));
    let x = rng.var(&[2, 2, 5, 5]);
    let (g, v, b) = (
        param(&params, "weight_g"),
        param(&params, "weight_v"),
        param(&params, "bias"),
    );
    check(
        "weight_norm conv2d",
        &mut rng,
        &x,
        &params,
        &|| layer.forward(x.as_tensor()),
        &|| {
            let w = weight_norm_composed(v, g)?;
            let y = f64t(&x).conv2d(&w, 1, 2, 1, 1)?;
            y.broadcast_add(&f64t(b).reshape((1, 3, 1, 1))?)
        },
    );
}

#[test]
fn weight_norm_op_keeps_any_dim() {
    let mut rng = Rng::new(16);
    let v = rng.var(&[3, 4, 2]);
    let g = rng.var(&[1, 4, 1]);
    let params = vec![("g".to_string(), g.clone())];
    check(
        "weight_norm_op dim 1",
        &mut rng,
        &v,
        &params,
        &|| weight_norm_op(v.as_tensor(), g.as_tensor(), Some(1)),
        &|| {
            let v64 = f64t(&v);
            let norm = v64.sqr()?.sum_keepdim(2)?.sum_keepdim(0)?.sqrt()?;
            v64.broadcast_div(&norm)?.broadcast_mul(&f64t(&g))
        },
    );
}

#[test]
fn functional_ops_match_layers() {
    let mut rng = Rng::new(17);
    let x = rng.tensor(&[2, 3, 4], -2.0, 2.0);
    let w = rng.tensor(&[4], 0.5, 1.5);
    let b = rng.tensor(&[4], -0.5, 0.5);
    let ln = LayerNorm::new(w.clone(), b.clone(), 1e-5);
    let from_layer = flat(&ln.forward(&x).unwrap());
    let from_op = flat(&layer_norm_op(&x, &[4], Some(&w), Some(&b), 1e-5).unwrap());
    assert_eq!(from_layer, from_op);
    let rms = RmsNorm::new(w.clone(), 1e-6);
    let from_layer = flat(&rms.forward(&x).unwrap());
    let from_op = flat(&rms_norm_op(&x, &[4], Some(&w), Some(1e-6)).unwrap());
    assert_eq!(from_layer, from_op);
}

/// A loss through two layers gets the same input gradient whether the
/// input is contiguous or a transposed view of the same values.
#[test]
fn non_contiguous_input_gives_the_same_gradients() {
    let mut rng = Rng::new(18);
    let (bn, _map, params) = build(&mut rng, |vb| batch_norm(4, BatchNormConfig::default(), vb));
    let base = rng.var(&[3, 5, 4]);
    let r = rng.tensor(&[3, 4, 5], -1.0, 1.0);
    let strided = || bn.forward_t(&base.as_tensor().transpose(1, 2)?, true);
    assert!(!base.as_tensor().transpose(1, 2).unwrap().is_contiguous());
    let packed = Var::from_tensor(
        &base
            .as_tensor()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap(),
    )
    .unwrap();
    let contiguous = || bn.forward_t(packed.as_tensor(), true);
    assert_eq!(flat(&strided().unwrap()), flat(&contiguous().unwrap()));
    let mut vars = vec![("x".to_string(), base.clone())];
    vars.extend(params.iter().cloned());
    let g_strided = autograd(&strided, &r, &vars);
    vars[0] = ("x".to_string(), packed.clone());
    let g_packed = autograd(&contiguous, &r, &vars);
    // dx of the view is the transpose of dx of the packed copy.
    let dx_view = Tensor::from_vec(g_strided[0].clone().unwrap(), (3, 5, 4), &CPU).unwrap();
    let dx_view = flat(&dx_view.transpose(1, 2).unwrap());
    assert_eq!(dx_view, g_packed[0].clone().unwrap());
    for i in 1..vars.len() {
        assert_eq!(g_strided[i], g_packed[i], "parameter {i}");
    }
}

/// bf16 and f16 inputs: outputs and gradients follow the f32 ones to the
/// precision of the type; parameter gradients stay f32.
#[test]
fn half_precision_forward_and_backward() {
    let mut rng = Rng::new(19);
    let (ln, _map, params) = build(&mut rng, |vb| {
        layer_norm(16, LayerNormConfig::default(), vb)
    });
    let x = rng.tensor(&[4, 16], -3.0, 3.0);
    let r = rng.tensor(&[4, 16], -1.0, 1.0);
    let run = |dtype: DType| {
        let x = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
        let y = ln.forward(x.as_tensor()).unwrap();
        assert_eq!(y.dtype(), dtype);
        let loss = (y.to_dtype(DType::F32).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let dx = grads.get(x.as_tensor()).unwrap();
        assert_eq!(dx.dtype(), dtype);
        let dw = grads.get(params[1].1.as_tensor()).unwrap();
        assert_eq!(dw.dtype(), DType::F32);
        (flat(&y), flat(dx), flat(dw))
    };
    let (y32, dx32, dw32) = run(DType::F32);
    for (dtype, tol) in [(DType::BF16, 3e-2), (DType::F16, 4e-3)] {
        let (y, dx, dw) = run(dtype);
        assert_close(&format!("{dtype:?} y"), &y, &y32, tol);
        assert_close(&format!("{dtype:?} dx"), &dx, &dx32, tol * 2.0);
        assert_close(&format!("{dtype:?} dweight"), &dw, &dw32, tol * 4.0);
    }
}

/// bf16 parameters (a VarBuilder in bf16) get bf16 gradients.
#[test]
fn half_precision_parameters() {
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::BF16, &CPU);
    let gn = group_norm(2, 4, GroupNormConfig::default(), vb).unwrap();
    assert_eq!(gn.weight().unwrap().dtype(), DType::BF16);
    let x = Rng::new(20)
        .tensor(&[2, 4, 3], -1.0, 1.0)
        .to_dtype(DType::BF16)
        .unwrap();
    let y = gn.forward(&x).unwrap();
    let loss = y
        .to_dtype(DType::F32)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let dw = grads.get(gn.weight().unwrap()).unwrap();
    assert_eq!(dw.dtype(), DType::BF16);
    assert!(max_abs(&flat(dw)) > 0.0);
}

/// Half-precision input in evaluation mode is normalized in f32 and
/// rounded once: the f16 output is the f32 output rounded to f16.
#[test]
fn half_precision_batch_norm_eval_rounds_once() {
    let mut rng = Rng::new(21);
    let (bn, _map, _params) = build(&mut rng, |vb| batch_norm(3, BatchNormConfig::default(), vb));
    let x16 = rng
        .tensor(&[4, 3, 5], -4.0, 4.0)
        .to_dtype(DType::F16)
        .unwrap();
    let y16 = bn.forward_t(&x16, false).unwrap();
    assert_eq!(y16.dtype(), DType::F16);
    let y32 = bn
        .forward_t(&x16.to_dtype(DType::F32).unwrap(), false)
        .unwrap();
    let rounded = flat(&y32.to_dtype(DType::F16).unwrap());
    assert_eq!(flat(&y16), rounded);
}
