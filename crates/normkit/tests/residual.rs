//! The fused residual norms: `sum` is exactly the rounded sum, `y` and
//! the gradients match the `f64` twins over random shapes and element
//! types, and are bit for bit what the engine's own norm makes of `sum`
//! (plus `dsum`); the same bits whatever the thread count and instruction
//! set; bad input refused with nothing written; the op interface.

use crate::common::{abs, assert_close, cast, max_abs, param_max, rounding, wide, Rng};
use crate::common::{Rounding, Scale};
use crate::parallel::same_bits_everywhere;
use crate::property::shape;
use normkit::op::{
    AddNorm, AddNormOp, ElemSlice, ElemSliceMut, ErasedResidualOp, OpGrads, ResidualNormOp,
};
use normkit::reference;
use normkit::{
    add_layer_norm_backward, add_layer_norm_forward, add_rms_norm_backward, add_rms_norm_forward,
    bf16, f16, layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward,
    Affine, Elem, Grads, NormError, Stats,
};

/// The f32 arithmetic of the kernels relative to the operands' size, as in
/// the property tests of the plain norms.
const TOL: f64 = 2e-6;
/// Saved statistics, relative to each one's scale (see the property tests).
const STAT_TOL: f64 = 1e-6;
/// Written into every output first: an output left unwritten fails.
const UNSET: f32 = f32::NAN;

/// `(shape, normalized_shape)`: edge cases (one element, one row, d = 1,
/// tails, rows longer than a chunk, many short rows), then random ones.
fn shapes(rng: &mut Rng, cases: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut out = vec![
        (vec![1], vec![1]),
        (vec![5, 1], vec![1]),
        (vec![1, 1027], vec![1027]),
        (vec![3, 130], vec![130]),
        (vec![2, 3, 4], vec![3, 4]),
        (vec![7, 15], vec![15]),
        (vec![300, 1027], vec![1027]),
        (vec![70_001, 3], vec![3]),
        (vec![2, 140_001], vec![140_001]),
    ];
    while out.len() < cases {
        let rank = rng.between(1, 4);
        let s = shape(rng, rank);
        let k = rng.between(1, rank);
        out.push((s.clone(), s[rank - k..].to_vec()));
    }
    out
}

