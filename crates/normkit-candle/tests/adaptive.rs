//! The adaptive layers (AdaIN, AdaLayerNorm, SwitchNorm, BatchRenorm):
//! gradients of the input and every parameter against central finite
//! differences and against the same formula composed from candle's own ops
//! in f64; the golden cases 037–073; the identities each layer promises
//! (BatchRenorm with `r_max = 1`, `d_max = 0` is BatchNorm, adaLN-Zero
//! starts as the plain norm); half precision; errors; and a few training
//! steps of a small model with each layer.

use std::collections::HashMap;

use candle_core::{DType, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{linear, AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
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

fn named(name: &str, v: &Var) -> (String, Var) {
    (name.to_string(), v.clone())
}

/// The variable `name` of `map`.
fn var_of(map: &VarMap, name: &str) -> Var {
    map.data()
        .lock()
        .unwrap()
        .get(name)
        .unwrap_or_else(|| panic!("no variable {name}"))
        .clone()
}

fn set(map: &VarMap, name: &str, t: &Tensor) {
    var_of(map, name).set(t).unwrap();
}

/// The forward and the gradients of `Σ y · r` for every variable in `vars`
/// against `composed` (f64) and, when `fd`, central finite differences of
/// the fused forward.
fn check(
    name: &str,
    rng: &mut Rng,
    vars: &[(String, Var)],
    fused: &dyn Fn() -> Result<Tensor>,
    composed: &dyn Fn() -> Result<Tensor>,
    fd: bool,
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
    let ours = autograd(fused, &r, vars);
    let theirs = autograd(composed, &r, vars);
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
        if fd {
            let fd = finite_differences(fused, &r, var, H);
            assert_close(&format!("{what} vs finite differences"), ours, &fd, FD_TOL);
        }
    }
}

// ---------------------------------------------------------------------
// Composed f64 versions, from the formulas in the layers' docs.

/// Mean and biased variance of `x` over `dims`, kept as size-1 dims.
fn moments(x: &Tensor, dims: &[usize]) -> Result<(Tensor, Tensor)> {
    let mean_over = |t: &Tensor| -> Result<Tensor> {
        let mut m = t.clone();
        for &d in dims {
            m = m.mean_keepdim(d)?;
        }
        Ok(m)
    };
    let mean = mean_over(x)?;
    let var = mean_over(&x.broadcast_sub(&mean)?.sqr()?)?;
    Ok((mean, var))
}

fn count(x: &Tensor, dims: &[usize]) -> f64 {
    dims.iter().map(|&d| x.dims()[d]).product::<usize>() as f64
}

/// `σ(s) · (x - μ(x)) / σ(x) + μ(s)`, statistics over `x_dims` / `s_dims`.
fn adain_composed(
    x: &Tensor,
    s: &Tensor,
    (x_dims, s_dims): (&[usize], &[usize]),
    eps: f64,
    unbiased: bool,
) -> Result<Tensor> {
    let (x, s) = (f64t(x), f64t(s));
    let stats = |t: &Tensor, dims: &[usize]| -> Result<(Tensor, Tensor)> {
        let (mean, var) = moments(t, dims)?;
        let m = count(t, dims);
        let var = if unbiased {
            (var * (m / (m - 1.0)))?
        } else {
            var
        };
        Ok((mean, (var + eps)?.sqrt()?))
    };
    let (mx, sx) = stats(&x, x_dims)?;
    let (ms, ss) = stats(&s, s_dims)?;
    // The style's statistics in the content's (n, c) layout.
    let (ms, ss) = (ms.reshape(mx.shape())?, ss.reshape(mx.shape())?);
    x.broadcast_sub(&mx)?
        .broadcast_div(&sx)?
        .broadcast_mul(&ss)?
        .broadcast_add(&ms)
}

/// `norm(x) · (1 + scale[n]) + shift[n]` over the trailing `ns` dims.
#[allow(clippy::too_many_arguments)]
fn ada_composed(
    x: &Tensor,
    ns: &[usize],
    scale: &Tensor,
    shift: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    rms: bool,
) -> Result<Tensor> {
    let x = f64t(x);
    let rank = x.rank();
    let dims: Vec<usize> = (rank - ns.len()..rank).collect();
    let mut y = if rms {
        let mut ms = x.sqr()?;
        for &d in &dims {
            ms = ms.mean_keepdim(d)?;
        }
        x.broadcast_div(&(ms + eps)?.sqrt()?)?
    } else {
        let (mean, var) = moments(&x, &dims)?;
        x.broadcast_sub(&mean)?
            .broadcast_div(&(var + eps)?.sqrt()?)?
    };
    if let Some(w) = weight {
        y = y.broadcast_mul(&f64t(w).reshape(ns)?)?;
    }
    if let Some(b) = bias {
        y = y.broadcast_add(&f64t(b).reshape(ns)?)?;
    }
    let mut per_sample = vec![x.dims()[0]];
    per_sample.extend(std::iter::repeat_n(1, rank - 1 - ns.len()));
    per_sample.extend_from_slice(ns);
    let scale = f64t(scale).reshape(per_sample.clone())?;
    let shift = f64t(shift).reshape(per_sample)?;
    y.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)
}

/// The per-channel `[1, .., C, .., 1]` shape of `x` and its spatial dims.
fn channel_layout(x: &Tensor, channel: usize) -> (Vec<usize>, Vec<usize>) {
    let mut shape = vec![1; x.rank()];
    shape[channel] = x.dims()[channel];
    let spatial = (1..x.rank()).filter(|&d| d != channel).collect();
    (shape, spatial)
}

fn affine_composed(y: Tensor, affine: Option<(&Var, &Var)>, shape: &[usize]) -> Result<Tensor> {
    match affine {
        None => Ok(y),
        Some((w, b)) => y
            .broadcast_mul(&f64t(w).reshape(shape)?)?
            .broadcast_add(&f64t(b).reshape(shape)?),
    }
}

/// Switchable Normalization with the mixture of IN, LN and BN statistics;
/// `running` replaces the BN ones (evaluation).
fn switch_composed(
    x: &Tensor,
    channel: usize,
    (mean_weight, var_weight): (&Var, &Var),
    affine: Option<(&Var, &Var)>,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<Tensor> {
    let x = f64t(x);
    let (cshape, spatial) = channel_layout(&x, channel);
    let (in_m, in_v) = moments(&x, &spatial)?;
    let ln_dims: Vec<usize> = spatial.iter().copied().chain([channel]).collect();
    let (ln_m, ln_v) = moments(&x, &ln_dims)?;
    let (bn_m, bn_v) = match running {
        None => {
            let bn_dims: Vec<usize> = [0].into_iter().chain(spatial.iter().copied()).collect();
            moments(&x, &bn_dims)?
        }
        Some((m, v)) => (
            f64t(m).detach().reshape(cshape.as_slice())?,
            f64t(v).detach().reshape(cshape.as_slice())?,
        ),
    };
    let ones = vec![1usize; x.rank()];
    let softmax = |l: &Var| -> Result<Vec<Tensor>> {
        let e = f64t(l).exp()?;
        let p = e.broadcast_div(&e.sum_all()?)?;
        (0..3)
            .map(|k| p.narrow(0, k, 1)?.reshape(ones.as_slice()))
            .collect()
    };
    let (wm, wv) = (softmax(mean_weight)?, softmax(var_weight)?);
    let mix = |w: &[Tensor], a: &Tensor, b: &Tensor, c: &Tensor| -> Result<Tensor> {
        a.broadcast_mul(&w[0])?
            .broadcast_add(&b.broadcast_mul(&w[1])?)?
            .broadcast_add(&c.broadcast_mul(&w[2])?)
    };
    let mean = mix(&wm, &in_m, &ln_m, &bn_m)?;
    let var = mix(&wv, &in_v, &ln_v, &bn_v)?;
    let y = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(var + eps)?.sqrt()?)?;
    affine_composed(y, affine, &cshape)
}

