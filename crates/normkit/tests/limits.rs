//! At the limits of `f32`: values near `f32::MAX` and subnormal ones,
//! NaN groups, one channel's extremes beside ordinary ones, and shapes
//! whose extents overflow. Expected values come from the `f64` reference
//! twins ([`normkit::reference`]) on the same inputs.

use normkit::reference::{self as r, Dims};
use normkit::*;

use crate::common::{wide, Rng};

/// `got` is finite and within `tol` of `expected`, relative to the largest
/// expected magnitude.
fn close(what: &str, got: &[f32], expected: &[f64], tol: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        assert!(g.is_finite(), "{what}[{i}]: {g} (expected {e:e})");
        let err = (g as f64 - e).abs();
        assert!(
            err <= tol * scale,
            "{what}[{i}]: got {g:e}, expected {e:e} (error {err:e}, scale {scale:e})"
        );
    }
}

/// LayerNorm forward and backward of `rows` rows of `x` against the
/// reference.
fn layer_norm_case(x: &[f32], rows: usize, dy: &[f32], eps: f32) {
    let d = x.len() / rows;
    let w: Vec<f32> = (0..d).map(|j| 0.5 + 0.25 * j as f32).collect();
    let b: Vec<f32> = (0..d).map(|j| 0.125 * j as f32).collect();
    let mut y = vec![0.0f32; x.len()];
    let shape = [rows, d];
    let stats = layer_norm_forward(&mut y, x, &shape, &[d], Affine::new(&w, &b), eps).unwrap();
    let (xw, ww, bw) = (wide(x), wide(&w), wide(&b));
    let reference = r::layer_norm(&xw, rows, d, Some(&ww), Some(&bw), eps as f64);
    close("y", &y, &reference.y, 1e-5);
    let (mut dx, mut dw, mut db) = (vec![0.0f32; x.len()], vec![0.0f32; d], vec![0.0f32; d]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    layer_norm_backward(grads, dy, x, &shape, &[d], Some(&w), &stats).unwrap();
    let g = r::layer_norm_backward(&wide(dy), &xw, rows, d, Some(&ww), eps as f64);
    close("dx", &dx, &g.dx, 1e-5);
    close("dweight", &dw, &g.dweight, 1e-5);
    close("dbias", &db, &g.dbias, 1e-5);
}

#[test]
fn layer_norm_of_max_values_is_exact() {
    let m = f32::MAX;
    layer_norm_case(&[m, -m, m], 1, &[1.0, -0.5, 2.0], 1e-5);
    // The row alone and among ordinary rows (batched and skewed sweeps).
    let mut x = vec![m, -m, m];
    let mut rng = Rng::new(1);
    x.extend(rng.normals(3 * 40, 0.0, 1.0));
    let dy = rng.normals(x.len(), 0.0, 1.0);
    layer_norm_case(&x, 41, &dy, 1e-5);
}

#[test]
fn layer_norm_of_huge_normal_rows_keeps_every_gradient() {
    let mut rng = Rng::new(2);
    for (scale, d) in [(3e37, 1000), (1e38, 4096)] {
        let x: Vec<f32> = rng
            .normals(3 * d, 0.0, scale)
            .into_iter()
            .map(|v| v.clamp(-f32::MAX, f32::MAX))
            .collect();
        let dy = rng.normals(x.len(), 0.0, 1.0);
        layer_norm_case(&x, 3, &dy, 1e-5);
    }
}

#[test]
fn subnormal_rows_with_zero_eps_are_finite() {
    let t = f32::from_bits(1); // the smallest subnormal
    let x: Vec<f32> = [3.0, 1.0, 0.0, -2.0, 5.0, -7.0, 2.0, 4.0]
        .iter()
        .map(|&k| k * t)
        .collect();
    // Gradients of rstd ~ 1e45 overflow unless dy is small.
    let dy: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) * 1e-12).collect();
    layer_norm_case(&x, 2, &dy, 0.0);
    // RMSNorm of the same rows.
    let mut y = vec![0.0f32; 8];
    let stats = rms_norm_forward(&mut y, &x, &[2, 4], &[4], None, 0.0).unwrap();
    let reference = r::rms_norm(&wide(&x), 2, 4, None, 0.0);
    close("rms y", &y, &reference.y, 1e-5);
    let mut dx = vec![0.0f32; 8];
    rms_norm_backward(Grads::dx(&mut dx), &dy, &x, &[2, 4], &[4], None, &stats).unwrap();
    let g = r::rms_norm_backward(&wide(&dy), &wide(&x), 2, 4, None, 0.0);
    close("rms dx", &dx, &g.dx, 1e-5);
}

