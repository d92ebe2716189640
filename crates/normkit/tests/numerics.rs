//! Numerically hard inputs: a large mean next to a unit spread, magnitudes
//! near the ends of f32's range, and zero variance with eps = 0.

use crate::common::{abs, assert_close, max_abs, max_abs_err, wide, Rng, Rounding, Scale};
use normkit::reference::{self, Dims};
use normkit::{
    batch_norm_backward_train, batch_norm_forward_train, group_norm_backward, group_norm_forward,
    instance_norm_forward_train, layer_norm_backward, layer_norm_forward, rms_norm_backward,
    rms_norm_forward, weight_norm_backward, weight_norm_forward, Affine, BatchNormConfig,
    ChannelAxis, Grads, GroupNormConfig, InstanceNormConfig, RunningStats,
};

/// The flat index and channel of each value, per normalized group.
type Groups = Vec<Vec<(usize, usize)>>;

fn row_groups(rows: usize, d: usize) -> Groups {
    (0..rows)
        .map(|r| (0..d).map(|j| (r * d + j, j)).collect())
        .collect()
}

fn channel_groups(d: Dims) -> Groups {
    (0..d.c)
        .map(|c| {
            let mut g = Vec::new();
            for n in 0..d.n {
                for s in 0..d.s {
                    g.push((d.at(n, c, s), c));
                }
            }
            g
        })
        .collect()
}

fn sample_groups(d: Dims, num_groups: usize) -> Groups {
    let per = d.c / num_groups;
    let mut groups = Vec::new();
    for n in 0..d.n {
        for g in 0..num_groups {
            let mut group = Vec::new();
            for c in g * per..(g + 1) * per {
                for s in 0..d.s {
                    group.push((d.at(n, c, s), c));
                }
            }
            groups.push(group);
        }
    }
    groups
}

/// y, dx and dweight of one normalization, widened to f64.
struct Outputs {
    y: Vec<f64>,
    dx: Vec<f64>,
    dweight: Vec<f64>,
}

/// The foil: a normalization as it is commonly written, all in f32 with
/// one pass of running sums Σx and Σx² and `var = E[x²] - E[x]²` (clamped
/// at 0, as such kernels do to avoid a NaN), then y and the backward with
/// that mean and rstd. What normkit's care is measured against.
fn naive_f32(
    x: &[f32],
    dy: &[f32],
    groups: &Groups,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) -> Outputs {
    let mut y = vec![0.0f32; x.len()];
    let mut dx = vec![0.0f32; x.len()];
    let mut dweight = vec![0.0f32; weight.len()];
    for group in groups {
        let n = group.len() as f32;
        let (mut sum, mut sumsq) = (0.0f32, 0.0f32);
        for &(i, _) in group {
            sum += x[i];
            sumsq += x[i] * x[i];
        }
        let mean = sum / n;
        let var = (sumsq / n - mean * mean).max(0.0);
        let rstd = 1.0 / (var + eps).sqrt();
        let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
        for &(i, c) in group {
            let xhat = (x[i] - mean) * rstd;
            y[i] = xhat * weight[c] + bias[c];
            let g = dy[i] * weight[c];
            sum_g += g;
            sum_gx += g * xhat;
            dweight[c] += dy[i] * xhat;
        }
        for &(i, c) in group {
            let xhat = (x[i] - mean) * rstd;
            dx[i] = rstd * (dy[i] * weight[c] - sum_g / n - xhat * sum_gx / n);
        }
    }
    Outputs {
        y: wide(&y),
        dx: wide(&dx),
        dweight: wide(&dweight),
    }
}

/// Inputs of one hard case.
struct Case {
    x: Vec<f32>,
    dy: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    x64: Vec<f64>,
    dy64: Vec<f64>,
    w64: Vec<f64>,
    b64: Vec<f64>,
}