/// Batch Renormalization in training, `r` and `d` detached.
fn renorm_composed(
    x: &Tensor,
    channel: usize,
    affine: Option<(&Var, &Var)>,
    (running_mean, running_var): (&Tensor, &Tensor),
    eps: f64,
    (r_max, d_max): (f64, f64),
) -> Result<Tensor> {
    let x = f64t(x);
    let (cshape, spatial) = channel_layout(&x, channel);
    let bn_dims: Vec<usize> = [0].into_iter().chain(spatial).collect();
    let (mean_b, var_b) = moments(&x, &bn_dims)?;
    let sigma_b = (var_b + eps)?.sqrt()?;
    let rm = f64t(running_mean).reshape(cshape.as_slice())?;
    let sigma = (f64t(running_var).reshape(cshape.as_slice())? + eps)?.sqrt()?;
    let r = sigma_b
        .broadcast_div(&sigma)?
        .detach()
        .clamp(1.0 / r_max, r_max)?;
    let d = mean_b
        .broadcast_sub(&rm)?
        .broadcast_div(&sigma)?
        .detach()
        .clamp(-d_max, d_max)?;
    let y = x
        .broadcast_sub(&mean_b)?
        .broadcast_div(&sigma_b)?
        .broadcast_mul(&r)?
        .broadcast_add(&d)?;
    affine_composed(y, affine, &cshape)
}

fn param<'a>(params: &'a [(String, Var)], name: &str) -> &'a Var {
    &params
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no parameter named {name}"))
        .1
}

// ---------------------------------------------------------------------
// Gradients.

#[test]
fn adain_gradients_channels_first() {
    let mut rng = Rng::new(101);
    let x = rng.var(&[2, 3, 4, 5]);
    let style = rng.var(&[2, 3, 3, 6]);
    let cfg = AdaInConfig::default();
    check(
        "adain",
        &mut rng,
        &[named("x", &x), named("style", &style)],
        &|| adain(x.as_tensor(), style.as_tensor(), &cfg),
        &|| adain_composed(&x, &style, (&[2, 3], &[2, 3]), 1e-5, true),
        true,
    );
}

#[test]
fn adain_gradients_channels_last_biased() {
    let mut rng = Rng::new(102);
    // The style has a different spatial rank and extent from the content.
    let x = rng.var(&[2, 4, 5, 3]);
    let style = rng.var(&[2, 7, 3]);
    let layer = AdaIn::new(AdaInConfig {
        eps: 1e-3,
        unbiased: false,
        channel_axis: ChannelAxis::Last,
    });
    check(
        "adain channels last",
        &mut rng,
        &[named("x", &x), named("style", &style)],
        &|| layer.forward(x.as_tensor(), style.as_tensor()),
        &|| adain_composed(&x, &style, (&[1, 2], &[1]), 1e-3, false),
        true,
    );
}

#[test]
fn ada_layer_norm_op_gradients() {
    let mut rng = Rng::new(103);
    let x = rng.var(&[2, 3, 6]);
    let (scale, shift) = (rng.var(&[2, 6]), rng.var(&[2, 6]));
    let (w, b) = (rng.var(&[6]), rng.var(&[6]));
    let vars = [
        named("x", &x),
        named("scale", &scale),
        named("shift", &shift),
        named("weight", &w),
        named("bias", &b),
    ];
    check(
        "ada_layer_norm_op",
        &mut rng,
        &vars,
        &|| {
            ada_layer_norm_op(
                x.as_tensor(),
                &[6],
                scale.as_tensor(),
                shift.as_tensor(),
                Some(w.as_tensor()),
                Some(b.as_tensor()),
                1e-5,
            )
        },
        &|| ada_composed(&x, &[6], &scale, &shift, Some(&w), Some(&b), 1e-5, false),
        true,
    );
}

#[test]
fn ada_layer_norm_op_two_dims_weight_only() {
    let mut rng = Rng::new(104);
    let x = rng.var(&[2, 3, 2, 3]);
    // The modulation shaped [N, *normalized_shape].
    let (scale, shift) = (rng.var(&[2, 2, 3]), rng.var(&[2, 2, 3]));
    let w = rng.var(&[2, 3]);
    check(
        "ada_layer_norm_op 2-d",
        &mut rng,
        &[
            named("x", &x),
            named("scale", &scale),
            named("shift", &shift),
            named("weight", &w),
        ],
        &|| {
            ada_layer_norm_op(
                x.as_tensor(),
                &[2, 3],
                scale.as_tensor(),
                shift.as_tensor(),
                Some(w.as_tensor()),
                None,
                1e-5,
            )
        },
        &|| ada_composed(&x, &[2, 3], &scale, &shift, Some(&w), None, 1e-5, false),
        true,
    );
}

#[test]
fn ada_rms_norm_op_gradients() {
    let mut rng = Rng::new(105);
    let x = rng.var(&[3, 2, 5]);
    let (scale, shift) = (rng.var(&[3, 5]), rng.var(&[3, 5]));
    let w = rng.var(&[5]);
    check(
        "ada_rms_norm_op",
        &mut rng,
        &[
            named("x", &x),
            named("scale", &scale),
            named("shift", &shift),
            named("weight", &w),
        ],
        &|| {
            ada_rms_norm_op(
                x.as_tensor(),
                &[5],
                scale.as_tensor(),
                shift.as_tensor(),
                Some(w.as_tensor()),
                1e-5,
            )
        },
        &|| ada_composed(&x, &[5], &scale, &shift, Some(&w), None, 1e-5, true),
        true,
    );
}

/// The layer end to end: the modulation map, the norm's parameters, the
/// input and the condition all get their gradients.
fn ada_layer_norm_layer_gradients(rms: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let cfg = AdaLayerNormConfig {
        eps: 1e-5,
        rms,
        elementwise_affine: true,
        gate: true,
        zero_init: false,
    };
    let (ada, _map, params) = build(&mut rng, |vb| ada_layer_norm(6, 4, cfg, vb));
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let expected: &[&str] = if rms {
        &["modulation.bias", "modulation.weight", "weight"]
    } else {
        &["bias", "modulation.bias", "modulation.weight", "weight"]
    };
    assert_eq!(names, expected);
    let x = rng.var(&[2, 3, 6]);
    let cond = rng.var(&[2, 4]);
    let (mw, mb) = (
        param(&params, "modulation.weight"),
        param(&params, "modulation.bias"),
    );
    let w = param(&params, "weight");
    let b = (!rms).then(|| param(&params, "bias").as_tensor());
    let mut vars = vec![named("x", &x), named("cond", &cond)];
    vars.extend(params.iter().cloned());
    let composed = || {
        let chunks = f64t(&cond)
            .matmul(&f64t(mw).t()?)?
            .broadcast_add(&f64t(mb))?;
        let (shift, scale) = (chunks.narrow(1, 0, 6)?, chunks.narrow(1, 6, 6)?);
        ada_composed(&x, &[6], &scale, &shift, Some(w), b, 1e-5, rms)
    };
    let out = ada.forward(x.as_tensor(), cond.as_tensor()).unwrap();
    let gate = out.gate.expect("a gate");
    assert_eq!(gate.dims(), &[2, 6]);
    let want_gate = f64t(&cond)
        .matmul(&f64t(mw).t().unwrap())
        .unwrap()
        .broadcast_add(&f64t(mb))
        .unwrap()
        .narrow(1, 12, 6)
        .unwrap();
    assert_close("gate", &flat(&gate), &flat(&want_gate), COMPOSED_TOL);
    check(
        if rms {
            "ada_rms_norm layer"
        } else {
            "ada_layer_norm layer"
        },
        &mut rng,
        &vars,
        &|| Ok(ada.forward(x.as_tensor(), cond.as_tensor())?.y),
        &composed,
        true,
    );
}

