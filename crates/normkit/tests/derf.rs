//! Derf against its `f64` twin over random shapes, layouts and element
//! types; the same bits whatever the thread count and instruction set;
//! bad input refused with nothing written.

use crate::common::{abs, assert_close, cast, max_abs, param_max, rounding, wide, Rng, Scale};
use crate::parallel::same_bits_everywhere;
use crate::property::shape;
use normkit::reference::{self, Dims};
use normkit::{
    bf16, derf_backward, derf_forward, f16, Affine, ChannelAxis, DerfScalarGrads, Elem, Grads,
    NormError,
};

/// The f32 arithmetic of a kernel, relative to the operands' size (as in
/// the property tests): erf within 1.5 ulp, then one multiply-add.
const TOL: f64 = 2e-6;

/// Written into every output first: an output left unwritten fails.
const UNSET: f32 = f32::NAN;

/// `(shape, axis)` pairs: edge cases (one element, one row, C = 1, tails,
/// several chunks), then random ones of up to 20 000 values.
fn shapes(rng: &mut Rng, cases: usize) -> Vec<(Vec<usize>, ChannelAxis)> {
    use ChannelAxis::{First, Last};
    let mut out = vec![
        (vec![1], Last),
        (vec![17], Last),
        (vec![1, 1], First),
        (vec![2, 1, 1], First),
        (vec![4, 1], Last),
        (vec![5, 130], Last),
        (vec![2, 7, 3, 5], First),
        (vec![3, 4, 5, 9], Last),
        (vec![1000, 257], Last),
        (vec![8, 31, 1000], First),
    ];
    while out.len() < cases {
        let axis = rng.pick(&[First, Last]);
        let rank = rng.between(if axis == Last { 1 } else { 2 }, 4);
        out.push((shape(rng, rank), axis));
    }
    out
}

fn dims(shape: &[usize], axis: ChannelAxis) -> Dims {
    if shape.len() == 1 {
        Dims::new(1, shape[0], 1, axis)
    } else {
        Dims::of(shape, axis)
    }
}

fn cases<T: Elem>(seed: u64, count: usize) {
    let mut rng = Rng::new(seed);
    for (i, (shape, axis)) in shapes(&mut rng, count).into_iter().enumerate() {
        let d = dims(&shape, axis);
        let (alpha, shift) = (rng.uniform(-2.0, 2.0) as f32, rng.uniform(-1.0, 1.0) as f32);
        let (mean, std) = (rng.uniform(-3.0, 3.0), 10f64.powf(rng.uniform(-1.0, 0.5)));
        let x: Vec<T> = cast(&rng.normals(d.numel(), mean, std));
        let dy: Vec<T> = cast(&rng.normals(d.numel(), 0.0, 1.0));
        let (w, b) = (rng.maybe_param(d.c), rng.maybe_param(d.c));
        let (x64, dy64) = (wide(&x), wide(&dy));
        let (w64, b64) = (w.as_ref().map(|v| wide(v)), b.as_ref().map(|v| wide(v)));
        let ctx = format!(
            "{} case {i}: shape {shape:?}, {axis:?}, alpha {alpha}, shift {shift}",
            T::NAME
        );
        let (a64, s64) = (alpha as f64, shift as f64);

        let mut y = vec![T::from_f32(UNSET); d.numel()];
        let affine = Affine {
            weight: w.as_deref(),
            bias: b.as_deref(),
        };
        derf_forward(&mut y, &x, &shape, alpha, shift, affine, axis)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let expected = reference::derf(&x64, d, a64, s64, w64.as_deref(), b64.as_deref());
        // |erf| ≤ 1: |weight| + |bias| bounds the operands.
        let scale = param_max(&w64, 1.0) + param_max(&b64, 0.0);
        let round = rounding::<T>();
        assert_close(
            &format!("{ctx}: y"),
            &wide(&y),
            &expected,
            Scale::All(scale),
            TOL,
            round,
        );

        let mut dx = vec![T::from_f32(UNSET); d.numel()];
        let mut dw = rng.chance(0.7).then(|| vec![UNSET; d.c]);
        let mut db = rng.chance(0.7).then(|| vec![UNSET; d.c]);
        let grads = Grads {
            dx: &mut dx,
            dweight: dw.as_deref_mut(),
            dbias: db.as_deref_mut(),
        };
        let got = derf_backward(grads, &dy, &x, &shape, alpha, shift, w.as_deref(), axis)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let exp = reference::derf_backward(&dy64, &x64, d, a64, s64, w64.as_deref());
        // Sums of magnitudes bound each gradient's terms: at alpha = shift
        // = 0 the slope is its maximum 2/√π everywhere.
        let w_abs = w64.as_ref().map(|w| abs(w));
        let sizes =
            reference::derf_backward(&abs(&dy64), &abs(&x64), d, 0.0, 0.0, w_abs.as_deref());
        let slope = std::f64::consts::FRAC_2_SQRT_PI;
        let dx_scale = max_abs(&dy64) * param_max(&w64, 1.0) * a64.abs() * slope;
        assert_close(
            &format!("{ctx}: dx"),
            &wide(&dx),
            &exp.dx,
            Scale::All(dx_scale),
            TOL,
            round,
        );
        // dweight = Σ dy · erf(u), |erf| ≤ 1: scale Σ|dy|, as dbias.
        for (name, got_v, want) in [("dweight", &dw, &exp.dweight), ("dbias", &db, &exp.dbias)] {
            if let Some(v) = got_v {
                let s = Scale::Each(&sizes.dbias);
                assert_close(&format!("{ctx}: {name}"), &wide(v), want, s, TOL, round0());
            }
        }
        let scalars = [
            ("dalpha", got.dalpha, exp.dalpha, sizes.dalpha),
            ("dshift", got.dshift, exp.dshift, sizes.dshift),
        ];
        for (name, g, e, size) in scalars {
            let s = Scale::All(size);
            assert_close(
                &format!("{ctx}: {name}"),
                &[g as f64],
                &[e],
                s,
                TOL,
                round0(),
            );
        }
    }
}