/// One case's inputs: `x` and `residual` around random means (the sum may
/// sit far from zero), upstream gradients, optional parameters.
struct Case<T> {
    x: Vec<T>,
    residual: Vec<T>,
    dy: Vec<T>,
    dsum: Option<Vec<T>>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

impl<T: Elem> Case<T> {
    fn new(rng: &mut Rng, len: usize, d: usize, centered: bool) -> Self {
        let std = 10f64.powf(rng.uniform(-1.0, 0.5));
        let (mx, mr) = (rng.uniform(-3.0, 3.0), rng.uniform(-3.0, 3.0));
        let x = cast(&rng.normals(len, mx, std));
        let residual = cast(&rng.normals(len, mr, std * 2.0));
        let dy = cast(&rng.normals(len, 0.0, 1.0));
        let dsum = rng.chance(0.7).then(|| cast(&rng.normals(len, 0.0, 1.0)));
        let weight = rng.maybe_param(d);
        let bias = if centered { rng.maybe_param(d) } else { None };
        Case {
            x,
            residual,
            dy,
            dsum,
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
}

/// Forward and backward of the fused op into fresh outputs.
struct Run<T> {
    y: Vec<T>,
    sum: Vec<T>,
    stats: Stats,
    dx: Vec<T>,
    dweight: Vec<f32>,
    dbias: Option<Vec<f32>>,
}

fn run<T: Elem>(c: &Case<T>, shape: &[usize], ns: &[usize], eps: f32, centered: bool) -> Run<T> {
    let (len, d) = (c.x.len(), ns.iter().product::<usize>());
    let (mut y, mut sum) = (vec![T::from_f32(UNSET); len], vec![T::from_f32(UNSET); len]);
    let stats = if centered {
        add_layer_norm_forward(
            &mut y,
            &mut sum,
            &c.x,
            &c.residual,
            shape,
            ns,
            c.affine(),
            eps,
        )
    } else {
        let w = c.weight.as_deref();
        add_rms_norm_forward(&mut y, &mut sum, &c.x, &c.residual, shape, ns, w, eps)
    }
    .unwrap();
    let mut dx = vec![T::from_f32(UNSET); len];
    let mut dweight = vec![UNSET; d];
    let mut dbias = centered.then(|| vec![UNSET; d]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dweight),
        dbias: dbias.as_deref_mut(),
    };
    let (w, dsum) = (c.weight.as_deref(), c.dsum.as_deref());
    if centered {
        add_layer_norm_backward(grads, &c.dy, dsum, &sum, shape, ns, w, &stats)
    } else {
        add_rms_norm_backward(grads, &c.dy, dsum, &sum, shape, ns, w, &stats)
    }
    .unwrap();
    Run {
        y,
        sum,
        stats,
        dx,
        dweight,
        dbias,
    }
}

fn against_reference<T: Elem>(seed: u64, count: usize, centered: bool) {
    let mut rng = Rng::new(seed);
    for (i, (shape, ns)) in shapes(&mut rng, count).into_iter().enumerate() {
        let len: usize = shape.iter().product();
        let d: usize = ns.iter().product();
        let rows = len / d;
        let eps = rng.pick(&[1e-5f32, 1e-6, 1e-3, 0.1]);
        let c = Case::<T>::new(&mut rng, len, d, centered);
        let ctx = format!(
            "{} {} case {i}: shape {shape:?}, normalized {ns:?}, eps {eps}",
            if centered {
                "add_layer_norm"
            } else {
                "add_rms_norm"
            },
            T::NAME
        );
        let out = run(&c, &shape, &ns, eps, centered);
        // sum: exactly the f32 sum of the inputs, rounded to T once.
        for (j, ((s, x), r)) in out.sum.iter().zip(&c.x).zip(&c.residual).enumerate() {
            let want = T::from_f32(x.to_f32() + r.to_f32());
            assert_eq!(
                s.to_f32().to_bits(),
                want.to_f32().to_bits(),
                "{ctx}: sum[{j}]"
            );
        }
        // y and the statistics: the reference norm of that sum.
        let (sum64, e64) = (wide(&out.sum), eps as f64);
        let (w64, b64) = (
            c.weight.as_ref().map(|v| wide(v)),
            c.bias.as_ref().map(|v| wide(v)),
        );
        let (w, b) = (w64.as_deref(), b64.as_deref());
        let zeros = vec![0.0; len];
        let (expected, xhat) = if centered {
            let e = reference::add_layer_norm(&sum64, &zeros, rows, d, w, b, e64);
            (e, reference::layer_norm(&sum64, rows, d, None, None, e64).y)
        } else {
            let e = reference::add_rms_norm(&sum64, &zeros, rows, d, w, e64);
            (e, reference::rms_norm(&sum64, rows, d, None, e64).y)
        };
        let max_xhat = max_abs(&xhat);
        let scale = max_xhat * param_max(&w64, 1.0) + param_max(&b64, 0.0);
        let (round, y_ctx) = (rounding::<T>(), format!("{ctx}: y"));
        assert_close(
            &y_ctx,
            &wide(&out.y),
            &expected.norm.y,
            Scale::All(scale),
            TOL,
            round,
        );
        let n = &expected.norm;
        let rstd_scale = abs(&n.rstd);
        let got_rstd = wide(&out.stats.rstd);
        let s = Scale::Each(&rstd_scale);
        assert_close(
            &format!("{ctx}: rstd"),
            &got_rstd,
            &n.rstd,
            s,
            STAT_TOL,
            Rounding::NONE,
        );
        if centered {
            let mean_scale: Vec<f64> = n
                .mean
                .iter()
                .zip(&n.var)
                .map(|(m, v)| m.abs() + v.sqrt())
                .collect();
            let (got, s) = (wide(&out.stats.mean), Scale::Each(&mean_scale));
            assert_close(
                &format!("{ctx}: mean"),
                &got,
                &n.mean,
                s,
                STAT_TOL,
                Rounding::NONE,
            );
        } else {
            assert!(out.stats.mean.is_empty(), "{ctx}: RMSNorm saved a mean");
        }

        // Gradients at that sum.
        let (dy64, dsum64) = (wide(&c.dy), c.dsum.as_ref().map(|v| wide(v)));
        let grads = if centered {
            reference::add_layer_norm_backward(&dy64, dsum64.as_deref(), &sum64, rows, d, w, e64)
        } else {
            reference::add_rms_norm_backward(&dy64, dsum64.as_deref(), &sum64, rows, d, w, e64)
        };
        // dx = dsum + rstd · (g - mean(g) - x̂ · mean(g · x̂)), g = dy · w.
        let g = max_abs(&dy64) * param_max(&w64, 1.0);
        let dx_scale =
            max_abs(&n.rstd) * g * (2.0 + max_xhat) + dsum64.as_deref().map_or(0.0, max_abs);
        let s = Scale::All(dx_scale);
        assert_close(
            &format!("{ctx}: dx"),
            &wide(&out.dx),
            &grads.dx,
            s,
            TOL,
            round,
        );
        // Σ|dy| per position, from LayerNorm's dbias of |dy|.
        let sum_abs_dy =
            reference::layer_norm_backward(&abs(&dy64), &sum64, rows, d, None, e64).dbias;
        let dw_scale: Vec<f64> = sum_abs_dy.iter().map(|v| v * max_xhat).collect();
        let (got, s) = (wide(&out.dweight), Scale::Each(&dw_scale));
        assert_close(
            &format!("{ctx}: dweight"),
            &got,
            &grads.dweight,
            s,
            TOL,
            Rounding::NONE,
        );
        if let Some(db) = &out.dbias {
            let s = Scale::Each(&sum_abs_dy);
            let got = wide(db);
            assert_close(
                &format!("{ctx}: dbias"),
                &got,
                &grads.dbias,
                s,
                TOL,
                Rounding::NONE,
            );
        }
    }
}

#[test]
fn add_layer_norm_f32() {
    against_reference::<f32>(900, 300, true);
}

#[test]
fn add_layer_norm_bf16() {
    against_reference::<bf16>(901, 60, true);
}

#[test]
fn add_layer_norm_f16() {
    against_reference::<f16>(902, 60, true);
}

#[test]
fn add_rms_norm_f32() {
    against_reference::<f32>(910, 300, false);
}

#[test]
fn add_rms_norm_bf16() {
    against_reference::<bf16>(911, 60, false);
}

#[test]
fn add_rms_norm_f16() {
    against_reference::<f16>(912, 60, false);
}

fn bits<T: Elem>(v: &[T]) -> Vec<u32> {
    v.iter().map(|e| e.to_f32().to_bits()).collect()
}

/// The engine's own norm of the fused op's `sum`: forward outputs and
/// statistics, and the backward without `dsum`.
fn unfused<T: Elem>(
    c: &Case<T>,
    sum: &[T],
    shape: &[usize],
    ns: &[usize],
    centered: bool,
) -> Run<T> {
    let (len, d) = (sum.len(), ns.iter().product::<usize>());
    let mut y = vec![T::default(); len];
    let stats = if centered {
        layer_norm_forward(&mut y, sum, shape, ns, c.affine(), 1e-5).unwrap()
    } else {
        rms_norm_forward(&mut y, sum, shape, ns, c.weight.as_deref(), 1e-5).unwrap()
    };
    let (mut dx, mut dweight) = (vec![T::default(); len], vec![0.0; d]);
    let mut dbias = centered.then(|| vec![0.0; d]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dweight),
        dbias: dbias.as_deref_mut(),
    };
    let w = c.weight.as_deref();
    if centered {
        layer_norm_backward(grads, &c.dy, sum, shape, ns, w, &stats).unwrap();
    } else {
        rms_norm_backward(grads, &c.dy, sum, shape, ns, w, &stats).unwrap();
    }
    Run {
        y,
        sum: sum.to_vec(),
        stats,
        dx,
        dweight,
        dbias,
    }
}

/// `streamed_rows` rows of 1024 make outputs large enough to stream (the
/// sweeps then recompute the sum rather than read it back).
fn same_bits_as_the_engine<T: Elem>(seed: u64, streamed_rows: usize) {
    let mut rng = Rng::new(seed);
    // In-cache batches, skewed long rows, rows past a chunk, many short
    // rows, streamed outputs.
    let cases = [
        (vec![4, 33], vec![33]),
        (vec![300, 1027], vec![1027]),
        (vec![1100, 1024], vec![1024]),
        (vec![2, 140_001], vec![140_001]),
        (vec![70_001, 3], vec![3]),
        (vec![3, 5, 17], vec![5, 17]),
        (vec![streamed_rows, 1024], vec![1024]),
    ];
    for (shape, ns) in cases {
        let d: usize = ns.iter().product();
        let len: usize = shape.iter().product();
        for centered in [true, false] {
            let mut c = Case::<T>::new(&mut rng, len, d, centered);
            let ctx = format!("{} {shape:?} centered {centered}", T::NAME);
            let dsum = c.dsum.take();
            let fused = run(&c, &shape, &ns, 1e-5, centered);
            let plain = unfused(&c, &fused.sum, &shape, &ns, centered);
            assert!(bits(&fused.y) == bits(&plain.y), "{ctx}: y");
            assert_eq!(fused.stats, plain.stats, "{ctx}: stats");
            assert!(bits(&fused.dx) == bits(&plain.dx), "{ctx}: dx");
            assert!(
                bits(&fused.dweight) == bits(&plain.dweight),
                "{ctx}: dweight"
            );
            assert_eq!(
                fused.dbias.as_deref().map(bits),
                plain.dbias.as_deref().map(bits),
                "{ctx}: dbias"
            );
            // With dsum: the same dx plus dsum, in f32, rounded once.
            c.dsum = Some(dsum.unwrap_or_else(|| cast(&rng.normals(len, 0.0, 1.0))));
            let with = run(&c, &shape, &ns, 1e-5, centered);
            let want: Vec<T> = plain
                .dx
                .iter()
                .zip(c.dsum.as_ref().unwrap())
                .map(|(a, b)| T::from_f32(a.to_f32() + b.to_f32()))
                .collect();
            if T::NAME == "f32" {
                assert!(bits(&with.dx) == bits(&want), "{ctx}: dx + dsum");
            }
            assert!(
                bits(&with.dweight) == bits(&plain.dweight),
                "{ctx}: dweight with dsum"
            );
        }
    }
}

#[test]
fn same_bits_as_the_engine_on_sum_f32() {
    same_bits_as_the_engine::<f32>(920, 2100);
}

#[test]
fn same_bits_as_the_engine_on_sum_bf16() {
    same_bits_as_the_engine::<bf16>(921, 10_300);
}

/// Every output on inputs split into many chunks, f32 and bf16.
fn run_all() -> Vec<Vec<u32>> {
    let mut rng = Rng::new(41);
    let mut out = Vec::new();
    for (shape, ns) in [(vec![301, 1037], vec![1037]), (vec![9000, 5], vec![5])] {
        let len: usize = shape.iter().product();
        let d: usize = ns.iter().product();
        for centered in [true, false] {
            let c = Case::<f32>::new(&mut rng, len, d, centered);
            let r = run(&c, &shape, &ns, 1e-5, centered);
            out.extend([bits(&r.y), bits(&r.sum), bits(&r.dx), bits(&r.dweight)]);
            out.extend([bits(&r.stats.mean), bits(&r.stats.rstd)]);
            let h = Case::<bf16> {
                x: cast(&c.x),
                residual: cast(&c.residual),
                dy: cast(&c.dy),
                dsum: c.dsum.as_deref().map(cast),
                weight: c.weight.clone(),
                bias: c.bias.clone(),
            };
            let r = run(&h, &shape, &ns, 1e-5, centered);
            out.extend([bits(&r.y), bits(&r.sum), bits(&r.dx), bits(&r.dweight)]);
        }
    }
    out
}

#[test]
fn same_bits_whatever_the_threads_and_instruction_set() {
    same_bits_everywhere(run_all);
}

// ------------------------------------------------------------- bad input

/// A NaN with a payload no kernel produces: an output still holding it
/// was not written.
const SENTINEL: f32 = f32::from_bits(0x7fc0_1234);

/// Every argument of both ops, valid until a case breaks one; outputs
/// hold [`SENTINEL`].
#[derive(Clone)]
struct Args {
    shape: Vec<usize>,
    ns: Vec<usize>,
    x: Vec<f32>,
    residual: Vec<f32>,
    dy: Vec<f32>,
    dsum: Option<Vec<f32>>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    stats: Stats,
    eps: f32,
    y: Vec<f32>,
    sum: Vec<f32>,
    dx: Vec<f32>,
    dweight: Option<Vec<f32>>,
    dbias: Option<Vec<f32>>,
}

impl Args {
    /// Two rows of four; `centered` decides whether a bias and a saved
    /// mean exist.
    fn new(centered: bool) -> Self {
        let out = |n: usize| vec![SENTINEL; n];
        Args {
            shape: vec![2, 4],
            ns: vec![4],
            x: vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 5.0],
            residual: vec![0.5; 8],
            dy: vec![1.0; 8],
            dsum: Some(vec![0.25; 8]),
            weight: Some(vec![1.5; 4]),
            bias: centered.then(|| vec![0.5; 4]),
            stats: Stats {
                mean: if centered { vec![0.0; 2] } else { Vec::new() },
                rstd: vec![1.0; 2],
            },
            eps: 1e-5,
            y: out(8),
            sum: out(8),
            dx: out(8),
            dweight: Some(out(4)),
            dbias: centered.then(|| out(4)),
        }
    }

