//! Golden cases 037–073 through the layers, by both routes.

use std::collections::HashMap;

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor};
use normkit_burn::functional;
use normkit_burn::*;

use super::gradients::Reader;
use crate::common::*;
use crate::golden::{cases, Case};

// ---------------------------------------------------------------------------
// Golden cases 037–073.

pub(super) const ADAPTIVE_OPS: [&str; 5] = [
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

pub(super) type Outputs = HashMap<&'static str, Vec<f64>>;

pub(super) fn reader<const D: usize>(t: Tensor<D>) -> Reader {
    Box::new(move |g| read(t.grad(g).expect("gradient")))
}

pub(super) fn f32s(case: &Case, key: &str) -> Vec<f32> {
    case.tensor(key).1.iter().map(|&v| v as f32).collect()
}

pub(super) fn input<const D: usize>(case: &Case, key: &str, device: &Device) -> Tensor<D> {
    let (shape, _) = case.tensor(key);
    let shape: [usize; D] = shape
        .try_into()
        .unwrap_or_else(|_| panic!("{}: rank of {key}", case.name));
    from_vec(f32s(case, key), shape, device)
}

pub(super) fn vector(case: &Case, key: &str, device: &Device) -> Tensor<1> {
    let v = f32s(case, key);
    let n = v.len();
    from_vec(v, [n], device)
}

pub(super) fn param_of(case: &Case, key: &str, device: &Device) -> Option<Param<Tensor<1>>> {
    case.has(key)
        .then(|| Param::from_tensor(vector(case, key, device)))
}

pub(super) fn normalized_shape(case: &Case) -> Vec<usize> {
    case.get("normalized_shape")
        .unwrap()
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

/// Runs `y` backward with the case's `dy` and collects the named gradients.
pub(super) fn finish<const D: usize>(
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
pub(super) fn run<const D: usize>(case: &Case, via: &str) -> Result<Outputs> {
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
pub(super) fn ways(case: &Case) -> Vec<&'static str> {
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

pub(super) fn run_case(case: &Case, via: &str) -> Result<Outputs> {
    match case.tensor("x").0.len() {
        2 => run::<2>(case, via),
        3 => run::<3>(case, via),
        4 => run::<4>(case, via),
        5 => run::<5>(case, via),
        r => panic!("{}: rank {r}", case.name),
    }
}

pub(super) const EXPECTED: [&str; 11] = [
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

pub(super) fn check_golden(route: Route) {
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