#[test]
fn ada_layer_norm_layer_gradients_layer_norm() {
    ada_layer_norm_layer_gradients(false, 106);
}

#[test]
fn ada_layer_norm_layer_gradients_rms_norm() {
    ada_layer_norm_layer_gradients(true, 107);
}

#[test]
fn switch_norm_train_gradients() {
    let mut rng = Rng::new(108);
    let (sn, _map, params) = build(&mut rng, |vb| {
        switch_norm(4, SwitchNormConfig::default(), vb)
    });
    let x = rng.var(&[3, 4, 5]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    let logits = (param(&params, "mean_weight"), param(&params, "var_weight"));
    let mut vars = vec![named("x", &x)];
    vars.extend(params.iter().cloned());
    check(
        "switch_norm train",
        &mut rng,
        &vars,
        &|| sn.forward_t(x.as_tensor(), true),
        &|| switch_composed(&x, 1, logits, Some((w, b)), None, 1e-5),
        true,
    );
}

#[test]
fn switch_norm_eval_gradients() {
    let mut rng = Rng::new(109);
    let (sn, _map, params) = build(&mut rng, |vb| {
        switch_norm(3, SwitchNormConfig::default(), vb)
    });
    let x = rng.var(&[2, 3, 2, 3]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    let logits = (param(&params, "mean_weight"), param(&params, "var_weight"));
    let running = (sn.running_mean().clone(), sn.running_var().clone());
    let mut vars = vec![named("x", &x)];
    vars.extend(params.iter().cloned());
    check(
        "switch_norm eval",
        &mut rng,
        &vars,
        &|| sn.forward_t(x.as_tensor(), false),
        &|| {
            switch_composed(
                &x,
                1,
                logits,
                Some((w, b)),
                Some((&running.0, &running.1)),
                1e-5,
            )
        },
        true,
    );
}

#[test]
fn switch_norm_channels_last_without_affine() {
    let mut rng = Rng::new(110);
    let cfg = SwitchNormConfig {
        affine: false,
        momentum: None,
        channel_axis: ChannelAxis::Last,
        eps: 1e-3,
    };
    let (sn, _map, params) = build(&mut rng, |vb| switch_norm(4, cfg, vb));
    assert_eq!(params.len(), 2, "only the logits are trainable");
    let x = rng.var(&[3, 5, 4]);
    let logits = (param(&params, "mean_weight"), param(&params, "var_weight"));
    let mut vars = vec![named("x", &x)];
    vars.extend(params.iter().cloned());
    check(
        "switch_norm channels last",
        &mut rng,
        &vars,
        &|| sn.forward_t(x.as_tensor(), true),
        &|| switch_composed(&x, 2, logits, None, None, 1e-3),
        true,
    );
}

/// Resets the running statistics of a layer built by `build` before each
/// training forward, so that repeated forwards (finite differences) see the
/// same `r` and `d`.
fn with_running<'a>(
    map: &'a VarMap,
    running: &'a (Tensor, Tensor),
    forward: impl Fn() -> Result<Tensor> + 'a,
) -> impl Fn() -> Result<Tensor> + 'a {
    move || {
        set(map, "running_mean", &running.0);
        set(map, "running_var", &running.1);
        forward()
    }
}

