//! Every fast kernel against its `f64` twin in `normkit::reference`, over
//! seeded random shapes, layouts, parameters and element types.
//!
//! Each op runs a fixed list of edge shapes (one element, one row, D = 1,
//! N = 1, spatial extent 1, group sizes 1 and C, channels last) and then
//! random ones, with dimensions drawn to leave tails in four-lane loops.
//! bf16 and f16 inputs are compared with the reference run on the same
//! rounded inputs, so only the kernel's own error is measured.

use crate::common::{
    abs, assert_close, cast, max_abs, param_max, rounding, wide, wide_opt, Rng, Rounding, Scale,
};
use normkit::reference::{self, Dims, Gradients, Normalized};
use normkit::{
    batch_norm_backward_eval, batch_norm_backward_train, batch_norm_forward_eval,
    batch_norm_forward_train, bf16, dyt_backward, dyt_forward, f16, group_norm_backward,
    group_norm_forward, instance_norm_backward_eval, instance_norm_backward_train,
    instance_norm_forward_eval, instance_norm_forward_train, layer_norm_backward,
    layer_norm_forward, rms_norm_backward, rms_norm_forward, weight_norm_backward,
    weight_norm_forward, Affine, BatchNormConfig, ChannelAxis, Elem, Grads, GroupNormConfig,
    InstanceNormConfig, Momentum, RunningStats, Stats,
};

/// Error bound for the f32 arithmetic of a kernel, relative to the
/// magnitude of the operands of the output (the `Scale` of each
/// comparison: e.g. `max|x̂| · max|weight| + max|bias|` for y).
///
/// The kernels accumulate statistics in f64 and form each output with a
/// handful of f32 operations on them (subtract the mean, scale, add the
/// bias; for dx a difference of three terms), each rounding to at most
/// 2⁻²⁴ ≈ 6e-8 of the operands: observed errors stay below 2e-7. 2e-6
/// leaves a margin of ten, while a wrong formula, index or channel errs by
/// order one.
const TOL: f64 = 2e-6;

/// Bound for saved and running statistics, relative to each one's scale
/// (the value itself; for means `|mean| + σ`). The kernels sum deviations
/// from a provisional mean and their squares in f32 lanes, 32 terms each,
/// and in f64 beyond: up to 32 roundings of 2⁻²⁴ in the worst case, half
/// that through rstd's square root, a few in practice (observed: 4).
/// 1e-6 is 16 roundings.
const STAT_TOL: f64 = 1e-6;

/// Written into every output first: an output left unwritten fails.
const UNSET: f32 = f32::NAN;

const AXES: [ChannelAxis; 2] = [ChannelAxis::First, ChannelAxis::Last];

/// A dimension: often 1, usually small, now and then long enough to leave
/// tails after blocks of four.
pub fn dim(rng: &mut Rng) -> usize {
    match rng.between(0, 9) {
        0..=1 => 1,
        2..=7 => rng.between(2, 7),
        8 => rng.between(8, 33),
        _ => rng.between(34, 131),
    }
}

/// A random shape of the given rank with at most 20 000 elements.
pub fn shape(rng: &mut Rng, rank: usize) -> Vec<usize> {
    loop {
        let s: Vec<usize> = (0..rank).map(|_| dim(rng)).collect();
        if s.iter().product::<usize>() <= 20_000 {
            return s;
        }
    }
}

fn eps(rng: &mut Rng) -> f32 {
    rng.pick(&[1e-5, 1e-5, 1e-3, 0.1])
}

/// Inputs of one case, with their exact f64 images for the reference.
struct Inputs<T> {
    x: Vec<T>,
    dy: Vec<T>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    x64: Vec<f64>,
    dy64: Vec<f64>,
    w64: Option<Vec<f64>>,
    b64: Option<Vec<f64>>,
}

impl<T: Elem> Inputs<T> {
    /// `len` values around a random mean with a random spread, and
    /// optional per-channel parameters.
    fn new(rng: &mut Rng, len: usize, channels: usize) -> Self {
        let mean = rng.uniform(-3.0, 3.0);
        let std = 10f64.powf(rng.uniform(-1.0, 0.5));
        let x: Vec<T> = cast(&rng.normals(len, mean, std));
        let dy: Vec<T> = cast(&rng.normals(len, 0.0, 1.0));
        let weight = rng.maybe_param(channels);
        let bias = rng.maybe_param(channels);
        Inputs {
            x64: wide(&x),
            dy64: wide(&dy),
            w64: wide_opt(&weight),
            b64: wide_opt(&bias),
            x,
            dy,
            weight,
            bias,
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
        }
    }

    fn w(&self) -> Option<&[f64]> {
        self.w64.as_deref()
    }

    fn b(&self) -> Option<&[f64]> {
        self.b64.as_deref()
    }

    /// Largest |weight · dy|, the size of the `g` terms of a backward.
    fn max_g(&self) -> f64 {
        max_abs(&self.dy64) * param_max(&self.w64, 1.0)
    }
}

/// Gradient outputs, pre-filled with [`UNSET`]; dweight and dbias are asked
/// for at random.
struct GradsOut<T> {
    dx: Vec<T>,
    dweight: Option<Vec<f32>>,
    dbias: Option<Vec<f32>>,
}