impl Case {
    /// `len` values `mean + std · N(0, 1)`, random dy and parameters.
    fn new(rng: &mut Rng, len: usize, channels: usize, mean: f64, std: f64) -> Self {
        let x = rng.normals(len, mean, std);
        let dy = rng.normals(len, 0.0, 1.0);
        let weight = rng.uniforms(channels, 0.5, 2.0);
        let bias = rng.uniforms(channels, -1.0, 1.0);
        Case {
            x64: wide(&x),
            dy64: wide(&dy),
            w64: wide(&weight),
            b64: wide(&bias),
            x,
            dy,
            weight,
            bias,
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine::new(&self.weight, &self.bias)
    }
}

/// The magnitudes each output's error is measured against, as in the
/// property tests: the operands of y's last step, of dx's last step
/// (`max rstd · max|g| · (2 + max|x̂|)`), and of the largest dweight sum
/// (`Σ|dy| · max|x̂|`).
struct Scales {
    y: f64,
    dx: f64,
    dweight: f64,
}

fn scales(case: &Case, xhat: &[f64], rstd: &[f64], sum_abs_dy: &[f64]) -> Scales {
    let max_xhat = max_abs(xhat);
    let max_g = max_abs(&case.dy64) * max_abs(&case.w64);
    Scales {
        y: max_xhat * max_abs(&case.w64) + max_abs(&case.b64),
        dx: max_abs(rstd) * max_g * (2.0 + max_xhat),
        dweight: max_abs(sum_abs_dy) * max_xhat,
    }
}

/// Absolute bound on the error of each output, relative to its scale:
/// 1e-6 is about 16 f32 roundings (2⁻²⁴ ≈ 6e-8) of the operands, which is
/// what a kernel with exact statistics makes whatever the mean; an error in
/// the mean of one part in 1e7 of 1e4 would alone cost 1e-3.
const BOUND: f64 = 1e-6;

/// Asserts normkit is within [`BOUND`] of the reference and at least 100
/// times closer to it than the naive f32 kernel, output by output.
fn assert_beats_naive(what: &str, got: &Outputs, naive: &Outputs, expected: &Outputs, s: &Scales) {
    let outputs = [
        ("y", &got.y, &naive.y, &expected.y, s.y),
        ("dx", &got.dx, &naive.dx, &expected.dx, s.dx),
        (
            "dweight",
            &got.dweight,
            &naive.dweight,
            &expected.dweight,
            s.dweight,
        ),
    ];
    for (name, got, naive, expected, scale) in outputs {
        let err = max_abs_err(got, expected);
        let naive_err = max_abs_err(naive, expected);
        assert!(
            err <= BOUND * scale,
            "{what} {name}: error {err:e} > {BOUND} · {scale:e}"
        );
        assert!(
            100.0 * err <= naive_err,
            "{what} {name}: error {err:e} not 100x below the naive kernel's {naive_err:e}"
        );
    }
}

/// Mean 1e4 with unit spread: E[x²] ≈ 1e8 leaves f32 no digits for a
/// variance of 1.
const OFFSET: f64 = 1e4;

#[test]
fn large_mean_layer_norm() {
    let mut rng = Rng::new(11);
    let (rows, d, eps) = (8, 1027, 1e-5f32);
    let case = Case::new(&mut rng, rows * d, d, OFFSET, 1.0);
    let mut y = vec![0.0f32; rows * d];
    let shape = [rows, d];
    let stats = layer_norm_forward(&mut y, &case.x, &shape, &[d], case.affine(), eps).unwrap();
    let (mut dx, mut dweight) = (vec![0.0f32; rows * d], vec![0.0f32; d]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dweight),
        dbias: None,
    };
    layer_norm_backward(
        grads,
        &case.dy,
        &case.x,
        &shape,
        &[d],
        Some(&case.weight),
        &stats,
    )
    .unwrap();
    let got = Outputs {
        y: wide(&y),
        dx: wide(&dx),
        dweight: wide(&dweight),
    };

    let e64 = eps as f64;
    let fwd = reference::layer_norm(&case.x64, rows, d, Some(&case.w64), Some(&case.b64), e64);
    let bwd = reference::layer_norm_backward(&case.dy64, &case.x64, rows, d, Some(&case.w64), e64);
    let expected = Outputs {
        y: fwd.y,
        dx: bwd.dx,
        dweight: bwd.dweight,
    };
    let xhat = reference::layer_norm(&case.x64, rows, d, None, None, e64).y;
    let sum_abs_dy =
        reference::layer_norm_backward(&abs(&case.dy64), &case.x64, rows, d, None, e64).dbias;
    let s = scales(&case, &xhat, &fwd.rstd, &sum_abs_dy);
    let naive = naive_f32(
        &case.x,
        &case.dy,
        &row_groups(rows, d),
        &case.weight,
        &case.bias,
        eps,
    );
    assert_beats_naive("layer_norm", &got, &naive, &expected, &s);
}

