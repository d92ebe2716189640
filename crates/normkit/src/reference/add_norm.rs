//! Twins of the fused residual norms: the add, then the norm, each as
//! written in this module's parent.
//!
//! The backward takes `sum`, as the kernels do: the gradients are those
//! of `sum(y · dy) + sum(sum · dsum)` at that `sum`, and the same for `x`
//! and `residual`, since `sum = x + residual` passes its gradient to both.

use super::{
    check_len, layer_norm, layer_norm_backward, rms_norm, rms_norm_backward, Gradients, Normalized,
};

/// What a fused forward computes: the residual stream and its norm.
#[derive(Debug, Clone, PartialEq)]
pub struct AddNormalized {
    /// `x + residual`.
    pub sum: Vec<f64>,
    /// The norm of `sum`.
    pub norm: Normalized,
}

fn add(x: &[f64], residual: &[f64]) -> Vec<f64> {
    check_len("residual", residual.len(), x.len());
    x.iter().zip(residual).map(|(a, b)| a + b).collect()
}

/// Adds `dsum` (when given) to the norm's `dx`.
fn with_dsum(mut g: Gradients, dsum: Option<&[f64]>) -> Gradients {
    if let Some(dsum) = dsum {
        check_len("dsum", dsum.len(), g.dx.len());
        for (dx, ds) in g.dx.iter_mut().zip(dsum) {
            *dx += ds;
        }
    }
    g
}

/// `sum = x + residual`, then LayerNorm over rows of `d` values.
pub fn add_layer_norm(
    x: &[f64],
    residual: &[f64],
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> AddNormalized {
    let sum = add(x, residual);
    let norm = layer_norm(&sum, rows, d, weight, bias, eps);
    AddNormalized { sum, norm }
}

/// Backward of [`add_layer_norm`] at `sum`: `dx` (which is also
/// `dresidual`) is `dsum` plus LayerNorm's `dx`.
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm_backward(
    dy: &[f64],
    dsum: Option<&[f64]>,
    sum: &[f64],
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> Gradients {
    with_dsum(layer_norm_backward(dy, sum, rows, d, weight, eps), dsum)
}

/// `sum = x + residual`, then RMSNorm over rows of `d` values.
pub fn add_rms_norm(
    x: &[f64],
    residual: &[f64],
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> AddNormalized {
    let sum = add(x, residual);
    let norm = rms_norm(&sum, rows, d, weight, eps);
    AddNormalized { sum, norm }
}

/// Backward of [`add_rms_norm`] at `sum`; `dbias` is empty.
pub fn add_rms_norm_backward(
    dy: &[f64],
    dsum: Option<&[f64]>,
    sum: &[f64],
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> Gradients {
    with_dsum(rms_norm_backward(dy, sum, rows, d, weight, eps), dsum)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_grad, loss, numeric_grad, Lcg};
    use super::*;

    /// `sum(y · dy) + sum(sum · dsum)` through the fused forward.
    fn objective(out: &AddNormalized, dy: &[f64], dsum: &[f64]) -> f64 {
        loss(&out.norm.y, dy) + loss(&out.sum, dsum)
    }

    #[test]
    fn backward_matches_finite_differences_in_x_and_residual() {
        let mut rng = Lcg(9);
        let (rows, d, eps) = (3, 5, 1e-3);
        let (x, r, dy, dsum) = (rng.vec(15), rng.vec(15), rng.vec(15), rng.vec(15));
        let (w, b) = (rng.vec(5), rng.vec(5));
        let sum = add(&x, &r);

        let g = add_layer_norm_backward(&dy, Some(&dsum), &sum, rows, d, Some(&w), eps);
        let f = |x: &[f64], r: &[f64], w: &[f64], b: &[f64]| {
            let out = add_layer_norm(x, r, rows, d, Some(w), Some(b), eps);
            objective(&out, &dy, &dsum)
        };
        assert_grad("dx", &g.dx, &numeric_grad(&x, |x| f(x, &r, &w, &b)));
        assert_grad("dresidual", &g.dx, &numeric_grad(&r, |r| f(&x, r, &w, &b)));
        assert_grad(
            "dweight",
            &g.dweight,
            &numeric_grad(&w, |w| f(&x, &r, w, &b)),
        );
        assert_grad("dbias", &g.dbias, &numeric_grad(&b, |b| f(&x, &r, &w, b)));

        let g = add_rms_norm_backward(&dy, Some(&dsum), &sum, rows, d, Some(&w), eps);
        let f = |x: &[f64], r: &[f64], w: &[f64]| {
            objective(&add_rms_norm(x, r, rows, d, Some(w), eps), &dy, &dsum)
        };
        assert_grad("rms dx", &g.dx, &numeric_grad(&x, |x| f(x, &r, &w)));
        assert_grad("rms dresidual", &g.dx, &numeric_grad(&r, |r| f(&x, r, &w)));
        assert_grad(
            "rms dweight",
            &g.dweight,
            &numeric_grad(&w, |w| f(&x, &r, w)),
        );
        assert!(g.dbias.is_empty());

        // Without dsum the residual stream's gradient is zero.
        let g0 = add_layer_norm_backward(&dy, None, &sum, rows, d, Some(&w), eps);
        let zero = vec![0.0; 15];
        let f = |x: &[f64]| {
            objective(
                &add_layer_norm(x, &r, rows, d, Some(&w), Some(&b), eps),
                &dy,
                &zero,
            )
        };
        assert_grad("dx without dsum", &g0.dx, &numeric_grad(&x, f));
    }
}