impl<T: Elem> GradsOut<T> {
    fn new(rng: &mut Rng, len: usize, channels: usize, has_bias: bool) -> Self {
        GradsOut {
            dx: vec![T::from_f32(UNSET); len],
            dweight: rng.chance(0.7).then(|| vec![UNSET; channels]),
            dbias: (has_bias && rng.chance(0.7)).then(|| vec![UNSET; channels]),
        }
    }

    fn grads(&mut self) -> Grads<'_, T> {
        Grads {
            dx: &mut self.dx,
            dweight: self.dweight.as_deref_mut(),
            dbias: self.dbias.as_deref_mut(),
        }
    }
}

fn y_out<T: Elem>(len: usize) -> Vec<T> {
    vec![T::from_f32(UNSET); len]
}

/// y against the reference; `xhat` is the reference output without affine.
fn check_y<T: Elem>(ctx: &str, y: &[T], expected: &[f64], xhat: &[f64], inp: &Inputs<T>) {
    let scale = max_abs(xhat) * param_max(&inp.w64, 1.0) + param_max(&inp.b64, 0.0);
    assert_close(
        &format!("{ctx}: y"),
        &wide(y),
        expected,
        Scale::All(scale),
        TOL,
        rounding::<T>(),
    );
}

/// Saved statistics: lengths, then values.
fn check_stats(ctx: &str, stats: &Stats, expected: &Normalized, centered: bool) {
    let groups = expected.rstd.len();
    assert_eq!(stats.rstd.len(), groups, "{ctx}: rstd length");
    if centered {
        assert_eq!(stats.mean.len(), groups, "{ctx}: mean length");
        // A mean is m0 + Σ(x - m0) / n with the deviations summed in f32
        // blocks: its error is a few f32 roundings of |mean| + σ.
        let scale: Vec<f64> = expected
            .mean
            .iter()
            .zip(&expected.var)
            .map(|(m, v)| m.abs() + v.sqrt())
            .collect();
        let got: Vec<f64> = wide(&stats.mean);
        assert_close(
            &format!("{ctx}: mean"),
            &got,
            &expected.mean,
            Scale::Each(&scale),
            STAT_TOL,
            Rounding::NONE,
        );
    } else {
        assert!(stats.mean.is_empty(), "{ctx}: uncentered stats have a mean");
    }
    let scale = abs(&expected.rstd);
    assert_close(
        &format!("{ctx}: rstd"),
        &wide(&stats.rstd),
        &expected.rstd,
        Scale::Each(&scale),
        STAT_TOL,
        Rounding::NONE,
    );
}

/// dx, dweight and dbias against the reference.
///
/// - dx: `dx_scale` bounds the operands of its last step;
/// - dweight = Σ dy · x̂ per channel: each term is off by a few f32
///   roundings of itself, so the scale is `Σ|dy| · max|x̂|`;
/// - dbias = Σ dy: the scale is `Σ|dy|` (`sum_abs_dy`, per channel).
fn check_grads<T: Elem>(
    ctx: &str,
    out: &GradsOut<T>,
    expected: &Gradients,
    dx_scale: f64,
    sum_abs_dy: &[f64],
    max_xhat: f64,
) {
    assert_close(
        &format!("{ctx}: dx"),
        &wide(&out.dx),
        &expected.dx,
        Scale::All(dx_scale),
        TOL,
        rounding::<T>(),
    );
    if let Some(dw) = &out.dweight {
        let scale: Vec<f64> = sum_abs_dy.iter().map(|s| s * max_xhat).collect();
        assert_close(
            &format!("{ctx}: dweight"),
            &wide(dw),
            &expected.dweight,
            Scale::Each(&scale),
            TOL,
            Rounding::NONE,
        );
    }
    if let Some(db) = &out.dbias {
        assert_close(
            &format!("{ctx}: dbias"),
            &wide(db),
            &expected.dbias,
            Scale::Each(sum_abs_dy),
            TOL,
            Rounding::NONE,
        );
    }
}

/// dx of a training backward is `rstd · (g - mean(g) - x̂ · mean(g · x̂))`:
/// its operands are bounded by `max rstd · max|g| · (2 + max|x̂|)`.
fn train_dx_scale<T: Elem>(rstd: &[f64], inp: &Inputs<T>, max_xhat: f64) -> f64 {
    max_abs(rstd) * inp.max_g() * (2.0 + max_xhat)
}

/// The running statistics the kernel updated, against the reference's.
/// `spread` is a per-channel standard deviation of the batch: the batch
/// mean carries a few f32 roundings of it (see `check_stats`).
fn check_running(ctx: &str, got: (&[f32], &[f32]), expected: (Vec<f64>, Vec<f64>), spread: &[f64]) {
    let scale_m: Vec<f64> = expected
        .0
        .iter()
        .zip(spread)
        .map(|(m, s)| m.abs() + s)
        .collect();
    let scale_v: Vec<f64> = expected.1.iter().map(|v| v.abs()).collect();
    assert_close(
        &format!("{ctx}: running_mean"),
        &wide(got.0),
        &expected.0,
        Scale::Each(&scale_m),
        STAT_TOL,
        Rounding::NONE,
    );
    assert_close(
        &format!("{ctx}: running_var"),
        &wide(got.1),
        &expected.1,
        Scale::Each(&scale_v),
        STAT_TOL,
        Rounding::NONE,
    );
}