#[test]
fn large_mean_batch_norm() {
    let mut rng = Rng::new(12);
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let shape = match axis {
            ChannelAxis::First => [16, 6, 67],
            ChannelAxis::Last => [16, 67, 6],
        };
        let d = Dims::of(&shape, axis);
        let cfg = BatchNormConfig {
            channel_axis: axis,
            ..BatchNormConfig::default()
        };
        let case = Case::new(&mut rng, d.numel(), d.c, OFFSET, 1.0);
        let mut y = vec![0.0f32; d.numel()];
        let stats =
            batch_norm_forward_train(&mut y, &case.x, &shape, case.affine(), None, &cfg).unwrap();
        let (mut dx, mut dweight) = (vec![0.0f32; d.numel()], vec![0.0f32; d.c]);
        let grads = Grads {
            dx: &mut dx,
            dweight: Some(&mut dweight),
            dbias: None,
        };
        batch_norm_backward_train(
            grads,
            &case.dy,
            &case.x,
            &shape,
            Some(&case.weight),
            &stats,
            &cfg,
        )
        .unwrap();
        let got = Outputs {
            y: wide(&y),
            dx: wide(&dx),
            dweight: wide(&dweight),
        };

        let e64 = cfg.eps as f64;
        let fwd = reference::batch_norm_train(&case.x64, d, Some(&case.w64), Some(&case.b64), e64);
        let bwd =
            reference::batch_norm_backward_train(&case.dy64, &case.x64, d, Some(&case.w64), e64);
        let expected = Outputs {
            y: fwd.y,
            dx: bwd.dx,
            dweight: bwd.dweight,
        };
        let xhat = reference::batch_norm_train(&case.x64, d, None, None, e64).y;
        let sum_abs_dy =
            reference::batch_norm_backward_train(&abs(&case.dy64), &case.x64, d, None, e64).dbias;
        let s = scales(&case, &xhat, &fwd.rstd, &sum_abs_dy);
        let naive = naive_f32(
            &case.x,
            &case.dy,
            &channel_groups(d),
            &case.weight,
            &case.bias,
            cfg.eps,
        );
        assert_beats_naive(&format!("batch_norm {axis:?}"), &got, &naive, &expected, &s);
    }
}

#[test]
fn large_mean_group_norm() {
    let mut rng = Rng::new(13);
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let shape = match axis {
            ChannelAxis::First => [4, 8, 131],
            ChannelAxis::Last => [4, 131, 8],
        };
        let d = Dims::of(&shape, axis);
        let cfg = GroupNormConfig {
            channel_axis: axis,
            ..GroupNormConfig::new(2)
        };
        let case = Case::new(&mut rng, d.numel(), d.c, OFFSET, 1.0);
        let mut y = vec![0.0f32; d.numel()];
        let stats = group_norm_forward(&mut y, &case.x, &shape, case.affine(), &cfg).unwrap();
        let (mut dx, mut dweight) = (vec![0.0f32; d.numel()], vec![0.0f32; d.c]);
        let grads = Grads {
            dx: &mut dx,
            dweight: Some(&mut dweight),
            dbias: None,
        };
        group_norm_backward(
            grads,
            &case.dy,
            &case.x,
            &shape,
            Some(&case.weight),
            &stats,
            &cfg,
        )
        .unwrap();
        let got = Outputs {
            y: wide(&y),
            dx: wide(&dx),
            dweight: wide(&dweight),
        };

        let e64 = cfg.eps as f64;
        let fwd = reference::group_norm(&case.x64, d, 2, Some(&case.w64), Some(&case.b64), e64);
        let bwd = reference::group_norm_backward(&case.dy64, &case.x64, d, 2, Some(&case.w64), e64);
        let expected = Outputs {
            y: fwd.y,
            dx: bwd.dx,
            dweight: bwd.dweight,
        };
        let xhat = reference::group_norm(&case.x64, d, 2, None, None, e64).y;
        let sum_abs_dy =
            reference::group_norm_backward(&abs(&case.dy64), &case.x64, d, 2, None, e64).dbias;
        let s = scales(&case, &xhat, &fwd.rstd, &sum_abs_dy);
        let naive = naive_f32(
            &case.x,
            &case.dy,
            &sample_groups(d, 2),
            &case.weight,
            &case.bias,
            cfg.eps,
        );
        assert_beats_naive(&format!("group_norm {axis:?}"), &got, &naive, &expected, &s);
    }
}

