//! The families of fuzz cases, one per layer or group of layers: each
//! builds a random layer and runs random inputs through it, counting every
//! call in a [`Tally`].

use candle_core::{DType, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};
use normkit_candle::*;

use super::gen::{Gen, CPU, MAX_VALUES};
use super::Tally;

/// Runs the backward of a successful forward `y` through candle's
/// autograd: every variable's gradient, when it has one, is shaped like it.
fn backward(t: &mut Tally, key: &str, y: &Tensor, vars: &[Var]) {
    let r = (|| {
        let loss = y.to_dtype(DType::F32)?.sum_all()?;
        let grads = loss.backward()?;
        for v in vars {
            if let Some(d) = grads.get(v.as_tensor()) {
                assert_eq!(d.dims(), v.dims(), "{key}: gradient of a {:?}", v.dims());
            }
        }
        Ok(())
    })();
    t.note(&format!("{key} backward"), r);
}

/// A norm's forward: Ok shaped like `x`, then its backward.
fn norm(t: &mut Tally, key: &str, x: &Tensor, var: Option<Var>, map: &VarMap, y: Result<Tensor>) {
    if let Some(y) = t.note(&format!("{key} forward"), y) {
        assert_eq!(y.dims(), x.dims(), "{key}: output shape");
        assert_eq!(y.dtype(), x.dtype(), "{key}: output dtype");
        let vars: Vec<Var> = var.into_iter().chain(map.all_vars()).collect();
        backward(t, key, &y, &vars);
    }
}

/// An input for a layer over `features` on `axis`: that many channels
/// there, mostly.
fn input_for(g: &mut Gen, features: usize, axis: Option<ChannelAxis>) -> Vec<usize> {
    let rank = g.rank();
    let mut dims = g.dims(rank);
    if g.chance(0.8) && features <= MAX_VALUES {
        let at = match axis {
            Some(ChannelAxis::First) if rank >= 2 => Some(1),
            _ if rank >= 1 => Some(rank - 1),
            _ => None,
        };
        if let Some(at) = at {
            dims[at] = features;
            while dims.iter().product::<usize>() > MAX_VALUES {
                let i = g.below(rank);
                if i != at {
                    dims[i] = (dims[i] / 2).max(1);
                }
            }
        }
    }
    dims
}

pub fn layer_norm_family(g: &mut Gen, t: &mut Tally) {
    let rank = g.below(3);
    let ns: Vec<usize> = (0..rank).map(|_| g.features(true)).collect();
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    let config = LayerNormConfig {
        eps: g.eps(),
        elementwise_affine: g.chance(0.7),
        bias: g.chance(0.7),
        remove_mean: g.chance(0.7),
    };
    let layer = match g.below(4) {
        0 => t.note("layer_norm new", layer_norm(ns.clone(), config, vb)),
        1 => t.note(
            "layer_norm new",
            layer_norm_no_bias(ns.iter().product(), config.eps, vb),
        ),
        2 => Some(LayerNorm::new(
            g.param(ns.iter().product()),
            g.param(ns.iter().product()),
            config.eps,
        )),
        _ => Some(LayerNorm::rms_norm(
            g.param(ns.iter().product()),
            config.eps,
        )),
    };
    let Some(layer) = layer else { return };
    let mut dims = input_for(g, 0, None);
    if g.chance(0.7) && dims.len() >= layer.normalized_shape().len() {
        let k = dims.len() - layer.normalized_shape().len();
        dims[k..].copy_from_slice(layer.normalized_shape());
    }
    if dims.iter().product::<usize>() > MAX_VALUES {
        return;
    }
    let (x, var) = g.input(&dims);
    norm(t, "layer_norm", &x, var, &map, layer.forward(&x));
}

pub fn rms_norm_family(g: &mut Gen, t: &mut Tally) {
    let ns: Vec<usize> = (0..g.below(3)).map(|_| g.features(true)).collect();
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    let eps = if g.chance(0.3) { None } else { Some(g.eps()) };
    let layer = if g.chance(0.6) {
        let config = RmsNormConfig {
            eps,
            elementwise_affine: g.chance(0.7),
        };
        t.note("rms_norm new", rms_norm(ns.clone(), config, vb))
    } else {
        Some(RmsNorm::new(
            g.param(ns.iter().product()),
            eps.unwrap_or(1e-6),
        ))
    };
    let Some(layer) = layer else { return };
    let mut dims = input_for(g, 0, None);
    let k = layer.normalized_shape().len();
    if g.chance(0.7) && dims.len() >= k {
        let at = dims.len() - k;
        dims[at..].copy_from_slice(layer.normalized_shape());
    }
    if dims.iter().product::<usize>() > MAX_VALUES {
        return;
    }
    let (x, var) = g.input(&dims);
    norm(t, "rms_norm", &x, var, &map, layer.forward(&x));
}