    fn forward(&mut self, centered: bool) -> normkit::Result<Stats> {
        let (shape, ns, w) = (&self.shape, &self.ns, self.weight.as_deref());
        if centered {
            let affine = Affine {
                weight: w,
                bias: self.bias.as_deref(),
            };
            let (y, sum) = (&mut self.y, &mut self.sum);
            add_layer_norm_forward(y, sum, &self.x, &self.residual, shape, ns, affine, self.eps)
        } else {
            let (y, sum) = (&mut self.y, &mut self.sum);
            add_rms_norm_forward(y, sum, &self.x, &self.residual, shape, ns, w, self.eps)
        }
    }

    fn backward(&mut self, centered: bool) -> normkit::Result<()> {
        let grads = Grads {
            dx: &mut self.dx,
            dweight: self.dweight.as_deref_mut(),
            dbias: self.dbias.as_deref_mut(),
        };
        let (dsum, w) = (self.dsum.as_deref(), self.weight.as_deref());
        // The "sum" of a backward call is the input x here.
        let (dy, sum, shape, ns, st) = (&self.dy, &self.x, &self.shape, &self.ns, &self.stats);
        if centered {
            add_layer_norm_backward(grads, dy, dsum, sum, shape, ns, w, st)
        } else {
            add_rms_norm_backward(grads, dy, dsum, sum, shape, ns, w, st)
        }
    }