fn round0() -> crate::common::Rounding {
    crate::common::Rounding::NONE
}

#[test]
fn derf_f32() {
    cases::<f32>(800, 400);
}

#[test]
fn derf_bf16() {
    cases::<bf16>(801, 80);
}

#[test]
fn derf_f16() {
    cases::<f16>(802, 80);
}

/// `alpha = 1, shift = 0`, no affine: `y = erf(x)` within 1.5 ulp, odd,
/// and saturating at ±1; the NaN of an input stays in its place. (`-0`
/// gives `+0`: `1 · -0 + 0` is `+0`, in PyTorch too.)
#[test]
fn plain_erf_values() {
    let xs = [
        0.0f32,
        -0.0,
        0.5,
        -0.5,
        1.0,
        2.0,
        -3.0,
        4.0,
        10.0,
        f32::INFINITY,
    ];
    let mut y = [UNSET; 10];
    derf_forward(
        &mut y,
        &xs,
        &[10],
        1.0,
        0.0,
        Affine::NONE,
        ChannelAxis::Last,
    )
    .unwrap();
    for (&x, &v) in xs.iter().zip(&y) {
        let exact = reference::erf(x as f64);
        let ulp = f32::EPSILON as f64 * exact.abs().max(f32::MIN_POSITIVE as f64);
        assert!(
            (v as f64 - exact).abs() <= 1.5 * ulp,
            "erf({x}) = {v} vs {exact}"
        );
    }
    assert_eq!((y[8], y[9]), (1.0, 1.0));
    let mut y = [UNSET; 3];
    derf_forward(
        &mut y,
        &[1.0, f32::NAN, -1.0],
        &[3],
        1.0,
        0.0,
        Affine::NONE,
        ChannelAxis::Last,
    )
    .unwrap();
    assert!(y[1].is_nan() && y[0] == -y[2]);
}

/// Every output of forward and backward on inputs split into many chunks,
/// both layouts, f32 and bf16.
fn run_all() -> Vec<Vec<u32>> {
    let mut rng = Rng::new(31);
    let mut out = Vec::new();
    for (shape, axis) in [
        (vec![301, 1037], ChannelAxis::Last),
        (vec![6, 37, 1025], ChannelAxis::First),
    ] {
        let d = dims(&shape, axis);
        let x = rng.normals(d.numel(), 0.5, 2.0);
        let dy = rng.normals(d.numel(), 0.0, 1.0);
        let (w, b) = (rng.normals(d.c, 1.0, 0.3), rng.normals(d.c, 0.0, 0.3));
        out.extend(run_one::<f32>(&x, &dy, &w, &b, &shape, axis));
        out.extend(run_one::<bf16>(&x, &dy, &w, &b, &shape, axis));
    }
    out
}