/// The functional LayerNorm and RMSNorm, with any normalized shape
/// (huge ones included: nothing is allocated for it).
pub fn row_ops(g: &mut Gen, t: &mut Tally) {
    let dims = input_for(g, 0, None);
    let (x, var) = g.input(&dims);
    let mut ns: Vec<usize> = match g.below(3) {
        0 if !dims.is_empty() => dims[dims.len() - 1..].to_vec(),
        1 if dims.len() >= 2 => dims[dims.len() - 2..].to_vec(),
        _ => (0..g.below(3)).map(|_| g.features(false)).collect(),
    };
    if g.chance(0.05) {
        ns = vec![usize::MAX, 2];
    }
    let d = ns
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .unwrap_or(usize::MAX);
    let d = if d > MAX_VALUES { 1 } else { d };
    let (w, b) = (
        g.chance(0.5).then(|| g.param(d)),
        g.chance(0.5).then(|| g.param(d)),
    );
    let map = VarMap::new();
    if g.chance(0.5) {
        let y = layer_norm_op(&x, &ns, w.as_ref(), b.as_ref(), g.eps());
        norm(t, "layer_norm_op", &x, var, &map, y);
    } else {
        let eps = if g.chance(0.3) { None } else { Some(g.eps()) };
        let y = rms_norm_op(&x, &ns, w.as_ref(), eps);
        norm(t, "rms_norm_op", &x, var, &map, y);
    }
}

pub fn batch_norm_family(g: &mut Gen, t: &mut Tally) {
    let config = BatchNormConfig {
        eps: g.eps(),
        momentum: g.momentum(),
        affine: g.chance(0.6),
        track_running_stats: g.chance(0.7),
        channel_axis: g.axis(),
    };
    let allocates = config.affine || config.track_running_stats;
    let c = g.features(allocates);
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    let layer = if c <= MAX_VALUES && g.chance(0.25) {
        let (m, v, w, b) = (g.param(c), g.param(c), g.param(c), g.param(c));
        let r = match g.below(4) {
            0 => BatchNorm::new(c, m, v, w, b, config.eps),
            1 => BatchNorm::new_no_bias(c, m, v, config.eps),
            2 => BatchNorm::new_with_momentum(
                c,
                m,
                v,
                w,
                b,
                config.eps,
                config.momentum.unwrap_or(0.1),
            ),
            _ => BatchNorm::new_no_bias_with_momentum(
                c,
                m,
                v,
                config.eps,
                config.momentum.unwrap_or(f64::NAN),
            ),
        };
        t.note("batch_norm new", r)
    } else {
        t.note("batch_norm new", batch_norm(c, config, vb))
    };
    let Some(layer) = layer else { return };
    for _ in 0..1 + g.below(2) {
        let dims = input_for(g, c, Some(layer.config().channel_axis));
        let (x, var) = g.input(&dims);
        let train = g.chance(0.6);
        norm(t, "batch_norm", &x, var, &map, layer.forward_t(&x, train));
    }
    t.note(
        "batch_norm num_batches_tracked",
        layer.num_batches_tracked(),
    );
    if g.chance(0.3) {
        fold(g, t, &layer);
    }
}

/// Folds `bn` into a random Linear or Conv2d.
fn fold(g: &mut Gen, t: &mut Tally, bn: &BatchNorm) {
    let out = if g.chance(0.8) {
        bn.num_features().min(64)
    } else {
        g.features(true)
    };
    let inp = g.features(true);
    if g.chance(0.5) {
        let dt = g_float(g);
        let w = g.input_of(&[out, inp], dt, false).0;
        let b = g.chance(0.5).then(|| g.param(out));
        t.note(
            "fold_batch_norm_linear",
            fold_batch_norm_linear(&Linear::new(w, b), bn),
        );
    } else {
        let k = 1 + g.below(3);
        let dt = g_float(g);
        let w = g.input_of(&[out, inp, k, k], dt, false).0;
        let b = g.chance(0.5).then(|| g.param(out));
        let conv = Conv2d::new(w, b, Conv2dConfig::default());
        t.note("fold_batch_norm_conv2d", fold_batch_norm_conv2d(&conv, bn));
    }
}

