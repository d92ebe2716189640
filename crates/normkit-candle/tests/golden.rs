//! The golden cases in `tests/golden` (PyTorch's float64 results on float32
//! inputs; format in the cases' FORMAT.md) run through the layers the way a
//! user would meet them: each case's parameters and buffers are written as
//! a PyTorch-named safetensors state dict, which is then
//! - loaded with `VarBuilder::from_buffered_safetensors` for the forward
//!   pass and the running-statistics update, and
//! - loaded into a `VarMap`-built layer for the gradients, whose updated
//!   running statistics `VarMap::save` then writes back.

use std::collections::HashMap;

use candle_core::{DType, ModuleT, Result, Tensor, Var};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use normkit_candle::*;

use crate::common::*;

const PREFIX: &str = "layer";

#[derive(Clone)]
struct Case {
    name: String,
    meta: HashMap<String, String>,
    tensors: HashMap<String, Tensor>,
    /// The names weight norm's `g` and `v` are saved under.
    names: WeightNormNames,
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
        &self.tensors[name]
    }

    fn channel_axis(&self) -> ChannelAxis {
        match self.meta("channel_axis") {
            "1" => ChannelAxis::First,
            "-1" => ChannelAxis::Last,
            other => panic!("{}: channel_axis {other}", self.name),
        }
    }

    /// The channel count: from a per-channel tensor, else from `x`.
    fn channels(&self) -> usize {
        for name in ["running_mean", "weight"] {
            if let Some(t) = self.tensors.get(name) {
                return t.elem_count();
            }
        }
        let dims = self.tensor("x").dims();
        match self.channel_axis() {
            ChannelAxis::First => dims[1],
            ChannelAxis::Last => dims[dims.len() - 1],
        }
    }

    fn momentum(&self) -> Option<f64> {
        match self.meta("momentum") {
            "none" => None,
            m => Some(m.parse().unwrap()),
        }
    }

    fn weight_norm_dim(&self) -> Option<isize> {
        match self.meta("dim") {
            "none" => None,
            d => Some(d.parse().unwrap()),
        }
    }
}

fn load_cases(op: &str) -> Vec<Case> {
    golden_cases(&[op])
        .into_iter()
        .map(|c| Case {
            name: c.name,
            meta: c.meta,
            tensors: c.tensors,
            names: WeightNormNames::default(),
        })
        .collect()
}

/// A forward pass taking the input and the training flag.
type Forward = Box<dyn Fn(&Tensor, bool) -> Result<Tensor>>;

/// A layer under test: its forward (for weight norm: the weight it
/// computes) and its state dict.
struct Built {
    run: Forward,
    state: Box<dyn Fn() -> HashMap<String, Tensor>>,
}

impl Built {
    fn of<L: ModuleT + StateDict + Clone + 'static>(layer: L) -> Self {
        let l2 = layer.clone();
        Built {
            run: Box::new(move |x, train| layer.forward_t(x, train)),
            state: Box::new(move || {
                let mut out = HashMap::new();
                l2.state_dict(PREFIX, &mut out);
                out
            }),
        }
    }
}

fn weight_norm_layer(case: &Case, vb: VarBuilder) -> Result<Built> {
    let v_dims = case.tensor("v").dims().to_vec();
    let config = WeightNormConfig {
        dim: case.weight_norm_dim(),
        bias: false,
        names: case.names,
    };
    let state = |s: &dyn StateDict| {
        let mut out = HashMap::new();
        s.state_dict(PREFIX, &mut out);
        out
    };
    Ok(match v_dims[..] {
        [out, inp] => {
            let l = weight_norm_linear(inp, out, config, vb)?;
            let l2 = l.clone();
            Built {
                run: Box::new(move |_, _| l.weight()),
                state: Box::new(move || state(&l2)),
            }
        }
        [out, inp, k, k2] if k == k2 => {
            let l = weight_norm_conv2d(inp, out, k, Conv2dConfig::default(), config, vb)?;
            let l2 = l.clone();
            Built {
                run: Box::new(move |_, _| l.weight()),
                state: Box::new(move || state(&l2)),
            }
        }
        _ => panic!("{}: v of shape {v_dims:?}", case.name),
    })
}

