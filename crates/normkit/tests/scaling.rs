//! LayerNorm Scaling through the op interface: the norm's output and
//! gradients scaled by `1/√ℓ` against the `f64` twins, layer 1 the plain
//! norm bit for bit, layer 0 refused.

use crate::common::{assert_close, max_abs, through, wide, Rng, Rounding, Scale};
use normkit::op::{LayerNormOp, LayerNormScaling, NormOp, RmsNormOp};
use normkit::reference::{self, depth_scale};
use normkit::NormError;

/// As the property tests: a few f32 roundings of the operands' size.
const TOL: f64 = 2e-6;

#[test]
fn layer_norm_scaling_matches_the_twins() {
    let mut rng = Rng::new(960);
    let (shape, d, rows) = ([5, 3, 24], 24, 15);
    let x = rng.normals(rows * d, 0.5, 2.0);
    let dy = rng.normals(rows * d, 0.0, 1.0);
    for (layer, weight, bias) in [(4, true, true), (12, false, false), (30, true, false)] {
        let ln = LayerNormOp {
            normalized_shape: vec![d],
            eps: 1e-5,
            weight,
            bias,
        };
        let op = LayerNormScaling {
            norm: ln.clone(),
            layer,
        };
        let sig = op.signature(&shape).unwrap();
        assert_eq!(sig, ln.signature(&shape).unwrap(), "packed as the norm");
        let p = rng.uniforms(sig.packed_len(), -1.5, 1.5);
        let [y, dx, dp] = through(&op, &x, &dy, &shape, &p);
        let w64 = sig.get(&p, "weight").map(wide);
        let b64 = sig.get(&p, "bias").map(wide);
        let (x64, dy64) = (wide(&x), wide(&dy));
        let norm = reference::layer_norm(&x64, rows, d, w64.as_deref(), b64.as_deref(), 1e-5);
        let want_y = depth_scale(&norm.y, layer);
        let ctx = format!("layer {layer}, weight {weight}, bias {bias}");
        let scale = Scale::All(max_abs(&want_y).max(1e-3));
        assert_close(
            &format!("{ctx}: y"),
            &wide(&y),
            &want_y,
            scale,
            TOL,
            Rounding::NONE,
        );
        let g = reference::layer_norm_backward(
            &depth_scale(&dy64, layer),
            &x64,
            rows,
            d,
            w64.as_deref(),
            1e-5,
        );
        let scale = Scale::All(max_abs(&g.dx) * 4.0);
        assert_close(
            &format!("{ctx}: dx"),
            &wide(&dx),
            &g.dx,
            scale,
            TOL,
            Rounding::NONE,
        );
        let mut want_dp = Vec::new();
        if weight {
            want_dp.extend(&g.dweight);
        }
        if bias {
            want_dp.extend(&g.dbias);
        }
        let scale = Scale::All(max_abs(&want_dp).max(1.0) * 4.0);
        assert_close(
            &format!("{ctx}: dparams"),
            &wide(&dp),
            &want_dp,
            scale,
            TOL,
            Rounding::NONE,
        );
    }
}

#[test]
fn layer_one_is_the_plain_norm_and_layer_zero_is_refused() {
    let mut rng = Rng::new(961);
    let shape = [6, 40];
    let x = rng.normals(240, 0.0, 1.0);
    let dy = rng.normals(240, 0.0, 1.0);
    let rms = RmsNormOp {
        normalized_shape: vec![40],
        eps: 1e-6,
        weight: true,
    };
    let p = rng.uniforms(40, 0.5, 1.5);
    let scaled = LayerNormScaling {
        norm: rms.clone(),
        layer: 1,
    };
    assert_eq!(
        through(&scaled, &x, &dy, &shape, &p),
        through(&rms, &x, &dy, &shape, &p)
    );
    let zero = LayerNormScaling {
        norm: rms,
        layer: 0,
    };
    let mut y = vec![f32::NAN; 240];
    let e = zero.forward(&mut y, &x, &shape, &p, None).unwrap_err();
    assert!(
        matches!(
            e,
            NormError::Param {
                op: "rms_norm",
                name: "layer",
                ..
            }
        ),
        "{e}"
    );
    assert!(y.iter().all(|v| v.is_nan()), "nothing written");
}

/// A layer without a weight scales by a weight of `1/√ℓ` it builds, one
/// row long: for an input holding no row — an empty batch, or a wrong
/// length — it must not build one when rows are longer than any
/// allocation (it once tried, and aborted). The empty batch runs; the
/// wrong length gets the norm's error, nothing written. Found by the fuzz
/// suite.
#[test]
fn inputs_without_a_row_build_no_weight_of_a_huge_row() {
    let d = 1usize << 40;
    let norm = RmsNormOp {
        normalized_shape: vec![d],
        eps: 1e-5,
        weight: false,
    };
    let op = LayerNormScaling { norm, layer: 4 };
    let stats = op.forward::<f32>(&mut [], &[], &[0, d], &[], None).unwrap();
    assert!(stats.rstd.is_empty(), "{stats:?}");
    let grads = normkit::op::OpGrads::<f32> {
        dx: &mut [],
        dparams: Some(&mut []),
    };
    op.backward(grads, &[], &[], &[0, d], &[], &stats).unwrap();

    let mut y = [f32::NAN; 3];
    let err = op
        .forward(&mut y, &[1.0f32; 3], &[1, d], &[], None)
        .unwrap_err();
    assert!(
        matches!(err, NormError::Length { op: "rms_norm", .. }),
        "{err}"
    );
    assert!(y.iter().all(|v| v.is_nan()), "wrote {y:?}");
}
