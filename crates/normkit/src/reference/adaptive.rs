//! Twins of the adaptive ops: AdaIN, modulated LayerNorm/RMSNorm,
//! Switchable Normalization and Batch Renormalization.
//!
//! The forwards are the definitions, written out. The gradients are central
//! differences of those forwards ([`vjp`]): they share no derivation with
//! the kernels, which makes them a yardstick for the kernels' backward
//! formulas rather than a copy of them. They are accurate to about 1e-9
//! relative for inputs of moderate size, and cost one forward pass per
//! input value: for test shapes only.

use super::{bias_at, check_len, check_params, layer_norm, mean_var, rms_norm, weight_at, Dims};

/// The gradient of `sum(f(v) · dy)` with respect to `v`: for each value, a
/// central difference `(f(v + h) - f(v - h)) / 2h`, `h = 1e-6 · max(1, |v|)`,
/// taken per output before the dot product with `dy` so that large outputs
/// do not swamp it.
pub fn vjp(f: impl Fn(&[f64]) -> Vec<f64>, v: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut w = v.to_vec();
    (0..v.len())
        .map(|i| {
            let h = 1e-6 * v[i].abs().max(1.0);
            w[i] = v[i] + h;
            let up = f(&w);
            w[i] = v[i] - h;
            let down = f(&w);
            w[i] = v[i];
            check_len("dy", dy.len(), up.len());
            up.iter()
                .zip(&down)
                .zip(dy)
                .map(|((u, d), g)| (u - d) / (2.0 * h) * g)
                .sum()
        })
        .collect()
}

/// The values of (sample `n`, channel `c`) in `x`.
fn instance(x: &[f64], d: Dims, n: usize, c: usize) -> Vec<f64> {
    (0..d.s).map(|s| x[d.at(n, c, s)]).collect()
}

/// AdaIN: `y = σ(s) · (x - μ(x)) / σ(x) + μ(s)` per (sample, channel),
/// `σ = sqrt(Var + eps)`, `Var` divided by `M - 1` when `unbiased`, else by
/// `M`.
pub fn adain(x: &[f64], xd: Dims, style: &[f64], sd: Dims, eps: f64, unbiased: bool) -> Vec<f64> {
    check_len("x", x.len(), xd.numel());
    check_len("style", style.len(), sd.numel());
    let stats = |v: &[f64]| {
        let (mean, var) = mean_var(v);
        let m = v.len() as f64;
        let var = if unbiased { var * m / (m - 1.0) } else { var };
        (mean, (var + eps).sqrt())
    };
    let mut y = vec![0.0; x.len()];
    for n in 0..xd.n {
        for c in 0..xd.c {
            let (mx, sx) = stats(&instance(x, xd, n, c));
            let (ms, ss) = stats(&instance(style, sd, n, c));
            for s in 0..xd.s {
                let i = xd.at(n, c, s);
                y[i] = ss * (x[i] - mx) / sx + ms;
            }
        }
    }
    y
}

/// Gradients `(dx, dstyle)` of [`adain`]'s `sum(y · dy)`.
pub fn adain_backward(
    dy: &[f64],
    x: &[f64],
    xd: Dims,
    style: &[f64],
    sd: Dims,
    eps: f64,
    unbiased: bool,
) -> (Vec<f64>, Vec<f64>) {
    let dx = vjp(|x| adain(x, xd, style, sd, eps, unbiased), x, dy);
    let ds = vjp(|s| adain(x, xd, s, sd, eps, unbiased), style, dy);
    (dx, ds)
}