/// GroupNorm, BatchNorm and InstanceNorm on `[2, 3, 4]` data (both
/// layouts) where channel 1 holds `special`, against the reference.
fn channel_ops_case(special: &[f32; 4], eps: f32, dy_scale: f32) {
    let mut rng = Rng::new(3);
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let shape = match axis {
            ChannelAxis::First => [2, 3, 4],
            ChannelAxis::Last => [2, 4, 3],
        };
        let d = Dims::of(&shape, axis);
        let mut x = rng.normals(24, 0.0, 1.0);
        for n in 0..2 {
            for (s, &v) in special.iter().enumerate() {
                x[d.at(n, 1, s)] = v;
            }
        }
        let dy: Vec<f32> = rng
            .normals(24, 0.0, 1.0)
            .iter()
            .map(|v| v * dy_scale)
            .collect();
        let (xw, dyw) = (wide(&x), wide(&dy));
        // GroupNorm with one channel per group: InstanceNorm's statistics.
        let cfg = GroupNormConfig {
            num_groups: 3,
            eps,
            channel_axis: axis,
        };
        let mut y = vec![0.0f32; 24];
        let stats = group_norm_forward(&mut y, &x, &shape, Affine::NONE, &cfg).unwrap();
        close(
            "gn y",
            &y,
            &r::group_norm(&xw, d, 3, None, None, eps as f64).y,
            1e-5,
        );
        let mut dx = vec![0.0f32; 24];
        group_norm_backward(Grads::dx(&mut dx), &dy, &x, &shape, None, &stats, &cfg).unwrap();
        let g = r::group_norm_backward(&dyw, &xw, d, 3, None, eps as f64);
        close("gn dx", &dx, &g.dx, 1e-5);

        let bn = BatchNormConfig {
            eps,
            momentum: Momentum::Exponential(0.1),
            channel_axis: axis,
        };
        let stats = batch_norm_forward_train(&mut y, &x, &shape, Affine::NONE, None, &bn).unwrap();
        close(
            "bn y",
            &y,
            &r::batch_norm_train(&xw, d, None, None, eps as f64).y,
            1e-5,
        );
        batch_norm_backward_train(Grads::dx(&mut dx), &dy, &x, &shape, None, &stats, &bn).unwrap();
        let g = r::batch_norm_backward_train(&dyw, &xw, d, None, eps as f64);
        close("bn dx", &dx, &g.dx, 1e-5);

        let inorm = InstanceNormConfig {
            eps,
            momentum: Momentum::Exponential(0.1),
            channel_axis: axis,
        };
        let stats =
            instance_norm_forward_train(&mut y, &x, &shape, Affine::NONE, None, &inorm).unwrap();
        close(
            "in y",
            &y,
            &r::instance_norm(&xw, d, None, None, eps as f64).y,
            1e-5,
        );
        let grads = Grads::dx(&mut dx);
        instance_norm_backward_train(grads, &dy, &x, &shape, None, &stats, &inorm).unwrap();
        let g = r::instance_norm_backward(&dyw, &xw, d, None, eps as f64);
        close("in dx", &dx, &g.dx, 1e-5);
    }
}

#[test]
fn channel_ops_of_max_values_are_exact() {
    let m = f32::MAX;
    channel_ops_case(&[m, -m, m, -m], 1e-5, 1.0);
    channel_ops_case(&[m, -m, m, 0.5], 1e-5, 1.0);
}

#[test]
fn channel_ops_of_subnormal_channels_with_zero_eps_are_finite() {
    let t = f32::from_bits(1);
    // Ordinary channels beside it need eps = 0 as well: dy is small so
    // that the subnormal channel's gradients (rstd ~ 1e45) stay finite.
    channel_ops_case(&[3.0 * t, -t, 0.0, 2.0 * t], 0.0, 1e-12);
}

