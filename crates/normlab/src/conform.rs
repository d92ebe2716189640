//! `normlab conform`: runs golden cases against normkit's kernels.
//!
//! Each case names an op and its hyperparameters in its metadata and holds
//! the inputs and the exact expected results. The runner feeds the inputs
//! to normkit in `f32`, widens what comes back to `f64`, and compares each
//! expected tensor within its `tol_<name>`. A case marked `expect_error`
//! passes when the op refuses its input.

use crate::golden::{read_case, Case, Tensor};
use normkit::{
    Affine, BatchNormConfig, ChannelAxis, Grads, GroupNormConfig, InstanceNormConfig, Momentum,
    RunningStats, Stats,
};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod adaptive;
mod derf;
mod residual;

/// Names of tensors a case may expect, in the order reports list them.
const OUTPUTS: [&str; 16] = [
    "y",
    "sum",
    "dx",
    "dresidual",
    "dstyle",
    "dscale",
    "dshift",
    "dweight",
    "dbias",
    "dmean_weight",
    "dvar_weight",
    "dalpha",
    "dv",
    "dg",
    "running_mean_out",
    "running_var_out",
];

/// Why a case did not produce outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The op (or the case's arguments to it) refused the input: the right
    /// answer for an `expect_error` case, a failure otherwise.
    Refused(String),
    /// The case itself cannot be run: unknown op, missing input tensor.
    Malformed(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(m) => write!(f, "refused: {m}"),
            Failure::Malformed(m) => write!(f, "malformed case: {m}"),
        }
    }
}

impl From<normkit::NormError> for Failure {
    fn from(e: normkit::NormError) -> Self {
        Failure::Refused(e.to_string())
    }
}

type Outputs = BTreeMap<String, Tensor>;

/// The comparison of one expected tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorCheck {
    pub name: String,
    /// Largest absolute difference (infinite if shapes differ or a value
    /// is NaN on one side only; absent if the op did not produce it).
    pub max_err: Option<f64>,
    pub tol: f64,
}

impl TensorCheck {
    pub fn passed(&self) -> bool {
        self.max_err.is_some_and(|e| e <= self.tol)
    }
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseReport {
    pub name: String,
    pub expect_error: bool,
    pub failure: Option<Failure>,
    pub checks: Vec<TensorCheck>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        if self.expect_error {
            matches!(self.failure, Some(Failure::Refused(_)))
        } else {
            self.failure.is_none()
                && !self.checks.is_empty()
                && self.checks.iter().all(TensorCheck::passed)
        }
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        write!(f, "{:<28} {verdict}", self.name)?;
        if self.expect_error {
            match &self.failure {
                Some(failure) => write!(f, "  expected error, {failure}")?,
                None => write!(f, "  expected an error, but the op accepted the input")?,
            }
            return Ok(());
        }
        if let Some(failure) = &self.failure {
            return write!(f, "  {failure}");
        }
        for c in &self.checks {
            match c.max_err {
                Some(e) => write!(f, "  {} {e:.2e}/{:.2e}", c.name, c.tol)?,
                None => write!(f, "  {} missing", c.name)?,
            }
        }
        Ok(())
    }
}

/// Runs every `.safetensors` case in `dir` (sorted by name), or the single
/// file `dir` names.
pub fn run_path(path: &Path) -> std::io::Result<Vec<CaseReport>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    Ok(files.iter().map(|f| run_file(f)).collect())
}

/// Runs one case file; a file that cannot be read is a failed case.
pub fn run_file(path: &Path) -> CaseReport {
    match read_case(path) {
        Ok(case) => run_case(&case),
        Err(e) => CaseReport {
            name: path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
            expect_error: false,
            failure: Some(Failure::Malformed(e.to_string())),
            checks: Vec::new(),
        },
    }
}

/// Runs one case and compares its outputs.
pub fn run_case(case: &Case) -> CaseReport {
    let expect_error = case.meta.get("expect_error").is_some_and(|v| v == "true");
    let result = std::panic::catch_unwind(|| execute(case)).unwrap_or_else(|_| {
        Err(Failure::Malformed(
            "the op panicked (a bug: it must return an error)".into(),
        ))
    });
    let mut report = CaseReport {
        name: case.name.clone(),
        expect_error,
        failure: None,
        checks: Vec::new(),
    };
    match result {
        Err(failure) => report.failure = Some(failure),
        Ok(outputs) if !expect_error => report.checks = compare(case, &outputs),
        Ok(_) => {}
    }
    report
}