fn random_momentum(rng: &mut Rng) -> Momentum {
    if rng.chance(0.5) {
        Momentum::Exponential(rng.uniform(0.0, 1.0) as f32)
    } else {
        Momentum::CumulativeAverage {
            num_batches_tracked: rng.between(0, 9) as u64,
        }
    }
}

/// PyTorch's factor: `momentum`, or `1 / (num_batches_tracked + 1)` with
/// the count taken before the step.
fn momentum_factor(m: Momentum) -> f64 {
    match m {
        Momentum::Exponential(m) => m as f64,
        Momentum::CumulativeAverage {
            num_batches_tracked,
        } => 1.0 / (num_batches_tracked as f64 + 1.0),
    }
}

/// Running statistics to start from: means anywhere, variances positive.
fn running_init(rng: &mut Rng, c: usize) -> (Vec<f32>, Vec<f32>) {
    (rng.uniforms(c, -2.0, 2.0), rng.uniforms(c, 0.1, 3.0))
}

// ---------------------------------------------------------------- LayerNorm

/// `(shape, normalized_shape)` pairs: edge cases, then random ones.
fn layer_norm_shapes(rng: &mut Rng, cases: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut out = vec![
        (vec![1], vec![1]),
        (vec![1, 1], vec![1]),
        (vec![5, 1], vec![1]),
        (vec![1, 1027], vec![1027]),
        (vec![3, 130], vec![130]),
        (vec![2, 3, 4], vec![3, 4]),
        (vec![2, 3, 4], vec![2, 3, 4]),
        // Several chunks, on several threads; rows longer than a chunk.
        (vec![300, 1027], vec![1027]),
        (vec![70_001, 3], vec![3]),
        (vec![2, 140_001], vec![140_001]),
    ];
    while out.len() < cases {
        let rank = rng.between(1, 4);
        let s = shape(rng, rank);
        let k = rng.between(1, rank);
        let ns = s[rank - k..].to_vec();
        out.push((s, ns));
    }
    out
}