// ------------------------------------------------------- extreme magnitudes

/// Property-test tolerance: a few f32 roundings of the operands (see
/// `property::TOL`).
const TOL: f64 = 2e-6;

/// Magnitudes near both ends of f32's range: squares of 1e30 overflow f32
/// and squares of 1e-30 underflow it, so only wide statistics survive.
/// With eps = 0 the tiny inputs normalize to order one, and with the
/// default eps they stay tiny; both must match.
const EXTREMES: [(f64, f32); 4] = [(1e30, 1e-5), (1e30, 0.0), (1e-30, 1e-5), (1e-30, 0.0)];

fn assert_finite(what: &str, v: &[f64]) {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        panic!("{what}[{i}] = {}", v[i]);
    }
}

/// Checks y, dx and dweight of one op at one magnitude: finite, and within
/// TOL of the reference.
#[allow(clippy::too_many_arguments)]
fn check_extreme(
    what: &str,
    case: &Case,
    got: &Outputs,
    expected: &Outputs,
    xhat: &[f64],
    rstd: &[f64],
    sum_abs_dy: &[f64],
    with_bias: bool,
) {
    for (name, v) in [("y", &got.y), ("dx", &got.dx), ("dweight", &got.dweight)] {
        assert_finite(&format!("{what}: {name}"), v);
    }
    let mut s = scales(case, xhat, rstd, sum_abs_dy);
    if !with_bias {
        s.y = max_abs(xhat) * max_abs(&case.w64);
    }
    let none = Rounding::NONE;
    assert_close(
        &format!("{what}: y"),
        &got.y,
        &expected.y,
        Scale::All(s.y),
        TOL,
        none,
    );
    assert_close(
        &format!("{what}: dx"),
        &got.dx,
        &expected.dx,
        Scale::All(s.dx),
        TOL,
        none,
    );
    let scale: Vec<f64> = sum_abs_dy.iter().map(|v| v * max_abs(xhat)).collect();
    assert_close(
        &format!("{what}: dweight"),
        &got.dweight,
        &expected.dweight,
        Scale::Each(&scale),
        TOL,
        none,
    );
}

/// Runs a forward and a backward that write y, dx and dweight.
fn run(len: usize, channels: usize, f: impl FnOnce(&mut [f32], Grads<'_, f32>)) -> Outputs {
    let mut y = vec![f32::NAN; len];
    let mut dx = vec![f32::NAN; len];
    let mut dweight = vec![f32::NAN; channels];
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dweight),
        dbias: None,
    };
    f(&mut y, grads);
    Outputs {
        y: wide(&y),
        dx: wide(&dx),
        dweight: wide(&dweight),
    }
}