fn compare(case: &Case, outputs: &Outputs) -> Vec<TensorCheck> {
    let mut checks = Vec::new();
    for (name, expected) in &case.tensors {
        let known = OUTPUTS.contains(&name.as_str());
        if !known && is_input(name) {
            continue;
        }
        let max_abs = expected.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // FORMAT.md: tolerances have a floor of 1e-6 relative to the
        // largest value; that floor is the default when a case gives none.
        let tol = case
            .meta
            .get(&format!("tol_{name}"))
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(1e-6 * max_abs.max(1.0));
        let max_err = outputs.get(name).map(|got| max_error(expected, got));
        checks.push(TensorCheck {
            name: name.clone(),
            max_err,
            tol,
        });
    }
    let rank = |n: &str| {
        OUTPUTS
            .iter()
            .position(|o| *o == n)
            .unwrap_or(OUTPUTS.len())
    };
    checks.sort_by_key(|c| rank(&c.name));
    checks
}

fn is_input(name: &str) -> bool {
    matches!(
        name,
        "x" | "v"
            | "g"
            | "weight"
            | "bias"
            | "running_mean"
            | "running_var"
            | "alpha"
            | "dy"
            | "style"
            | "scale"
            | "shift"
            | "mean_weight"
            | "var_weight"
            | "residual"
            | "dsum"
    )
}

/// Largest absolute difference; NaN matches NaN and an infinity matches
/// the same infinity.
fn max_error(expected: &Tensor, got: &Tensor) -> f64 {
    if expected.shape != got.shape && expected.numel() != got.numel() {
        return f64::INFINITY;
    }
    expected
        .data
        .iter()
        .zip(&got.data)
        .map(|(&e, &g)| {
            if e.is_nan() && g.is_nan() || e == g {
                0.0
            } else if e.is_nan() || g.is_nan() {
                f64::INFINITY
            } else {
                (e - g).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// The typed view of a case's metadata and tensors.
struct Args<'a> {
    case: &'a Case,
}

impl<'a> Args<'a> {
    fn meta(&self, key: &str) -> Option<&'a str> {
        self.case.meta.get(key).map(String::as_str)
    }

    fn tensor(&self, name: &str) -> Option<&'a Tensor> {
        self.case.tensors.get(name)
    }

    fn input(&self, name: &str) -> Result<&'a Tensor, Failure> {
        self.tensor(name)
            .ok_or_else(|| Failure::Malformed(format!("no input tensor `{name}`")))
    }

    fn vec(&self, name: &str) -> Option<Vec<f32>> {
        self.tensor(name).map(Tensor::to_f32)
    }

    fn parse<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Result<T, Failure> {
        match self.meta(key) {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| Failure::Refused(format!("invalid {key} = {v:?}"))),
            None => default.ok_or_else(|| Failure::Malformed(format!("no `{key}` in metadata"))),
        }
    }

    fn eps(&self, default: f32) -> Result<f32, Failure> {
        match self.meta("eps").map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("nan") => Ok(f32::NAN),
            _ => self.parse("eps", Some(default)),
        }
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, Failure> {
        match self.meta(key).map(str::trim) {
            None => Ok(default),
            Some("true" | "True" | "1") => Ok(true),
            Some("false" | "False" | "0") => Ok(false),
            Some(v) => Err(Failure::Refused(format!("invalid {key} = {v:?}"))),
        }
    }

    /// `1` is channels-first; `-1` (or the last axis) is channels-last.
    fn channel_axis(&self, rank: usize, default: ChannelAxis) -> Result<ChannelAxis, Failure> {
        let Some(v) = self.meta("channel_axis") else {
            return Ok(default);
        };
        let axis: i64 = self.parse("channel_axis", None)?;
        match axis {
            1 if rank >= 2 => Ok(ChannelAxis::First),
            -1 => Ok(ChannelAxis::Last),
            a if rank >= 2 && a == rank as i64 - 1 => Ok(ChannelAxis::Last),
            _ => Err(Failure::Refused(format!(
                "channel_axis {v} is not 1 or the last axis of a rank-{rank} input"
            ))),
        }
    }

    /// `momentum` as a factor; `None` when the case says `none`.
    fn momentum(&self) -> Result<Option<f32>, Failure> {
        match self.meta("momentum").map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("none") => Ok(None),
            _ => self.parse("momentum", Some(0.1)).map(Some),
        }
    }

    fn int_list(&self, key: &str) -> Result<Vec<usize>, Failure> {
        let raw = self
            .meta(key)
            .ok_or_else(|| Failure::Malformed(format!("no `{key}` in metadata")))?;
        let inner = raw.trim().trim_start_matches('[').trim_end_matches(']');
        inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| Failure::Refused(format!("invalid {key} = {raw:?}")))
            })
            .collect()
    }
}