/// Modulated LayerNorm (`centered`) or RMSNorm over `n` samples of `rows`
/// rows of `d` values: `y = norm(x) · (1 + scale[n]) + shift[n]`, `scale`
/// and `shift` `[n, d]`.
#[allow(clippy::too_many_arguments)]
pub fn ada_norm(
    x: &[f64],
    n: usize,
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    scale: &[f64],
    shift: &[f64],
    eps: f64,
    centered: bool,
) -> Vec<f64> {
    check_len("x", x.len(), n * rows * d);
    check_len("scale", scale.len(), n * d);
    check_len("shift", shift.len(), n * d);
    let normed = if centered {
        layer_norm(x, n * rows, d, weight, bias, eps).y
    } else {
        assert!(bias.is_none(), "RMSNorm has no bias");
        rms_norm(x, n * rows, d, weight, eps).y
    };
    let mut y = vec![0.0; x.len()];
    for k in 0..n {
        for r in 0..rows {
            for j in 0..d {
                let i = (k * rows + r) * d + j;
                y[i] = normed[i] * (1.0 + scale[k * d + j]) + shift[k * d + j];
            }
        }
    }
    y
}

/// Gradients of [`ada_norm`]'s `sum(y · dy)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaNormGradients {
    pub dx: Vec<f64>,
    pub dscale: Vec<f64>,
    pub dshift: Vec<f64>,
    /// Empty without a weight.
    pub dweight: Vec<f64>,
    /// Empty without a bias.
    pub dbias: Vec<f64>,
}