#[test]
fn extreme_magnitudes_layer_and_rms_norm() {
    let mut rng = Rng::new(21);
    let (rows, d) = (5, 67);
    let shape = [rows, d];
    for (mag, eps) in EXTREMES {
        let case = Case::new(&mut rng, rows * d, d, 0.5 * mag, mag);
        let e64 = eps as f64;
        let what = format!("layer_norm |x| ~ {mag:e}, eps {eps}");
        let got = run(rows * d, d, |y, grads| {
            let stats = layer_norm_forward(y, &case.x, &shape, &[d], case.affine(), eps).unwrap();
            layer_norm_backward(
                grads,
                &case.dy,
                &case.x,
                &shape,
                &[d],
                Some(&case.weight),
                &stats,
            )
            .unwrap();
        });
        let fwd = reference::layer_norm(&case.x64, rows, d, Some(&case.w64), Some(&case.b64), e64);
        let bwd =
            reference::layer_norm_backward(&case.dy64, &case.x64, rows, d, Some(&case.w64), e64);
        let xhat = reference::layer_norm(&case.x64, rows, d, None, None, e64).y;
        let sum_abs_dy =
            reference::layer_norm_backward(&abs(&case.dy64), &case.x64, rows, d, None, e64).dbias;
        let expected = Outputs {
            y: fwd.y,
            dx: bwd.dx,
            dweight: bwd.dweight,
        };
        check_extreme(
            &what,
            &case,
            &got,
            &expected,
            &xhat,
            &fwd.rstd,
            &sum_abs_dy,
            true,
        );

        let what = format!("rms_norm |x| ~ {mag:e}, eps {eps}");
        let got = run(rows * d, d, |y, grads| {
            let stats =
                rms_norm_forward(y, &case.x, &shape, &[d], Some(&case.weight), eps).unwrap();
            rms_norm_backward(
                grads,
                &case.dy,
                &case.x,
                &shape,
                &[d],
                Some(&case.weight),
                &stats,
            )
            .unwrap();
        });
        let fwd = reference::rms_norm(&case.x64, rows, d, Some(&case.w64), e64);
        let bwd =
            reference::rms_norm_backward(&case.dy64, &case.x64, rows, d, Some(&case.w64), e64);
        let xhat = reference::rms_norm(&case.x64, rows, d, None, e64).y;
        let expected = Outputs {
            y: fwd.y,
            dx: bwd.dx,
            dweight: bwd.dweight,
        };
        check_extreme(
            &what,
            &case,
            &got,
            &expected,
            &xhat,
            &fwd.rstd,
            &sum_abs_dy,
            false,
        );

        // The case is hard: squares overflow, or underflow where eps does
        // not hide it, and the naive f32 LayerNorm goes wrong.
        if mag > 1.0 || eps == 0.0 {
            let groups = row_groups(rows, d);
            let naive = naive_f32(&case.x, &case.dy, &groups, &case.weight, &case.bias, eps);
            let fwd =
                reference::layer_norm(&case.x64, rows, d, Some(&case.w64), Some(&case.b64), e64);
            let naive_err = max_abs_err(&naive.y, &fwd.y);
            assert!(
                naive_err.is_nan() || naive_err > 1.0,
                "layer_norm |x| ~ {mag:e}, eps {eps}: naive f32 error only {naive_err:e}"
            );
        }
    }
}

#[test]
fn extreme_magnitudes_batch_and_group_norm() {
    let mut rng = Rng::new(22);
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let shape = match axis {
            ChannelAxis::First => [3, 4, 23],
            ChannelAxis::Last => [3, 23, 4],
        };
        let d = Dims::of(&shape, axis);
        for (mag, eps) in EXTREMES {
            let case = Case::new(&mut rng, d.numel(), d.c, 0.5 * mag, mag);
            let e64 = eps as f64;

            let what = format!("batch_norm {axis:?} |x| ~ {mag:e}, eps {eps}");
            let cfg = BatchNormConfig {
                eps,
                channel_axis: axis,
                ..BatchNormConfig::default()
            };
            let (mut rm, mut rv) = (vec![0.0f32; d.c], vec![1.0f32; d.c]);
            let got = run(d.numel(), d.c, |y, grads| {
                let running = RunningStats {
                    mean: &mut rm,
                    var: &mut rv,
                };
                let stats = batch_norm_forward_train(
                    y,
                    &case.x,
                    &shape,
                    case.affine(),
                    Some(running),
                    &cfg,
                )
                .unwrap();
                batch_norm_backward_train(
                    grads,
                    &case.dy,
                    &case.x,
                    &shape,
                    Some(&case.weight),
                    &stats,
                    &cfg,
                )
                .unwrap();
            });
            let fwd =
                reference::batch_norm_train(&case.x64, d, Some(&case.w64), Some(&case.b64), e64);
            let bwd = reference::batch_norm_backward_train(
                &case.dy64,
                &case.x64,
                d,
                Some(&case.w64),
                e64,
            );
            let xhat = reference::batch_norm_train(&case.x64, d, None, None, e64).y;
            let sum_abs_dy =
                reference::batch_norm_backward_train(&abs(&case.dy64), &case.x64, d, None, e64)
                    .dbias;
            let expected = Outputs {
                y: fwd.y,
                dx: bwd.dx,
                dweight: bwd.dweight,
            };
            check_extreme(
                &what,
                &case,
                &got,
                &expected,
                &xhat,
                &fwd.rstd,
                &sum_abs_dy,
                true,
            );
            // A variance of 1e60 does not fit f32: the running variance
            // overflows to inf exactly when the batch's does.
            let (m, v) =
                reference::batch_norm_running_update(&case.x64, d, &[0.0; 4], &[1.0; 4], 0.1);
            for c in 0..d.c {
                assert_eq!(
                    rv[c].is_finite(),
                    (v[c] as f32).is_finite(),
                    "{what}: running_var[{c}]"
                );
                let err = (rm[c] as f64 - m[c]).abs();
                assert!(
                    err <= 1e-6 * m[c].abs(),
                    "{what}: running_mean[{c}] {} vs {}",
                    rm[c],
                    m[c]
                );
            }

            let what = format!("group_norm {axis:?} |x| ~ {mag:e}, eps {eps}");
            let cfg = GroupNormConfig {
                eps,
                channel_axis: axis,
                ..GroupNormConfig::new(2)
            };
            let got = run(d.numel(), d.c, |y, grads| {
                let stats = group_norm_forward(y, &case.x, &shape, case.affine(), &cfg).unwrap();
                group_norm_backward(
                    grads,
                    &case.dy,
                    &case.x,
                    &shape,
                    Some(&case.weight),
                    &stats,
                    &cfg,
                )
                .unwrap();
            });
            let fwd = reference::group_norm(&case.x64, d, 2, Some(&case.w64), Some(&case.b64), e64);
            let bwd =
                reference::group_norm_backward(&case.dy64, &case.x64, d, 2, Some(&case.w64), e64);
            let xhat = reference::group_norm(&case.x64, d, 2, None, None, e64).y;
            let sum_abs_dy =
                reference::group_norm_backward(&abs(&case.dy64), &case.x64, d, 2, None, e64).dbias;
            let expected = Outputs {
                y: fwd.y,
                dx: bwd.dx,
                dweight: bwd.dweight,
            };
            check_extreme(
                &what,
                &case,
                &got,
                &expected,
                &xhat,
                &fwd.rstd,
                &sum_abs_dy,
                true,
            );
        }
    }
}