/// The layer a case describes, built through `vb`.
fn layer(case: &Case, vb: VarBuilder) -> Result<Built> {
    let eps = || case.f64("eps");
    Ok(match case.meta("op") {
        "batch_norm" => Built::of(batch_norm(
            case.channels(),
            BatchNormConfig {
                eps: eps(),
                momentum: case.momentum(),
                affine: case.has("weight"),
                track_running_stats: case.has("running_mean"),
                channel_axis: case.channel_axis(),
            },
            vb,
        )?),
        "instance_norm" => Built::of(instance_norm(
            case.channels(),
            InstanceNormConfig {
                eps: eps(),
                momentum: case.momentum(),
                affine: case.has("weight"),
                track_running_stats: case.flag("track_running_stats"),
                channel_axis: case.channel_axis(),
            },
            vb,
        )?),
        "group_norm" => Built::of(group_norm(
            case.meta("num_groups").parse().unwrap(),
            case.channels(),
            GroupNormConfig {
                eps: eps(),
                affine: case.has("weight"),
                channel_axis: case.channel_axis(),
            },
            vb,
        )?),
        "layer_norm" => Built::of(layer_norm(
            normalized_shape(case),
            LayerNormConfig {
                eps: eps(),
                elementwise_affine: case.has("weight"),
                bias: case.has("bias"),
                remove_mean: true,
            },
            vb,
        )?),
        "rms_norm" => Built::of(rms_norm(
            normalized_shape(case),
            RmsNormConfig {
                eps: Some(eps()),
                elementwise_affine: case.has("weight"),
            },
            vb,
        )?),
        "dyt" => Built::of(dyt(
            case.channels(),
            DytConfig {
                alpha_init: 0.5,
                elementwise_affine: case.has("weight"),
                channel_axis: case.channel_axis(),
            },
            vb,
        )?),
        "derf" => Built::of(derf(
            case.channels(),
            DerfConfig {
                alpha_init: 0.5,
                shift_init: 0.0,
                elementwise_affine: case.has("weight"),
                channel_axis: case.channel_axis(),
            },
            vb,
        )?),
        "weight_norm" => weight_norm_layer(case, vb)?,
        op => panic!("{}: unknown op {op}", case.name),
    })
}

fn normalized_shape(case: &Case) -> Vec<usize> {
    case.meta("normalized_shape")
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

/// The case's parameters and buffers under PyTorch's names, each with the
/// name of its expected gradient.
fn state_dict(case: &Case) -> Vec<(String, Tensor, &'static str)> {
    let mut out = Vec::new();
    let mut put = |name: &str, t: Tensor, grad: &'static str| {
        out.push((format!("{PREFIX}.{name}"), t, grad));
    };
    for (name, grad) in [
        ("weight", "dweight"),
        ("bias", "dbias"),
        ("alpha", "dalpha"),
        ("shift", "dshift"),
        ("running_mean", ""),
        ("running_var", ""),
    ] {
        if let Some(t) = case.tensors.get(name) {
            put(name, t.clone(), grad);
        }
    }
    let tracks = match case.meta("op") {
        "batch_norm" => case.has("running_mean"),
        "instance_norm" => case.flag("track_running_stats"),
        _ => false,
    };
    if tracks {
        let count: i64 = case
            .meta
            .get("num_batches_tracked")
            .map_or(0, |n| n.parse().unwrap());
        put("num_batches_tracked", Tensor::new(count, &CPU).unwrap(), "");
    }
    if case.meta("op") == "weight_norm" {
        let (g, v) = match case.names {
            WeightNormNames::Legacy => ("weight_g", "weight_v"),
            WeightNormNames::Parametrizations => (
                "parametrizations.weight.original0",
                "parametrizations.weight.original1",
            ),
        };
        put(g, case.tensor("g").clone(), "dg");
        put(v, case.tensor("v").clone(), "dv");
    }
    out
}

#[track_caller]
fn assert_matches(case: &Case, expected: &str, got: &Tensor) {
    let want = case.tensor(expected);
    assert_eq!(
        got.elem_count(),
        want.elem_count(),
        "{}: {expected} has {:?}, expected {:?}",
        case.name,
        got.dims(),
        want.dims()
    );
    let tol = case.f64(&format!("tol_{expected}"));
    let d = max_diff(&flat(got), &flat(want));
    assert!(
        d <= tol,
        "{}: {expected} differs by {d:e}, tolerance {tol:e}",
        case.name
    );
}

