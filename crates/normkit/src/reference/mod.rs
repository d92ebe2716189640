//! Plain `f64` twins of every op: the yardstick the tests measure the fast
//! kernels against.
//!
//! Each function is the op's definition written out as directly as
//! possible: nested loops over explicit sample, channel and spatial
//! indices, a mean and then a variance in two separate passes, everything
//! in `f64`. Nothing is shared with the kernels (no plans, runs, split
//! means or lane sums), so a mistake in the fast engine cannot hide by being
//! repeated here. The backward functions recompute the statistics from `x`
//! rather than take saved ones, and the unit tests at the bottom check each
//! of them against central finite differences of its own forward: that is
//! what makes this module trustworthy.
//!
//! Conventions follow the kernels: a missing weight means 1, a missing bias
//! 0; `dweight` is `Σ dy · x̂` whether or not a weight is given. Results are
//! fresh `Vec`s. Speed is not a goal, and neither is input checking: the
//! functions assert that lengths agree and panic otherwise, since they
//! exist for tests; the checked API is the rest of the crate.

use crate::ChannelAxis;

mod adaptive;
mod add_norm;
mod batch_norm;
mod derf;
mod dyt;
mod group_norm;
mod layer_norm;
mod layer_norm_scaling;
mod qk_norm;
mod weight_norm;
pub use adaptive::*;
pub use add_norm::*;
pub use batch_norm::*;
pub use derf::*;
pub use dyt::*;
pub use group_norm::*;
pub use layer_norm::*;
pub use layer_norm_scaling::*;
pub use qk_norm::*;
pub use weight_norm::*;

/// A per-channel input seen as `n` samples × `c` channels × `s` spatial
/// positions, stored `[n, c, s]` (channels first) or `[n, s, c]` (channels
/// last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub s: usize,
    pub axis: ChannelAxis,
}

impl Dims {
    pub fn new(n: usize, c: usize, s: usize, axis: ChannelAxis) -> Self {
        Dims { n, c, s, axis }
    }

    /// Reads `[N, C, *]` (channels first) or `[N, *, C]` (channels last).
    ///
    /// # Panics
    /// If `shape` has rank below 2.
    pub fn of(shape: &[usize], axis: ChannelAxis) -> Self {
        assert!(shape.len() >= 2, "rank {} < 2", shape.len());
        let r = shape.len();
        let (c, spatial) = match axis {
            ChannelAxis::First => (shape[1], &shape[2..]),
            ChannelAxis::Last => (shape[r - 1], &shape[1..r - 1]),
        };
        Dims::new(shape[0], c, spatial.iter().product(), axis)
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.n * self.c * self.s
    }

    /// Flat index of sample `n`, channel `c`, spatial position `s`.
    pub fn at(&self, n: usize, c: usize, s: usize) -> usize {
        match self.axis {
            ChannelAxis::First => (n * self.c + c) * self.s + s,
            ChannelAxis::Last => (n * self.s + s) * self.c + c,
        }
    }
}

/// What a normalizing forward pass computes, one statistic per group.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub y: Vec<f64>,
    /// Mean of each group; empty for RMSNorm.
    pub mean: Vec<f64>,
    /// Biased variance of each group (RMSNorm: the mean square).
    pub var: Vec<f64>,
    /// `1 / sqrt(var + eps)`.
    pub rstd: Vec<f64>,
}

/// Gradients of `sum(y · dy)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    pub dx: Vec<f64>,
    /// `Σ dy · x̂` per channel.
    pub dweight: Vec<f64>,
    /// `Σ dy` per channel; empty for RMSNorm, which has no bias.
    pub dbias: Vec<f64>,
}

/// The values sharing one statistic: `(flat index, channel)` of each.
type Group = Vec<(usize, usize)>;

fn check_len(name: &str, got: usize, expected: usize) {
    assert_eq!(
        got, expected,
        "`{name}` has {got} values, expected {expected}"
    );
}