/// Parameter tensors must be shaped `[C]` (or `normalized_shape`).
fn check_param_shape(args: &Args, name: &str, want: &[usize]) -> Result<(), Failure> {
    match args.tensor(name) {
        Some(t) if t.shape != want => Err(Failure::Refused(format!(
            "`{name}` has shape {:?}, expected {want:?}",
            t.shape
        ))),
        _ => Ok(()),
    }
}

fn execute(case: &Case) -> Result<Outputs, Failure> {
    let args = Args { case };
    let op = args
        .meta("op")
        .ok_or_else(|| Failure::Malformed("no `op` in metadata".into()))?;
    match op {
        "batch_norm" => batch_norm(&args),
        "layer_norm" => layer_norm(&args, true),
        "rms_norm" => layer_norm(&args, false),
        "group_norm" => group_norm(&args),
        "instance_norm" => instance_norm(&args),
        "weight_norm" => weight_norm(&args),
        "dyt" => dyt(&args),
        "adain" => adaptive::adain(&args),
        "ada_layer_norm" => adaptive::ada_norm(&args, true),
        "ada_rms_norm" => adaptive::ada_norm(&args, false),
        "switch_norm" => adaptive::switch_norm(&args),
        "batch_renorm" => adaptive::batch_renorm(&args),
        "add_layer_norm" => residual::add_norm(&args, true),
        "add_rms_norm" => residual::add_norm(&args, false),
        "derf" => derf::derf(&args),
        other => Err(Failure::Malformed(format!("unknown op `{other}`"))),
    }
}

/// Per-channel parameters and the running statistics of a case.
struct Params {
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    running_mean: Option<Vec<f32>>,
    running_var: Option<Vec<f32>>,
}

impl Params {
    fn read(args: &Args) -> Self {
        Params {
            weight: args.vec("weight"),
            bias: args.vec("bias"),
            running_mean: args.vec("running_mean"),
            running_var: args.vec("running_var"),
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
        }
    }

    fn running(&self) -> Option<(&[f32], &[f32])> {
        Some((self.running_mean.as_deref()?, self.running_var.as_deref()?))
    }
}

