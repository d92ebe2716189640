//! The twin of LayerNorm Scaling: a norm's output, or the gradient that
//! reaches it, times `1/√ℓ`.
//!
//! With `y' = y / √ℓ`, `Σ y' · dy = Σ y · (dy / √ℓ)`: the scaled layer's
//! gradients are the norm's gradients of `dy / √ℓ`.

/// `v / √layer`, elementwise: the scaled layer's output from the norm's,
/// and the norm's upstream gradient from the scaled layer's.
pub fn depth_scale(v: &[f64], layer: usize) -> Vec<f64> {
    assert!(layer >= 1, "layers count from 1");
    let s = (layer as f64).sqrt();
    v.iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_grad, loss, numeric_grad, Lcg};
    use super::super::{layer_norm, layer_norm_backward};
    use super::*;

    #[test]
    fn the_gradients_are_the_norms_of_the_scaled_dy() {
        let mut rng = Lcg(10);
        let (rows, d, eps, layer) = (2, 6, 1e-3, 7);
        let (x, dy, w, b) = (rng.vec(12), rng.vec(12), rng.vec(6), rng.vec(6));
        let g = layer_norm_backward(&depth_scale(&dy, layer), &x, rows, d, Some(&w), eps);
        let y = |x: &[f64], w: &[f64], b: &[f64]| {
            depth_scale(&layer_norm(x, rows, d, Some(w), Some(b), eps).y, layer)
        };
        assert_grad("dx", &g.dx, &numeric_grad(&x, |x| loss(&y(x, &w, &b), &dy)));
        assert_grad(
            "dweight",
            &g.dweight,
            &numeric_grad(&w, |w| loss(&y(&x, w, &b), &dy)),
        );
        assert_grad(
            "dbias",
            &g.dbias,
            &numeric_grad(&b, |b| loss(&y(&x, &w, b), &dy)),
        );
    }
}