    fn untouched(&self) -> bool {
        let outs = [Some(&self.y), Some(&self.sum), Some(&self.dx)];
        let params = [self.dweight.as_ref(), self.dbias.as_ref()];
        outs.into_iter()
            .chain(params)
            .flatten()
            .flatten()
            .all(|v| v.to_bits() == SENTINEL.to_bits())
    }
}

/// One bad input: what it breaks, and the name or kind of the error.
type Bad = (&'static str, fn(&mut Args), &'static str);

fn check_refused<R: std::fmt::Debug>(
    op: &str,
    centered: bool,
    cases: &[Bad],
    call: impl Fn(&mut Args) -> normkit::Result<R>,
) {
    for (what, mutate, named) in cases {
        let mut a = Args::new(centered);
        mutate(&mut a);
        let e = call(&mut a).expect_err(what);
        let ctx = format!("{op}, {what}: {e}");
        assert_eq!(e.op(), op, "{ctx}");
        assert!(e.to_string().starts_with(&format!("{op}: ")), "{ctx}");
        let ok = match &e {
            NormError::Length { name, shape, .. } => {
                e.to_string().contains(&format!("{shape:?}")) && name == named
            }
            NormError::NormalizedShape { .. } => *named == "normalized_shape",
            NormError::Eps { .. } => *named == "eps",
            NormError::NoSuchParameter { name, .. } => name == named,
            _ => false,
        };
        assert!(ok, "{ctx}: expected an error about {named}");
        assert!(a.untouched(), "{ctx}: an output was written");
    }
}