#[test]
fn ada_layer_norm_of_max_values_is_exact() {
    let m = f32::MAX;
    let x = [m, -m, m, 1.0, 2.0, 4.0];
    let (scale, shift) = (
        [0.5f32, -0.25, 0.0, 1.0, 0.0, 2.0],
        [0.0f32, 1.0, 0.0, 0.5, 0.5, 0.5],
    );
    let modulation = Modulation {
        scale: &scale,
        shift: &shift,
    };
    let shape = [2, 3];
    let mut y = [0.0f32; 6];
    let stats =
        ada_layer_norm_forward(&mut y, &x, &shape, &[3], Affine::NONE, modulation, 1e-5).unwrap();
    let (xw, sw, hw) = (wide(&x), wide(&scale), wide(&shift));
    let expected = r::ada_norm(&xw, 2, 1, 3, None, None, &sw, &hw, 1e-5, true);
    close("y", &y, &expected, 1e-5);
    let dy = [1.0f32, -2.0, 0.5, 1.0, 1.0, -1.0];
    let mut dx = [0.0f32; 6];
    let (mut dscale, mut dshift) = ([0.0f32; 6], [0.0f32; 6]);
    let dm = ModulationGrads {
        dscale: Some(&mut dscale),
        dshift: Some(&mut dshift),
    };
    let grads = Grads::dx(&mut dx[..]);
    ada_layer_norm_backward(
        grads,
        dm,
        &dy,
        &x,
        &shape,
        &[3],
        Affine::NONE,
        modulation,
        &stats,
    )
    .unwrap();
    let g = r::ada_norm_backward(&wide(&dy), &xw, 2, 1, 3, None, None, &sw, &hw, 1e-5, true);
    // The reference differentiates numerically (relative steps): looser.
    close("dx", &dx[3..], &g.dx[3..], 1e-4);
    assert!(dx[..3].iter().all(|v| v.is_finite()), "{dx:?}");
    close("dscale", &dscale, &g.dscale, 1e-4);
    close("dshift", &dshift, &g.dshift, 1e-4);
}

#[test]
fn weight_norm_norms_neither_overflow_nor_underflow() {
    for (v, dw) in [
        ([f32::MAX; 4], [1.0f32, 0.0, 0.0, 0.0]),
        (
            [f32::from_bits(1), 0.0, 0.0, 0.0],
            [1e-10, 2e-10, 0.0, -1e-10],
        ),
        ([3e-40, -1e-41, 0.0, 2e-39], [1e-10, 2e-10, 0.0, -1e-10]),
    ] {
        let g = [1.5f32];
        let mut w = [0.0f32; 4];
        let norms = weight_norm_forward(&mut w, &v, &[4], &g, None).unwrap();
        let (ew, _) = r::weight_norm(&wide(&v), &[4], &wide(&g), None);
        close("w", &w, &ew, 1e-6);
        let (mut dv, mut dg) = ([0.0f32; 4], [0.0f32; 1]);
        weight_norm_backward(&mut dv, &mut dg, &dw, &v, &[4], &g, None, &norms).unwrap();
        let (edv, edg) = r::weight_norm_backward(&wide(&dw), &wide(&v), &[4], &wide(&g), None);
        close("dv", &dv, &edv, 1e-6);
        close("dg", &dg, &edg, 1e-6);
    }
}