/// Runs one case both ways; returns how many expected tensors it checked.
fn run(case: &Case) -> usize {
    let training = case.flag("training");
    let sd = state_dict(case);
    let tensors: HashMap<String, Tensor> =
        sd.iter().map(|(k, t, _)| (k.clone(), t.clone())).collect();
    let file = TempFile::safetensors(&case.name, &tensors);
    let x = if case.meta("op") == "weight_norm" {
        case.tensor("v").clone()
    } else {
        case.tensor("x").clone()
    };

    // Inference: straight from the file.
    let vb = VarBuilder::from_buffered_safetensors(file.bytes(), DType::F32, &CPU).unwrap();
    let built = layer(case, vb.pp(PREFIX)).and_then(|l| Ok(((l.run)(&x, training)?, l)));
    if case.flag("expect_error") {
        assert!(built.is_err(), "{}: accepted invalid input", case.name);
        return 1;
    }
    let (y, built) = built.unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut checked = 0;
    assert_matches(case, "y", &y);
    checked += 1;
    let state = (built.state)();
    for (buffer, expected) in [
        ("running_mean", "running_mean_out"),
        ("running_var", "running_var_out"),
    ] {
        if case.has(expected) {
            assert_matches(case, expected, &state[&format!("{PREFIX}.{buffer}")]);
            checked += 1;
        }
    }
    if case.meta("op") == "batch_norm" && case.has("running_mean") {
        let before: i64 = case.meta("num_batches_tracked").parse().unwrap();
        let after = state[&format!("{PREFIX}.num_batches_tracked")]
            .to_scalar::<i64>()
            .unwrap();
        assert_eq!(
            after,
            before + i64::from(training),
            "{}: num_batches_tracked",
            case.name
        );
    }

    // Training: a VarMap-built layer loads the file, then backward.
    let mut varmap = VarMap::new();
    let trained = layer(
        case,
        VarBuilder::from_varmap(&varmap, DType::F32, &CPU).pp(PREFIX),
    )
    .unwrap();
    // A scalar g saved as [1, 1] fits the layer's [] after a reshape.
    let fitted: HashMap<String, Tensor> = {
        let vars = varmap.data().lock().unwrap();
        tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.reshape(vars[k].shape()).unwrap()))
            .collect()
    };
    let fitted_file = TempFile::safetensors(&format!("{}-fitted", case.name), &fitted);
    varmap.load(&fitted_file.0).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let y = (trained.run)(xv.as_tensor(), training).unwrap();
    assert_matches(case, "y", &y);
    let loss = (y * case.tensor("dy")).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap().clone();
    if case.has("dx") {
        assert_matches(case, "dx", grads.get(xv.as_tensor()).expect("dx"));
        checked += 1;
    }
    for (name, _, grad) in &sd {
        if grad.is_empty() || !case.has(grad) {
            continue;
        }
        let g = grads
            .get(vars[name].as_tensor())
            .unwrap_or_else(|| panic!("{}: no gradient for {name}", case.name));
        assert_matches(case, grad, g);
        checked += 1;
    }
    // The running statistics the step updated are what VarMap saves.
    if case.has("running_mean_out") {
        let saved = TempFile::safetensors(&format!("{}-saved", case.name), &HashMap::new());
        varmap.save(&saved.0).unwrap();
        let back = candle_core::safetensors::load(&saved.0, &CPU).unwrap();
        assert_matches(
            case,
            "running_mean_out",
            &back[&format!("{PREFIX}.running_mean")],
        );
        assert_matches(
            case,
            "running_var_out",
            &back[&format!("{PREFIX}.running_var")],
        );
    }
    checked
}

fn run_all(op: &str, at_least: usize) {
    let cases = load_cases(op);
    assert!(
        cases.len() >= at_least,
        "{op}: found {} golden cases in tests/golden, expected at least {at_least}",
        cases.len(),
    );
    for case in &cases {
        assert!(run(case) > 0, "{}: nothing checked", case.name);
        if op == "weight_norm" {
            // Again under the older `weight_g` / `weight_v` names.
            let legacy = Case {
                name: format!("{}-legacy", case.name),
                names: WeightNormNames::Legacy,
                ..case.clone()
            };
            assert!(run(&legacy) > 0, "{}: nothing checked", legacy.name);
        }
    }
}

#[test]
fn batch_norm_cases() {
    run_all("batch_norm", 9);
}

#[test]
fn layer_norm_cases() {
    run_all("layer_norm", 8);
}

#[test]
fn rms_norm_cases() {
    run_all("rms_norm", 3);
}

#[test]
fn group_norm_cases() {
    run_all("group_norm", 5);
}

#[test]
fn instance_norm_cases() {
    run_all("instance_norm", 4);
}

#[test]
fn weight_norm_cases() {
    run_all("weight_norm", 4);
}

#[test]
fn dyt_cases() {
    run_all("dyt", 3);
}

#[test]
fn derf_cases() {
    run_all("derf", 2);
}