fn layer_norm_cases<T: Elem>(seed: u64, cases: usize) {
    let mut rng = Rng::new(seed);
    for (i, (shape, ns)) in layer_norm_shapes(&mut rng, cases).into_iter().enumerate() {
        let len: usize = shape.iter().product();
        let d: usize = ns.iter().product();
        let rows = len / d;
        let eps = eps(&mut rng);
        let inp = Inputs::<T>::new(&mut rng, len, d);
        let ctx = format!(
            "{} case {i}: shape {shape:?}, normalized {ns:?}, eps {eps}",
            T::NAME
        );
        let e64 = eps as f64;

        let mut y = y_out::<T>(len);
        let stats = layer_norm_forward(&mut y, &inp.x, &shape, &ns, inp.affine(), eps)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::layer_norm(&inp.x64, rows, d, inp.w(), inp.b(), e64);
        let xhat = reference::layer_norm(&inp.x64, rows, d, None, None, e64).y;
        check_y(&ctx, &y, &expected.y, &xhat, &inp);
        check_stats(&ctx, &stats, &expected, true);

        let mut out = GradsOut::<T>::new(&mut rng, len, d, true);
        layer_norm_backward(
            out.grads(),
            &inp.dy,
            &inp.x,
            &shape,
            &ns,
            inp.weight.as_deref(),
            &stats,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let grads = reference::layer_norm_backward(&inp.dy64, &inp.x64, rows, d, inp.w(), e64);
        let sum_abs_dy =
            reference::layer_norm_backward(&abs(&inp.dy64), &inp.x64, rows, d, None, e64).dbias;
        let max_xhat = max_abs(&xhat);
        let dx_scale = train_dx_scale(&expected.rstd, &inp, max_xhat);
        check_grads(&ctx, &out, &grads, dx_scale, &sum_abs_dy, max_xhat);
    }
}

fn rms_norm_cases<T: Elem>(seed: u64, cases: usize) {
    let mut rng = Rng::new(seed);
    for (i, (shape, ns)) in layer_norm_shapes(&mut rng, cases).into_iter().enumerate() {
        let len: usize = shape.iter().product();
        let d: usize = ns.iter().product();
        let rows = len / d;
        let eps = eps(&mut rng);
        let mut inp = Inputs::<T>::new(&mut rng, len, d);
        inp.bias = None;
        inp.b64 = None;
        let ctx = format!(
            "{} case {i}: shape {shape:?}, normalized {ns:?}, eps {eps}",
            T::NAME
        );
        let e64 = eps as f64;

        let mut y = y_out::<T>(len);
        let stats = rms_norm_forward(&mut y, &inp.x, &shape, &ns, inp.weight.as_deref(), eps)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::rms_norm(&inp.x64, rows, d, inp.w(), e64);
        let xhat = reference::rms_norm(&inp.x64, rows, d, None, e64).y;
        check_y(&ctx, &y, &expected.y, &xhat, &inp);
        check_stats(&ctx, &stats, &expected, false);

        let mut out = GradsOut::<T>::new(&mut rng, len, d, false);
        rms_norm_backward(
            out.grads(),
            &inp.dy,
            &inp.x,
            &shape,
            &ns,
            inp.weight.as_deref(),
            &stats,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let grads = reference::rms_norm_backward(&inp.dy64, &inp.x64, rows, d, inp.w(), e64);
        // Σ|dy| per position of the row, from LayerNorm's dbias.
        let sum_abs_dy =
            reference::layer_norm_backward(&abs(&inp.dy64), &inp.x64, rows, d, None, e64).dbias;
        let max_xhat = max_abs(&xhat);
        let dx_scale = train_dx_scale(&expected.rstd, &inp, max_xhat);
        check_grads(&ctx, &out, &grads, dx_scale, &sum_abs_dy, max_xhat);
    }
}

// ---------------------------------------------------------------- BatchNorm

/// `(shape, axis)` pairs with more than one value per channel.
fn batch_norm_shapes(rng: &mut Rng, cases: usize) -> Vec<(Vec<usize>, ChannelAxis)> {
    use ChannelAxis::{First, Last};
    let mut out = vec![
        (vec![2, 1], First),
        (vec![2, 1], Last),
        (vec![2, 5], First),
        (vec![1, 3, 2], First),
        (vec![1, 2, 3], Last),
        (vec![2, 1, 1], First),
        (vec![4, 5, 1, 1], First),
        (vec![1, 1, 2, 1], Last),
        (vec![3, 130], Last),
        (vec![3, 5, 7, 11], First),
        (vec![3, 7, 11, 5], Last),
        // Several chunks, on several threads.
        (vec![64, 3, 33, 37], First),
        (vec![5000, 7, 7], Last),
        (vec![3001, 50], First),
    ];
    while out.len() < cases {
        let axis = rng.pick(&AXES);
        let rank = rng.between(2, 4);
        let s = shape(rng, rank);
        let d = Dims::of(&s, axis);
        if d.n * d.s > 1 {
            out.push((s, axis));
        }
    }
    out
}

fn batch_norm_cases<T: Elem>(seed: u64, cases: usize) {
    let mut rng = Rng::new(seed);
    for (i, (shape, axis)) in batch_norm_shapes(&mut rng, cases).into_iter().enumerate() {
        let d = Dims::of(&shape, axis);
        let cfg = BatchNormConfig {
            eps: eps(&mut rng),
            momentum: random_momentum(&mut rng),
            channel_axis: axis,
        };
        let inp = Inputs::<T>::new(&mut rng, d.numel(), d.c);
        let ctx = format!("{} case {i}: shape {shape:?}, {cfg:?}", T::NAME);
        let e64 = cfg.eps as f64;

        // Training forward, with or without running statistics.
        let mut running = rng.chance(0.7).then(|| running_init(&mut rng, d.c));
        let before = running.clone();
        let mut y = y_out::<T>(d.numel());
        let stats = batch_norm_forward_train(
            &mut y,
            &inp.x,
            &shape,
            inp.affine(),
            running
                .as_mut()
                .map(|(mean, var)| RunningStats { mean, var }),
            &cfg,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::batch_norm_train(&inp.x64, d, inp.w(), inp.b(), e64);
        let xhat = reference::batch_norm_train(&inp.x64, d, None, None, e64).y;
        check_y(&ctx, &y, &expected.y, &xhat, &inp);
        check_stats(&ctx, &stats, &expected, true);
        if let (Some((rm, rv)), Some((rm0, rv0))) = (&running, &before) {
            let m = momentum_factor(cfg.momentum);
            let update =
                reference::batch_norm_running_update(&inp.x64, d, &wide(rm0), &wide(rv0), m);
            let spread: Vec<f64> = expected.var.iter().map(|v| v.sqrt()).collect();
            check_running(&ctx, (rm, rv), update, &spread);
        }

        // Training backward.
        let mut out = GradsOut::<T>::new(&mut rng, d.numel(), d.c, true);
        batch_norm_backward_train(
            out.grads(),
            &inp.dy,
            &inp.x,
            &shape,
            inp.weight.as_deref(),
            &stats,
            &cfg,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let grads = reference::batch_norm_backward_train(&inp.dy64, &inp.x64, d, inp.w(), e64);
        let sum_abs_dy =
            reference::batch_norm_backward_train(&abs(&inp.dy64), &inp.x64, d, None, e64).dbias;
        let max_xhat = max_abs(&xhat);
        let dx_scale = train_dx_scale(&expected.rstd, &inp, max_xhat);
        check_grads(&ctx, &out, &grads, dx_scale, &sum_abs_dy, max_xhat);

        // Evaluation forward and backward with given running statistics.
        let (rm, rv) = running_init(&mut rng, d.c);
        let (rm64, rv64) = (wide(&rm), wide(&rv));
        let ctx = format!("{ctx}, eval");
        let mut y = y_out::<T>(d.numel());
        let stats = batch_norm_forward_eval(&mut y, &inp.x, &shape, inp.affine(), &rm, &rv, &cfg)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::batch_norm_eval(&inp.x64, d, inp.w(), inp.b(), &rm64, &rv64, e64);
        let xhat = reference::batch_norm_eval(&inp.x64, d, None, None, &rm64, &rv64, e64);
        check_y(&ctx, &y, &expected, &xhat, &inp);
        check_eval_stats(&ctx, &stats, &rm, &rv64, e64);
        let mut out = GradsOut::<T>::new(&mut rng, d.numel(), d.c, true);
        batch_norm_backward_eval(
            out.grads(),
            &inp.dy,
            &inp.x,
            &shape,
            inp.weight.as_deref(),
            &stats,
            &cfg,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        check_eval_backward(&ctx, &out, &inp, d, &rm64, &rv64, e64, &xhat);
    }
}

/// Evaluation stats are the running mean and `1 / sqrt(running_var + eps)`.
fn check_eval_stats(ctx: &str, stats: &Stats, rm: &[f32], rv64: &[f64], eps: f64) {
    assert_eq!(stats.mean, rm, "{ctx}: eval mean is the running mean");
    let rstd: Vec<f64> = rv64.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let scale = abs(&rstd);
    assert_close(
        &format!("{ctx}: rstd"),
        &wide(&stats.rstd),
        &rstd,
        Scale::Each(&scale),
        STAT_TOL,
        Rounding::NONE,
    );
}

/// An evaluation backward (BatchNorm or InstanceNorm) against the
/// reference: dx = dy · weight · rstd is one product, so its scale is
/// `max|g| · max rstd`.
#[allow(clippy::too_many_arguments)]
fn check_eval_backward<T: Elem>(
    ctx: &str,
    out: &GradsOut<T>,
    inp: &Inputs<T>,
    d: Dims,
    rm64: &[f64],
    rv64: &[f64],
    eps: f64,
    xhat: &[f64],
) {
    let grads =
        reference::batch_norm_backward_eval(&inp.dy64, &inp.x64, d, inp.w(), rm64, rv64, eps);
    let sum_abs_dy =
        reference::batch_norm_backward_eval(&abs(&inp.dy64), &inp.x64, d, None, rm64, rv64, eps)
            .dbias;
    let max_rstd = rv64
        .iter()
        .fold(0.0f64, |m, v| m.max(1.0 / (v + eps).sqrt()));
    check_grads(
        ctx,
        out,
        &grads,
        inp.max_g() * max_rstd,
        &sum_abs_dy,
        max_abs(xhat),
    );
}

// ---------------------------------------------------------------- GroupNorm

/// `(shape, axis, num_groups)` triples.
fn group_norm_shapes(rng: &mut Rng, cases: usize) -> Vec<(Vec<usize>, ChannelAxis, usize)> {
    use ChannelAxis::{First, Last};
    let mut out = vec![
        (vec![1, 1], First, 1),
        (vec![1, 1, 1], Last, 1),
        (vec![1, 6], First, 6),
        (vec![1, 6], Last, 3),
        (vec![2, 6, 1], First, 3),
        (vec![1, 4, 3], First, 1),
        (vec![1, 4, 3], First, 4),
        (vec![2, 3, 4], Last, 1),
        (vec![2, 3, 4], Last, 4),
        (vec![2, 32, 9, 7], First, 8),
        (vec![2, 9, 7, 32], Last, 8),
        // Several chunks, on several threads; groups longer than a chunk.
        (vec![4, 41, 43, 32], Last, 8),
        (vec![2, 6, 70_001], First, 3),
        (vec![3, 70_001, 2], Last, 1),
    ];
    while out.len() < cases {
        let axis = rng.pick(&AXES);
        let rank = rng.between(2, 4);
        let s = shape(rng, rank);
        let c = Dims::of(&s, axis).c;
        let divisors: Vec<usize> = (1..=c).filter(|&g| c.is_multiple_of(g)).collect();
        out.push((s, axis, rng.pick(&divisors)));
    }
    out
}

fn group_norm_cases<T: Elem>(seed: u64, cases: usize) {
    let mut rng = Rng::new(seed);
    for (i, (shape, axis, groups)) in group_norm_shapes(&mut rng, cases).into_iter().enumerate() {
        let d = Dims::of(&shape, axis);
        let cfg = GroupNormConfig {
            num_groups: groups,
            eps: eps(&mut rng),
            channel_axis: axis,
        };
        let inp = Inputs::<T>::new(&mut rng, d.numel(), d.c);
        let ctx = format!("{} case {i}: shape {shape:?}, {cfg:?}", T::NAME);
        let e64 = cfg.eps as f64;

        let mut y = y_out::<T>(d.numel());
        let stats = group_norm_forward(&mut y, &inp.x, &shape, inp.affine(), &cfg)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::group_norm(&inp.x64, d, groups, inp.w(), inp.b(), e64);
        let xhat = reference::group_norm(&inp.x64, d, groups, None, None, e64).y;
        check_y(&ctx, &y, &expected.y, &xhat, &inp);
        assert_eq!(stats.rstd.len(), d.n * groups, "{ctx}: N × groups stats");
        check_stats(&ctx, &stats, &expected, true);

        let mut out = GradsOut::<T>::new(&mut rng, d.numel(), d.c, true);
        group_norm_backward(
            out.grads(),
            &inp.dy,
            &inp.x,
            &shape,
            inp.weight.as_deref(),
            &stats,
            &cfg,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let grads = reference::group_norm_backward(&inp.dy64, &inp.x64, d, groups, inp.w(), e64);
        let sum_abs_dy =
            reference::group_norm_backward(&abs(&inp.dy64), &inp.x64, d, groups, None, e64).dbias;
        let max_xhat = max_abs(&xhat);
        let dx_scale = train_dx_scale(&expected.rstd, &inp, max_xhat);
        check_grads(&ctx, &out, &grads, dx_scale, &sum_abs_dy, max_xhat);
    }
}

// ------------------------------------------------------------- InstanceNorm

/// `(shape, axis)` pairs with more than one spatial position.
fn instance_norm_shapes(rng: &mut Rng, cases: usize) -> Vec<(Vec<usize>, ChannelAxis)> {
    use ChannelAxis::{First, Last};
    let mut out = vec![
        (vec![1, 1, 2], First),
        (vec![1, 2, 1], Last),
        (vec![1, 3, 2, 1], First),
        (vec![2, 2, 3], Last),
        (vec![3, 5, 130], First),
        (vec![2, 7, 11, 5], Last),
        // Several chunks, on several threads.
        (vec![3, 5, 20_011], First),
        (vec![2, 9000, 13], Last),
    ];
    while out.len() < cases {
        let axis = rng.pick(&AXES);
        let rank = rng.between(3, 4);
        let s = shape(rng, rank);
        if Dims::of(&s, axis).s > 1 {
            out.push((s, axis));
        }
    }
    out
}

fn instance_norm_cases<T: Elem>(seed: u64, cases: usize) {
    let mut rng = Rng::new(seed);
    for (i, (shape, axis)) in instance_norm_shapes(&mut rng, cases)
        .into_iter()
        .enumerate()
    {
        let d = Dims::of(&shape, axis);
        let cfg = InstanceNormConfig {
            eps: eps(&mut rng),
            momentum: random_momentum(&mut rng),
            channel_axis: axis,
        };
        let inp = Inputs::<T>::new(&mut rng, d.numel(), d.c);
        let ctx = format!("{} case {i}: shape {shape:?}, {cfg:?}", T::NAME);
        let e64 = cfg.eps as f64;

        let mut running = rng.chance(0.7).then(|| running_init(&mut rng, d.c));
        let before = running.clone();
        let mut y = y_out::<T>(d.numel());
        let stats = instance_norm_forward_train(
            &mut y,
            &inp.x,
            &shape,
            inp.affine(),
            running
                .as_mut()
                .map(|(mean, var)| RunningStats { mean, var }),
            &cfg,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::instance_norm(&inp.x64, d, inp.w(), inp.b(), e64);
        let xhat = reference::instance_norm(&inp.x64, d, None, None, e64).y;
        check_y(&ctx, &y, &expected.y, &xhat, &inp);
        assert_eq!(stats.rstd.len(), d.n * d.c, "{ctx}: N × C stats");
        check_stats(&ctx, &stats, &expected, true);
        if let (Some((rm, rv)), Some((rm0, rv0))) = (&running, &before) {
            let m = momentum_factor(cfg.momentum);
            let update =
                reference::instance_norm_running_update(&inp.x64, d, &wide(rm0), &wide(rv0), m);
            // The largest instance spread of each channel.
            let mut spread = vec![0.0f64; d.c];
            for (k, v) in expected.var.iter().enumerate() {
                spread[k % d.c] = spread[k % d.c].max(v.sqrt());
            }
            check_running(&ctx, (rm, rv), update, &spread);
        }

        let mut out = GradsOut::<T>::new(&mut rng, d.numel(), d.c, true);
        instance_norm_backward_train(
            out.grads(),
            &inp.dy,
            &inp.x,
            &shape,
            inp.weight.as_deref(),
            &stats,
            &cfg,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let grads = reference::instance_norm_backward(&inp.dy64, &inp.x64, d, inp.w(), e64);
        let sum_abs_dy =
            reference::instance_norm_backward(&abs(&inp.dy64), &inp.x64, d, None, e64).dbias;
        let max_xhat = max_abs(&xhat);
        let dx_scale = train_dx_scale(&expected.rstd, &inp, max_xhat);
        check_grads(&ctx, &out, &grads, dx_scale, &sum_abs_dy, max_xhat);

        // Evaluation with running statistics is BatchNorm's evaluation.
        let (rm, rv) = running_init(&mut rng, d.c);
        let (rm64, rv64) = (wide(&rm), wide(&rv));
        let ctx = format!("{ctx}, eval");
        let mut y = y_out::<T>(d.numel());
        let stats =
            instance_norm_forward_eval(&mut y, &inp.x, &shape, inp.affine(), &rm, &rv, &cfg)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::batch_norm_eval(&inp.x64, d, inp.w(), inp.b(), &rm64, &rv64, e64);
        let xhat = reference::batch_norm_eval(&inp.x64, d, None, None, &rm64, &rv64, e64);
        check_y(&ctx, &y, &expected, &xhat, &inp);
        check_eval_stats(&ctx, &stats, &rm, &rv64, e64);
        let mut out = GradsOut::<T>::new(&mut rng, d.numel(), d.c, true);
        instance_norm_backward_eval(
            out.grads(),
            &inp.dy,
            &inp.x,
            &shape,
            inp.weight.as_deref(),
            &stats,
            &cfg,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        check_eval_backward(&ctx, &out, &inp, d, &rm64, &rv64, e64, &xhat);
    }
}

// --------------------------------------------------------------- WeightNorm

/// `(shape, dim)` pairs, `dim` anywhere in `-rank..rank` or `None`.
fn weight_norm_shapes(rng: &mut Rng, cases: usize) -> Vec<(Vec<usize>, Option<isize>)> {
    let mut out = vec![
        (vec![1], None),
        (vec![1], Some(0)),
        (vec![1], Some(-1)),
        (vec![5], Some(0)),
        (vec![3, 1], Some(1)),
        (vec![1, 1027], Some(0)),
        (vec![2, 3, 4], Some(-2)),
        (vec![2, 3, 4], Some(-3)),
        (vec![2, 3, 4], None),
        // Several chunks, on several threads.
        (vec![1027, 257], Some(0)),
        (vec![257, 1027], Some(-1)),
        (vec![300, 701], None),
    ];
    while out.len() < cases {
        let rank = rng.between(1, 4);
        let s = shape(rng, rank);
        let r = rank as isize;
        let dim = if rng.chance(0.2) {
            None
        } else {
            Some(rng.between(0, 2 * rank - 1) as isize - r)
        };
        out.push((s, dim));
    }
    out
}

fn weight_norm_cases<T: Elem>(seed: u64, cases: usize) {
    let mut rng = Rng::new(seed);
    for (i, (shape, dim)) in weight_norm_shapes(&mut rng, cases).into_iter().enumerate() {
        let len: usize = shape.iter().product();
        let rank = shape.len() as isize;
        let kept = dim.map_or(1, |k| shape[((k + rank) % rank) as usize]);
        let ctx = format!("{} case {i}: shape {shape:?}, dim {dim:?}", T::NAME);
        let mean = rng.uniform(-1.0, 1.0);
        let v: Vec<T> = cast(&rng.normals(len, mean, 1.0));
        let dw: Vec<T> = cast(&rng.normals(len, 0.0, 1.0));
        let g = rng.uniforms(kept, -2.0, 2.0);
        let (v64, dw64, g64) = (wide(&v), wide(&dw), wide(&g));

        let mut w = y_out::<T>(len);
        let norms = weight_norm_forward(&mut w, &v, &shape, &g, dim)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let (w_expected, n_expected) = reference::weight_norm(&v64, &shape, &g64, dim);
        // w = v · (g / ‖v‖): three roundings of w itself.
        let scale = Scale::All(max_abs(&w_expected));
        assert_close(
            &format!("{ctx}: w"),
            &wide(&w),
            &w_expected,
            scale,
            TOL,
            rounding::<T>(),
        );
        assert_eq!(norms.len(), kept, "{ctx}: one norm per g");
        let scale = abs(&n_expected);
        assert_close(
            &format!("{ctx}: norms"),
            &wide(&norms),
            &n_expected,
            Scale::Each(&scale),
            STAT_TOL,
            Rounding::NONE,
        );

        let mut dv = y_out::<T>(len);
        let mut dg = vec![UNSET; kept];
        weight_norm_backward(&mut dv, &mut dg, &dw, &v, &shape, &g, dim, &norms)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let (dv_expected, dg_expected) =
            reference::weight_norm_backward(&dw64, &v64, &shape, &g64, dim);
        // dv = g / ‖v‖ · (dw - v̂ · dg) with |v̂| ≤ 1; dg = Σ dw · v̂, whose
        // terms sum in magnitude to the dg of |dw| and |v|.
        let g_over_n = g64
            .iter()
            .zip(&n_expected)
            .fold(0.0f64, |m, (g, n)| m.max((g / n).abs()));
        let dv_scale = g_over_n * (max_abs(&dw64) + max_abs(&dg_expected));
        assert_close(
            &format!("{ctx}: dv"),
            &wide(&dv),
            &dv_expected,
            Scale::All(dv_scale),
            TOL,
            rounding::<T>(),
        );
        let dg_scale =
            reference::weight_norm_backward(&abs(&dw64), &abs(&v64), &shape, &g64, dim).1;
        assert_close(
            &format!("{ctx}: dg"),
            &wide(&dg),
            &dg_expected,
            Scale::Each(&dg_scale),
            TOL,
            Rounding::NONE,
        );
    }
}

// ---------------------------------------------------------------------- DyT

/// `(shape, axis)` pairs: channels last from rank 1, channels first from 2.
fn dyt_shapes(rng: &mut Rng, cases: usize) -> Vec<(Vec<usize>, ChannelAxis)> {
    use ChannelAxis::{First, Last};
    let mut out = vec![
        (vec![1], Last),
        (vec![3], Last),
        (vec![1, 1], First),
        (vec![2, 1, 1], First),
        (vec![5, 130], Last),
        (vec![2, 7, 3, 5], First),
        // Several chunks, on several threads.
        (vec![1000, 257], Last),
        (vec![8, 31, 1000], First),
    ];
    while out.len() < cases {
        let axis = rng.pick(&AXES);
        let min_rank = if axis == Last { 1 } else { 2 };
        let rank = rng.between(min_rank, 4);
        out.push((shape(rng, rank), axis));
    }
    out
}

fn dyt_cases<T: Elem>(seed: u64, cases: usize) {
    let mut rng = Rng::new(seed);
    for (i, (shape, axis)) in dyt_shapes(&mut rng, cases).into_iter().enumerate() {
        let d = if shape.len() == 1 {
            Dims::new(1, shape[0], 1, axis)
        } else {
            Dims::of(&shape, axis)
        };
        let alpha = rng.uniform(-2.0, 2.0) as f32;
        let inp = Inputs::<T>::new(&mut rng, d.numel(), d.c);
        let ctx = format!(
            "{} case {i}: shape {shape:?}, {axis:?}, alpha {alpha}",
            T::NAME
        );
        let a64 = alpha as f64;

        let mut y = y_out::<T>(d.numel());
        dyt_forward(&mut y, &inp.x, &shape, alpha, inp.affine(), axis)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::dyt(&inp.x64, d, a64, inp.w(), inp.b());
        // |tanh| ≤ 1, so |weight| + |bias| bounds the operands.
        let scale = param_max(&inp.w64, 1.0) + param_max(&inp.b64, 0.0);
        assert_close(
            &format!("{ctx}: y"),
            &wide(&y),
            &expected,
            Scale::All(scale),
            TOL,
            rounding::<T>(),
        );

        let mut out = GradsOut::<T>::new(&mut rng, d.numel(), d.c, true);
        let dalpha = dyt_backward(
            out.grads(),
            &inp.dy,
            &inp.x,
            &shape,
            alpha,
            inp.weight.as_deref(),
            axis,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let grads = reference::dyt_backward(&inp.dy64, &inp.x64, d, a64, inp.w());
        // Sums over magnitudes bound each gradient's terms. For dalpha that
        // is Σ|dy · w · x| (the sums at alpha = 0, where sech² = 1): an f32
        // kernel rounds a = alpha · x, which moves sech²(a) by up to
        // 2|a| · sech²(a) ≤ 0.9 of its ulps, so sech² ≤ 1 stands in for it.
        let w_abs = inp.w64.as_ref().map(|w| abs(w));
        let sizes =
            reference::dyt_backward(&abs(&inp.dy64), &abs(&inp.x64), d, 0.0, w_abs.as_deref());
        let dx_scale = inp.max_g() * a64.abs();
        let as_normalized = Gradients {
            dx: grads.dx,
            dweight: grads.dweight,
            dbias: grads.dbias,
        };
        // dweight = Σ dy · t with |t| ≤ 1: scale Σ|dy|, as dbias.
        check_grads(&ctx, &out, &as_normalized, dx_scale, &sizes.dbias, 1.0);
        let scale = Scale::All(sizes.dalpha);
        assert_close(
            &format!("{ctx}: dalpha"),
            &[dalpha as f64],
            &[grads.dalpha],
            scale,
            TOL,
            Rounding::NONE,
        );
    }
}

/// One test per op and element type: f32 over many cases, the 16-bit
/// types over fewer (they share every code path but the loads and stores).
macro_rules! per_type {
    ($cases:ident, $f32:ident, $bf16:ident, $f16:ident, $seed:expr) => {
        #[test]
        fn $f32() {
            $cases::<f32>($seed, 400);
        }
        #[test]
        fn $bf16() {
            $cases::<bf16>($seed + 1, 80);
        }
        #[test]
        fn $f16() {
            $cases::<f16>($seed + 2, 80);
        }
    };
}

per_type!(
    layer_norm_cases,
    layer_norm_f32,
    layer_norm_bf16,
    layer_norm_f16,
    100
);
per_type!(
    rms_norm_cases,
    rms_norm_f32,
    rms_norm_bf16,
    rms_norm_f16,
    200
);
per_type!(
    batch_norm_cases,
    batch_norm_f32,
    batch_norm_bf16,
    batch_norm_f16,
    300
);
per_type!(
    group_norm_cases,
    group_norm_f32,
    group_norm_bf16,
    group_norm_f16,
    400
);
per_type!(
    instance_norm_cases,
    instance_norm_f32,
    instance_norm_bf16,
    instance_norm_f16,
    500
);
per_type!(
    weight_norm_cases,
    weight_norm_f32,
    weight_norm_bf16,
    weight_norm_f16,
    600
);
per_type!(dyt_cases, dyt_f32, dyt_bf16, dyt_f16, 700);