#[test]
fn batch_renorm_train_gradients_against_composed() {
    let mut rng = Rng::new(111);
    let (brn, map, params) = build(&mut rng, |vb| {
        batch_renorm(4, BatchRenormConfig::default(), vb)
    });
    let x = rng.var(&[3, 4, 5]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    let running = (
        brn.running_mean().copy().unwrap(),
        brn.running_var().copy().unwrap(),
    );
    let fused = with_running(&map, &running, || brn.forward_t(x.as_tensor(), true));
    // The corrections are not clipped here, so they depend on x and finite
    // differences would see that dependence, which the op (as the paper)
    // leaves out of the gradient: only the composed version applies.
    let y = fused().unwrap();
    let plain = renorm_composed(
        &x,
        1,
        Some((w, b)),
        (&running.0, &running.1),
        1e-5,
        (1.0, 0.0),
    )
    .unwrap();
    assert!(
        max_diff(&flat(&y), &flat(&plain)) > 1e-2,
        "the corrections should differ from BatchNorm's here"
    );
    let mut vars = vec![named("x", &x)];
    vars.extend(params.iter().cloned());
    check(
        "batch_renorm train",
        &mut rng,
        &vars,
        &fused,
        &|| {
            renorm_composed(
                &x,
                1,
                Some((w, b)),
                (&running.0, &running.1),
                1e-5,
                (3.0, 5.0),
            )
        },
        false,
    );
}

#[test]
fn batch_renorm_train_gradients_clipped() {
    let mut rng = Rng::new(112);
    let cfg = BatchRenormConfig {
        r_max: 1.5,
        d_max: 2.0,
        channel_axis: ChannelAxis::Last,
        ..Default::default()
    };
    let (brn, map, params) = build(&mut rng, |vb| batch_renorm(4, cfg, vb));
    let x = rng.var(&[3, 5, 4]);
    // Running statistics far from the batch's: r and d sit at their
    // limits, constant near x, so finite differences apply.
    let running = (
        Tensor::full(50f32, 4, &CPU).unwrap(),
        Tensor::full(100f32, 4, &CPU).unwrap(),
    );
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    let mut vars = vec![named("x", &x)];
    vars.extend(params.iter().cloned());
    check(
        "batch_renorm clipped",
        &mut rng,
        &vars,
        &with_running(&map, &running, || brn.forward_t(x.as_tensor(), true)),
        &|| {
            renorm_composed(
                &x,
                2,
                Some((w, b)),
                (&running.0, &running.1),
                1e-5,
                (1.5, 2.0),
            )
        },
        true,
    );
}

#[test]
fn batch_renorm_eval_gradients() {
    let mut rng = Rng::new(113);
    let (brn, _map, params) = build(&mut rng, |vb| {
        batch_renorm(3, BatchRenormConfig::default(), vb)
    });
    let x = rng.var(&[2, 3, 4]);
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    let cshape = [1, 3, 1];
    let rm = f64t(brn.running_mean()).reshape(&cshape).unwrap();
    let rv = f64t(brn.running_var()).reshape(&cshape).unwrap();
    let mut vars = vec![named("x", &x)];
    vars.extend(params.iter().cloned());
    check(
        "batch_renorm eval",
        &mut rng,
        &vars,
        &|| brn.forward_t(x.as_tensor(), false),
        &|| {
            let y = f64t(&x)
                .broadcast_sub(&rm)?
                .broadcast_div(&(&rv + 1e-5)?.sqrt()?)?;
            affine_composed(y, Some((w, b)), &cshape)
        },
        true,
    );
    assert_eq!(brn.num_batches_tracked().unwrap(), 0);
}

// ---------------------------------------------------------------------
// Promised identities.

/// Copies every tensor of `from` into the variable of the same name in `to`.
fn copy_vars(from: &VarMap, to: &VarMap) {
    for (name, v) in from.data().lock().unwrap().iter() {
        set(to, name, v.as_tensor());
    }
}

/// Gradients of `Σ y · r` for `x` and the named variables of `map`.
fn grads_of(y: &Tensor, r: &Tensor, x: &Var, map: &VarMap, names: &[&str]) -> Vec<Vec<f64>> {
    let grads = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![flat(grads.get(x.as_tensor()).unwrap())];
    for n in names {
        out.push(flat(grads.get(var_of(map, n).as_tensor()).unwrap()));
    }
    out
}

#[test]
fn batch_renorm_with_unit_limits_is_batch_norm() {
    let mut rng = Rng::new(114);
    let (bn, bn_map, _) = build(&mut rng, |vb| batch_norm(4, BatchNormConfig::default(), vb));
    let brn_map = VarMap::new();
    let cfg = BatchRenormConfig {
        r_max: 1.0,
        d_max: 0.0,
        ..Default::default()
    };
    let brn = batch_renorm(4, cfg, VarBuilder::from_varmap(&brn_map, DType::F32, &CPU)).unwrap();
    copy_vars(&bn_map, &brn_map);
    for step in 0..3 {
        let x = Var::from_tensor(&rng.tensor(&[3, 4, 5], -2.0, 3.0)).unwrap();
        let r = rng.tensor(&[3, 4, 5], -1.0, 1.0);
        let y_bn = bn.forward_t(x.as_tensor(), true).unwrap();
        let y_brn = brn.forward_t(x.as_tensor(), true).unwrap();
        assert_eq!(flat(&y_brn), flat(&y_bn), "step {step}: y");
        let names = ["weight", "bias"];
        assert_eq!(
            grads_of(&y_brn, &r, &x, &brn_map, &names),
            grads_of(&y_bn, &r, &x, &bn_map, &names),
            "step {step}: gradients"
        );
        assert_eq!(flat(brn.running_mean()), flat(bn.running_mean().unwrap()));
        assert_eq!(flat(brn.running_var()), flat(bn.running_var().unwrap()));
        assert_eq!(
            Some(brn.num_batches_tracked().unwrap()),
            bn.num_batches_tracked().unwrap()
        );
    }
    let x = rng.tensor(&[3, 4, 5], -2.0, 3.0);
    assert_eq!(
        flat(&brn.forward_t(&x, false).unwrap()),
        flat(&bn.forward_t(&x, false).unwrap()),
        "eval"
    );
}

#[test]
fn batch_renorm_schedule_starts_as_batch_norm() {
    let mut rng = Rng::new(115);
    let (bn, bn_map, _) = build(&mut rng, |vb| batch_norm(2, BatchNormConfig::default(), vb));
    let brn_map = VarMap::new();
    let cfg = BatchRenormConfig {
        schedule: Some(BatchRenormSchedule {
            warmup: 2,
            r_max_at: 4,
            d_max_at: 6,
        }),
        ..Default::default()
    };
    let brn = batch_renorm(2, cfg, VarBuilder::from_varmap(&brn_map, DType::F32, &CPU)).unwrap();
    copy_vars(&bn_map, &brn_map);
    // Steps 0, 1, 2 are within the warmup: BatchNorm exactly.
    for step in 0..3 {
        assert_eq!(brn.limits().unwrap(), (1.0, 0.0), "step {step}");
        let x = rng.tensor(&[4, 2, 3], -1.0, 1.0);
        let y_bn = bn.forward_t(&x, true).unwrap();
        let y_brn = brn.forward_t(&x, true).unwrap();
        assert_eq!(flat(&y_brn), flat(&y_bn), "step {step}");
    }
    // Step 3: halfway to r_max = 3 (reached at 4), a quarter of the way to
    // d_max = 5 (reached at 6).
    assert_eq!(brn.num_batches_tracked().unwrap(), 3);
    assert_eq!(brn.limits().unwrap(), (2.0, 1.25));
    let x = rng.tensor(&[4, 2, 3], 2.0, 4.0);
    let y_bn = bn.forward_t(&x, true).unwrap();
    let y_brn = brn.forward_t(&x, true).unwrap();
    assert!(max_diff(&flat(&y_brn), &flat(&y_bn)) > 1e-2);
    assert_eq!(brn.num_batches_tracked().unwrap(), 4);
    assert_eq!(brn.limits().unwrap(), (3.0, 2.5));
}

/// adaLN-Zero: the layer starts as the plain norm with a zero gate, and its
/// zero modulation still gets a gradient, so the first step moves it.
fn ada_zero_init_starts_plain(rms: bool) {
    let mut rng = Rng::new(116);
    let map = VarMap::new();
    let cfg = AdaLayerNormConfig {
        rms,
        gate: true,
        ..Default::default()
    };
    let ada = ada_layer_norm(8, 5, cfg, VarBuilder::from_varmap(&map, DType::F32, &CPU)).unwrap();
    let x = rng.tensor(&[3, 4, 8], -2.0, 2.0);
    let cond = rng.tensor(&[3, 5], -1.0, 1.0);
    let out = ada.forward(&x, &cond).unwrap();
    let plain = if rms {
        rms_norm_op(&x, &[8], None, Some(1e-6)).unwrap()
    } else {
        layer_norm_op(&x, &[8], None, None, 1e-6).unwrap()
    };
    assert_close("zero-init output", &flat(&out.y), &flat(&plain), 1e-6);
    let gate = out.gate.unwrap();
    assert_eq!(max_abs(&flat(&gate)), 0.0);

    let r = rng.tensor(&[3, 4, 8], -1.0, 1.0);
    let rg = rng.tensor(&[3, 8], -1.0, 1.0);
    let loss = ((out.y * &r).unwrap().sum_all().unwrap()
        + (gate * &rg).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let dw = grads
        .get(var_of(&map, "modulation.weight").as_tensor())
        .expect("modulation.weight gets a gradient");
    let db = grads
        .get(var_of(&map, "modulation.bias").as_tensor())
        .expect("modulation.bias gets a gradient");
    assert_eq!(dw.dims(), &[24, 5]);
    // Each chunk (shift, scale, gate) of the modulation gets its share.
    for chunk in 0..3 {
        let part = flat(&dw.narrow(0, chunk * 8, 8).unwrap());
        assert!(max_abs(&part) > 1e-3, "chunk {chunk}: no gradient");
        let part = flat(&db.narrow(0, chunk * 8, 8).unwrap());
        assert!(max_abs(&part) > 1e-3, "chunk {chunk}: no bias gradient");
    }
    // dshift is Σ dy over the rows of each sample: the bias gradient's
    // shift chunk is Σ r over everything but the feature.
    let want = r.sum(1).unwrap().sum(0).unwrap();
    assert_close(
        "dshift",
        &flat(&db.narrow(0, 0, 8).unwrap()),
        &flat(&want),
        1e-5,
    );
    // One SGD step and the layer is modulated.
    let mut sgd = candle_nn::SGD::new(map.all_vars(), 0.1).unwrap();
    sgd.step(&grads).unwrap();
    let y = ada.forward(&x, &cond).unwrap().y;
    assert!(max_diff(&flat(&y), &flat(&plain)) > 1e-3);
}

#[test]
fn ada_layer_norm_zero_init_starts_as_layer_norm() {
    ada_zero_init_starts_plain(false);
}

#[test]
fn ada_layer_norm_zero_init_starts_as_rms_norm() {
    ada_zero_init_starts_plain(true);
}

#[test]
fn ada_layer_norm_modulate_matches_the_op() {
    let mut rng = Rng::new(117);
    let cfg = AdaLayerNormConfig {
        elementwise_affine: true,
        zero_init: false,
        ..Default::default()
    };
    let (ada, _map, params) = build(&mut rng, |vb| ada_layer_norm(6, 3, cfg, vb));
    let x = rng.tensor(&[2, 4, 6], -1.0, 1.0);
    let scale = rng.tensor(&[2, 6], -1.0, 1.0);
    let shift = rng.tensor(&[2, 6], -1.0, 1.0);
    let y = ada.modulate(&x, &scale, &shift).unwrap();
    let (w, b) = (param(&params, "weight"), param(&params, "bias"));
    let want = ada_layer_norm_op(
        &x,
        &[6],
        &scale,
        &shift,
        Some(w.as_tensor()),
        Some(b.as_tensor()),
        1e-6,
    )
    .unwrap();
    assert_eq!(flat(&y), flat(&want));
}

#[test]
fn switch_norm_importances_and_state() {
    let map = VarMap::new();
    let sn = switch_norm(
        3,
        SwitchNormConfig::default(),
        VarBuilder::from_varmap(&map, DType::F32, &CPU),
    )
    .unwrap();
    let (m, v) = sn.importances().unwrap();
    for p in m.iter().chain(&v) {
        assert!((p - 1.0 / 3.0).abs() < 1e-6, "equal importances at first");
    }
    set(
        &map,
        "mean_weight",
        &Tensor::new(&[0f32, 1.0, 2.0], &CPU).unwrap(),
    );
    let (m, _) = sn.importances().unwrap();
    let e = [1f64, 1f64.exp(), 2f64.exp()];
    let sum: f64 = e.iter().sum();
    for k in 0..3 {
        assert!((m[k] as f64 - e[k] / sum).abs() < 1e-6, "importance {k}");
    }
    let mut state = HashMap::new();
    sn.state_dict("sn", &mut state);
    let mut keys: Vec<&str> = state.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "sn.bias",
            "sn.mean_weight",
            "sn.num_batches_tracked",
            "sn.running_mean",
            "sn.running_var",
            "sn.var_weight",
            "sn.weight"
        ]
    );
    // A training step moves the running statistics and the count.
    let x = Rng::new(118).tensor(&[4, 3, 5], 1.0, 3.0);
    sn.forward_t(&x, true).unwrap();
    assert_eq!(sn.num_batches_tracked().unwrap(), 1);
    let mean = flat(sn.running_mean());
    assert!(mean.iter().all(|&m| m > 0.1 && m < 0.3), "{mean:?}");
}