fn g_float(g: &mut Gen) -> DType {
    g.pick(&[DType::F32, DType::F32, DType::BF16, DType::F64, DType::U8])
}

pub fn group_norm_family(g: &mut Gen, t: &mut Tally) {
    let config = GroupNormConfig {
        eps: g.eps(),
        affine: g.chance(0.6),
        channel_axis: g.axis(),
    };
    let c = g.features(config.affine);
    let groups = match g.below(4) {
        0 => g.features(false),
        _ if c > 0 => {
            let divisors: Vec<usize> = (1..=c.min(8)).filter(|d| c % d == 0).collect();
            g.pick(&divisors)
        }
        _ => 1,
    };
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    let layer = if c <= MAX_VALUES && g.chance(0.25) {
        let (w, b) = (g.param(c), g.param(c));
        t.note(
            "group_norm new",
            GroupNorm::new(w, b, c, groups, config.eps),
        )
    } else {
        t.note("group_norm new", group_norm(groups, c, config, vb))
    };
    let Some(layer) = layer else { return };
    let dims = input_for(g, c, Some(layer.config().channel_axis));
    let (x, var) = g.input(&dims);
    norm(t, "group_norm", &x, var, &map, layer.forward(&x));
}

pub fn instance_norm_family(g: &mut Gen, t: &mut Tally) {
    let config = InstanceNormConfig {
        eps: g.eps(),
        momentum: g.momentum(),
        affine: g.chance(0.5),
        track_running_stats: g.chance(0.5),
        channel_axis: g.axis(),
    };
    let c = g.features(config.affine || config.track_running_stats);
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    let Some(layer) = t.note("instance_norm new", instance_norm(c, config, vb)) else {
        return;
    };
    for _ in 0..1 + g.below(2) {
        let dims = input_for(g, c, Some(config.channel_axis));
        let (x, var) = g.input(&dims);
        let train = g.chance(0.6);
        norm(
            t,
            "instance_norm",
            &x,
            var,
            &map,
            layer.forward_t(&x, train),
        );
    }
}

pub fn dyt_derf_family(g: &mut Gen, t: &mut Tally) {
    let affine = g.chance(0.6);
    let axis = g.axis();
    let c = g.features(affine);
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    let dims = input_for(g, c, Some(axis));
    let (x, var) = g.input(&dims);
    match g.below(4) {
        0 => {
            let config = DytConfig {
                alpha_init: g.eps(),
                elementwise_affine: affine,
                channel_axis: axis,
            };
            if let Some(l) = t.note("dyt new", dyt(c, config, vb)) {
                norm(t, "dyt", &x, var, &map, l.forward(&x));
            }
        }
        1 => {
            let config = DerfConfig {
                alpha_init: g.eps(),
                shift_init: g.eps(),
                elementwise_affine: affine,
                channel_axis: axis,
            };
            if let Some(l) = t.note("derf new", derf(c, config, vb)) {
                norm(t, "derf", &x, var, &map, l.forward(&x));
            }
        }
        2 => {
            let n = if c > MAX_VALUES { 1 } else { c };
            let (a, w, b) = (
                g.param(1),
                g.chance(0.5).then(|| g.param(n)),
                g.chance(0.5).then(|| g.param(n)),
            );
            norm(
                t,
                "dyt_op",
                &x,
                var,
                &map,
                dyt_op(&x, &a, w.as_ref(), b.as_ref(), axis),
            );
        }
        _ => {
            let n = if c > MAX_VALUES { 1 } else { c };
            let (a, s) = (g.param(1), g.param(1));
            let (w, b) = (
                g.chance(0.5).then(|| g.param(n)),
                g.chance(0.5).then(|| g.param(n)),
            );
            norm(
                t,
                "derf_op",
                &x,
                var,
                &map,
                derf_op(&x, &a, &s, w.as_ref(), b.as_ref(), axis),
            );
        }
    }
}

