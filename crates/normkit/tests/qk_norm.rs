//! QK-norm over a head or a whole projection, and Gemma's `(1 + weight)`
//! RMSNorm, through the op interface against the `f64` twins.

use crate::common::{assert_close, max_abs, through, wide, Rng, Rounding, Scale};
use normkit::op::{LayerNormOp, NormOp, QkScope, RmsNormOp, UnitOffsetRmsNorm};
use normkit::reference::{self, Gradients, Normalized};
use normkit::NormError;

/// As the property tests: a few f32 roundings of the operands' size.
const TOL: f64 = 2e-6;

/// `y`, `dx` and the packed parameter gradients against the twin's.
fn check(ctx: &str, got: &[Vec<f32>; 3], norm: &Normalized, g: &Gradients) {
    let scale = Scale::All(max_abs(&norm.y).max(1e-3));
    assert_close(
        &format!("{ctx}: y"),
        &wide(&got[0]),
        &norm.y,
        scale,
        TOL,
        Rounding::NONE,
    );
    let scale = Scale::All(max_abs(&g.dx) * 4.0);
    assert_close(
        &format!("{ctx}: dx"),
        &wide(&got[1]),
        &g.dx,
        scale,
        TOL,
        Rounding::NONE,
    );
    let want: Vec<f64> = g.dweight.iter().chain(&g.dbias).copied().collect();
    let scale = Scale::All(max_abs(&want).max(1.0) * 4.0);
    assert_close(
        &format!("{ctx}: dparams"),
        &wide(&got[2]),
        &want,
        scale,
        TOL,
        Rounding::NONE,
    );
}

#[test]
fn qk_norms_over_a_head_or_the_projection_match_the_twins() {
    let mut rng = Rng::new(970);
    // [batch, tokens, heads, head_dim], odd sizes.
    for (shape, eps) in [
        ([2, 5, 3, 16], 1e-6),
        ([1, 7, 5, 33], 1e-5),
        ([3, 2, 1, 3], 1e-6),
    ] {
        let [_, _, heads, head_dim] = shape;
        let n: usize = shape.iter().product();
        let x = rng.normals(n, 0.3, 1.5);
        let dy = rng.normals(n, 0.0, 1.0);
        let (x64, dy64) = (wide(&x), wide(&dy));
        for scope in [QkScope::Head, QkScope::Projection] {
            let d: usize = scope.normalized_shape(heads, head_dim).iter().product();
            let rows = n / d;
            let ctx = format!("{shape:?} {scope:?}");

            let rms = RmsNormOp::qk(scope, heads, head_dim, eps);
            let p = rng.uniforms(d, 0.5, 1.5);
            let got = through(&rms, &x, &dy, &shape, &p);
            let w = wide(&p);
            let norm = reference::rms_norm(&x64, rows, d, Some(&w), eps as f64);
            let g = reference::rms_norm_backward(&dy64, &x64, rows, d, Some(&w), eps as f64);
            check(&format!("{ctx} rms"), &got, &norm, &g);

            let ln = LayerNormOp::qk(scope, heads, head_dim, eps);
            let p = rng.uniforms(2 * d, -1.0, 1.5);
            let got = through(&ln, &x, &dy, &shape, &p);
            let (w, b) = (wide(&p[..d]), wide(&p[d..]));
            let norm = reference::layer_norm(&x64, rows, d, Some(&w), Some(&b), eps as f64);
            let g = reference::layer_norm_backward(&dy64, &x64, rows, d, Some(&w), eps as f64);
            check(&format!("{ctx} ln"), &got, &norm, &g);
        }
    }
}

#[test]
fn gemma_rms_norm_matches_its_twin() {
    let mut rng = Rng::new(971);
    for (shape, d) in [(vec![4, 9, 37], 37), (vec![6, 256], 256), (vec![1, 3], 3)] {
        let n: usize = shape.iter().product();
        let (x, dy) = (rng.normals(n, -0.2, 2.0), rng.normals(n, 0.0, 1.0));
        let op = UnitOffsetRmsNorm {
            norm: RmsNormOp {
                normalized_shape: vec![d],
                eps: 1e-6,
                weight: true,
            },
        };
        // Gemma's weights start at zero and stay near it.
        let p = rng.uniforms(d, -0.5, 0.5);
        let got = through(&op, &x, &dy, &shape, &p);
        let (x64, w) = (wide(&x), wide(&p));
        let rows = n / d;
        let norm = reference::unit_offset_rms_norm(&x64, rows, d, &w, 1e-6);
        let g = reference::unit_offset_rms_norm_backward(&wide(&dy), &x64, rows, d, &w, 1e-6);
        check(&format!("{shape:?}"), &got, &norm, &g);
    }
}

#[test]
fn a_projection_of_another_size_is_refused() {
    let mut rng = Rng::new(972);
    let (x, shape) = (rng.normals(2 * 3 * 4 * 8, 0.0, 1.0), [2, 3, 4, 8]);
    let gemma = UnitOffsetRmsNorm {
        norm: RmsNormOp::qk(QkScope::Projection, 5, 8, 1e-6),
    };
    let mut y = vec![f32::NAN; x.len()];
    let e = gemma
        .forward(&mut y, &x, &shape, &[0.0; 40], None)
        .unwrap_err();
    assert!(
        matches!(e, NormError::NormalizedShape { op: "rms_norm", .. }),
        "{e}"
    );
    assert!(y.iter().all(|v| v.is_nan()), "nothing written");
}
