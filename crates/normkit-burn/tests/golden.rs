//! The public golden cases (`tests/golden/*.safetensors` at the workspace
//! root, computed by PyTorch in float64; format in the project's golden
//! FORMAT.md) run through the layers on the autodiff flex device, by both
//! routes. Parameters and running statistics load by their PyTorch names
//! through `LoadPytorch`.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor};
use normkit_burn::functional;
use normkit_burn::*;

use crate::common::*;

/// A golden case as `normkit_data` reads it, with its file as a PyTorch
/// checkpoint for `LoadPytorch`.
pub struct Case {
    pub name: String,
    data: normkit_data::golden::Case,
    pub checkpoint: PytorchCheckpoint,
}

impl Case {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.meta.get(key).map(String::as_str)
    }

    pub fn has(&self, key: &str) -> bool {
        self.data.tensors.contains_key(key)
    }

    /// A tensor's shape and values (expected values are f64).
    pub fn tensor(&self, key: &str) -> (Vec<usize>, Vec<f64>) {
        let t = self
            .data
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor {key}", self.name));
        (t.shape.clone(), t.data.clone())
    }

    pub fn tol(&self, name: &str) -> f64 {
        self.get(&format!("tol_{name}"))
            .unwrap_or_else(|| panic!("{}: no tol_{name}", self.name))
            .parse()
            .unwrap()
    }

    pub fn eps(&self) -> f64 {
        self.get("eps").map_or(1e-5, |e| e.parse().unwrap())
    }

    pub fn axis(&self) -> ChannelAxis {
        match self.get("channel_axis") {
            Some("-1") => ChannelAxis::Last,
            _ => ChannelAxis::First,
        }
    }

    pub fn flag(&self, key: &str) -> bool {
        self.get(key) == Some("true")
    }
}

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