#[test]
fn extreme_magnitudes_weight_norm() {
    let mut rng = Rng::new(23);
    let shape = [4, 67];
    for mag in [1e30, 1e-30] {
        for dim in [Some(0), Some(-1), None] {
            let what = format!("weight_norm |v| ~ {mag:e}, dim {dim:?}");
            let kept = dim.map_or(1, |k: isize| shape[k.rem_euclid(2) as usize]);
            let v = rng.normals(4 * 67, 0.0, mag);
            let dw = rng.normals(4 * 67, 0.0, 1.0);
            let g = rng.uniforms(kept, 0.5, 2.0);
            let (v64, dw64, g64) = (wide(&v), wide(&dw), wide(&g));
            let mut w = vec![f32::NAN; v.len()];
            let norms = weight_norm_forward(&mut w, &v, &shape, &g, dim).unwrap();
            let (mut dv, mut dg) = (vec![f32::NAN; v.len()], vec![f32::NAN; kept]);
            weight_norm_backward(&mut dv, &mut dg, &dw, &v, &shape, &g, dim, &norms).unwrap();
            let (w, dv, dg, norms) = (wide(&w), wide(&dv), wide(&dg), wide(&norms));
            for (name, out) in [("w", &w), ("dv", &dv), ("dg", &dg), ("norms", &norms)] {
                assert_finite(&format!("{what}: {name}"), out);
            }
            let (w_ref, n_ref) = reference::weight_norm(&v64, &shape, &g64, dim);
            let (dv_ref, dg_ref) = reference::weight_norm_backward(&dw64, &v64, &shape, &g64, dim);
            let none = Rounding::NONE;
            assert_close(
                &format!("{what}: w"),
                &w,
                &w_ref,
                Scale::All(max_abs(&w_ref)),
                TOL,
                none,
            );
            assert_close(
                &format!("{what}: norms"),
                &norms,
                &n_ref,
                Scale::Each(&n_ref),
                TOL,
                none,
            );
            // As in the property tests: dv's operands are bounded by
            // g / ‖v‖ · (max|dw| + max|dg|), dg's by Σ|dw · v| / ‖v‖.
            let g_over_n = g64
                .iter()
                .zip(&n_ref)
                .fold(0.0f64, |m, (g, n)| m.max((g / n).abs()));
            let dv_scale = g_over_n * (max_abs(&dw64) + max_abs(&dg_ref));
            assert_close(
                &format!("{what}: dv"),
                &dv,
                &dv_ref,
                Scale::All(dv_scale),
                TOL,
                none,
            );
            let dg_scale =
                reference::weight_norm_backward(&abs(&dw64), &abs(&v64), &shape, &g64, dim).1;
            assert_close(
                &format!("{what}: dg"),
                &dg,
                &dg_ref,
                Scale::Each(&dg_scale),
                TOL,
                none,
            );
        }
    }
}

