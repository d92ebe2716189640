//! What a case expects against what the op produced: each expected tensor
//! within its tolerance.

use super::{Failure, Outputs, TensorCheck, OUTPUTS};
use crate::golden::{Case, Tensor};

pub(super) fn compare(case: &Case, outputs: &Outputs) -> Result<Vec<TensorCheck>, Failure> {
    let mut checks = Vec::new();
    for (name, expected) in expected_tensors(case) {
        let max_abs = expected.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // FORMAT.md: tolerances have a floor of 1e-6 relative to the
        // largest value; that floor is the default when a case gives none.
        let key = format!("tol_{name}");
        let tol = match case.meta.get(&key) {
            None => 1e-6 * max_abs.max(1.0),
            Some(raw) => match raw.trim().parse::<f64>() {
                Ok(t) if t >= 0.0 => t,
                _ => {
                    return Err(Failure::Malformed(format!(
                        "{key} = {raw:?} is not a non-negative number"
                    )))
                }
            },
        };
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
    Ok(checks)
}

/// The tensors a case expects: the known outputs, and any other name that
/// is not an input (which the op cannot produce, so it fails the case).
pub(super) fn expected_tensors(case: &Case) -> impl Iterator<Item = (&String, &Tensor)> {
    case.tensors
        .iter()
        .filter(|(name, _)| OUTPUTS.contains(&name.as_str()) || !is_input(name))
}

/// Inputs are float32 (FORMAT.md). A file may store one wider, but a value
/// that float32 cannot hold exactly would be rounded before the op sees it,
/// and the case would test another input than the one its expected values
/// were computed from: such a case is malformed, not silently rounded.
pub(super) fn check_inputs(case: &Case) -> Result<(), Failure> {
    for (name, t) in case.tensors.iter().filter(|(n, _)| is_input(n)) {
        let inexact = t
            .data
            .iter()
            .position(|&v| !v.is_nan() && v as f32 as f64 != v);
        if let Some(i) = inexact {
            return Err(Failure::Malformed(format!(
                "input `{name}` holds {} at flat index {i}, which float32 cannot hold \
                 exactly (inputs are float32)",
                t.data[i]
            )));
        }
    }
    Ok(())
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