pub fn cases() -> Vec<Case> {
    let dir = golden_dir();
    let paths = normkit_data::golden::case_paths(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(!paths.is_empty(), "no golden cases in {}", dir.display());
    paths
        .iter()
        .map(|path| {
            let data = normkit_data::golden::read_case(path).unwrap_or_else(|e| panic!("{e}"));
            Case {
                name: data.name.clone(),
                checkpoint: PytorchCheckpoint::from_file(path).unwrap(),
                data,
            }
        })
        .collect()
}

/// What one run of a case produced, by expected-tensor name.
type Outputs = HashMap<&'static str, Vec<f64>>;

fn grad_of(t: &Tensor<1>, grads: &burn::tensor::Gradients) -> Vec<f64> {
    read(t.grad(grads).expect("parameter gradient"))
}

fn shape_of<const D: usize>(shape: &[usize]) -> [usize; D] {
    shape.try_into().expect("rank")
}

/// Runs a case at rank `D`; `Err` when the layer refused the input.
fn run<const D: usize>(case: &Case) -> Result<Outputs> {
    let device = ad();
    let op = case.get("op").unwrap();
    let key = if op == "weight_norm" { "v" } else { "x" };
    let (xs, xv) = case.tensor(key);
    let shape: [usize; D] = shape_of(&xs);
    let x = from_vec(xv.iter().map(|&v| v as f32).collect(), shape, &device).require_grad();
    let dy = case
        .has("dy")
        .then(|| from_vec(read32(case, "dy"), shape, &device));
    let mut out = Outputs::new();
    let ck = &case.checkpoint;
    let c_of = |axis: ChannelAxis| match axis {
        ChannelAxis::First => shape[1],
        ChannelAxis::Last => shape[D - 1],
    };
    let mut params: Vec<(&'static str, Tensor<1>)> = Vec::new();
    let y: Tensor<D> = match op {
        "batch_norm" => {
            let momentum = match case.get("momentum") {
                Some("none") => None,
                m => Some(m.unwrap().parse().unwrap()),
            };
            let mut bn = BatchNormConfig::new(c_of(case.axis()))
                .with_eps(case.eps())
                .with_momentum(momentum)
                .with_affine(case.has("weight"))
                .with_channel_axis(case.axis())
                .try_init(&device)?
                .load_pytorch(ck, "")?;
            let count: f32 = case.get("num_batches_tracked").unwrap().parse().unwrap();
            bn.num_batches_tracked = Some(RunningState::new(Tensor::full([1], count, &device)));
            if !case.flag("training") {
                bn.training = Param::from_bool(false);
            }
            if let (Some(w), Some(b)) = (&bn.weight, &bn.bias) {
                params.push(("dweight", w.val()));
                params.push(("dbias", b.val()));
            }
            let y = bn.try_forward(x.clone())?;
            if case.flag("training") {
                out.insert(
                    "running_mean_out",
                    read(bn.running_mean.as_ref().unwrap().value_sync()),
                );
                out.insert(
                    "running_var_out",
                    read(bn.running_var.as_ref().unwrap().value_sync()),
                );
                let after = read(bn.num_batches_tracked.as_ref().unwrap().value_sync())[0];
                assert_eq!(after, count as f64 + 1.0, "{}: count advances", case.name);
            }
            y
        }
        "instance_norm" => {
            let mut inorm = InstanceNormConfig::new(c_of(case.axis()))
                .with_eps(case.eps())
                .with_momentum(case.get("momentum").and_then(|m| m.parse().ok()))
                .with_affine(case.has("weight"))
                .with_track_running_stats(case.flag("track_running_stats"))
                .with_channel_axis(case.axis())
                .try_init(&device)?
                .load_pytorch(ck, "")?;
            if !case.flag("training") {
                inorm.training = Param::from_bool(false);
            }
            if let (Some(w), Some(b)) = (&inorm.weight, &inorm.bias) {
                params.push(("dweight", w.val()));
                params.push(("dbias", b.val()));
            }
            let y = inorm.try_forward(x.clone())?;
            if case.flag("training") && case.flag("track_running_stats") {
                out.insert(
                    "running_mean_out",
                    read(inorm.running_mean.as_ref().unwrap().value_sync()),
                );
                out.insert(
                    "running_var_out",
                    read(inorm.running_var.as_ref().unwrap().value_sync()),
                );
            }
            y
        }
        "group_norm" => {
            let groups: usize = case.get("num_groups").unwrap().parse().unwrap();
            // The layer refuses bad groups at construction; the functional
            // form sees the input and refuses it there.
            let gn = match GroupNormConfig::new(groups, c_of(case.axis()))
                .with_eps(case.eps())
                .with_affine(case.has("weight"))
                .with_channel_axis(case.axis())
                .try_init(&device)
            {
                Ok(gn) => gn.load_pytorch(ck, "")?,
                Err(e) => return Err(e),
            };
            if let (Some(w), Some(b)) = (&gn.weight, &gn.bias) {
                params.push(("dweight", w.val()));
                params.push(("dbias", b.val()));
            }
            gn.try_forward(x.clone())?
        }
        "layer_norm" | "rms_norm" => {
            let ns: Vec<usize> = case
                .get("normalized_shape")
                .unwrap()
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|s| s.trim().parse().unwrap())
                .collect();
            if op == "layer_norm" {
                let ln = LayerNormConfig::new(ns)
                    .with_eps(case.eps())
                    .with_elementwise_affine(case.has("weight"))
                    .with_bias(case.has("bias"))
                    .try_init(&device)?
                    .load_pytorch(ck, "")?;
                if let Some(w) = &ln.weight {
                    params.push(("dweight", w.val()));
                }
                if let Some(b) = &ln.bias {
                    params.push(("dbias", b.val()));
                }
                ln.try_forward(x.clone())?
            } else {
                let rms = RmsNormConfig::new(ns)
                    .with_eps(Some(case.eps()))
                    .with_elementwise_affine(case.has("weight"))
                    .try_init(&device)?
                    .load_pytorch(ck, "")?;
                if let Some(w) = &rms.weight {
                    params.push(("dweight", w.val()));
                }
                rms.try_forward(x.clone())?
            }
        }
        "dyt" => {
            let dyt = DytConfig::new(c_of(case.axis()))
                .with_affine(case.has("weight"))
                .with_channel_axis(case.axis())
                .try_init(&device)?
                .load_pytorch(ck, "")?;
            params.push(("dalpha", dyt.alpha.val()));
            if let (Some(w), Some(b)) = (&dyt.weight, &dyt.bias) {
                params.push(("dweight", w.val()));
                params.push(("dbias", b.val()));
            }
            dyt.try_forward(x.clone())?
        }
        "derf" => {
            let derf = DerfConfig::new(c_of(case.axis()))
                .with_affine(case.has("weight"))
                .with_channel_axis(case.axis())
                .try_init(&device)?
                .load_pytorch(ck, "")?;
            params.push(("dalpha", derf.alpha.val()));
            params.push(("dshift", derf.shift.val()));
            if let (Some(w), Some(b)) = (&derf.weight, &derf.bias) {
                params.push(("dweight", w.val()));
                params.push(("dbias", b.val()));
            }
            derf.try_forward(x.clone())?
        }
        "weight_norm" => {
            let dim = match case.get("dim").unwrap() {
                "none" => None,
                d => Some(d.parse::<isize>().unwrap()),
            };
            let g = Param::from_tensor(from_vec(
                read32(case, "g"),
                [read32(case, "g").len()],
                &device,
            ));
            params.push(("dg", g.val()));
            functional::weight_norm(x.clone(), g.val(), dim)?
        }
        other => panic!("{}: unknown op {other}", case.name),
    };
    out.insert("y", read(y.clone()));
    if let Some(dy) = dy {
        let grads = (y * dy).sum().backward();
        let dx_name = if op == "weight_norm" { "dv" } else { "dx" };
        out.insert(dx_name, read(x.grad(&grads).expect("input gradient")));
        for (name, p) in &params {
            out.insert(name, grad_of(p, &grads));
        }
    }
    Ok(out)
}

fn read32(case: &Case, key: &str) -> Vec<f32> {
    case.tensor(key).1.iter().map(|&v| v as f32).collect()
}

fn run_case(case: &Case) -> Result<Outputs> {
    let key = if case.get("op") == Some("weight_norm") {
        "v"
    } else {
        "x"
    };
    match case.tensor(key).0.len() {
        1 => run::<1>(case),
        2 => run::<2>(case),
        3 => run::<3>(case),
        4 => run::<4>(case),
        5 => run::<5>(case),
        r => panic!("{}: rank {r}", case.name),
    }
}

const EXPECTED: [&str; 10] = [
    "y",
    "dx",
    "dweight",
    "dbias",
    "dalpha",
    "dshift",
    "dv",
    "dg",
    "running_mean_out",
    "running_var_out",
];

fn check_all(route: Route) {
    let mut checked = 0;
    // The adaptive ops' cases run through their layers in `adaptive`; the
    // residual-add norms have no burn layer (`normlab conform` and
    // normkit's tests run their cases).
    for case in cases().into_iter().filter(|c| {
        !crate::adaptive::is_adaptive(c)
            && !matches!(c.get("op"), Some("add_layer_norm" | "add_rms_norm"))
    }) {
        let result = with_route(route, || run_case(&case));
        if case.flag("expect_error") {
            assert!(
                result.is_err(),
                "{} ({route:?}): accepted an invalid input",
                case.name
            );
            checked += 1;
            continue;
        }
        let out = result.unwrap_or_else(|e| panic!("{} ({route:?}): {e}", case.name));
        for name in EXPECTED.iter().filter(|n| case.has(n)) {
            let got = out
                .get(name)
                .unwrap_or_else(|| panic!("{} ({route:?}): produced no {name}", case.name));
            let (_, want) = case.tensor(name);
            let tol = case.tol(name);
            assert_close(
                &format!("{} ({route:?}) {name}", case.name),
                got,
                &want,
                tol,
                0.0,
            );
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} golden cases ran");
}

#[test]
fn golden_cases_fused() {
    check_all(Route::Auto);
}

#[test]
fn golden_cases_composed() {
    check_all(Route::Composed);
}

#[test]
fn golden_loader_reads_plain_devices_too() {
    // The same loader on a plain (inference) flex device.
    let case = cases()
        .into_iter()
        .find(|c| c.name.contains("bn2d_eval"))
        .expect("the BatchNorm eval case");
    let bn = BatchNormConfig::new(6)
        .init(&Device::flex())
        .load_pytorch(&case.checkpoint, "")
        .unwrap();
    let want = case.tensor("running_var").1;
    assert_close(
        "running_var",
        &read(bn.running_var.unwrap().value()),
        &want,
        0.0,
        0.0,
    );
}