/// A row or channel holding a NaN saves NaN statistics (as PyTorch does),
/// never a variance taken as 0; running variances follow, in every layout.
#[test]
fn nan_groups_have_nan_statistics() {
    let mut x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    x[5] = f32::NAN;
    let mut y = [0.0f32; 8];
    let stats = layer_norm_forward(&mut y, &x, &[2, 4], &[4], Affine::NONE, 1e-5).unwrap();
    assert!(
        stats.rstd[1].is_nan() && stats.mean[1].is_nan(),
        "{stats:?}"
    );
    assert!(stats.rstd[0].is_finite() && y[..4].iter().all(|v| v.is_finite()));
    let stats = rms_norm_forward(&mut y, &x, &[2, 4], &[4], None, 1e-5).unwrap();
    assert!(
        stats.rstd[1].is_nan() && stats.rstd[0].is_finite(),
        "{stats:?}"
    );

    // BatchNorm over [4, 2, s]: channel 1 holds the NaN.
    for s in [1usize, 3, 40] {
        let mut vars = Vec::new();
        for axis in [ChannelAxis::First, ChannelAxis::Last] {
            let shape = match axis {
                ChannelAxis::First => [4, 2, s],
                ChannelAxis::Last => [4, s, 2],
            };
            let d = Dims::of(&shape, axis);
            // The same values at the same (sample, channel, position).
            let mut x = vec![0.0f32; d.numel()];
            for (n, c, p) in
                (0..4).flat_map(|n| (0..2).flat_map(move |c| (0..s).map(move |p| (n, c, p))))
            {
                x[d.at(n, c, p)] = ((n * 5 + c * 3 + p) % 7) as f32;
            }
            x[d.at(2, 1, s - 1)] = f32::NAN;
            let mut y = vec![0.0f32; x.len()];
            let (mut mean, mut var) = ([0.0f32; 2], [1.0f32; 2]);
            let running = RunningStats {
                mean: &mut mean,
                var: &mut var,
            };
            let cfg = BatchNormConfig {
                channel_axis: axis,
                ..Default::default()
            };
            let stats =
                batch_norm_forward_train(&mut y, &x, &shape, Affine::NONE, Some(running), &cfg)
                    .unwrap();
            assert!(
                stats.rstd[1].is_nan() && stats.rstd[0].is_finite(),
                "{stats:?}"
            );
            assert!(
                var[1].is_nan() && mean[1].is_nan() && var[0].is_finite(),
                "{var:?}"
            );
            vars.push(var[0]);
        }
        // The layouts sum in different orders: equal to rounding.
        let (a, b) = (vars[0], vars[1]);
        assert!(
            (a - b).abs() <= 1e-6 * a.abs(),
            "channel 0: {a} vs {b}, s = {s}"
        );
    }
}

/// In channels-last data a NaN or a value whose square overflows `f32`
/// in one channel leaves every other channel's statistics and outputs
/// bit for bit as they were.
#[test]
fn channels_last_groups_depend_on_themselves_alone() {
    let mut rng = Rng::new(4);
    let (n, s, c) = (3, 50, 5);
    let shape = [n, s, c];
    let x = rng.normals(n * s * c, 0.5, 2.0);
    let dy = rng.normals(n * s * c, 0.0, 1.0);
    type Run = fn(&[f32], &[f32], &[usize]) -> (Vec<u32>, Vec<u32>, Vec<u32>);
    let bn: Run = |x, dy, shape| {
        let cfg = BatchNormConfig {
            channel_axis: ChannelAxis::Last,
            ..Default::default()
        };
        let mut y = vec![0.0; x.len()];
        let st = batch_norm_forward_train(&mut y, x, shape, Affine::NONE, None, &cfg).unwrap();
        let mut dx = vec![0.0; x.len()];
        batch_norm_backward_train(Grads::dx(&mut dx), dy, x, shape, None, &st, &cfg).unwrap();
        let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
        (b(&y), b(&dx), b(&st.rstd))
    };
    let gn: Run = |x, dy, shape| {
        let cfg = GroupNormConfig {
            num_groups: 5,
            eps: 1e-5,
            channel_axis: ChannelAxis::Last,
        };
        let mut y = vec![0.0; x.len()];
        let st = group_norm_forward(&mut y, x, shape, Affine::NONE, &cfg).unwrap();
        let mut dx = vec![0.0; x.len()];
        group_norm_backward(Grads::dx(&mut dx), dy, x, shape, None, &st, &cfg).unwrap();
        let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
        (b(&y), b(&dx), b(&st.rstd))
    };
    for run in [bn, gn] {
        let (y0, dx0, r0) = run(&x, &dy, &shape);
        for special in [f32::NAN, 1e20, f32::MAX] {
            let mut x1 = x.clone();
            x1[7 * c + 2] = special; // sample 0, position 7, channel 2
            let (y1, dx1, r1) = run(&x1, &dy, &shape);
            for i in 0..x.len() {
                if i % c != 2 {
                    assert_eq!(y0[i], y1[i], "y[{i}] moved with {special} in channel 2");
                    assert_eq!(dx0[i], dx1[i], "dx[{i}] moved with {special} in channel 2");
                }
            }
            for k in 0..r0.len() {
                if k % c != 2 {
                    assert_eq!(r0[k], r1[k], "rstd[{k}] moved with {special}");
                }
            }
        }
    }
}