/// Backward of [`ada_norm`].
#[allow(clippy::too_many_arguments)]
pub fn ada_norm_backward(
    dy: &[f64],
    x: &[f64],
    n: usize,
    rows: usize,
    d: usize,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    scale: &[f64],
    shift: &[f64],
    eps: f64,
    centered: bool,
) -> AdaNormGradients {
    let f = |x: &[f64], w: Option<&[f64]>, b: Option<&[f64]>, sc: &[f64], sh: &[f64]| {
        ada_norm(x, n, rows, d, w, b, sc, sh, eps, centered)
    };
    AdaNormGradients {
        dx: vjp(|v| f(v, weight, bias, scale, shift), x, dy),
        dscale: vjp(|v| f(x, weight, bias, v, shift), scale, dy),
        dshift: vjp(|v| f(x, weight, bias, scale, v), shift, dy),
        dweight: weight.map_or(Vec::new(), |w| {
            vjp(|v| f(x, Some(v), bias, scale, shift), w, dy)
        }),
        dbias: bias.map_or(Vec::new(), |b| {
            vjp(|v| f(x, weight, Some(v), scale, shift), b, dy)
        }),
    }
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let e: Vec<f64> = logits.iter().map(|v| v.exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Switchable Normalization. `running = Some((mean, var))` is evaluation
/// mode (they replace the batch statistics); `None` is training.
#[allow(clippy::too_many_arguments)]
pub fn switch_norm(
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    mean_weight: &[f64],
    var_weight: &[f64],
    running: Option<(&[f64], &[f64])>,
    eps: f64,
) -> Vec<f64> {
    check_len("x", x.len(), d.numel());
    check_params(weight, bias, d.c);
    check_len("mean_weight", mean_weight.len(), 3);
    check_len("var_weight", var_weight.len(), 3);
    let (wm, wv) = (softmax(mean_weight), softmax(var_weight));
    let layer: Vec<(f64, f64)> = (0..d.n)
        .map(|n| {
            let v: Vec<f64> = (0..d.c).flat_map(|c| instance(x, d, n, c)).collect();
            mean_var(&v)
        })
        .collect();
    let batch: Vec<(f64, f64)> = (0..d.c)
        .map(|c| match running {
            Some((rm, rv)) => (rm[c], rv[c]),
            None => {
                let v: Vec<f64> = (0..d.n).flat_map(|n| instance(x, d, n, c)).collect();
                mean_var(&v)
            }
        })
        .collect();
    let mut y = vec![0.0; x.len()];
    for (n, &(ml, vl)) in layer.iter().enumerate() {
        for (c, &(mb, vb)) in batch.iter().enumerate() {
            let (mi, vi) = mean_var(&instance(x, d, n, c));
            let mean = wm[0] * mi + wm[1] * ml + wm[2] * mb;
            let var = wv[0] * vi + wv[1] * vl + wv[2] * vb;
            for s in 0..d.s {
                let i = d.at(n, c, s);
                y[i] = (x[i] - mean) / (var + eps).sqrt() * weight_at(weight, c) + bias_at(bias, c);
            }
        }
    }
    y
}

/// Gradients of [`switch_norm`]'s `sum(y · dy)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchNormGradients {
    pub dx: Vec<f64>,
    pub dweight: Vec<f64>,
    pub dbias: Vec<f64>,
    pub dmean_weight: Vec<f64>,
    pub dvar_weight: Vec<f64>,
}

/// Backward of [`switch_norm`] (with a weight and bias of ones and zeros
/// when absent, so that `dweight`, `dbias` always come back).
#[allow(clippy::too_many_arguments)]
pub fn switch_norm_backward(
    dy: &[f64],
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    mean_weight: &[f64],
    var_weight: &[f64],
    running: Option<(&[f64], &[f64])>,
    eps: f64,
) -> SwitchNormGradients {
    let w = weight.map_or(vec![1.0; d.c], <[f64]>::to_vec);
    let b = bias.map_or(vec![0.0; d.c], <[f64]>::to_vec);
    let f = |x: &[f64], w: &[f64], b: &[f64], mw: &[f64], vw: &[f64]| {
        switch_norm(x, d, Some(w), Some(b), mw, vw, running, eps)
    };
    SwitchNormGradients {
        dx: vjp(|v| f(v, &w, &b, mean_weight, var_weight), x, dy),
        dweight: vjp(|v| f(x, v, &b, mean_weight, var_weight), &w, dy),
        dbias: vjp(|v| f(x, &w, v, mean_weight, var_weight), &b, dy),
        dmean_weight: vjp(|v| f(x, &w, &b, v, var_weight), mean_weight, dy),
        dvar_weight: vjp(|v| f(x, &w, &b, mean_weight, v), var_weight, dy),
    }
}

/// Batch Renormalization's corrections `(r, d)` per channel, from the
/// batch statistics of `x` and the running ones.
pub fn batch_renorm_corrections(
    x: &[f64],
    d: Dims,
    running_mean: &[f64],
    running_var: &[f64],
    eps: f64,
    r_max: f64,
    d_max: f64,
) -> (Vec<f64>, Vec<f64>) {
    check_len("x", x.len(), d.numel());
    let (mut r, mut dd) = (Vec::new(), Vec::new());
    for c in 0..d.c {
        let v: Vec<f64> = (0..d.n).flat_map(|n| instance(x, d, n, c)).collect();
        let (mean, var) = mean_var(&v);
        let sigma = (running_var[c] + eps).sqrt();
        r.push(((var + eps).sqrt() / sigma).clamp(1.0 / r_max, r_max));
        dd.push(((mean - running_mean[c]) / sigma).clamp(-d_max, d_max));
    }
    (r, dd)
}

/// Batch Renormalization's training output with the corrections `r`, `d`
/// given: `y = ((x - μ_B) / σ_B · r + d) · weight + bias`. Its gradients
/// (r and d held constant) are central differences of this function.
#[allow(clippy::too_many_arguments)]
pub fn batch_renorm_train(
    x: &[f64],
    d: Dims,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    r: &[f64],
    dd: &[f64],
    eps: f64,
) -> Vec<f64> {
    check_len("x", x.len(), d.numel());
    check_params(weight, bias, d.c);
    let mut y = vec![0.0; x.len()];
    for c in 0..d.c {
        let v: Vec<f64> = (0..d.n).flat_map(|n| instance(x, d, n, c)).collect();
        let (mean, var) = mean_var(&v);
        let sigma = (var + eps).sqrt();
        for n in 0..d.n {
            for s in 0..d.s {
                let i = d.at(n, c, s);
                let xhat = (x[i] - mean) / sigma * r[c] + dd[c];
                y[i] = xhat * weight_at(weight, c) + bias_at(bias, c);
            }
        }
    }
    y
}