fn check_params(weight: Option<&[f64]>, bias: Option<&[f64]>, channels: usize) {
    if let Some(w) = weight {
        check_len("weight", w.len(), channels);
    }
    if let Some(b) = bias {
        check_len("bias", b.len(), channels);
    }
}

fn weight_at(weight: Option<&[f64]>, c: usize) -> f64 {
    weight.map_or(1.0, |w| w[c])
}

fn bias_at(bias: Option<&[f64]>, c: usize) -> f64 {
    bias.map_or(0.0, |b| b[c])
}

/// Mean and biased variance, two passes.
fn mean_var(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mut sum = 0.0;
    for &v in values {
        sum += v;
    }
    let mean = sum / n;
    let mut sq = 0.0;
    for &v in values {
        sq += (v - mean) * (v - mean);
    }
    (mean, sq / n)
}

fn mean_square(values: &[f64]) -> f64 {
    let mut sq = 0.0;
    for &v in values {
        sq += v * v;
    }
    sq / values.len() as f64
}

/// One group per channel, over the batch and spatial positions.
fn channel_groups(d: Dims) -> Vec<Group> {
    let mut groups = Vec::new();
    for c in 0..d.c {
        let mut g = Vec::new();
        for n in 0..d.n {
            for s in 0..d.s {
                g.push((d.at(n, c, s), c));
            }
        }
        groups.push(g);
    }
    groups
}

/// `num_groups` groups per sample, each of `c / num_groups` whole channels.
fn sample_groups(d: Dims, num_groups: usize) -> Vec<Group> {
    assert!(
        num_groups > 0 && d.c.is_multiple_of(num_groups),
        "bad num_groups"
    );
    let per_group = d.c / num_groups;
    let mut groups = Vec::new();
    for n in 0..d.n {
        for g in 0..num_groups {
            let mut group = Vec::new();
            for c in g * per_group..(g + 1) * per_group {
                for s in 0..d.s {
                    group.push((d.at(n, c, s), c));
                }
            }
            groups.push(group);
        }
    }
    groups
}

/// One group per row of `d` values; position `j` in the row is channel `j`.
fn row_groups(rows: usize, d: usize) -> Vec<Group> {
    let mut groups = Vec::new();
    for r in 0..rows {
        let mut g = Vec::new();
        for j in 0..d {
            g.push((r * d + j, j));
        }
        groups.push(g);
    }
    groups
}

/// Normalizes each group with its own statistics (centered or not).
fn normalize(
    x: &[f64],
    groups: &[Group],
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
    centered: bool,
) -> Normalized {
    let mut out = Normalized {
        y: vec![0.0; x.len()],
        mean: Vec::new(),
        var: Vec::new(),
        rstd: Vec::new(),
    };
    for group in groups {
        let values: Vec<f64> = group.iter().map(|&(i, _)| x[i]).collect();
        let (mean, var) = if centered {
            mean_var(&values)
        } else {
            (0.0, mean_square(&values))
        };
        let rstd = 1.0 / (var + eps).sqrt();
        for &(i, c) in group {
            let xhat = (x[i] - mean) * rstd;
            out.y[i] = xhat * weight_at(weight, c) + bias_at(bias, c);
        }
        if centered {
            out.mean.push(mean);
        }
        out.var.push(var);
        out.rstd.push(rstd);
    }
    out
}