const BAD_FORWARD: [Bad; 9] = [
    // The golden case 108: a residual of another shape.
    (
        "residual of 2 rows for 3",
        |a| a.residual.truncate(4),
        "residual",
    ),
    ("long x", |a| a.x.push(0.0), "x"),
    ("short y", |a| a.y.truncate(7), "y"),
    ("short sum", |a| a.sum.truncate(7), "sum"),
    ("long sum", |a| a.sum.push(SENTINEL), "sum"),
    ("short weight", |a| a.weight = Some(vec![1.0; 3]), "weight"),
    (
        "other normalized shape",
        |a| a.ns = vec![8],
        "normalized_shape",
    ),
    ("negative eps", |a| a.eps = -1.0, "eps"),
    ("NaN eps", |a| a.eps = f32::NAN, "eps"),
];

const BAD_BACKWARD: [Bad; 7] = [
    ("short sum", |a| a.x.truncate(7), "sum"),
    ("short dy", |a| a.dy.truncate(7), "dy"),
    ("long dsum", |a| a.dsum.as_mut().unwrap().push(0.0), "dsum"),
    ("short dx", |a| a.dx.truncate(7), "dx"),
    (
        "long dweight",
        |a| a.dweight.as_mut().unwrap().push(SENTINEL),
        "dweight",
    ),
    ("short rstd", |a| a.stats.rstd.truncate(1), "rstd"),
    ("weight of 5", |a| a.weight = Some(vec![1.0; 5]), "weight"),
];