// ---------------------------------------------------------------------
// Half precision.

/// `run(dtype)` gives `(y, dx)` for an input in `dtype`; each half type
/// follows f32 on the same (rounded) values to the type's precision.
fn half_check(name: &str, run: &dyn Fn(DType, bool) -> (Vec<f64>, Vec<f64>)) {
    for (dtype, tol) in [(DType::BF16, 1.6e-2), (DType::F16, 2e-3)] {
        let (y32, dx32) = run(dtype, true);
        let (y, dx) = run(dtype, false);
        assert_close(&format!("{name} {dtype:?} y"), &y, &y32, tol);
        assert_close(&format!("{name} {dtype:?} dx"), &dx, &dx32, tol * 4.0);
    }
}

/// `x` rounded to `dtype`, then kept there or brought back to f32.
fn input(x: &Tensor, dtype: DType, as_f32: bool) -> Var {
    let rounded = x.to_dtype(dtype).unwrap();
    let t = if as_f32 {
        rounded.to_dtype(DType::F32).unwrap()
    } else {
        rounded
    };
    Var::from_tensor(&t).unwrap()
}

/// Forward, then the gradient of `Σ y · r` to `x`; checks the dtypes.
fn y_dx(y: Tensor, x: &Var, r: &Tensor) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(y.dtype(), x.dtype());
    let loss = (y.to_dtype(DType::F32).unwrap() * r)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let dx = grads.get(x.as_tensor()).unwrap();
    assert_eq!(dx.dtype(), x.dtype());
    (flat(&y), flat(dx))
}

#[test]
fn half_precision_inputs() {
    let mut rng = Rng::new(119);
    let x = rng.tensor(&[3, 4, 6], -2.0, 2.0);
    let style = rng.tensor(&[3, 4, 5], -1.0, 3.0);
    let r = rng.tensor(&[3, 4, 6], -1.0, 1.0);
    half_check("adain", &|dtype, as_f32| {
        let (xv, sv) = (input(&x, dtype, as_f32), input(&style, dtype, as_f32));
        let y = adain(xv.as_tensor(), sv.as_tensor(), &AdaInConfig::default()).unwrap();
        y_dx(y, &xv, &r)
    });

    let mut tensors = HashMap::new();
    for (name, shape) in [
        ("modulation.weight", vec![12, 3]),
        ("modulation.bias", vec![12]),
        ("weight", vec![6]),
        ("bias", vec![6]),
    ] {
        tensors.insert(name.to_string(), rng.tensor(&shape, -1.0, 1.0));
    }
    let cond = rng.tensor(&[3, 3], -1.0, 1.0);
    let cfg = AdaLayerNormConfig {
        elementwise_affine: true,
        zero_init: false,
        ..Default::default()
    };
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &CPU);
    let ada = ada_layer_norm(6, 3, cfg, vb).unwrap();
    half_check("ada_layer_norm", &|dtype, as_f32| {
        let xv = input(&x, dtype, as_f32);
        let y = ada.forward(xv.as_tensor(), &cond).unwrap().y;
        y_dx(y, &xv, &r)
    });

    let mut tensors = HashMap::new();
    for name in ["weight", "bias", "running_mean"] {
        tensors.insert(name.to_string(), rng.tensor(&[4], -1.0, 1.0));
    }
    tensors.insert("running_var".to_string(), rng.tensor(&[4], 0.5, 1.5));
    tensors.insert("mean_weight".to_string(), rng.tensor(&[3], -1.0, 1.0));
    tensors.insert("var_weight".to_string(), rng.tensor(&[3], -1.0, 1.0));
    // A fresh layer per run: each training step updates its statistics.
    let vb = || VarBuilder::from_tensors(tensors.clone(), DType::F32, &CPU);
    for train in [true, false] {
        half_check("switch_norm", &|dtype, as_f32| {
            let sn = switch_norm(4, SwitchNormConfig::default(), vb()).unwrap();
            let xv = input(&x, dtype, as_f32);
            y_dx(sn.forward_t(xv.as_tensor(), train).unwrap(), &xv, &r)
        });
        half_check("batch_renorm", &|dtype, as_f32| {
            let brn = batch_renorm(4, BatchRenormConfig::default(), vb()).unwrap();
            let xv = input(&x, dtype, as_f32);
            y_dx(brn.forward_t(xv.as_tensor(), train).unwrap(), &xv, &r)
        });
    }
}

// ---------------------------------------------------------------------
// Errors.

#[track_caller]
fn assert_err_mentions<T: std::fmt::Debug>(r: Result<T>, parts: &[&str]) {
    let e = r.expect_err("accepted invalid input").to_string();
    for p in parts {
        assert!(e.contains(p), "error {e:?} does not mention {p:?}");
    }
}