// ---------------------------------------------------------- zero variance

/// A constant row with eps = 0 has rstd = 1/0 = inf and x̂ = 0 · inf = NaN,
/// as in PyTorch: NaN out, no panic. The other rows are untouched by it.
#[test]
fn constant_rows_with_zero_eps_give_nan() {
    let (rows, d) = (3, 5);
    let shape = [rows, d];
    // Rows: constant 3, constant 0, and an ordinary one.
    let x: Vec<f32> = [[3.0; 5], [0.0; 5], [1.0, 2.0, 3.0, 4.0, 6.0]].concat();
    let dy = vec![1.0f32; rows * d];
    let (weight, bias) = ([2.0f32; 5], [0.5f32; 5]);
    let mut y = vec![0.0f32; rows * d];
    let stats =
        layer_norm_forward(&mut y, &x, &shape, &[d], Affine::new(&weight, &bias), 0.0).unwrap();
    assert!(
        y[..10].iter().all(|v| v.is_nan()),
        "constant rows: {:?}",
        &y[..10]
    );
    assert!(
        y[10..].iter().all(|v| v.is_finite()),
        "ordinary row: {:?}",
        &y[10..]
    );
    assert_eq!(&stats.rstd[..2], &[f32::INFINITY; 2]);
    assert_eq!(&stats.mean[..2], &[3.0, 0.0]);

    let (mut dx, mut dweight, mut dbias) = (vec![0.0f32; rows * d], [0.0f32; 5], [0.0f32; 5]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dweight),
        dbias: Some(&mut dbias),
    };
    layer_norm_backward(grads, &dy, &x, &shape, &[d], Some(&weight), &stats).unwrap();
    assert!(
        dx[..10].iter().all(|v| !v.is_finite()),
        "dx: {:?}",
        &dx[..10]
    );
    assert!(dx[10..].iter().all(|v| v.is_finite()));
    assert!(
        dweight.iter().all(|v| v.is_nan()),
        "dweight sums NaN x̂: {dweight:?}"
    );
    // dbias = Σ dy does not involve the statistics.
    assert_eq!(dbias, [3.0; 5]);

    // With eps > 0 a constant row normalizes to exactly 0: y = bias.
    let stats =
        layer_norm_forward(&mut y, &x, &shape, &[d], Affine::new(&weight, &bias), 1e-5).unwrap();
    assert!(y[..10].iter().all(|&v| v == 0.5), "{:?}", &y[..10]);
    assert!(stats.rstd.iter().all(|r| r.is_finite()));

    // RMSNorm: only the zero row is degenerate.
    let stats = rms_norm_forward(&mut y, &x, &shape, &[d], Some(&weight), 0.0).unwrap();
    assert!(
        y[5..10].iter().all(|v| v.is_nan()),
        "zero row: {:?}",
        &y[5..10]
    );
    assert!(y[..5].iter().chain(&y[10..]).all(|v| v.is_finite()));
    let mut dx = vec![0.0f32; rows * d];
    rms_norm_backward(
        Grads::dx(&mut dx),
        &dy,
        &x,
        &shape,
        &[d],
        Some(&weight),
        &stats,
    )
    .unwrap();
    assert!(dx[5..10].iter().all(|v| !v.is_finite()));
}