/// Runs a backward pass into fresh buffers and files dx/dweight/dbias.
fn backward(
    out: &mut Outputs,
    x: &Tensor,
    weight_shape: Option<&[usize]>,
    params: &Params,
    run: impl FnOnce(Grads<'_, f32>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut dx = vec![0.0f32; x.numel()];
    let channels = params
        .weight
        .as_ref()
        .or(params.bias.as_ref())
        .map_or(0, Vec::len);
    let mut dweight = params.weight.as_ref().map(|_| vec![0.0f32; channels]);
    let mut dbias = params.bias.as_ref().map(|_| vec![0.0f32; channels]);
    run(Grads {
        dx: &mut dx,
        dweight: dweight.as_deref_mut(),
        dbias: dbias.as_deref_mut(),
    })?;
    let pshape = weight_shape.map_or_else(|| vec![channels], <[usize]>::to_vec);
    out.insert("dx".into(), Tensor::from_f32(&x.shape, &dx));
    if let Some(d) = dweight {
        out.insert("dweight".into(), Tensor::from_f32(&pshape, &d));
    }
    if let Some(d) = dbias {
        out.insert("dbias".into(), Tensor::from_f32(&pshape, &d));
    }
    Ok(())
}

fn batch_norm(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let training = args.flag("training", true)?;
    let nbt: u64 = args.parse("num_batches_tracked", Some(0))?;
    let cfg = BatchNormConfig {
        eps: args.eps(1e-5)?,
        momentum: match args.momentum()? {
            Some(m) => Momentum::Exponential(m),
            None => Momentum::CumulativeAverage {
                num_batches_tracked: nbt,
            },
        },
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
    };
    let mut p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let mut out = Outputs::new();
    // Without running statistics PyTorch normalizes with the batch's own,
    // in evaluation mode too.
    let stats = match (training, p.running()) {
        (false, Some((rm, rv))) => {
            let s =
                normkit::batch_norm_forward_eval(&mut y, &xs, &x.shape, p.affine(), rm, rv, &cfg)?;
            Some(s)
        }
        _ => None,
    };
    let stats = match stats {
        Some(s) => s,
        None => {
            let (mut rm, mut rv) = (p.running_mean.clone(), p.running_var.clone());
            let running = match (training, rm.as_deref_mut(), rv.as_deref_mut()) {
                (true, Some(mean), Some(var)) => Some(RunningStats { mean, var }),
                _ => None,
            };
            let s = normkit::batch_norm_forward_train(
                &mut y,
                &xs,
                &x.shape,
                p.affine(),
                running,
                &cfg,
            )?;
            if training {
                if let (Some(rm), Some(rv)) = (rm, rv) {
                    out.insert(
                        "running_mean_out".into(),
                        Tensor::from_f32(&[rm.len()], &rm),
                    );
                    out.insert("running_var_out".into(), Tensor::from_f32(&[rv.len()], &rv));
                }
            }
            // Marks the statistics as the batch's own for backward.
            p.running_mean = None;
            s
        }
    };
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        let eval = !training && p.running().is_some();
        backward(&mut out, x, None, &p, |grads| {
            let w = p.weight.as_deref();
            if eval {
                normkit::batch_norm_backward_eval(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
            } else {
                normkit::batch_norm_backward_train(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// What every row norm reads: `normalized_shape`, `eps` (`default_eps`
/// when absent) and the parameters, shaped like `normalized_shape`; `op`
/// refuses a bias unless it centers.
fn row_norm_args(
    args: &Args,
    op: &str,
    centered: bool,
    default_eps: f32,
) -> Result<(Vec<usize>, f32, Params), Failure> {
    let ns = args.int_list("normalized_shape")?;
    let eps = args.eps(default_eps)?;
    let p = Params::read(args);
    check_param_shape(args, "weight", &ns)?;
    check_param_shape(args, "bias", &ns)?;
    if !centered && p.bias.is_some() {
        return Err(Failure::Refused(format!("{op} has no bias")));
    }
    Ok((ns, eps, p))
}

/// PyTorch's default eps: `1e-5` for LayerNorm; RMSNorm's is the dtype's
/// machine epsilon.
fn default_eps(centered: bool) -> f32 {
    if centered {
        1e-5
    } else {
        f32::EPSILON
    }
}

fn layer_norm(args: &Args, centered: bool) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let op = if centered { "layer_norm" } else { "rms_norm" };
    let (ns, eps, p) = row_norm_args(args, op, centered, default_eps(centered))?;
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let stats: Stats = if centered {
        normkit::layer_norm_forward(&mut y, &xs, &x.shape, &ns, p.affine(), eps)?
    } else {
        normkit::rms_norm_forward(&mut y, &xs, &x.shape, &ns, p.weight.as_deref(), eps)?
    };
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        backward(&mut out, x, Some(&ns), &p, |grads| {
            let w = p.weight.as_deref();
            if centered {
                normkit::layer_norm_backward(grads, &dy, &xs, &x.shape, &ns, w, &stats)?;
            } else {
                normkit::rms_norm_backward(grads, &dy, &xs, &x.shape, &ns, w, &stats)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn group_norm(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let cfg = GroupNormConfig {
        num_groups: args.parse("num_groups", None)?,
        eps: args.eps(1e-5)?,
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
    };
    let p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let stats = normkit::group_norm_forward(&mut y, &xs, &x.shape, p.affine(), &cfg)?;
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        backward(&mut out, x, None, &p, |grads| {
            normkit::group_norm_backward(
                grads,
                &dy,
                &xs,
                &x.shape,
                p.weight.as_deref(),
                &stats,
                &cfg,
            )?;
            Ok(())
        })?;
    }
    Ok(out)
}

fn instance_norm(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let training = args.flag("training", true)?;
    let track = args.flag("track_running_stats", false)?;
    // PyTorch's InstanceNorm passes momentum=None on as 0.0: no update.
    let cfg = InstanceNormConfig {
        eps: args.eps(1e-5)?,
        momentum: Momentum::Exponential(args.momentum()?.unwrap_or(0.0)),
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
    };
    let p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let mut out = Outputs::new();
    let use_input_stats = training || !track;
    let stats = if use_input_stats {
        let (mut rm, mut rv) = (p.running_mean.clone(), p.running_var.clone());
        let running = match (training && track, rm.as_deref_mut(), rv.as_deref_mut()) {
            (true, Some(mean), Some(var)) => Some(RunningStats { mean, var }),
            _ => None,
        };
        let s =
            normkit::instance_norm_forward_train(&mut y, &xs, &x.shape, p.affine(), running, &cfg)?;
        if training && track {
            if let (Some(rm), Some(rv)) = (rm, rv) {
                out.insert(
                    "running_mean_out".into(),
                    Tensor::from_f32(&[rm.len()], &rm),
                );
                out.insert("running_var_out".into(), Tensor::from_f32(&[rv.len()], &rv));
            }
        }
        s
    } else {
        let (rm, rv) = p.running().ok_or_else(|| {
            Failure::Refused("evaluation with track_running_stats needs running stats".into())
        })?;
        normkit::instance_norm_forward_eval(&mut y, &xs, &x.shape, p.affine(), rm, rv, &cfg)?
    };
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        backward(&mut out, x, None, &p, |grads| {
            let w = p.weight.as_deref();
            if use_input_stats {
                normkit::instance_norm_backward_train(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
            } else {
                normkit::instance_norm_backward_eval(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn weight_norm(args: &Args) -> Result<Outputs, Failure> {
    let v = args.input("v")?;
    let g = args.input("g")?;
    let dim: Option<isize> = match args.meta("dim").map(str::trim) {
        None => Some(0),
        Some(d) if d.eq_ignore_ascii_case("none") => None,
        Some(_) => Some(args.parse("dim", None)?),
    };
    let (vs, gs) = (v.to_f32(), g.to_f32());
    let mut w = vec![0.0f32; vs.len()];
    let norms = normkit::weight_norm_forward(&mut w, &vs, &v.shape, &gs, dim)?;
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&v.shape, &w));
    if let Some(dw) = args.tensor("dy") {
        let dw = dw.to_f32();
        let (mut dv, mut dg) = (vec![0.0f32; vs.len()], vec![0.0f32; gs.len()]);
        normkit::weight_norm_backward(&mut dv, &mut dg, &dw, &vs, &v.shape, &gs, dim, &norms)?;
        out.insert("dv".into(), Tensor::from_f32(&v.shape, &dv));
        out.insert("dg".into(), Tensor::from_f32(&g.shape, &dg));
    }
    Ok(out)
}

/// A scalar parameter: a tensor of one value.
fn scalar(args: &Args, op: &str, name: &str) -> Result<f32, Failure> {
    let t = args.input(name)?;
    if t.numel() != 1 {
        return Err(Failure::Refused(format!(
            "{op}: {name} must hold one value, got shape {:?}",
            t.shape
        )));
    }
    Ok(t.data[0] as f32)
}

fn dyt(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let alpha = scalar(args, "dyt", "alpha")?;
    let axis = args.channel_axis(x.shape.len(), ChannelAxis::Last)?;
    let p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    normkit::dyt_forward(&mut y, &xs, &x.shape, alpha, p.affine(), axis)?;
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        let mut dalpha = 0.0f32;
        backward(&mut out, x, None, &p, |grads| {
            dalpha =
                normkit::dyt_backward(grads, &dy, &xs, &x.shape, alpha, p.weight.as_deref(), axis)?;
            Ok(())
        })?;
        out.insert("dalpha".into(), Tensor::from_f32(&[1], &[dalpha]));
    }
    Ok(out)
}