pub fn weight_norm_family(g: &mut Gen, t: &mut Tally) {
    let dim = if g.chance(0.2) {
        None
    } else {
        Some(g.below(7) as isize - 3)
    };
    let config = WeightNormConfig {
        dim,
        bias: g.chance(0.6),
        names: if g.chance(0.5) {
            WeightNormNames::Legacy
        } else {
            WeightNormNames::Parametrizations
        },
    };
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    let (inp, out) = (g.features(true), g.features(true));
    match g.below(3) {
        0 => {
            let Some(mut l) = t.note(
                "weight_norm_linear new",
                weight_norm_linear(inp, out, config, vb),
            ) else {
                return;
            };
            let rank = 1 + g.below(3);
            let mut dims = g.dims(rank);
            if g.chance(0.8) {
                dims[rank - 1] = inp;
            }
            if dims.iter().product::<usize>() > MAX_VALUES {
                return;
            }
            let (x, var) = g.input(&dims);
            if g.chance(0.3) {
                t.note(
                    "weight_norm_linear initialize_from_batch",
                    l.initialize_from_batch(&x),
                );
            }
            if let Some(y) = t.note("weight_norm_linear forward", l.forward(&x)) {
                backward(
                    t,
                    "weight_norm_linear",
                    &y,
                    &var.into_iter().chain(map.all_vars()).collect::<Vec<_>>(),
                );
            }
        }
        1 => {
            let k = 1 + g.below(3);
            let conv = Conv2dConfig {
                padding: g.below(3),
                stride: g.pick(&[1, 1, 2, 0]),
                dilation: g.pick(&[1, 1, 2, 0]),
                groups: g.pick(&[1, 1, 2, 0]),
                cudnn_fwd_algo: None,
            };
            let Some(mut l) = t.note(
                "weight_norm_conv2d new",
                weight_norm_conv2d(inp, out, k, conv, config, vb),
            ) else {
                return;
            };
            let mut dims = {
                let r = g.pick(&[3, 4, 4, 4, 5]);
                g.dims(r)
            };
            if dims.len() >= 2 && g.chance(0.8) {
                dims[1] = inp;
            }
            if dims.iter().product::<usize>() > MAX_VALUES {
                return;
            }
            let (x, var) = g.input(&dims);
            if g.chance(0.3) {
                t.note(
                    "weight_norm_conv2d initialize_from_batch",
                    l.initialize_from_batch(&x),
                );
            }
            if let Some(y) = t.note("weight_norm_conv2d forward", l.forward(&x)) {
                backward(
                    t,
                    "weight_norm_conv2d",
                    &y,
                    &var.into_iter().chain(map.all_vars()).collect::<Vec<_>>(),
                );
            }
        }
        _ => {
            let dims = g.dims_below(4);
            let (v, var) = g.input(&dims);
            let glen = match dim {
                Some(d) if (d.unsigned_abs()) < dims.len() => {
                    dims[if d < 0 {
                        dims.len() - d.unsigned_abs()
                    } else {
                        d as usize
                    }]
                }
                _ => 1,
            };
            let gt = g.param(glen);
            norm(
                t,
                "weight_norm_op",
                &v,
                var,
                &map,
                weight_norm_op(&v, &gt, dim),
            );
        }
    }
}

pub fn ada_family(g: &mut Gen, t: &mut Tally) {
    let d_model = g.features(true);
    let d_cond = g.features(true);
    let config = AdaLayerNormConfig {
        eps: g.eps(),
        rms: g.chance(0.5),
        elementwise_affine: g.chance(0.5),
        gate: g.chance(0.5),
        zero_init: g.chance(0.5),
    };
    let dims = input_for(g, d_model, None);
    // Modulations and conditions of a huge batch (of no rows) would be huge.
    let n = dims
        .first()
        .copied()
        .filter(|&n| n <= MAX_VALUES)
        .unwrap_or(1);
    if dims.iter().product::<usize>() > MAX_VALUES {
        return;
    }
    let (x, var) = g.input(&dims);
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    let mut mod_dims = vec![n, d_model];
    if g.chance(0.15) {
        mod_dims = g.dims_below(4);
    }
    match g.below(3) {
        0 => {
            let Some(l) = t.note(
                "ada_layer_norm new",
                ada_layer_norm(d_model, d_cond, config, vb),
            ) else {
                return;
            };
            if g.chance(0.7) {
                let cdims = if g.chance(0.85) {
                    vec![n, d_cond]
                } else {
                    g.dims_below(4)
                };
                let cond = g.input(&cdims).0;
                if let Some(out) = t.note("ada_layer_norm forward", l.forward(&x, &cond)) {
                    assert_eq!(out.y.dims(), x.dims());
                    if let Some(gate) = &out.gate {
                        assert_eq!(gate.dims(), [n, d_model]);
                    }
                    let vars: Vec<Var> = var.into_iter().chain(map.all_vars()).collect();
                    backward(t, "ada_layer_norm", &out.y, &vars);
                }
            } else {
                let (s, h) = (g.input(&mod_dims).0, g.input(&mod_dims).0);
                norm(
                    t,
                    "ada_layer_norm modulate",
                    &x,
                    var,
                    &map,
                    l.modulate(&x, &s, &h),
                );
            }
        }
        k => {
            let ns: Vec<usize> = if g.chance(0.8) && !dims.is_empty() {
                dims[dims.len() - 1..].to_vec()
            } else {
                (0..g.below(3)).map(|_| g.features(false)).collect()
            };
            let d = ns
                .iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .filter(|&d| d <= MAX_VALUES)
                .unwrap_or(1);
            let (s, h) = (g.input(&mod_dims).0, g.input(&mod_dims).0);
            let (w, b) = (
                g.chance(0.5).then(|| g.param(d)),
                g.chance(0.5).then(|| g.param(d)),
            );
            let y = if k == 1 {
                ada_layer_norm_op(&x, &ns, &s, &h, w.as_ref(), b.as_ref(), config.eps)
            } else {
                ada_rms_norm_op(&x, &ns, &s, &h, w.as_ref(), config.eps)
            };
            norm(
                t,
                if k == 1 {
                    "ada_layer_norm_op"
                } else {
                    "ada_rms_norm_op"
                },
                &x,
                var,
                &map,
                y,
            );
        }
    }
}