#[test]
fn fused_norms_reject_bad_input_and_write_nothing() {
    for (op, centered) in [("add_layer_norm", true), ("add_rms_norm", false)] {
        check_refused(op, centered, &BAD_FORWARD, |a| a.forward(centered));
        check_refused(op, centered, &BAD_BACKWARD, |a| a.backward(centered));
    }
    let bias_cases: [Bad; 1] = [("bias of 3", |a| a.bias = Some(vec![0.0; 3]), "bias")];
    check_refused("add_layer_norm", true, &bias_cases, |a| a.forward(true));
    let mean_cases: [Bad; 1] = [("short mean", |a| a.stats.mean.truncate(1), "mean")];
    check_refused("add_layer_norm", true, &mean_cases, |a| a.backward(true));
    // RMSNorm has no bias to differentiate.
    let dbias: [Bad; 1] = [("dbias", |a| a.dbias = Some(vec![SENTINEL; 4]), "dbias")];
    check_refused("add_rms_norm", false, &dbias, |a| a.backward(false));
}

#[test]
fn empty_batches_are_fine() {
    for centered in [true, false] {
        let mut a = Args::new(centered);
        a.shape = vec![0, 4];
        for v in [
            &mut a.x,
            &mut a.residual,
            &mut a.dy,
            &mut a.y,
            &mut a.sum,
            &mut a.dx,
        ] {
            v.clear();
        }
        a.dsum = None;
        a.stats = a.forward(centered).unwrap();
        assert!(a.stats.rstd.is_empty() && a.stats.mean.is_empty());
        a.backward(centered).unwrap();
        assert_eq!(a.dweight.as_deref(), Some(&[0.0; 4][..]), "empty sums");
    }
}

