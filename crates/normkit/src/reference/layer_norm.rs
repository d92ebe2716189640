//! LayerNorm's and RMSNorm's twins, over rows of `d` values.

use super::{
    check_len, check_params, normalize, normalize_backward, row_groups, Gradients, Normalized,
};

/// LayerNorm over rows of `d` values; weight and bias have `d` entries.
pub fn layer_norm(
    x: &[f64],
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> Normalized {
    check_len("x", x.len(), rows * d);
    check_params(weight, bias, d);
    normalize(x, &row_groups(rows, d), weight, bias, eps, true)
}

/// Backward of [`layer_norm`].
pub fn layer_norm_backward(
    dy: &[f64],
    x: &[f64],
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> Gradients {
    check_len("x", x.len(), rows * d);
    check_len("dy", dy.len(), rows * d);
    check_params(weight, None, d);
    normalize_backward(dy, x, &row_groups(rows, d), d, weight, eps, true)
}

/// RMSNorm over rows of `d` values: `y = x / sqrt(mean(x²) + eps) · weight`.
/// `mean` is empty and `var` holds the mean squares.
pub fn rms_norm(x: &[f64], rows: usize, d: usize, weight: Option<&[f64]>, eps: f64) -> Normalized {
    check_len("x", x.len(), rows * d);
    check_params(weight, None, d);
    normalize(x, &row_groups(rows, d), weight, None, eps, false)
}

/// Backward of [`rms_norm`]; `dbias` is empty.
pub fn rms_norm_backward(
    dy: &[f64],
    x: &[f64],
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    eps: f64,
) -> Gradients {
    check_len("x", x.len(), rows * d);
    check_len("dy", dy.len(), rows * d);
    check_params(weight, None, d);
    normalize_backward(dy, x, &row_groups(rows, d), d, weight, eps, false)
}
