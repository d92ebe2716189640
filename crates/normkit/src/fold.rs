//! Folding an evaluation-mode BatchNorm into the layer before it.
//!
//! In evaluation BatchNorm is an affine map per channel,
//!
//! ```text
//! bn(z) = (z - running_mean) · s + bias,   s = weight / sqrt(running_var + eps)
//! ```
//!
//! so after a layer `z = W · x + b` whose output channel `c` is row `c` of
//! `W` (a linear layer's `[out, in]`, a convolution's `[out, in, kh, kw]`),
//! the pair is one layer with
//!
//! ```text
//! W' = W · s (row by row)      b' = (b - running_mean) · s + bias
//! ```
//!
//! computed in `f64` from the `f32` values and rounded once. `eps` enters as
//! the kernels see it: rounded to `f32` first.

use crate::error::{NormError, Result};
use crate::layout::check_len;

const OP: &str = "fold_batch_norm";

/// The evaluation-mode BatchNorm to fold: its running statistics, optional
/// affine parameters and eps.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormEval<'a> {
    pub running_mean: &'a [f32],
    pub running_var: &'a [f32],
    pub weight: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
    pub eps: f32,
}

/// Writes the folded layer: `weight_out` (shaped like `weight`, rows of
/// `weight.len() / C` values, `C` the BatchNorm's channels) and `bias_out`
/// (`C` values) from the layer's `weight` and optional `bias`.
///
/// # Errors
/// A row count that is not the BatchNorm's channel count, or any slice of
/// the wrong length; nothing is written.
pub fn fold_batch_norm(
    weight_out: &mut [f32],
    bias_out: &mut [f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    bn: BatchNormEval<'_>,
) -> Result<()> {
    let c = bn.running_mean.len();
    let shape = [weight.len()];
    if c == 0 || !weight.len().is_multiple_of(c) {
        return Err(NormError::Length {
            op: OP,
            name: "weight (rows × row length, one row per channel)",
            expected: c,
            got: weight.len(),
            shape: shape.to_vec(),
        });
    }
    check_len(OP, "running_var", bn.running_var.len(), c, &shape)?;
    for (name, v) in [
        ("bn weight", bn.weight),
        ("bn bias", bn.bias),
        ("bias", bias),
    ] {
        if let Some(v) = v {
            check_len(OP, name, v.len(), c, &shape)?;
        }
    }
    check_len(OP, "weight_out", weight_out.len(), weight.len(), &shape)?;
    check_len(OP, "bias_out", bias_out.len(), c, &shape)?;
    if !(bn.eps.is_finite() && bn.eps >= 0.0) {
        return Err(NormError::Eps {
            op: OP,
            eps: bn.eps,
        });
    }
    let row = weight.len() / c;
    for k in 0..c {
        let s = bn.weight.map_or(1.0, |w| w[k] as f64)
            / (bn.running_var[k] as f64 + bn.eps as f64).sqrt();
        let at = k * row..(k + 1) * row;
        for (o, &w) in weight_out[at.clone()].iter_mut().zip(&weight[at]) {
            *o = (w as f64 * s) as f32;
        }
        let b = bias.map_or(0.0, |b| b[k] as f64);
        let shift = bn.bias.map_or(0.0, |b| b[k] as f64);
        bias_out[k] = ((b - bn.running_mean[k] as f64) * s + shift) as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_layer_computes_the_batch_norm_of_the_layer() {
        // A 2-output linear layer on 3 inputs, then BatchNorm over 2 channels.
        let (w, b) = ([0.5f32, -1.0, 2.0, 1.5, 0.25, -0.75], [0.1f32, -0.2]);
        let (mean, var) = ([0.3f32, -0.4], [2.0f32, 0.5]);
        let (gamma, beta) = ([1.5f32, -0.5], [0.05f32, 0.2]);
        let bn = BatchNormEval {
            running_mean: &mean,
            running_var: &var,
            weight: Some(&gamma),
            bias: Some(&beta),
            eps: 1e-5,
        };
        let (mut w2, mut b2) = ([0.0f32; 6], [0.0f32; 2]);
        fold_batch_norm(&mut w2, &mut b2, &w, Some(&b), bn).unwrap();
        let x = [0.7f64, -1.3, 2.1];
        for k in 0..2 {
            let z: f64 = (0..3).map(|i| w[k * 3 + i] as f64 * x[i]).sum::<f64>() + b[k] as f64;
            let bn_z = (z - mean[k] as f64) / (var[k] as f64 + 1e-5f32 as f64).sqrt()
                * gamma[k] as f64
                + beta[k] as f64;
            let folded: f64 =
                (0..3).map(|i| w2[k * 3 + i] as f64 * x[i]).sum::<f64>() + b2[k] as f64;
            assert!(
                (folded - bn_z).abs() < 1e-6,
                "channel {k}: {folded} vs {bn_z}"
            );
        }
    }

    #[test]
    fn refuses_rows_that_are_not_the_channels_and_writes_nothing() {
        let (mean, var) = ([0.0f32; 2], [1.0f32; 2]);
        let bn = BatchNormEval {
            running_mean: &mean,
            running_var: &var,
            weight: None,
            bias: None,
            eps: 1e-5,
        };
        let (mut w2, mut b2) = ([7.0f32; 3], [7.0f32; 2]);
        let err = fold_batch_norm(&mut w2, &mut b2, &[1.0; 3], None, bn).unwrap_err();
        assert_eq!(err.op(), OP);
        assert_eq!((w2, b2), ([7.0; 3], [7.0; 2]));
    }
}