/// An empty batch whose rows are longer than any allocation: nothing to
/// normalize, so the forward must not build default parameters of a row's
/// length (it once tried, and aborted on the capacity overflow). Found by
/// the fuzz suite.
#[test]
fn empty_batches_of_huge_rows_allocate_nothing() {
    let d = usize::MAX / 2;
    let (shape, ns) = ([0, d], [d]);
    for centered in [true, false] {
        let (mut y, mut sum) = (Vec::<f32>::new(), Vec::<f32>::new());
        let stats = if centered {
            normkit::add_layer_norm_forward(
                &mut y,
                &mut sum,
                &[],
                &[],
                &shape,
                &ns,
                Affine::NONE,
                1e-5,
            )
        } else {
            normkit::add_rms_norm_forward(&mut y, &mut sum, &[], &[], &shape, &ns, None, 1e-5)
        }
        .unwrap();
        assert!(stats.mean.is_empty() && stats.rstd.is_empty(), "{stats:?}");
    }
}

// ------------------------------------------------------------ op interface

#[test]
fn add_norm_op_packs_weight_then_bias_and_matches_its_entry_points() {
    let shape = [3, 2, 8];
    let ln = AddNormOp {
        norm: AddNorm::LayerNorm,
        normalized_shape: vec![2, 8],
        eps: 1e-5,
        weight: true,
        bias: true,
    };
    let sig = ln.signature(&shape).unwrap();
    let names: Vec<_> = sig.params.iter().map(|p| (p.name, p.len)).collect();
    assert_eq!(names, [("weight", 16), ("bias", 16)]);
    let rms = AddNormOp {
        norm: AddNorm::RmsNorm,
        eps: 1e-6,
        bias: false,
        ..ln.clone()
    };
    assert_eq!(rms.name(), "add_rms_norm");
    let e = AddNormOp {
        bias: true,
        ..rms.clone()
    }
    .signature(&shape)
    .unwrap_err();
    assert!(
        matches!(
            e,
            NormError::NoSuchParameter {
                op: "add_rms_norm",
                name: "bias"
            }
        ),
        "{e}"
    );

    let mut rng = Rng::new(950);
    let (x, r) = (rng.normals(48, 1.0, 2.0), rng.normals(48, -1.0, 1.0));
    let (dy, dsum) = (rng.normals(48, 0.0, 1.0), rng.normals(48, 0.0, 1.0));
    let p = rng.uniforms(32, -1.5, 1.5);
    for op in [&ln, &rms] {
        let packed = &p[..op.signature(&shape).unwrap().packed_len()];
        let (mut y, mut sum) = (vec![0.0f32; 48], vec![0.0f32; 48]);
        let saved = op
            .forward(&mut y, &mut sum, &x, &r, &shape, packed)
            .unwrap();
        let (mut dx, mut dp) = (vec![0.0f32; 48], vec![0.0f32; packed.len()]);
        let grads = OpGrads {
            dx: &mut dx,
            dparams: Some(&mut dp),
        };
        op.backward(grads, &dy, Some(&dsum), &sum, &shape, packed, &saved)
            .unwrap();
        // The entry points on the same arguments.
        let c = Case {
            x: x.clone(),
            residual: r.clone(),
            dy: dy.clone(),
            dsum: Some(dsum.clone()),
            weight: Some(packed[..16].to_vec()),
            bias: (packed.len() == 32).then(|| packed[16..].to_vec()),
        };
        let centered = op.norm == AddNorm::LayerNorm;
        let want = run(&c, &shape, &[2, 8], op.eps, centered);
        let mut want_dp = want.dweight.clone();
        want_dp.extend(want.dbias.iter().flatten());
        assert_eq!(
            (y, sum, dx, dp),
            (want.y, want.sum, want.dx, want_dp),
            "{}",
            op.name()
        );
    }

    // The interface checks the packing first, writing nothing.
    let (mut y, mut sum) = (vec![SENTINEL; 48], vec![SENTINEL; 48]);
    let e = ln
        .forward(&mut y, &mut sum, &x, &r, &shape, &p[..31])
        .unwrap_err();
    assert!(
        matches!(
            e,
            NormError::Length {
                name: "params",
                expected: 32,
                got: 31,
                ..
            }
        ),
        "{e}"
    );
    let saved = ln.forward(&mut y, &mut sum, &x, &r, &shape, &p).unwrap();
    let (mut dx, mut dp) = (vec![SENTINEL; 48], vec![SENTINEL; 30]);
    let grads = OpGrads {
        dx: &mut dx,
        dparams: Some(&mut dp),
    };
    let e = ln
        .backward(grads, &dy, None, &sum, &shape, &p, &saved)
        .unwrap_err();
    assert!(
        matches!(
            e,
            NormError::Length {
                name: "dparams",
                ..
            }
        ),
        "{e}"
    );
    assert!(dx
        .iter()
        .chain(&dp)
        .all(|v| v.to_bits() == SENTINEL.to_bits()));
}

