//! DyT's twin: `y = weight · tanh(alpha · x) + bias`, per channel.

use super::{bias_at, check_len, check_params, weight_at, Dims};

/// Gradients of DyT's `sum(y · dy)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DytGradients {
    pub dx: Vec<f64>,
    pub dalpha: f64,
    pub dweight: Vec<f64>,
    pub dbias: Vec<f64>,
}

/// Dynamic Tanh: `y = weight · tanh(alpha · x) + bias`, per channel.
pub fn dyt(
    x: &[f64],
    d: Dims,
    alpha: f64,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
) -> Vec<f64> {
    check_len("x", x.len(), d.numel());
    check_params(weight, bias, d.c);
    let mut y = vec![0.0; x.len()];
    for n in 0..d.n {
        for c in 0..d.c {
            for s in 0..d.s {
                let i = d.at(n, c, s);
                y[i] = weight_at(weight, c) * (alpha * x[i]).tanh() + bias_at(bias, c);
            }
        }
    }
    y
}

/// Backward of [`dyt`], with `t = tanh(alpha · x)` and
/// `tanh'(a) = 1 - t² = 1 / cosh²(a)`, the second form because it does not
/// cancel as `|t|` nears 1.
pub fn dyt_backward(
    dy: &[f64],
    x: &[f64],
    d: Dims,
    alpha: f64,
    weight: Option<&[f64]>,
) -> DytGradients {
    check_len("x", x.len(), d.numel());
    check_len("dy", dy.len(), d.numel());
    check_params(weight, None, d.c);
    let mut out = DytGradients {
        dx: vec![0.0; x.len()],
        dalpha: 0.0,
        dweight: vec![0.0; d.c],
        dbias: vec![0.0; d.c],
    };
    for n in 0..d.n {
        for c in 0..d.c {
            for s in 0..d.s {
                let i = d.at(n, c, s);
                let a = alpha * x[i];
                let t = a.tanh();
                let dt = dy[i] * weight_at(weight, c) / (a.cosh() * a.cosh());
                out.dx[i] = dt * alpha;
                out.dalpha += dt * x[i];
                out.dweight[c] += dy[i] * t;
                out.dbias[c] += dy[i];
            }
        }
    }
    out
}