#[test]
fn adaptive_errors() {
    let ones = |shape: &[usize]| Tensor::ones(shape, DType::F32, &CPU).unwrap();
    let cfg = AdaInConfig::default();
    // Style with another channel count, a one-position content (unbiased),
    // an unsupported dtype, a scalar.
    assert_err_mentions(
        adain(&ones(&[2, 3, 4]), &ones(&[2, 4, 4]), &cfg),
        &["adain", "style"],
    );
    assert_err_mentions(
        adain(&ones(&[2, 3, 1]), &ones(&[2, 3, 4]), &cfg),
        &["adain"],
    );
    let x64 = Tensor::ones((2, 3, 4), DType::F64, &CPU).unwrap();
    assert_err_mentions(adain(&x64, &ones(&[2, 3, 4]), &cfg), &["adain", "F64"]);
    assert_err_mentions(adain(&ones(&[]), &ones(&[2, 3, 4]), &cfg), &["adain"]);

    let vb = VarBuilder::zeros(DType::F32, &CPU);
    let ada = ada_layer_norm(8, 4, AdaLayerNormConfig::default(), vb.clone()).unwrap();
    assert_err_mentions(
        ada.forward(&ones(&[2, 3, 7]), &ones(&[2, 4])),
        &["ada_layer_norm", "[2, 3, 7]", "normalized_shape [8]"],
    );
    assert_err_mentions(
        ada.forward(&ones(&[2, 3, 8]), &ones(&[3, 4])),
        &["ada_layer_norm", "cond", "[2, 4]"],
    );
    // A sample dimension must precede the normalized one.
    assert_err_mentions(
        ada.forward(&ones(&[8]), &ones(&[1, 4])),
        &["normalized_shape"],
    );
    assert_err_mentions(
        ada.forward(&ones(&[]), &ones(&[1, 4])),
        &["normalized_shape"],
    );
    assert_err_mentions(
        ada_layer_norm_op(
            &ones(&[2, 3, 8]),
            &[8],
            &ones(&[2, 7]),
            &ones(&[2, 8]),
            None,
            None,
            1e-5,
        ),
        &["ada_layer_norm", "scale", "[2, 8]", "[2, 7]"],
    );
    assert_err_mentions(
        ada_rms_norm_op(
            &ones(&[2, 3, 8]),
            &[8],
            &ones(&[2, 8]),
            &ones(&[1, 8]),
            None,
            1e-5,
        ),
        &["ada_rms_norm", "shift"],
    );
    assert_err_mentions(
        ada_layer_norm_op(
            &ones(&[2, 3, 8]),
            &[4],
            &ones(&[2, 4]),
            &ones(&[2, 4]),
            None,
            None,
            1e-5,
        ),
        &["normalized_shape"],
    );
    assert_err_mentions(
        ada_layer_norm_op(
            &ones(&[]),
            &[4],
            &ones(&[2, 4]),
            &ones(&[2, 4]),
            None,
            None,
            1e-5,
        ),
        &["ada_layer_norm"],
    );

    // Switch norm: wrong channels, one value per channel; nothing updated.
    let map = VarMap::new();
    let sn = switch_norm(
        4,
        SwitchNormConfig::default(),
        VarBuilder::from_varmap(&map, DType::F32, &CPU),
    )
    .unwrap();
    assert_err_mentions(
        sn.forward_t(&ones(&[2, 3, 5]), true),
        &["switch_norm", "expected 4"],
    );
    assert_err_mentions(sn.forward_t(&ones(&[1, 4]), true), &["switch_norm"]);
    assert_err_mentions(sn.forward_t(&ones(&[4]), true), &["switch_norm", "rank"]);
    assert_eq!(sn.num_batches_tracked().unwrap(), 0);
    assert_eq!(flat(sn.running_var()), vec![1.0; 4]);

    // Batch renorm: limits out of their domain, one value per channel.
    for (r_max, d_max, name) in [
        (0.5, 5.0, "r_max"),
        (f64::NAN, 5.0, "r_max"),
        (f64::INFINITY, 5.0, "r_max"),
        (3.0, -1.0, "d_max"),
        (3.0, f64::NAN, "d_max"),
    ] {
        let cfg = BatchRenormConfig {
            r_max,
            d_max,
            ..Default::default()
        };
        assert_err_mentions(batch_renorm(3, cfg, vb.clone()), &["batch_renorm", name]);
    }
    let map = VarMap::new();
    let brn = batch_renorm(
        3,
        BatchRenormConfig::default(),
        VarBuilder::from_varmap(&map, DType::F32, &CPU),
    )
    .unwrap();
    assert_err_mentions(brn.forward_t(&ones(&[1, 3]), true), &["batch_renorm"]);
    assert_err_mentions(
        brn.forward_t(&ones(&[2, 4]), false),
        &["batch_renorm", "expected 3"],
    );
    assert_eq!(brn.num_batches_tracked().unwrap(), 0);
    assert_eq!(flat(brn.running_mean()), vec![0.0; 3]);
}

// ---------------------------------------------------------------------
// Golden cases 037–073.

const PREFIX: &str = "layer";
const ADAPTIVE_OPS: [&str; 5] = [
    "adain",
    "ada_layer_norm",
    "ada_rms_norm",
    "switch_norm",
    "batch_renorm",
];

struct Case {
    name: String,
    meta: HashMap<String, String>,
    tensors: HashMap<String, Tensor>,
}

impl Case {
    fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("{}: no metadata `{key}`", self.name))
    }

    fn flag(&self, key: &str) -> bool {
        self.meta.get(key).map(String::as_str) == Some("true")
    }

    fn f64(&self, key: &str) -> f64 {
        self.meta(key).parse().unwrap()
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor `{name}`", self.name))
    }

    fn channel_axis(&self) -> ChannelAxis {
        match self.meta("channel_axis") {
            "1" => ChannelAxis::First,
            "-1" => ChannelAxis::Last,
            other => panic!("{}: channel_axis {other}", self.name),
        }
    }

    fn normalized_shape(&self) -> Vec<usize> {
        self.meta("normalized_shape")
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect()
    }

    /// The expected tensors: every f64 one.
    fn expected(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .tensors
            .iter()
            .filter(|(_, t)| t.dtype() == DType::F64)
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort();
        names
    }

    /// The case's parameters and buffers among `names`, keyed
    /// `layer.<name>`.
    fn state(&self, names: &[&str]) -> HashMap<String, Tensor> {
        names
            .iter()
            .filter_map(|&n| {
                self.tensors
                    .get(n)
                    .map(|t| (format!("{PREFIX}.{n}"), t.clone()))
            })
            .collect()
    }
}

fn load_cases() -> Vec<Case> {
    golden_cases(&ADAPTIVE_OPS)
        .into_iter()
        .map(|c| Case {
            name: c.name,
            meta: c.meta,
            tensors: c.tensors,
        })
        .collect()
}