/// Backward of [`normalize`]. With `x̂ = (x - mean) · rstd` and
/// `g = dy · weight` over a group of n values,
/// `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))`; RMSNorm has no
/// `mean(g)` term because its statistic does not shift with x.
fn normalize_backward(
    dy: &[f64],
    x: &[f64],
    groups: &[Group],
    channels: usize,
    weight: Option<&[f64]>,
    eps: f64,
    centered: bool,
) -> Gradients {
    let mut out = Gradients {
        dx: vec![0.0; x.len()],
        dweight: vec![0.0; channels],
        dbias: if centered {
            vec![0.0; channels]
        } else {
            Vec::new()
        },
    };
    for group in groups {
        let values: Vec<f64> = group.iter().map(|&(i, _)| x[i]).collect();
        let (mean, var) = if centered {
            mean_var(&values)
        } else {
            (0.0, mean_square(&values))
        };
        let rstd = 1.0 / (var + eps).sqrt();
        let n = group.len() as f64;
        let (mut sum_g, mut sum_gx) = (0.0, 0.0);
        for &(i, c) in group {
            let xhat = (x[i] - mean) * rstd;
            let g = dy[i] * weight_at(weight, c);
            sum_g += g;
            sum_gx += g * xhat;
        }
        let mean_g = if centered { sum_g / n } else { 0.0 };
        let mean_gx = sum_gx / n;
        for &(i, c) in group {
            let xhat = (x[i] - mean) * rstd;
            let g = dy[i] * weight_at(weight, c);
            out.dx[i] = rstd * (g - mean_g - xhat * mean_gx);
            out.dweight[c] += dy[i] * xhat;
            if centered {
                out.dbias[c] += dy[i];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator (64-bit LCG, top bits) for inputs.
    pub(super) struct Lcg(pub(super) u64);

    impl Lcg {
        pub(super) fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Uniform in [-1, 1).
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }

        pub(super) fn vec(&mut self, n: usize) -> Vec<f64> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// `Σ y · dy`, the scalar whose gradients the backward functions give.
    pub(super) fn loss(y: &[f64], dy: &[f64]) -> f64 {
        y.iter().zip(dy).map(|(a, b)| a * b).sum()
    }

    /// Central differences of `f` at `p`, one per coordinate.
    pub(super) fn numeric_grad(p: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
        // Truncation error ~h² · f''' and rounding error ~1e-16 · |f| / h
        // balance near h = 1e-5 for values of order 1.
        let h = 1e-5;
        (0..p.len())
            .map(|i| {
                let mut q = p.to_vec();
                q[i] = p[i] + h;
                let up = f(&q);
                q[i] = p[i] - h;
                let down = f(&q);
                (up - down) / (2.0 * h)
            })
            .collect()
    }

    pub(super) fn assert_grad(what: &str, analytic: &[f64], numeric: &[f64]) {
        assert_eq!(analytic.len(), numeric.len(), "{what}: length");
        for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
            // Both agree to ~1e-9 when the analytic formula is right; a
            // wrong term shows up at order 1e-2 or more.
            assert!(
                (a - n).abs() <= 1e-6 * (1.0 + n.abs()),
                "{what}[{i}]: analytic {a}, numeric {n}"
            );
        }
    }

    fn assert_near(what: &str, got: &[f64], expected: &[f64]) {
        assert_eq!(got.len(), expected.len(), "{what}: length");
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (g - e).abs() <= 1e-12 * (1.0 + e.abs()),
                "{what}[{i}]: {g} vs {e}"
            );
        }
    }

    const AXES: [ChannelAxis; 2] = [ChannelAxis::First, ChannelAxis::Last];

    #[test]
    fn layer_norm_known_values() {
        // mean 2.5, biased variance 1.25: y = (x - 2.5) / sqrt(1.25).
        let out = layer_norm(&[1.0, 2.0, 3.0, 4.0], 1, 4, None, None, 0.0);
        let r = 1.0 / 1.25f64.sqrt();
        assert_near("y", &out.y, &[-1.5 * r, -0.5 * r, 0.5 * r, 1.5 * r]);
        assert_near("mean", &out.mean, &[2.5]);
        assert_near("rstd", &out.rstd, &[r]);
        // Affine: y · weight + bias per position.
        let out = layer_norm(
            &[0.0, 2.0],
            1,
            2,
            Some(&[2.0, 3.0]),
            Some(&[1.0, -1.0]),
            0.0,
        );
        assert_near("y affine", &out.y, &[-1.0, 2.0]);
    }

    #[test]
    fn rms_norm_known_values() {
        // mean(x²) = (9 + 16) / 2 = 12.5.
        let out = rms_norm(&[3.0, 4.0], 1, 2, Some(&[1.0, 2.0]), 0.0);
        let r = 1.0 / 12.5f64.sqrt();
        assert_near("y", &out.y, &[3.0 * r, 8.0 * r]);
        assert!(out.mean.is_empty());
    }

    #[test]
    fn batch_norm_known_values() {
        // Channel 0 holds 1 and 3 (mean 2, biased var 1, unbiased 2);
        // channel 1 holds 10 and 10.
        let d = Dims::new(2, 2, 1, ChannelAxis::First);
        let x = [1.0, 10.0, 3.0, 10.0];
        let out = batch_norm_train(&x, d, None, None, 0.0);
        assert_near("mean", &out.mean, &[2.0, 10.0]);
        assert_near("var", &out.var, &[1.0, 0.0]);
        assert_near("y channel 0", &[out.y[0], out.y[2]], &[-1.0, 1.0]);
        let (m, v) = batch_norm_running_update(&x, d, &[0.0, 1.0], &[1.0, 1.0], 0.1);
        assert_near("running_mean", &m, &[0.2, 0.1 * 10.0 + 0.9]);
        assert_near("running_var", &v, &[0.9 + 0.1 * 2.0, 0.9]);
        let y = batch_norm_eval(
            &x,
            d,
            None,
            Some(&[0.5, 0.0]),
            &[1.0, 10.0],
            &[4.0, 1.0],
            0.0,
        );
        assert_near("eval", &y, &[0.5, 0.0, 1.5, 0.0]);
    }

    #[test]
    fn instance_norm_running_known_values() {
        // Sample 0 holds 0, 2 (mean 1, unbiased var 2); sample 1 holds 4, 8
        // (mean 6, unbiased var 8). Batch averages: mean 3.5, var 5.
        let d = Dims::new(2, 1, 2, ChannelAxis::First);
        let (m, v) = instance_norm_running_update(&[0.0, 2.0, 4.0, 8.0], d, &[1.0], &[1.0], 0.5);
        assert_near("running_mean", &m, &[0.5 + 1.75]);
        assert_near("running_var", &v, &[0.5 + 2.5]);
    }

    #[test]
    fn weight_norm_known_values() {
        let (w, norms) = weight_norm(&[3.0, 4.0], &[2], &[10.0], None);
        assert_near("w", &w, &[6.0, 8.0]);
        assert_near("norm", &norms, &[5.0]);
        // Rows [3, 4] and [6, 8]: norms 5 and 10 along dim 0.
        let v = [3.0, 4.0, 6.0, 8.0];
        let (w, norms) = weight_norm(&v, &[2, 2], &[1.0, 2.0], Some(0));
        assert_near("w dim 0", &w, &[0.6, 0.8, 1.2, 1.6]);
        assert_near("norms dim 0", &norms, &[5.0, 10.0]);
        // dim -1 keeps the columns: norms sqrt(45) and sqrt(80).
        let (_, norms) = weight_norm(&v, &[2, 2], &[1.0, 1.0], Some(-1));
        assert_near("norms dim -1", &norms, &[45f64.sqrt(), 80f64.sqrt()]);
    }

    #[test]
    fn dyt_known_values() {
        let d = Dims::new(1, 1, 2, ChannelAxis::Last);
        let y = dyt(&[0.0, 2.0], d, 0.5, Some(&[2.0]), Some(&[1.0]));
        assert_near("y", &y, &[1.0, 2.0 * 1f64.tanh() + 1.0]);
    }

    #[test]
    fn group_norm_extremes_match_layer_and_instance_norm() {
        let mut rng = Lcg(7);
        let d = Dims::new(2, 6, 3, ChannelAxis::First);
        let x = rng.vec(d.numel());
        // One group over [C, S] is LayerNorm over each sample's row.
        let gn = group_norm(&x, d, 1, None, None, 1e-5);
        let ln = layer_norm(&x, 2, 18, None, None, 1e-5);
        assert_near("one group", &gn.y, &ln.y);
        // C groups of one channel: each (sample, channel) plane alone.
        let gn = group_norm(&x, d, 6, None, None, 1e-5);
        let ln = layer_norm(&x, 12, 3, None, None, 1e-5);
        assert_near("C groups", &gn.y, &ln.y);
    }

    #[test]
    fn channels_last_is_a_transpose() {
        let mut rng = Lcg(8);
        let first = Dims::new(2, 3, 4, ChannelAxis::First);
        let last = Dims::new(2, 3, 4, ChannelAxis::Last);
        let x_first = rng.vec(first.numel());
        let mut x_last = vec![0.0; last.numel()];
        for n in 0..2 {
            for c in 0..3 {
                for s in 0..4 {
                    x_last[last.at(n, c, s)] = x_first[first.at(n, c, s)];
                }
            }
        }
        let a = batch_norm_train(&x_first, first, None, None, 1e-5);
        let b = batch_norm_train(&x_last, last, None, None, 1e-5);
        assert_near("mean", &a.mean, &b.mean);
        assert_near("var", &a.var, &b.var);
    }

    #[test]
    fn batch_norm_backward_matches_finite_differences() {
        let mut rng = Lcg(1);
        for axis in AXES {
            let d = Dims::new(3, 2, 2, axis);
            let (x, dy, w, b) = (rng.vec(12), rng.vec(12), rng.vec(2), rng.vec(2));
            let eps = 1e-3;
            let grads = batch_norm_backward_train(&dy, &x, d, Some(&w), eps);
            let f = |x: &[f64]| loss(&batch_norm_train(x, d, Some(&w), Some(&b), eps).y, &dy);
            assert_grad("dx", &grads.dx, &numeric_grad(&x, f));
            let f = |w: &[f64]| loss(&batch_norm_train(&x, d, Some(w), Some(&b), eps).y, &dy);
            assert_grad("dweight", &grads.dweight, &numeric_grad(&w, f));
            let f = |b: &[f64]| loss(&batch_norm_train(&x, d, Some(&w), Some(b), eps).y, &dy);
            assert_grad("dbias", &grads.dbias, &numeric_grad(&b, f));

            let (rm, rv) = (rng.vec(2), vec![0.5, 2.0]);
            let grads = batch_norm_backward_eval(&dy, &x, d, Some(&w), &rm, &rv, eps);
            let y = |x: &[f64], w: &[f64], b: &[f64]| {
                batch_norm_eval(x, d, Some(w), Some(b), &rm, &rv, eps)
            };
            let f = |x: &[f64]| loss(&y(x, &w, &b), &dy);
            assert_grad("eval dx", &grads.dx, &numeric_grad(&x, f));
            let f = |w: &[f64]| loss(&y(&x, w, &b), &dy);
            assert_grad("eval dweight", &grads.dweight, &numeric_grad(&w, f));
            let f = |b: &[f64]| loss(&y(&x, &w, b), &dy);
            assert_grad("eval dbias", &grads.dbias, &numeric_grad(&b, f));
        }
    }

    #[test]
    fn layer_and_rms_norm_backward_match_finite_differences() {
        let mut rng = Lcg(2);
        let (rows, d, eps) = (3, 5, 1e-3);
        let (x, dy, w, b) = (rng.vec(15), rng.vec(15), rng.vec(5), rng.vec(5));
        let grads = layer_norm_backward(&dy, &x, rows, d, Some(&w), eps);
        let f = |x: &[f64]| loss(&layer_norm(x, rows, d, Some(&w), Some(&b), eps).y, &dy);
        assert_grad("layer_norm dx", &grads.dx, &numeric_grad(&x, f));
        let f = |w: &[f64]| loss(&layer_norm(&x, rows, d, Some(w), Some(&b), eps).y, &dy);
        assert_grad("layer_norm dweight", &grads.dweight, &numeric_grad(&w, f));
        let f = |b: &[f64]| loss(&layer_norm(&x, rows, d, Some(&w), Some(b), eps).y, &dy);
        assert_grad("layer_norm dbias", &grads.dbias, &numeric_grad(&b, f));

        let grads = rms_norm_backward(&dy, &x, rows, d, Some(&w), eps);
        let f = |x: &[f64]| loss(&rms_norm(x, rows, d, Some(&w), eps).y, &dy);
        assert_grad("rms_norm dx", &grads.dx, &numeric_grad(&x, f));
        let f = |w: &[f64]| loss(&rms_norm(&x, rows, d, Some(w), eps).y, &dy);
        assert_grad("rms_norm dweight", &grads.dweight, &numeric_grad(&w, f));
        assert!(grads.dbias.is_empty());
    }

    #[test]
    fn group_and_instance_norm_backward_match_finite_differences() {
        let mut rng = Lcg(3);
        for axis in AXES {
            let d = Dims::new(2, 4, 3, axis);
            let eps = 1e-3;
            let (x, dy, w, b) = (rng.vec(24), rng.vec(24), rng.vec(4), rng.vec(4));
            for groups in [1, 2, 4] {
                let grads = group_norm_backward(&dy, &x, d, groups, Some(&w), eps);
                let y = |x: &[f64], w: &[f64], b: &[f64]| {
                    group_norm(x, d, groups, Some(w), Some(b), eps).y
                };
                let f = |x: &[f64]| loss(&y(x, &w, &b), &dy);
                assert_grad("group_norm dx", &grads.dx, &numeric_grad(&x, f));
                let f = |w: &[f64]| loss(&y(&x, w, &b), &dy);
                assert_grad("group_norm dweight", &grads.dweight, &numeric_grad(&w, f));
                let f = |b: &[f64]| loss(&y(&x, &w, b), &dy);
                assert_grad("group_norm dbias", &grads.dbias, &numeric_grad(&b, f));
            }
            let grads = instance_norm_backward(&dy, &x, d, Some(&w), eps);
            let f = |x: &[f64]| loss(&instance_norm(x, d, Some(&w), Some(&b), eps).y, &dy);
            assert_grad("instance_norm dx", &grads.dx, &numeric_grad(&x, f));
        }
    }

    #[test]
    fn weight_norm_backward_matches_finite_differences() {
        let mut rng = Lcg(4);
        let shape = [2, 3, 2];
        for dim in [None, Some(0), Some(1), Some(-1), Some(-3)] {
            let kept = match dim {
                None => 1,
                Some(k) => shape[(k + 3) as usize % 3],
            };
            let (v, dw, g) = (rng.vec(12), rng.vec(12), rng.vec(kept));
            let (dv, dg) = weight_norm_backward(&dw, &v, &shape, &g, dim);
            let f = |v: &[f64]| loss(&weight_norm(v, &shape, &g, dim).0, &dw);
            assert_grad("dv", &dv, &numeric_grad(&v, f));
            let f = |g: &[f64]| loss(&weight_norm(&v, &shape, g, dim).0, &dw);
            assert_grad("dg", &dg, &numeric_grad(&g, f));
        }
    }

    #[test]
    fn dyt_backward_matches_finite_differences() {
        let mut rng = Lcg(5);
        for axis in AXES {
            let d = Dims::new(2, 3, 2, axis);
            let (x, dy, w, b) = (rng.vec(12), rng.vec(12), rng.vec(3), rng.vec(3));
            let alpha = 0.7;
            let grads = dyt_backward(&dy, &x, d, alpha, Some(&w));
            let f = |x: &[f64]| loss(&dyt(x, d, alpha, Some(&w), Some(&b)), &dy);
            assert_grad("dx", &grads.dx, &numeric_grad(&x, f));
            let f = |w: &[f64]| loss(&dyt(&x, d, alpha, Some(w), Some(&b)), &dy);
            assert_grad("dweight", &grads.dweight, &numeric_grad(&w, f));
            let f = |b: &[f64]| loss(&dyt(&x, d, alpha, Some(&w), Some(b)), &dy);
            assert_grad("dbias", &grads.dbias, &numeric_grad(&b, f));
            let f = |a: &[f64]| loss(&dyt(&x, d, a[0], Some(&w), Some(&b)), &dy);
            assert_grad("dalpha", &[grads.dalpha], &numeric_grad(&[alpha], f));
        }
    }
}