/// Shapes with a zero extent beside huge ones: each op answers at once,
/// without allocating for or walking the huge extents, and errors print
/// the shape as given.
#[test]
fn hostile_shapes_answer_at_once() {
    let huge = 1usize << 33;
    let m = Modulation {
        scale: &[],
        shift: &[],
    };
    let mut y: [f32; 0] = [];
    // [2^33, 0, 2^31]: scale and shift would hold 2^64 values.
    let shape = [huge, 0, 1 << 31];
    let r = ada_layer_norm_forward(&mut y, &[], &shape, &[1 << 31], Affine::NONE, m, 1e-5);
    match r {
        Err(NormError::TooLarge { op, shape: s }) => {
            assert_eq!((op, &s[..]), ("ada_layer_norm", &shape[..]));
        }
        other => panic!("{other:?}"),
    }
    let r = ada_rms_norm_forward(&mut y, &[], &shape, &[1 << 31], None, m, 1e-5);
    assert!(matches!(r, Err(NormError::TooLarge { .. })), "{r:?}");
    // An empty batch of any row size, and empty rows of a huge batch.
    let stats = ada_layer_norm_forward(&mut y, &[], &[0, 8], &[8], Affine::NONE, m, 1e-5).unwrap();
    assert!(stats.rstd.is_empty());
    let r = ada_layer_norm_forward(&mut y, &[], &[huge, 0, 8], &[8], Affine::NONE, m, 1e-5);
    assert!(matches!(r, Err(NormError::Length { .. })), "{r:?}");

    // AdaIN: no channels in 2^40 samples is nothing to do.
    let cfg = AdaInConfig::default();
    let x_shape = [1usize << 40, 0, 5];
    let stats = adain_forward(&mut y, &[], &x_shape, &[], &[1 << 40, 0, 3], &cfg).unwrap();
    assert!(stats.content.rstd.is_empty() && stats.style_std.is_empty());
    let style_shape = [1usize << 40, 0, 3];
    let dstyle: &mut [f32] = &mut [];
    adain_backward(
        &mut y,
        Some(dstyle),
        &[],
        &[],
        &x_shape,
        &[],
        &style_shape,
        &stats,
        &cfg,
    )
    .unwrap();
    // A mismatch names the shapes as given, not their wrapped products.
    let r = adain_forward(&mut y, &[], &[1 << 62, 0, 4], &[], &[4, 2, 4], &cfg);
    match r {
        Err(e) => {
            let msg = e.to_string();
            // The batch extents as given, and the style's shape.
            assert!(msg.contains("expected 4611686018427387904"), "{msg}");
            assert!(msg.contains("[4, 2, 4]"), "{msg}");
        }
        Ok(_) => panic!("accepted a style of another batch"),
    }
}

/// `v` holds no infinity or NaN.
fn finite(what: &str, v: &[f32]) {
    assert!(v.iter().all(|x| x.is_finite()), "{what}: {v:?}");
}