pub fn adain_family(g: &mut Gen, t: &mut Tally) {
    let config = AdaInConfig {
        eps: g.eps(),
        unbiased: g.chance(0.5),
        channel_axis: g.axis(),
    };
    let dims = g.dims_below(6);
    let (x, var) = g.input(&dims);
    let sdims = if g.chance(0.7) {
        dims.clone()
    } else {
        g.dims_below(6)
    };
    if sdims.iter().product::<usize>() > MAX_VALUES {
        return;
    }
    let (s, svar) = g.input(&sdims);
    let y = if g.chance(0.5) {
        adain(&x, &s, &config)
    } else {
        AdaIn::new(config).forward(&x, &s)
    };
    if let Some(y) = t.note("adain forward", y) {
        assert_eq!(y.dims(), x.dims(), "adain: output shape");
        backward(
            t,
            "adain",
            &y,
            &var.into_iter().chain(svar).collect::<Vec<_>>(),
        );
    }
}

pub fn running_family(g: &mut Gen, t: &mut Tally) {
    let axis = g.axis();
    let affine = g.chance(0.6);
    let c = g.features(true);
    let (map, dt) = g.vb();
    let vb = VarBuilder::from_varmap(&map, dt, &CPU);
    if g.chance(0.5) {
        let config = SwitchNormConfig {
            eps: g.eps(),
            momentum: g.momentum(),
            affine,
            channel_axis: axis,
        };
        let Some(l) = t.note("switch_norm new", switch_norm(c, config, vb)) else {
            return;
        };
        for _ in 0..1 + g.below(2) {
            let dims = input_for(g, c, Some(axis));
            let (x, var) = g.input(&dims);
            norm(
                t,
                "switch_norm",
                &x,
                var,
                &map,
                l.forward_t(&x, g.chance(0.6)),
            );
        }
        t.note("switch_norm importances", l.importances());
    } else {
        let schedule = g.chance(0.4).then(|| BatchRenormSchedule {
            warmup: g.pick(&[0, 1, 5, u64::MAX]),
            r_max_at: g.pick(&[0, 1, 10, u64::MAX]),
            d_max_at: g.pick(&[0, 2, 10, u64::MAX]),
        });
        let config = BatchRenormConfig {
            eps: g.eps(),
            momentum: g.momentum(),
            affine,
            channel_axis: axis,
            r_max: g.pick(&[3.0, 1.0, 0.0, -1.0, f64::NAN, f64::INFINITY]),
            d_max: g.pick(&[5.0, 0.0, -1.0, f64::NAN, f64::INFINITY]),
            schedule,
        };
        let Some(l) = t.note("batch_renorm new", batch_renorm(c, config, vb)) else {
            return;
        };
        for _ in 0..1 + g.below(2) {
            let dims = input_for(g, c, Some(axis));
            let (x, var) = g.input(&dims);
            norm(
                t,
                "batch_renorm",
                &x,
                var,
                &map,
                l.forward_t(&x, g.chance(0.6)),
            );
        }
        t.note("batch_renorm limits", l.limits());
    }
}