/// What a run of a case produced, under the expected tensors' names.
type Outputs = Vec<(&'static str, Tensor)>;

/// The gradient of `Σ y · dy` for each named variable.
fn backward(
    y: &Tensor,
    dy: &Tensor,
    vars: &[(&'static str, &Var)],
    out: &mut Outputs,
) -> Result<()> {
    let grads = (y * dy)?.sum_all()?.backward()?;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        out.push((name, g.clone()));
    }
    Ok(())
}

/// The input tensor `name` as a variable.
fn input_var(case: &Case, name: &str) -> Var {
    Var::from_tensor(case.tensor(name)).unwrap()
}

fn run_adain(case: &Case) -> Result<Outputs> {
    let cfg = AdaInConfig {
        eps: case.f64("eps"),
        unbiased: case.flag("unbiased"),
        channel_axis: case.channel_axis(),
    };
    let (x, style) = (input_var(case, "x"), input_var(case, "style"));
    let y = AdaIn::new(cfg).forward(x.as_tensor(), style.as_tensor())?;
    let mut out = vec![("y", y.clone())];
    if let Some(dy) = case.tensors.get("dy") {
        backward(&y, dy, &[("dx", &x), ("dstyle", &style)], &mut out)?;
    }
    Ok(out)
}

/// The functional op with every input a variable.
fn run_ada_op(case: &Case) -> Result<Outputs> {
    let rms = case.meta("op") == "ada_rms_norm";
    let ns = case.normalized_shape();
    let eps = case.f64("eps");
    let vars: HashMap<&str, Var> = ["x", "scale", "shift", "weight", "bias"]
        .into_iter()
        .filter(|n| case.has(n))
        .map(|n| (n, input_var(case, n)))
        .collect();
    let t = |n: &str| vars.get(n).map(Var::as_tensor);
    let (x, scale, shift) = (t("x").unwrap(), t("scale").unwrap(), t("shift").unwrap());
    let y = if rms {
        ada_rms_norm_op(x, &ns, scale, shift, t("weight"), eps)?
    } else {
        ada_layer_norm_op(x, &ns, scale, shift, t("weight"), t("bias"), eps)?
    };
    let mut out = vec![("y", y.clone())];
    if let Some(dy) = case.tensors.get("dy") {
        let wanted: Vec<(&'static str, &Var)> = [
            ("x", "dx"),
            ("scale", "dscale"),
            ("shift", "dshift"),
            ("weight", "dweight"),
            ("bias", "dbias"),
        ]
        .into_iter()
        .filter_map(|(n, g)| vars.get(n).map(|v| (g, v)))
        .collect();
        backward(&y, dy, &wanted, &mut out)?;
    }
    Ok(out)
}

/// The layer, with the case's scale and shift produced by its modulation
/// map from one-hot conditions: row `n` of the identity as `cond`, and
/// `modulation.weight = [shift; scale]ᵀ`, so the map outputs exactly
/// (shift[n], scale[n]) and its weight's gradient holds dshift and dscale.
fn run_ada_layer(case: &Case) -> Result<Outputs> {
    let rms = case.meta("op") == "ada_rms_norm";
    let ns = case.normalized_shape();
    let d = ns[0];
    let x = case.tensor("x");
    let n = x.dims()[0];
    let cfg = AdaLayerNormConfig {
        eps: case.f64("eps"),
        rms,
        elementwise_affine: case.has("weight"),
        gate: false,
        zero_init: true,
    };
    let map = VarMap::new();
    let ada = ada_layer_norm(
        d,
        n,
        cfg,
        VarBuilder::from_varmap(&map, DType::F32, &CPU).pp(PREFIX),
    )?;
    let (scale, shift) = (
        case.tensor("scale").reshape((n, d))?,
        case.tensor("shift").reshape((n, d))?,
    );
    let modulation = Tensor::cat(&[&shift, &scale], 1)?.t()?.contiguous()?;
    set(&map, "layer.modulation.weight", &modulation);
    if case.has("weight") {
        set(&map, "layer.weight", case.tensor("weight"));
    }
    if !rms && case.has("weight") {
        // A LayerNorm with a weight only is the layer with a zero bias.
        let bias = match case.tensors.get("bias") {
            Some(b) => b.clone(),
            None => Tensor::zeros(d, DType::F32, &CPU)?,
        };
        set(&map, "layer.bias", &bias);
    }
    let xv = Var::from_tensor(x)?;
    let cond = Tensor::eye(n, DType::F32, &CPU)?;
    let y = ada.forward(xv.as_tensor(), &cond)?.y;
    let mut out = vec![("y", y.clone())];
    let Some(dy) = case.tensors.get("dy") else {
        return Ok(out);
    };
    let grads = (&y * dy)?.sum_all()?.backward()?;
    let get = |name: &str| grads.get(var_of(&map, name).as_tensor()).cloned().unwrap();
    out.push(("dx", grads.get(xv.as_tensor()).unwrap().clone()));
    let dmod = get("layer.modulation.weight");
    out.push(("dshift", dmod.narrow(0, 0, d)?.t()?));
    out.push(("dscale", dmod.narrow(0, d, d)?.t()?));
    if case.has("weight") {
        out.push(("dweight", get("layer.weight")));
    }
    if case.has("bias") {
        out.push(("dbias", get("layer.bias")));
    }
    Ok(out)
}

/// A channel layer run twice: straight from the case's state dict (output
/// and running statistics), then built on a `VarMap` holding the same
/// values (output and every gradient).
fn run_channel_layer<L: ModuleT>(
    case: &Case,
    names: &[&'static str],
    make: &dyn Fn(VarBuilder) -> Result<L>,
    running: &dyn Fn(&L) -> (Tensor, Tensor),
) -> Result<Outputs> {
    let training = case.flag("training");
    let state = case.state(names);
    let layer = make(VarBuilder::from_tensors(state.clone(), DType::F32, &CPU).pp(PREFIX))?;
    let x = case.tensor("x");
    let y = layer.forward_t(x, training)?;
    let mut out = vec![("y", y)];
    let Some(dy) = case.tensors.get("dy") else {
        return Ok(out);
    };
    if case.has("running_mean_out") {
        let (mean, var) = running(&layer);
        out.push(("running_mean_out", mean));
        out.push(("running_var_out", var));
    }

    let map = VarMap::new();
    let layer = make(VarBuilder::from_varmap(&map, DType::F32, &CPU).pp(PREFIX))?;
    for (name, t) in &state {
        set(&map, name, t);
    }
    let xv = Var::from_tensor(x)?;
    let y = layer.forward_t(xv.as_tensor(), training)?;
    let grads = (&y * dy)?.sum_all()?.backward()?;
    out.push(("y", y));
    out.push(("dx", grads.get(xv.as_tensor()).unwrap().clone()));
    for (name, grad) in [
        ("weight", "dweight"),
        ("bias", "dbias"),
        ("mean_weight", "dmean_weight"),
        ("var_weight", "dvar_weight"),
    ] {
        if case.has(name) {
            let v = var_of(&map, &format!("{PREFIX}.{name}"));
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", case.name));
            out.push((grad, g.clone()));
        }
    }
    if case.has("running_mean_out") {
        let (mean, var) = running(&layer);
        out.push(("running_mean_out", mean));
        out.push(("running_var_out", var));
    }
    Ok(out)
}

fn run_switch_norm(case: &Case) -> Result<Outputs> {
    let cfg = SwitchNormConfig {
        eps: case.f64("eps"),
        momentum: Some(case.f64("momentum")),
        affine: case.has("weight"),
        channel_axis: case.channel_axis(),
    };
    let c = case.tensor("running_mean").elem_count();
    run_channel_layer(
        case,
        &[
            "weight",
            "bias",
            "mean_weight",
            "var_weight",
            "running_mean",
            "running_var",
        ],
        &|vb| switch_norm(c, cfg, vb),
        &|l| (l.running_mean().clone(), l.running_var().clone()),
    )
}

fn run_batch_renorm(case: &Case) -> Result<Outputs> {
    let cfg = BatchRenormConfig {
        eps: case.f64("eps"),
        momentum: Some(case.f64("momentum")),
        affine: case.has("weight"),
        channel_axis: case.channel_axis(),
        r_max: case.f64("r_max"),
        d_max: case.f64("d_max"),
        schedule: None,
    };
    let c = case.tensor("running_mean").elem_count();
    run_channel_layer(
        case,
        &["weight", "bias", "running_mean", "running_var"],
        &|vb| batch_renorm(c, cfg, vb),
        &|l| (l.running_mean().clone(), l.running_var().clone()),
    )
}

/// Checks every output against the case's expected tensor within its
/// tolerance, and that every expected tensor was produced; returns how
/// many comparisons it made.
fn compare(case: &Case, path: &str, outputs: &Outputs) -> usize {
    for name in case.expected() {
        assert!(
            outputs.iter().any(|(n, _)| *n == name),
            "{} ({path}): `{name}` was not produced",
            case.name
        );
    }
    for (name, got) in outputs {
        let want = case.tensor(name);
        assert_eq!(
            got.elem_count(),
            want.elem_count(),
            "{} ({path}): {name} has shape {:?}, expected {:?}",
            case.name,
            got.dims(),
            want.dims()
        );
        let tol = case.f64(&format!("tol_{name}"));
        let d = max_diff(&flat(got), &flat(want));
        assert!(
            d <= tol,
            "{} ({path}): {name} differs by {d:e}, tolerance {tol:e}",
            case.name
        );
    }
    outputs.len()
}

#[test]
fn golden_adaptive_cases() {
    let cases = load_cases();
    let numbers: Vec<u32> = cases.iter().map(|c| c.name[..3].parse().unwrap()).collect();
    for n in 37..=73 {
        assert!(numbers.contains(&n), "golden case {n:03} is missing");
    }
    let (mut checked, mut refused) = (0, 0);
    for case in &cases {
        let mut runs: Vec<(&str, Result<Outputs>)> = Vec::new();
        match case.meta("op") {
            "adain" => runs.push(("adain", run_adain(case))),
            "ada_layer_norm" | "ada_rms_norm" => {
                runs.push(("op", run_ada_op(case)));
                if case.normalized_shape().len() == 1 && !case.flag("expect_error") {
                    runs.push(("layer", run_ada_layer(case)));
                }
            }
            "switch_norm" => runs.push(("layer", run_switch_norm(case))),
            "batch_renorm" => runs.push(("layer", run_batch_renorm(case))),
            op => panic!("{}: unknown op {op}", case.name),
        }
        for (path, result) in runs {
            if case.flag("expect_error") {
                assert!(
                    result.is_err(),
                    "{} ({path}): accepted invalid input",
                    case.name
                );
                refused += 1;
            } else {
                let outputs = result.unwrap_or_else(|e| panic!("{} ({path}): {e}", case.name));
                checked += compare(case, path, &outputs);
            }
        }
    }
    assert_eq!(refused, 5, "error cases refused");
    assert!(checked > 200, "only {checked} tensors checked");
}

// ---------------------------------------------------------------------
// Training.

const BATCH: usize = 32;
const STEPS: usize = 40;

/// AdamW on every variable of `map` for `STEPS` steps; returns the losses.
fn train(map: &VarMap, loss: &dyn Fn() -> Result<Tensor>) -> Vec<f32> {
    let params = ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(map.all_vars(), params).unwrap();
    (0..STEPS)
        .map(|_| {
            let l = loss().unwrap();
            let v = l.to_scalar::<f32>().unwrap();
            opt.backward_step(&l).unwrap();
            v
        })
        .collect()
}

#[track_caller]
fn assert_falls(name: &str, losses: &[f32]) {
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last.is_finite(), "{name}: loss {last}");
    assert!(
        last < 0.5 * first,
        "{name}: loss went from {first} to {last}: {losses:?}"
    );
}

/// How far a variable moved from `before`.
fn moved(map: &VarMap, name: &str, before: &Tensor) -> f64 {
    let now = var_of(map, name).as_tensor().clone();
    max_diff(&flat(&now), &flat(before))
}

/// A regression target `sin(x · a)` on `[BATCH, 8]` inputs.
fn regression(seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let x = rng.tensor(&[BATCH, 8], -2.0, 2.0);
    let a = rng.tensor(&[8, 1], -1.0, 1.0);
    let target = x.matmul(&a).unwrap().sin().unwrap();
    (x, target)
}

/// `linear(8 → 16) → [N, 4, 4] → norm → relu → linear(16 → 1)`; returns
/// the losses and the map.
fn train_channel_model(
    make: &dyn Fn(VarBuilder) -> Result<Box<dyn ModuleT>>,
) -> (Vec<f32>, VarMap) {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let fc1 = linear(8, 16, vb.pp("fc1")).unwrap();
    let norm = make(vb.pp("norm")).unwrap();
    let fc2 = linear(16, 1, vb.pp("fc2")).unwrap();
    let (x, target) = regression(201);
    let losses = train(&map, &|| {
        let h = fc1.forward(&x)?.reshape((BATCH, 4, 4))?;
        let h = norm.forward_t(&h, true)?.reshape((BATCH, 16))?.relu()?;
        (fc2.forward(&h)? - &target)?.sqr()?.mean_all()
    });
    (losses, map)
}

#[test]
fn switch_norm_learns() {
    let (losses, map) =
        train_channel_model(&|vb| Ok(Box::new(switch_norm(4, SwitchNormConfig::default(), vb)?)));
    assert_falls("switch_norm", &losses);
    let ones = Tensor::ones(3, DType::F32, &CPU).unwrap();
    assert!(moved(&map, "norm.mean_weight", &ones) > 1e-3);
    assert!(moved(&map, "norm.var_weight", &ones) > 1e-3);
    let count = var_of(&map, "norm.num_batches_tracked");
    assert_eq!(count.as_tensor().to_scalar::<i64>().unwrap(), STEPS as i64);
}

#[test]
fn batch_renorm_learns() {
    let (losses, map) =
        train_channel_model(&|vb| Ok(Box::new(batch_renorm(4, BatchRenormConfig::default(), vb)?)));
    assert_falls("batch_renorm", &losses);
    let count = var_of(&map, "norm.num_batches_tracked");
    assert_eq!(count.as_tensor().to_scalar::<i64>().unwrap(), STEPS as i64);
    let zeros = Tensor::zeros(4, DType::F32, &CPU).unwrap();
    assert!(moved(&map, "norm.running_mean", &zeros) > 1e-3);
}

#[test]
fn ada_layer_norm_learns() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let fc1 = linear(8, 16, vb.pp("fc1")).unwrap();
    let ada = ada_layer_norm(16, 4, AdaLayerNormConfig::default(), vb.pp("ada")).unwrap();
    let fc2 = linear(16, 1, vb.pp("fc2")).unwrap();
    let (x, base) = regression(202);
    // The condition rescales the target per sample.
    let mut rng = Rng::new(203);
    let cond = rng.tensor(&[BATCH, 4], -1.0, 1.0);
    let c = rng.tensor(&[4, 1], -1.0, 1.0);
    let target = (base * (cond.matmul(&c).unwrap() + 1.5).unwrap()).unwrap();
    let losses = train(&map, &|| {
        let h = ada.forward(&fc1.forward(&x)?, &cond)?.y.relu()?;
        (fc2.forward(&h)? - &target)?.sqr()?.mean_all()
    });
    assert_falls("ada_layer_norm", &losses);
    let zeros = Tensor::zeros((32, 4), DType::F32, &CPU).unwrap();
    assert!(moved(&map, "ada.modulation.weight", &zeros) > 1e-3);
}

#[test]
fn adain_learns() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let content = linear(8, 16, vb.pp("content")).unwrap();
    let style = linear(8, 16, vb.pp("style")).unwrap();
    let fc2 = linear(16, 1, vb.pp("fc2")).unwrap();
    let (x, base) = regression(204);
    let mut rng = Rng::new(205);
    let z = rng.tensor(&[BATCH, 8], -1.0, 1.0);
    let c = rng.tensor(&[8, 1], -1.0, 1.0);
    let target = (base + z.matmul(&c).unwrap().cos().unwrap()).unwrap();
    let style_before = style.weight().copy().unwrap();
    let cfg = AdaInConfig::default();
    let losses = train(&map, &|| {
        let h = content.forward(&x)?.reshape((BATCH, 4, 4))?;
        let s = style.forward(&z)?.reshape((BATCH, 4, 4))?;
        let h = adain(&h, &s, &cfg)?.reshape((BATCH, 16))?.relu()?;
        (fc2.forward(&h)? - &target)?.sqr()?.mean_all()
    });
    assert_falls("adain", &losses);
    assert!(moved(&map, "style.weight", &style_before) > 1e-3);
}