/// RMSNorm (against the reference), adaRMS, AdaIN's content, SwitchNorm
/// and Batch Renormalization on rows and channels of `±f32::MAX`: every
/// exact result is finite, and so is every value computed.
#[test]
fn other_ops_of_max_values_are_finite() {
    let m = f32::MAX;
    let (x, shape) = ([m, -m, m, 1.0, 2.0, 4.0], [2, 3]);
    let dy = [1.0f32, -0.5, 2.0, 1.0, 1.0, -1.0];
    let mut y = [0.0f32; 6];
    let stats = rms_norm_forward(&mut y, &x, &shape, &[3], None, 1e-5).unwrap();
    let reference = r::rms_norm(&wide(&x), 2, 3, None, 1e-5);
    close("rms y", &y, &reference.y, 1e-5);
    let mut dx = [0.0f32; 6];
    rms_norm_backward(Grads::dx(&mut dx), &dy, &x, &shape, &[3], None, &stats).unwrap();
    let g = r::rms_norm_backward(&wide(&dy), &wide(&x), 2, 3, None, 1e-5);
    close("rms dx", &dx, &g.dx, 1e-5);

    let (scale, shift) = ([0.5f32; 6], [0.125f32; 6]);
    let md = Modulation {
        scale: &scale,
        shift: &shift,
    };
    let stats = ada_rms_norm_forward(&mut y, &x, &shape, &[3], None, md, 1e-5).unwrap();
    finite("ada_rms y", &y);
    let (mut dscale, mut dshift) = ([0.0f32; 6], [0.0f32; 6]);
    let dm = ModulationGrads {
        dscale: Some(&mut dscale),
        dshift: Some(&mut dshift),
    };
    ada_rms_norm_backward(
        Grads::dx(&mut dx),
        dm,
        &dy,
        &x,
        &shape,
        &[3],
        None,
        md,
        &stats,
    )
    .unwrap();
    finite("ada_rms dx", &dx);
    finite("ada_rms dscale", &dscale);

    // [N, C, S] = [2, 2, 2]: channel 0 holds ±MAX in both samples.
    let (x, shape) = ([m, -m, 1.0, 2.0, -m, m, 3.0, 4.0], [2, 2, 2]);
    let dy = [1.0f32, -2.0, 0.5, 1.0, 1.0, -1.0, 2.0, 0.25];
    let style = [1.0f32, 3.0, -1.0, 0.5, 2.0, 2.5, 0.0, 1.0];
    let cfg = AdaInConfig::default();
    let mut y = [0.0f32; 8];
    let stats = adain_forward(&mut y, &x, &shape, &style, &shape, &cfg).unwrap();
    finite("adain y", &y);
    let (mut dx, mut dstyle) = ([0.0f32; 8], [0.0f32; 8]);
    adain_backward(
        &mut dx,
        Some(&mut dstyle),
        &dy,
        &x,
        &shape,
        &style,
        &shape,
        &stats,
        &cfg,
    )
    .unwrap();
    finite("adain dx", &dx);
    finite("adain dstyle", &dstyle);

    let logits = [0.0f32; 3];
    let weights = SwitchWeights {
        mean_weight: &logits,
        var_weight: &logits,
    };
    let cfg = SwitchNormConfig::default();
    let stats =
        switch_norm_forward_train(&mut y, &x, &shape, Affine::NONE, weights, None, &cfg).unwrap();
    finite("switch y", &y);
    let (mut dmw, mut dvw) = ([0.0f32; 3], [0.0f32; 3]);
    let dweights = SwitchGrads {
        dmean_weight: Some(&mut dmw),
        dvar_weight: Some(&mut dvw),
    };
    let grads = Grads::dx(&mut dx[..]);
    switch_norm_backward(
        grads, dweights, &dy, &x, &shape, None, weights, &stats, &cfg,
    )
    .unwrap();
    finite("switch dx", &dx);
    finite("switch dweights", &[dmw, dvw].concat());

    let (mut mean, mut var) = ([0.0f32; 2], [1.0f32; 2]);
    let running = RunningStats {
        mean: &mut mean,
        var: &mut var,
    };
    let cfg = BatchRenormConfig::default();
    let stats =
        batch_renorm_forward_train(&mut y, &x, &shape, Affine::NONE, running, &cfg).unwrap();
    finite("renorm y", &y);
    batch_renorm_backward_train(Grads::dx(&mut dx), &dy, &x, &shape, None, &stats, &cfg).unwrap();
    finite("renorm dx", &dx);
    // Channel 0's exact running variance (about MAX²/10) is out of range:
    // only channel 1's must be finite.
    assert!(
        mean[1].is_finite() && var[1].is_finite(),
        "{mean:?} {var:?}"
    );
}