fn run_one<T: Elem>(
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    b: &[f32],
    shape: &[usize],
    axis: ChannelAxis,
) -> Vec<Vec<u32>> {
    let (x, dy): (Vec<T>, Vec<T>) = (cast(x), cast(dy));
    let bits = |v: &[T]| v.iter().map(|e| e.to_f32().to_bits()).collect::<Vec<u32>>();
    let mut y = vec![T::default(); x.len()];
    derf_forward(&mut y, &x, shape, 0.7, -0.2, Affine::new(w, b), axis).unwrap();
    let (mut dx, mut dw, mut db) = (
        vec![T::default(); x.len()],
        vec![0.0; w.len()],
        vec![0.0; w.len()],
    );
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    let s = derf_backward(grads, &dy, &x, shape, 0.7, -0.2, Some(w), axis).unwrap();
    vec![
        bits(&y),
        bits(&dx),
        dw.iter().chain(&db).map(|v| v.to_bits()).collect(),
        vec![s.dalpha.to_bits(), s.dshift.to_bits()],
    ]
}

#[test]
fn same_bits_whatever_the_threads_and_instruction_set() {
    same_bits_everywhere(run_all);
}

/// Bad arguments: the error names derf and the shape, nothing is written.
#[test]
fn derf_rejects_bad_input() {
    use ChannelAxis::{First, Last};
    let shape = [2, 3, 4];
    // (what, shape, values of x, of weight and bias, axis)
    let bad: [(&str, &[usize], usize, usize, ChannelAxis); 6] = [
        ("short x", &shape, 23, 3, First),
        ("long x", &shape, 25, 3, First),
        ("short weight", &shape, 24, 2, First),
        ("weight of the other axis", &shape, 24, 3, Last),
        ("rank 1, channels first", &[24], 24, 24, First),
        ("rank 0", &[], 1, 1, Last),
    ];
    for (what, shape, n, c, axis) in bad {
        let (x, w, b) = (vec![0.5f32; n], vec![1.0f32; c], vec![0.0f32; c]);
        let mut y = vec![SENTINEL; n];
        let e =
            derf_forward(&mut y, &x, shape, 1.0, 0.0, Affine::new(&w, &b), axis).expect_err(what);
        assert_named(&e, what, shape);
        assert!(untouched(&y), "{what}: y written");
    }
    // Backward: a bias gradient of the wrong size, short dy, short dx.
    let (x, dy) = (vec![0.5f32; 24], vec![1.0f32; 24]);
    let (mut dx, mut db) = (vec![SENTINEL; 24], vec![SENTINEL; 4]);
    let grads = Grads {
        dx: &mut dx,
        dweight: None,
        dbias: Some(&mut db),
    };
    let e = derf_backward(grads, &dy, &x, &shape, 1.0, 0.0, None, First).unwrap_err();
    assert_named(&e, "long dbias", &shape);
    let e = derf_backward(
        Grads::dx(&mut dx),
        &dy[..23],
        &x,
        &shape,
        1.0,
        0.0,
        None,
        First,
    )
    .unwrap_err();
    assert_named(&e, "short dy", &shape);
    let mut short = vec![SENTINEL; 23];
    let e = derf_backward(
        Grads::dx(&mut short),
        &dy,
        &x,
        &shape,
        1.0,
        0.0,
        None,
        First,
    )
    .unwrap_err();
    assert_named(&e, "short dx", &shape);
    assert!(untouched(&dx) && untouched(&db) && untouched(&short));
    // Sizes whose product overflows.
    let huge = [1 << 40, 1 << 40, 2];
    let e = derf_forward::<f32>(&mut [], &[], &huge, 1.0, 0.0, Affine::NONE, Last).unwrap_err();
    assert!(matches!(e, NormError::TooLarge { op: "derf", .. }), "{e:?}");
    // An empty input is fine: empty sums.
    let mut dw = [SENTINEL; 3];
    let grads = Grads {
        dx: &mut [],
        dweight: Some(&mut dw),
        dbias: None,
    };
    let s = derf_backward::<f32>(grads, &[], &[], &[0, 3], 1.0, 0.0, None, Last).unwrap();
    assert_eq!((s, dw), (DerfScalarGrads::default(), [0.0; 3]));
}

/// A NaN with a payload no kernel produces: an output still holding it
/// was not written.
const SENTINEL: f32 = f32::from_bits(0x7fc0_1234);

fn untouched(v: &[f32]) -> bool {
    v.iter().all(|v| v.to_bits() == SENTINEL.to_bits())
}

fn assert_named(e: &NormError, what: &str, shape: &[usize]) {
    assert_eq!(e.op(), "derf", "{what}: {e}");
    let msg = e.to_string();
    assert!(msg.starts_with("derf: "), "{what}: {msg}");
    assert!(
        msg.contains(&format!("{shape:?}")),
        "{what}: {msg} lacks the shape"
    );
}