#[test]
fn erased_residual_ops_dispatch_on_the_element_type() {
    let shape = [4, 8];
    let op: Box<dyn ErasedResidualOp> = Box::new(AddNormOp {
        norm: AddNorm::RmsNorm,
        normalized_shape: vec![8],
        eps: 1e-6,
        weight: true,
        bias: false,
    });
    let mut rng = Rng::new(951);
    let x: Vec<bf16> = cast(&rng.normals(32, 0.0, 1.0));
    let r: Vec<bf16> = cast(&rng.normals(32, 0.5, 1.0));
    let p = vec![1.25f32; 8];
    let (mut y, mut sum) = (vec![bf16::ZERO; 32], vec![bf16::ZERO; 32]);
    let saved = op
        .forward_erased(
            ElemSliceMut::Bf16(&mut y),
            ElemSliceMut::Bf16(&mut sum),
            ElemSlice::Bf16(&x),
            ElemSlice::Bf16(&r),
            &shape,
            &p,
        )
        .unwrap();
    let (mut want_y, mut want_sum) = (vec![bf16::ZERO; 32], vec![bf16::ZERO; 32]);
    add_rms_norm_forward(
        &mut want_y,
        &mut want_sum,
        &x,
        &r,
        &shape,
        &[8],
        Some(&p),
        1e-6,
    )
    .unwrap();
    assert_eq!((&y, &sum), (&want_y, &want_sum));

    // A sum of another type is refused, naming it.
    let mut sum32 = vec![0.0f32; 32];
    let e = op
        .forward_erased(
            ElemSliceMut::Bf16(&mut y),
            ElemSliceMut::F32(&mut sum32),
            ElemSlice::Bf16(&x),
            ElemSlice::Bf16(&r),
            &shape,
            &p,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            NormError::DType {
                name: "sum",
                expected: "bf16",
                got: "f32",
                ..
            }
        ),
        "{e}"
    );
    // So is a dsum of another type, and state saved by something else.
    let dsum32 = vec![0.0f32; 32];
    let mut dx = vec![bf16::ZERO; 32];
    let e = op
        .backward_erased(
            ElemSliceMut::Bf16(&mut dx),
            None,
            ElemSlice::Bf16(&x),
            Some(ElemSlice::F32(&dsum32)),
            ElemSlice::Bf16(&sum),
            &shape,
            &p,
            &saved,
        )
        .unwrap_err();
    assert!(matches!(e, NormError::DType { name: "dsum", .. }), "{e}");
    let foreign: normkit::op::ErasedSaved = std::sync::Arc::new(());
    let e = op
        .backward_erased(
            ElemSliceMut::Bf16(&mut dx),
            None,
            ElemSlice::Bf16(&x),
            None,
            ElemSlice::Bf16(&sum),
            &shape,
            &p,
            &foreign,
        )
        .unwrap_err();
    assert!(matches!(e, NormError::Saved { op: "add_rms_norm" }), "{e}");
    assert!(dx.iter().all(|v| *v == bf16::ZERO), "nothing written");
    // The right state works.
    op.backward_erased(
        ElemSliceMut::Bf16(&mut dx),
        None,
        ElemSlice::Bf16(&x),
        None,
        ElemSlice::Bf16(&sum),
        &shape,
        &p,
        &saved,
    )
    .unwrap();
    assert!(dx.iter().any(|v| v.to_f32() != 0.0));
}
