//! `normlab conform`: runs golden cases against normkit's kernels.
//!
//! Each case names an op and its hyperparameters in its metadata and holds
//! the inputs and the exact expected results. The runner feeds the inputs
//! to normkit in `f32`, widens what comes back to `f64`, and compares each
//! expected tensor within its `tol_<name>`. A case marked `expect_error`
//! passes when the op refuses its input.
//!
//! The runner guesses nothing: a case whose intent it cannot read is
//! malformed and fails, saying why — an input float32 cannot hold exactly
//! (inputs are float32; rounding would test another input), a tolerance
//! that is not a non-negative number, no expected tensor, an integer
//! tensor, an unknown op.
//!
//! `args` parses the metadata, `compare` judges the outputs, `core_ops`
//! and the other modules run one family of ops each.

use crate::golden::{read_case, Case, Tensor};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod adaptive;
mod args;
mod compare;
mod core_ops;
mod derf;
mod residual;

use args::{scalar, Args};
use compare::{check_inputs, compare, expected_tensors};
use core_ops::{backward, default_eps, row_norm_args, Params};

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
    let args = Args { case };
    let mut report = CaseReport {
        name: case.name.clone(),
        expect_error: false,
        failure: None,
        checks: Vec::new(),
    };
    match args.flag("expect_error", false) {
        Ok(e) => report.expect_error = e,
        Err(_) => {
            let raw = args.meta("expect_error").unwrap_or_default();
            report.failure = Some(Failure::Malformed(format!(
                "expect_error = {raw:?} is neither true nor false"
            )));
            return report;
        }
    }
    if !report.expect_error && expected_tensors(case).next().is_none() {
        report.failure = Some(Failure::Malformed(format!(
            "no expected tensor: a case that is not expect_error holds one or more of {}",
            OUTPUTS.join(", ")
        )));
        return report;
    }
    let result = std::panic::catch_unwind(|| execute(case)).unwrap_or_else(|_| {
        Err(Failure::Malformed(
            "the op panicked (a bug: it must return an error)".into(),
        ))
    });
    match result {
        Err(failure) => report.failure = Some(failure),
        Ok(outputs) if !report.expect_error => match compare(case, &outputs) {
            Ok(checks) => report.checks = checks,
            Err(failure) => report.failure = Some(failure),
        },
        Ok(_) => {}
    }
    report
}

fn execute(case: &Case) -> Result<Outputs, Failure> {
    check_inputs(case)?;
    let args = Args { case };
    let op = args
        .meta("op")
        .ok_or_else(|| Failure::Malformed("no `op` in metadata".into()))?;
    match op {
        "batch_norm" => core_ops::batch_norm(&args),
        "layer_norm" => core_ops::layer_norm(&args, true),
        "rms_norm" => core_ops::layer_norm(&args, false),
        "group_norm" => core_ops::group_norm(&args),
        "instance_norm" => core_ops::instance_norm(&args),
        "weight_norm" => core_ops::weight_norm(&args),
        "dyt" => core_ops::dyt(&args),
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