#[test]
fn constant_channels_and_groups_with_zero_eps_give_nan() {
    // [N = 2, C = 4, S = 3]; channel 1 is constant across the batch, and
    // channels 2, 3 of sample 0 (group 1 of 2) are constant.
    let d = Dims::new(2, 4, 3, ChannelAxis::First);
    let shape = [2, 4, 3];
    let mut x: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32).collect();
    for n in 0..2 {
        for s in 0..3 {
            x[d.at(n, 1, s)] = 5.0;
        }
    }
    for c in 2..4 {
        for s in 0..3 {
            x[d.at(0, c, s)] = -2.0;
        }
    }
    let x64 = wide(&x);
    let finite_matches = |what: &str, y: &[f32], expected: &[f64], nan: &dyn Fn(usize) -> bool| {
        for (i, (&g, &e)) in y.iter().zip(expected).enumerate() {
            if nan(i) {
                assert!(g.is_nan(), "{what}[{i}] = {g}, expected NaN");
            } else {
                assert!(
                    (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "{what}[{i}]: {g} vs {e}"
                );
            }
        }
    };
    let channel_of = |i: usize| (i / 3) % 4;

    let cfg = BatchNormConfig {
        eps: 0.0,
        ..BatchNormConfig::default()
    };
    let mut y = vec![0.0f32; 24];
    let (mut rm, mut rv) = ([0.0f32; 4], [1.0f32; 4]);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
    };
    let stats =
        batch_norm_forward_train(&mut y, &x, &shape, Affine::NONE, Some(running), &cfg).unwrap();
    let expected = reference::batch_norm_train(&x64, d, None, None, 0.0);
    finite_matches("batch_norm y", &y, &expected.y, &|i| channel_of(i) == 1);
    assert_eq!(stats.rstd[1], f32::INFINITY);
    // The running statistics stay finite: a zero variance is a fine value.
    assert!(rm.iter().chain(&rv).all(|v| v.is_finite()), "{rm:?} {rv:?}");
    assert!((rv[1] - 0.9).abs() < 1e-6, "{rv:?}");

    let cfg = GroupNormConfig {
        eps: 0.0,
        ..GroupNormConfig::new(2)
    };
    let stats = group_norm_forward(&mut y, &x, &shape, Affine::NONE, &cfg).unwrap();
    let expected = reference::group_norm(&x64, d, 2, None, None, 0.0);
    finite_matches("group_norm y", &y, &expected.y, &|i| {
        i < 12 && channel_of(i) >= 2
    });
    let infinite: Vec<bool> = stats.rstd.iter().map(|r| r.is_infinite()).collect();
    assert_eq!(infinite, [false, true, false, false]);
    let mut dx = vec![0.0f32; 24];
    group_norm_backward(
        Grads::dx(&mut dx),
        &[1.0; 24],
        &x,
        &shape,
        None,
        &stats,
        &cfg,
    )
    .unwrap();
    assert!(
        (0..24).all(|i| dx[i].is_finite() != (i < 12 && channel_of(i) >= 2)),
        "{dx:?}"
    );

    let cfg = InstanceNormConfig {
        eps: 0.0,
        ..InstanceNormConfig::default()
    };
    let stats = instance_norm_forward_train(&mut y, &x, &shape, Affine::NONE, None, &cfg).unwrap();
    let expected = reference::instance_norm(&x64, d, None, None, 0.0);
    finite_matches("instance_norm y", &y, &expected.y, &|i| {
        channel_of(i) == 1 || (i < 12 && channel_of(i) >= 2)
    });
    assert_eq!(stats.rstd.iter().filter(|r| r.is_infinite()).count(), 4);
}

/// A zero `v` has norm 0: w = 0 · (g / 0) = NaN, as PyTorch computes it.
#[test]
fn zero_weight_norm_gives_nan() {
    let v = [0.0f32, 0.0, 3.0, 4.0];
    let mut w = [0.0f32; 4];
    let norms = weight_norm_forward(&mut w, &v, &[2, 2], &[1.0, 2.0], Some(0)).unwrap();
    assert_eq!(norms, [0.0, 5.0]);
    assert!(w[0].is_nan() && w[1].is_nan());
    assert!(
        (w[2] - 1.2).abs() < 1e-6 && (w[3] - 1.6).abs() < 1e-6,
        "{w:?}"
    );
    let (mut dv, mut dg) = ([0.0f32; 4], [0.0f32; 2]);
    weight_norm_backward(
        &mut dv,
        &mut dg,
        &[1.0; 4],
        &v,
        &[2, 2],
        &[1.0, 2.0],
        Some(0),
        &norms,
    )
    .unwrap();
    assert!(!dv[0].is_finite() && !dv[1].is_finite());
    assert!(dv[2..].iter().chain(&dg[1..]).all(|v| v.is_finite()));
}
