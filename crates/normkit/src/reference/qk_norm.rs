//! The twin of Gemma's RMSNorm: RMSNorm whose scale is `1 + weight`.
//!
//! `y = x̂ · (1 + w)`, so `∂y/∂w = x̂` as for a plain weight: the gradients
//! are the plain norm's with the scale `1 + w` in the weight's place.

use super::{rms_norm, rms_norm_backward, Gradients, Normalized};

fn one_plus(weight: &[f64]) -> Vec<f64> {
    weight.iter().map(|w| 1.0 + w).collect()
}

/// RMSNorm over rows of `d` values with the scale `1 + weight`.
pub fn unit_offset_rms_norm(
    x: &[f64],
    rows: usize,
    d: usize,
    weight: &[f64],
    eps: f64,
) -> Normalized {
    rms_norm(x, rows, d, Some(&one_plus(weight)), eps)
}

/// Backward of [`unit_offset_rms_norm`]; `dweight` is that of `weight`.
pub fn unit_offset_rms_norm_backward(
    dy: &[f64],
    x: &[f64],
    rows: usize,
    d: usize,
    weight: &[f64],
    eps: f64,
) -> Gradients {
    rms_norm_backward(dy, x, rows, d, Some(&one_plus(weight)), eps)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_grad, loss, numeric_grad, Lcg};
    use super::*;

    #[test]
    fn the_gradients_are_those_of_the_offset_weight() {
        let mut rng = Lcg(11);
        let (rows, d, eps) = (3, 5, 1e-3);
        let (x, dy, w) = (rng.vec(15), rng.vec(15), rng.vec(5));
        let g = unit_offset_rms_norm_backward(&dy, &x, rows, d, &w, eps);
        let y = |x: &[f64], w: &[f64]| unit_offset_rms_norm(x, rows, d, w, eps).y;
        assert_grad("dx", &g.dx, &numeric_grad(&x, |x| loss(&y(x, &w), &dy)));
        let dw = numeric_grad(&w, |w| loss(&y(&x, w), &dy));
        assert_grad("dweight", &g.dweight, &dw);
    }
}
