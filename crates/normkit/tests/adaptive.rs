//! The adaptive ops — AdaIN, modulated LayerNorm/RMSNorm, Switchable
//! Normalization, Batch Renormalization — against their `f64` twins (whose
//! gradients are central differences of the written-out forward), plus the
//! properties that define them: AdaIN hands over the style's statistics,
//! Batch Renorm with `r_max = 1`, `d_max = 0` is BatchNorm bit for bit.

use crate::common::{assert_close, cast, max_abs, rounding, wide, Rng, Rounding, Scale};
use normkit::reference::{self, Dims};
use normkit::{
    ada_layer_norm_backward, ada_layer_norm_forward, ada_rms_norm_backward, ada_rms_norm_forward,
    adain_backward, adain_forward, batch_norm_backward_train, batch_norm_forward_train,
    batch_renorm_backward_train, batch_renorm_forward_eval, batch_renorm_forward_train, bf16, f16,
    switch_norm_backward, switch_norm_forward_eval, switch_norm_forward_train, AdaInConfig, Affine,
    BatchNormConfig, BatchRenormConfig, ChannelAxis, Elem, Grads, Modulation, ModulationGrads,
    Momentum, NormError, RenormSchedule, RunningStats, SwitchGrads, SwitchNormConfig,
    SwitchWeights,
};

/// f32 kernels against f64 definitions, relative to each output's largest
/// magnitude. The kernels' own error is a few 1e-7 of that; the
/// central-difference gradients of the twins add about 1e-9. A wrong term
/// errs by order one.
const TOL: f64 = 2e-5;

const AXES: [ChannelAxis; 2] = [ChannelAxis::First, ChannelAxis::Last];

fn shape_of(n: usize, c: usize, spatial: &[usize], axis: ChannelAxis) -> Vec<usize> {
    let mut s = vec![n];
    if axis == ChannelAxis::First {
        s.push(c);
    }
    s.extend_from_slice(spatial);
    if axis == ChannelAxis::Last {
        s.push(c);
    }
    s
}

/// Spatial extents for small random cases (the twins' gradients cost a
/// forward pass per value): one to three dimensions, odd sizes included.
fn spatial(rng: &mut Rng, least: usize) -> Vec<usize> {
    loop {
        let rank = rng.between(1, 3);
        let dims: Vec<usize> = (0..rank).map(|_| rng.between(1, 6)).collect();
        if dims.iter().product::<usize>() >= least {
            return dims;
        }
    }
}

fn check<T: Elem>(what: &str, got: &[f64], expected: &[f64]) {
    let scale = max_abs(expected).max(1e-30);
    assert_close(what, got, expected, Scale::All(scale), TOL, rounding::<T>());
}

fn check32(what: &str, got: &[f32], expected: &[f64]) {
    check::<f32>(what, &wide(got), expected);
}

/// For gradients, whose exact values can cancel to nearly nothing (a
/// variance below eps, two values a group): the error is measured against
/// the larger of the result and `floor`, the size of the terms it is
/// computed from.
fn check_grad<T: Elem>(what: &str, got: &[f64], expected: &[f64], floor: f64) {
    let scale = max_abs(expected).max(floor).max(1e-30);
    assert_close(what, got, expected, Scale::All(scale), TOL, rounding::<T>());
}

fn max32(v: &[f32]) -> f64 {
    max_abs(&wide(v))
}

fn adain_case<T: Elem>(rng: &mut Rng, axis: ChannelAxis, unbiased: bool) {
    let (n, c) = (rng.between(1, 3), rng.between(1, 4));
    let least = if unbiased { 2 } else { 1 };
    let (xs, ss) = (spatial(rng, least), spatial(rng, least));
    let (x_shape, s_shape) = (shape_of(n, c, &xs, axis), shape_of(n, c, &ss, axis));
    let x: Vec<T> = cast(&rng.normals(x_shape.iter().product(), 0.5, 2.0));
    let style: Vec<T> = cast(&rng.normals(s_shape.iter().product(), -1.0, 0.7));
    let dy: Vec<T> = cast(&rng.normals(x.len(), 0.0, 1.0));
    let cfg = AdaInConfig {
        eps: 1e-3,
        unbiased,
        channel_axis: axis,
    };
    let mut y = vec![T::from_f32(f32::NAN); x.len()];
    let stats = adain_forward(&mut y, &x, &x_shape, &style, &s_shape, &cfg).unwrap();
    let (xd, sd) = (Dims::of(&x_shape, axis), Dims::of(&s_shape, axis));
    let (xw, sw, dyw) = (wide(&x), wide(&style), wide(&dy));
    let expected = reference::adain(&xw, xd, &sw, sd, 1e-3, unbiased);
    let what = format!(
        "adain {} {x_shape:?} style {s_shape:?} unbiased={unbiased}",
        T::NAME
    );
    check::<T>(&format!("{what} y"), &wide(&y), &expected);

    let mut dx = vec![T::from_f32(f32::NAN); x.len()];
    let mut ds = vec![T::from_f32(f32::NAN); style.len()];
    adain_backward(
        &mut dx,
        Some(&mut ds),
        &dy,
        &x,
        &x_shape,
        &style,
        &s_shape,
        &stats,
        &cfg,
    )
    .unwrap();
    let (edx, eds) = reference::adain_backward(&dyw, &xw, xd, &sw, sd, 1e-3, unbiased);
    // dx = σ(s)/σ(x) · (g - mean(g) - x̂ · mean(g · x̂)) in effect; dstyle
    // sums M values of dy per M' style values, times x̂ and ŝ.
    let gain = (0..n * c)
        .map(|k| stats.style_std[k] as f64 * stats.content.rstd[k] as f64)
        .fold(0.0, f64::max);
    let (m, m2) = (xd.s as f64, sd.s as f64);
    let dmax = max_abs(&dyw);
    check_grad::<T>(
        &format!("{what} dx"),
        &wide(&dx),
        &edx,
        gain * dmax * (2.0 + m.sqrt()),
    );
    let floor = dmax * m / m2 * (1.0 + m.sqrt() * m2.sqrt());
    check_grad::<T>(&format!("{what} dstyle"), &wide(&ds), &eds, floor);
}

#[test]
fn adain_matches_reference() {
    let mut rng = Rng::new(71);
    for round in 0..12 {
        for axis in AXES {
            let unbiased = round % 3 != 0;
            adain_case::<f32>(&mut rng, axis, unbiased);
            if round % 4 == 0 {
                adain_case::<bf16>(&mut rng, axis, unbiased);
                adain_case::<f16>(&mut rng, axis, unbiased);
            }
        }
    }
}

/// The defining property: each (sample, channel) of the output has the
/// style's mean and standard deviation (exactly so with eps = 0).
#[test]
fn adain_output_has_the_style_statistics() {
    let mut rng = Rng::new(72);
    for unbiased in [true, false] {
        for axis in AXES {
            let (n, c) = (3, 4);
            let (x_shape, s_shape) = (shape_of(n, c, &[9, 7], axis), shape_of(n, c, &[5, 6], axis));
            let x = rng.normals(n * c * 63, 3.0, 2.5);
            let style = rng.normals(n * c * 30, -2.0, 0.3);
            let cfg = AdaInConfig {
                eps: 0.0,
                unbiased,
                channel_axis: axis,
            };
            let mut y = vec![0.0f32; x.len()];
            adain_forward(&mut y, &x, &x_shape, &style, &s_shape, &cfg).unwrap();
            let (xd, sd) = (Dims::of(&x_shape, axis), Dims::of(&s_shape, axis));
            let moments = |v: &[f32], d: Dims, k: usize| {
                let vals: Vec<f64> = (0..d.s).map(|s| v[d.at(k / c, k % c, s)] as f64).collect();
                let m = vals.len() as f64;
                let mean = vals.iter().sum::<f64>() / m;
                let ss: f64 = vals.iter().map(|v| (v - mean) * (v - mean)).sum();
                let div = if unbiased { m - 1.0 } else { m };
                (mean, (ss / div).sqrt())
            };
            for k in 0..n * c {
                let (ym, ys) = moments(&y, xd, k);
                let (sm, ss) = moments(&style, sd, k);
                assert!(
                    (ym - sm).abs() <= 1e-6 * (sm.abs() + ss),
                    "mean {ym} vs {sm}"
                );
                assert!((ys - ss).abs() <= 1e-5 * ss, "std {ys} vs {ss}");
            }
        }
    }
}

/// A content with a large mean: the statistics keep their digits, and the
/// gradients equal those of the same content shifted to mean zero (AdaIN
/// does not depend on the content's mean, nor its style gradient on the
/// style's).
#[test]
fn adain_is_exact_for_large_means() {
    let mut rng = Rng::new(73);
    let shape = [2, 3, 8, 8];
    // Values on a 2⁻¹⁰ grid, so that adding 8192 or 4096 is exact in f32
    // and both inputs hold the same deviations.
    let grid = |v: Vec<f32>| {
        v.iter()
            .map(|a| (a * 1024.0).round() / 1024.0)
            .collect::<Vec<f32>>()
    };
    let x0 = grid(rng.normals(384, 0.0, 1.0));
    let s0 = grid(rng.normals(384, 0.0, 0.5));
    let dy = rng.normals(384, 0.0, 1.0);
    let shift = |v: &[f32], by: f32| v.iter().map(|&a| a + by).collect::<Vec<f32>>();
    let cfg = AdaInConfig::default();
    let run = |x: &[f32], s: &[f32]| {
        let mut y = vec![0.0f32; 384];
        let st = adain_forward(&mut y, x, &shape, s, &shape, &cfg).unwrap();
        let (mut dx, mut ds) = (vec![0.0f32; 384], vec![0.0f32; 384]);
        adain_backward(&mut dx, Some(&mut ds), &dy, x, &shape, s, &shape, &st, &cfg).unwrap();
        (y, dx, ds)
    };
    let (x1, s1) = (shift(&x0, 8192.0), shift(&s0, 4096.0));
    let d = Dims::of(&shape, ChannelAxis::First);
    let expected = reference::adain(&wide(&x1), d, &wide(&s1), d, 1e-5, true);
    let (y1, dx1, ds1) = run(&x1, &s1);
    let (_, dx0, ds0) = run(&x0, &s0);
    // y is near 4096: its own f32 rounding is 2.4e-4; the error must not
    // be larger than a few of those.
    let err = y1
        .iter()
        .zip(&expected)
        .fold(0.0f64, |m, (g, e)| m.max((*g as f64 - e).abs()));
    assert!(err < 1e-3, "y error {err}");
    let dmax = max_abs(&wide(&dx0));
    assert_close(
        "dx",
        &wide(&dx1),
        &wide(&dx0),
        Scale::All(dmax),
        1e-5,
        Rounding::NONE,
    );
    let smax = max_abs(&wide(&ds0));
    assert_close(
        "dstyle",
        &wide(&ds1),
        &wide(&ds0),
        Scale::All(smax),
        1e-5,
        Rounding::NONE,
    );
}

fn ada_norm_case<T: Elem>(rng: &mut Rng, centered: bool) {
    let n = rng.between(1, 3);
    let rows = rng.between(1, 4);
    let dims: Vec<usize> = if rng.chance(0.3) {
        vec![rng.between(1, 4), rng.between(1, 5)]
    } else {
        vec![rng.between(1, 19)]
    };
    let d: usize = dims.iter().product();
    let mut shape = vec![n];
    let with_rows = rows > 1 || rng.chance(0.5);
    if with_rows {
        shape.push(rows);
    }
    shape.extend_from_slice(&dims);
    let x: Vec<T> = cast(&rng.normals(n * rows * d, 0.7, 1.5));
    let dy: Vec<T> = cast(&rng.normals(x.len(), 0.0, 1.0));
    let (scale, shift) = (rng.normals(n * d, 0.0, 0.5), rng.normals(n * d, 0.0, 0.5));
    let weight = rng.maybe_param(d);
    let bias = if centered { rng.maybe_param(d) } else { None };
    let m = Modulation {
        scale: &scale,
        shift: &shift,
    };
    let eps = 1e-3;
    let mut y = vec![T::from_f32(f32::NAN); x.len()];
    let stats = if centered {
        let affine = Affine {
            weight: weight.as_deref(),
            bias: bias.as_deref(),
        };
        ada_layer_norm_forward(&mut y, &x, &shape, &dims, affine, m, eps).unwrap()
    } else {
        ada_rms_norm_forward(&mut y, &x, &shape, &dims, weight.as_deref(), m, eps).unwrap()
    };
    let (ww, bw) = (
        weight.as_ref().map(|w| wide(w)),
        bias.as_ref().map(|b| wide(b)),
    );
    let (xw, dyw, sc, sh) = (wide(&x), wide(&dy), wide(&scale), wide(&shift));
    let expected = reference::ada_norm(
        &xw,
        n,
        rows,
        d,
        ww.as_deref(),
        bw.as_deref(),
        &sc,
        &sh,
        eps as f64,
        centered,
    );
    let what = format!("ada_norm centered={centered} {} {shape:?}", T::NAME);
    check::<T>(&format!("{what} y"), &wide(&y), &expected);

    let mut dx = vec![T::from_f32(f32::NAN); x.len()];
    let (mut dw, mut db) = (vec![f32::NAN; d], vec![f32::NAN; d]);
    let (mut dscale, mut dshift) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
    let grads = Grads {
        dx: &mut dx,
        dweight: weight.is_some().then_some(&mut dw[..]),
        dbias: bias.is_some().then_some(&mut db[..]),
    };
    let dm = ModulationGrads {
        dscale: Some(&mut dscale),
        dshift: Some(&mut dshift),
    };
    if centered {
        let affine = Affine {
            weight: weight.as_deref(),
            bias: bias.as_deref(),
        };
        ada_layer_norm_backward(grads, dm, &dy, &x, &shape, &dims, affine, m, &stats).unwrap();
    } else {
        ada_rms_norm_backward(
            grads,
            dm,
            &dy,
            &x,
            &shape,
            &dims,
            weight.as_deref(),
            m,
            &stats,
        )
        .unwrap();
    }
    let g = reference::ada_norm_backward(
        &dyw,
        &xw,
        n,
        rows,
        d,
        ww.as_deref(),
        bw.as_deref(),
        &sc,
        &sh,
        eps as f64,
        centered,
    );
    let dmax = max_abs(&dyw);
    let wmax = weight.as_deref().map_or(1.0, max32);
    let bmax = bias.as_deref().map_or(0.0, max32);
    let gain = max32(&stats.rstd) * wmax * (1.0 + max32(&scale));
    let root_d = (d as f64).sqrt();
    let dx_floor = gain * dmax * (2.0 + root_d);
    check_grad::<T>(&format!("{what} dx"), &wide(&dx), &g.dx, dx_floor);
    // Sums over a sample's rows of dy times x̂ · weight + bias.
    let floor = rows as f64 * dmax * (root_d * wmax + bmax + 1.0) * (1.0 + max32(&scale));
    check_grad::<f32>(&format!("{what} dscale"), &wide(&dscale), &g.dscale, floor);
    check_grad::<f32>(&format!("{what} dshift"), &wide(&dshift), &g.dshift, floor);
    if weight.is_some() {
        check_grad::<f32>(
            &format!("{what} dweight"),
            &wide(&dw),
            &g.dweight,
            n as f64 * floor,
        );
    }
    if bias.is_some() {
        check_grad::<f32>(
            &format!("{what} dbias"),
            &wide(&db),
            &g.dbias,
            n as f64 * floor,
        );
    }
}

#[test]
fn modulated_layer_and_rms_norm_match_reference() {
    let mut rng = Rng::new(74);
    for round in 0..16 {
        for centered in [true, false] {
            ada_norm_case::<f32>(&mut rng, centered);
            if round % 4 == 0 {
                ada_norm_case::<bf16>(&mut rng, centered);
            }
        }
    }
}

/// A zero modulation is the plain norm (adaLN-Zero's starting point).
#[test]
fn zero_modulation_is_layer_norm() {
    let mut rng = Rng::new(75);
    let (shape, d) = ([3, 5, 24], 24);
    let x = rng.normals(360, 1.0, 2.0);
    let (w, b) = (rng.normals(d, 1.0, 0.3), rng.normals(d, 0.0, 0.3));
    let zeros = vec![0.0f32; 3 * d];
    let m = Modulation {
        scale: &zeros,
        shift: &zeros,
    };
    let (mut y1, mut y2) = (vec![0.0f32; 360], vec![0.0f32; 360]);
    ada_layer_norm_forward(&mut y1, &x, &shape, &[d], Affine::new(&w, &b), m, 1e-5).unwrap();
    normkit::layer_norm_forward(&mut y2, &x, &shape, &[d], Affine::new(&w, &b), 1e-5).unwrap();
    assert_eq!(y1, y2);
}

fn switch_case(rng: &mut Rng, axis: ChannelAxis, training: bool) {
    let (n, c) = (rng.between(1, 3), rng.between(1, 4));
    let sp = spatial(rng, if n == 1 { 2 } else { 1 });
    let shape = shape_of(n, c, &sp, axis);
    let len: usize = shape.iter().product();
    let x = rng.normals(len, 0.3, 1.7);
    let dy = rng.normals(len, 0.0, 1.0);
    let weight = rng.maybe_param(c);
    let bias = rng.maybe_param(c);
    let (mw, vw) = (rng.normals(3, 0.0, 1.0), rng.normals(3, 0.0, 1.0));
    let (rm, rv) = (rng.normals(c, 0.0, 1.0), rng.uniforms(c, 0.5, 2.0));
    let cfg = SwitchNormConfig {
        eps: 1e-3,
        momentum: Momentum::Exponential(0.2),
        channel_axis: axis,
    };
    let affine = Affine {
        weight: weight.as_deref(),
        bias: bias.as_deref(),
    };
    let weights = SwitchWeights {
        mean_weight: &mw,
        var_weight: &vw,
    };
    let mut y = vec![f32::NAN; len];
    let (mut rm2, mut rv2) = (rm.clone(), rv.clone());
    let stats = if training {
        let running = RunningStats {
            mean: &mut rm2,
            var: &mut rv2,
        };
        switch_norm_forward_train(&mut y, &x, &shape, affine, weights, Some(running), &cfg)
    } else {
        switch_norm_forward_eval(&mut y, &x, &shape, affine, weights, &rm, &rv, &cfg)
    }
    .unwrap();
    let d = Dims::of(&shape, axis);
    let (xw, dyw) = (wide(&x), wide(&dy));
    let (ww, bw) = (
        weight.as_ref().map(|w| wide(w)),
        bias.as_ref().map(|b| wide(b)),
    );
    let (rmw, rvw) = (wide(&rm), wide(&rv));
    let running = (!training).then_some((&rmw[..], &rvw[..]));
    let (mww, vww) = (wide(&mw), wide(&vw));
    let expected = reference::switch_norm(
        &xw,
        d,
        ww.as_deref(),
        bw.as_deref(),
        &mww,
        &vww,
        running,
        1e-3,
    );
    let what = format!("switch_norm {shape:?} training={training}");
    check32(&format!("{what} y"), &y, &expected);
    if training {
        let (em, ev) = reference::batch_norm_running_update(&xw, d, &rmw, &rvw, 0.2);
        check32(&format!("{what} running_mean"), &rm2, &em);
        check32(&format!("{what} running_var"), &rv2, &ev);
    }
    let mut dx = vec![f32::NAN; len];
    let (mut dwt, mut dbs) = (vec![f32::NAN; c], vec![f32::NAN; c]);
    let (mut dmw, mut dvw) = (vec![f32::NAN; 3], vec![f32::NAN; 3]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dwt),
        dbias: Some(&mut dbs),
    };
    let dweights = SwitchGrads {
        dmean_weight: Some(&mut dmw),
        dvar_weight: Some(&mut dvw),
    };
    switch_norm_backward(
        grads,
        dweights,
        &dy,
        &x,
        &shape,
        weight.as_deref(),
        weights,
        &stats,
        &cfg,
    )
    .unwrap();
    let g = reference::switch_norm_backward(
        &dyw,
        &xw,
        d,
        ww.as_deref(),
        bw.as_deref(),
        &mww,
        &vww,
        running,
        1e-3,
    );
    // x̂ under the mixed statistics, whose variance may be far from the
    // instance's own.
    let xhat_max = (0..len)
        .map(|i| {
            let k = match axis {
                ChannelAxis::First => i / d.s,
                ChannelAxis::Last => i / (d.s * c) * c + i % c,
            };
            (xw[i] - stats.mean[k]).abs() * stats.rstd[k] as f64
        })
        .fold(0.0, f64::max);
    let dmax = max_abs(&dyw);
    let wmax = weight.as_deref().map_or(1.0, max32);
    let gain = max32(&stats.rstd) * wmax;
    let dx_floor = 3.0 * gain * dmax * (2.0 + xhat_max);
    check_grad::<f32>(&format!("{what} dx"), &wide(&dx), &g.dx, dx_floor);
    let sums = dyw.iter().map(|v| v.abs()).sum::<f64>();
    let floor = sums * (1.0 + xhat_max);
    check_grad::<f32>(
        &format!("{what} dweight"),
        &wide(&dwt),
        &g.dweight,
        floor / c as f64,
    );
    check_grad::<f32>(
        &format!("{what} dbias"),
        &wide(&dbs),
        &g.dbias,
        floor / c as f64,
    );
    let mu = max_abs(&stats.mean).max(1.0);
    let floor = sums * gain * (1.0 + xhat_max) * mu;
    check_grad::<f32>(
        &format!("{what} dmean_weight"),
        &wide(&dmw),
        &g.dmean_weight,
        floor,
    );
    check_grad::<f32>(
        &format!("{what} dvar_weight"),
        &wide(&dvw),
        &g.dvar_weight,
        floor,
    );
}

#[test]
fn switch_norm_matches_reference() {
    let mut rng = Rng::new(76);
    for _ in 0..10 {
        for axis in AXES {
            for training in [true, false] {
                switch_case(&mut rng, axis, training);
            }
        }
    }
}

/// With all importance on one family, Switchable Normalization is that
/// normalization.
#[test]
fn switch_norm_with_one_family_is_that_norm() {
    let mut rng = Rng::new(77);
    let shape = [4, 3, 5, 6];
    let x = rng.normals(360, 2.0, 3.0);
    let (w, b) = (rng.normals(3, 1.0, 0.2), rng.normals(3, 0.0, 0.2));
    let cfg = SwitchNormConfig::default();
    let only = |k: usize| {
        let mut l = [-1e4f32; 3];
        l[k] = 0.0;
        l
    };
    let run = |k: usize| {
        let l = only(k);
        let weights = SwitchWeights {
            mean_weight: &l,
            var_weight: &l,
        };
        let mut y = vec![0.0f32; 360];
        switch_norm_forward_train(&mut y, &x, &shape, Affine::new(&w, &b), weights, None, &cfg)
            .unwrap();
        y
    };
    let mut expected = vec![0.0f32; 360];
    normkit::group_norm_forward(
        &mut expected,
        &x,
        &shape,
        Affine::new(&w, &b),
        &normkit::GroupNormConfig::new(3),
    )
    .unwrap();
    check32("IN", &run(0), &wide(&expected));
    normkit::group_norm_forward(
        &mut expected,
        &x,
        &shape,
        Affine::new(&w, &b),
        &normkit::GroupNormConfig::new(1),
    )
    .unwrap();
    check32("LN", &run(1), &wide(&expected));
    let bn = BatchNormConfig::default();
    batch_norm_forward_train(&mut expected, &x, &shape, Affine::new(&w, &b), None, &bn).unwrap();
    check32("BN", &run(2), &wide(&expected));
}

fn renorm_case(rng: &mut Rng, axis: ChannelAxis) {
    let (n, c) = (rng.between(1, 4), rng.between(1, 5));
    let sp = spatial(rng, if n == 1 { 2 } else { 1 });
    let shape = shape_of(n, c, &sp, axis);
    let len: usize = shape.iter().product();
    let x = rng.normals(len, 0.5, 1.5);
    let dy = rng.normals(len, 0.0, 1.0);
    let (weight, bias) = (rng.maybe_param(c), rng.maybe_param(c));
    // Running statistics far enough from the batch's that some channels
    // clip and others do not.
    let (rm, rv) = (rng.normals(c, 0.5, 2.0), rng.uniforms(c, 0.05, 8.0));
    let cfg = BatchRenormConfig {
        eps: 1e-3,
        momentum: Momentum::Exponential(0.1),
        channel_axis: axis,
        r_max: 1.5,
        d_max: 0.8,
    };
    let affine = Affine {
        weight: weight.as_deref(),
        bias: bias.as_deref(),
    };
    let (mut rm2, mut rv2) = (rm.clone(), rv.clone());
    let mut y = vec![f32::NAN; len];
    let running = RunningStats {
        mean: &mut rm2,
        var: &mut rv2,
    };
    let stats = batch_renorm_forward_train(&mut y, &x, &shape, affine, running, &cfg).unwrap();
    let d = Dims::of(&shape, axis);
    let (xw, dyw, rmw, rvw) = (wide(&x), wide(&dy), wide(&rm), wide(&rv));
    let (r, dd) = reference::batch_renorm_corrections(&xw, d, &rmw, &rvw, 1e-3, 1.5, 0.8);
    check32("r", &stats.r, &r);
    check32("d", &stats.d, &dd);
    let (ww, bw) = (
        weight.as_ref().map(|w| wide(w)),
        bias.as_ref().map(|b| wide(b)),
    );
    let f = |x: &[f64], w: Option<&[f64]>, b: Option<&[f64]>| {
        reference::batch_renorm_train(x, d, w, b, &r, &dd, 1e-3)
    };
    let what = format!("batch_renorm {shape:?}");
    check32(
        &format!("{what} y"),
        &y,
        &f(&xw, ww.as_deref(), bw.as_deref()),
    );
    let (em, ev) = reference::batch_norm_running_update(&xw, d, &rmw, &rvw, 0.1);
    check32(&format!("{what} running_mean"), &rm2, &em);
    check32(&format!("{what} running_var"), &rv2, &ev);

    let mut dx = vec![f32::NAN; len];
    let (mut dw, mut db) = (vec![f32::NAN; c], vec![f32::NAN; c]);
    let grads = Grads {
        dx: &mut dx,
        dweight: weight.is_some().then_some(&mut dw[..]),
        dbias: bias.is_some().then_some(&mut db[..]),
    };
    batch_renorm_backward_train(grads, &dy, &x, &shape, weight.as_deref(), &stats, &cfg).unwrap();
    let edx = reference::vjp(|v| f(v, ww.as_deref(), bw.as_deref()), &xw, &dyw);
    check32(&format!("{what} dx"), &dx, &edx);
    if let Some(w) = &ww {
        let e = reference::vjp(|v| f(&xw, Some(v), bw.as_deref()), w, &dyw);
        check32(&format!("{what} dweight"), &dw, &e);
    }
    if let Some(b) = &bw {
        let e = reference::vjp(|v| f(&xw, ww.as_deref(), Some(v)), b, &dyw);
        check32(&format!("{what} dbias"), &db, &e);
    }
}

#[test]
fn batch_renorm_matches_reference() {
    let mut rng = Rng::new(78);
    let mut clipped = 0;
    for _ in 0..12 {
        for axis in AXES {
            renorm_case(&mut rng, axis);
        }
    }
    // The cases above must have exercised the clipping itself.
    let mut rng = Rng::new(79);
    for _ in 0..20 {
        let x = rng.normals(40, 0.0, 1.0);
        let (rm, rv) = (rng.normals(4, 0.0, 2.0), rng.uniforms(4, 0.05, 8.0));
        let d = Dims::new(10, 4, 1, ChannelAxis::Last);
        let (r, dd) = reference::batch_renorm_corrections(
            &wide(&x),
            d,
            &wide(&rm),
            &wide(&rv),
            1e-3,
            1.5,
            0.8,
        );
        clipped += r
            .iter()
            .filter(|&&r| (r - 1.5).abs() < 1e-12 || (r - 1.0 / 1.5).abs() < 1e-12)
            .count();
        clipped += dd
            .iter()
            .filter(|&&d| (d.abs() - 0.8).abs() < 1e-12)
            .count();
    }
    assert!(clipped > 10, "only {clipped} clipped corrections");
}

/// `r_max = 1`, `d_max = 0`: BatchNorm, bit for bit, forward, running
/// statistics and backward.
#[test]
fn batch_renorm_without_slack_is_batch_norm() {
    let mut rng = Rng::new(80);
    for axis in AXES {
        for affine in [true, false] {
            let shape = shape_of(6, 5, &[7, 3], axis);
            let x = rng.normals(630, 1.5, 2.0);
            let dy = rng.normals(630, 0.0, 1.0);
            let (w, b) = (rng.normals(5, 1.0, 0.5), rng.normals(5, 0.0, 0.5));
            let aff = if affine {
                Affine::new(&w, &b)
            } else {
                Affine::NONE
            };
            let (rm, rv) = (rng.normals(5, 0.0, 1.0), rng.uniforms(5, 0.5, 2.0));
            let cfg = BatchRenormConfig {
                r_max: 1.0,
                d_max: 0.0,
                channel_axis: axis,
                ..BatchRenormConfig::default()
            };
            let run_brn = || {
                let (mut m, mut v) = (rm.clone(), rv.clone());
                let mut y = vec![0.0f32; 630];
                let running = RunningStats {
                    mean: &mut m,
                    var: &mut v,
                };
                let st =
                    batch_renorm_forward_train(&mut y, &x, &shape, aff, running, &cfg).unwrap();
                let (mut dx, mut dw, mut db) =
                    (vec![0.0f32; 630], vec![0.0f32; 5], vec![0.0f32; 5]);
                let g = Grads {
                    dx: &mut dx,
                    dweight: Some(&mut dw),
                    dbias: Some(&mut db),
                };
                batch_renorm_backward_train(g, &dy, &x, &shape, aff.weight, &st, &cfg).unwrap();
                (y, m, v, dx, dw, db)
            };
            let run_bn = || {
                let (mut m, mut v) = (rm.clone(), rv.clone());
                let mut y = vec![0.0f32; 630];
                let running = RunningStats {
                    mean: &mut m,
                    var: &mut v,
                };
                let bn = cfg.batch_norm();
                let st =
                    batch_norm_forward_train(&mut y, &x, &shape, aff, Some(running), &bn).unwrap();
                let (mut dx, mut dw, mut db) =
                    (vec![0.0f32; 630], vec![0.0f32; 5], vec![0.0f32; 5]);
                let g = Grads {
                    dx: &mut dx,
                    dweight: Some(&mut dw),
                    dbias: Some(&mut db),
                };
                batch_norm_backward_train(g, &dy, &x, &shape, aff.weight, &st, &bn).unwrap();
                (y, m, v, dx, dw, db)
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let (a, b) = (run_brn(), run_bn());
            for (name, p, q) in [
                ("y", &a.0, &b.0),
                ("running_mean", &a.1, &b.1),
                ("running_var", &a.2, &b.2),
                ("dx", &a.3, &b.3),
                ("dweight", &a.4, &b.4),
                ("dbias", &a.5, &b.5),
            ] {
                assert_eq!(
                    bits(p),
                    bits(q),
                    "{name} differs ({axis:?}, affine {affine})"
                );
            }
        }
    }
}

#[test]
fn renorm_schedule_relaxes_linearly() {
    let s = RenormSchedule::default();
    assert_eq!(s.limits(0), (1.0, 0.0));
    assert_eq!(s.limits(5_000), (1.0, 0.0));
    let (r, d) = s.limits(15_000);
    assert!((r - (1.0 + 2.0 * 10.0 / 35.0)).abs() < 1e-6, "r_max {r}");
    assert!((d - 2.5).abs() < 1e-6, "d_max {d}");
    assert_eq!(s.limits(25_000).1, 5.0);
    assert_eq!(s.limits(40_000), (3.0, 5.0));
    assert_eq!(s.limits(1_000_000), (3.0, 5.0));
}

/// Bad input: typed errors naming the op, outputs untouched.
#[test]
fn adaptive_ops_refuse_bad_input() {
    let x = vec![1.0f32; 24];
    let mut y = vec![7.0f32; 24];
    let untouched = |y: &[f32]| assert!(y.iter().all(|&v| v == 7.0));

    // AdaIN: an unbiased variance of one value; mismatched channels.
    let cfg = AdaInConfig::default();
    let e = adain_forward(&mut y, &x, &[2, 3, 4], &x[..6], &[2, 3, 1], &cfg).unwrap_err();
    assert!(
        matches!(e, NormError::TooFewValues { op: "adain", .. }),
        "{e}"
    );
    let e = adain_forward(&mut y, &x, &[2, 3, 4], &x, &[2, 4, 3], &cfg).unwrap_err();
    assert!(e.to_string().starts_with("adain:"), "{e}");
    untouched(&y);

    // adaLN: modulation of the wrong size; no sample dimension.
    let (s6, s8) = (vec![0.0f32; 6], vec![0.0f32; 8]);
    let m = Modulation {
        scale: &s6,
        shift: &s8,
    };
    let e =
        ada_layer_norm_forward(&mut y, &x, &[2, 3, 4], &[4], Affine::NONE, m, 1e-5).unwrap_err();
    assert!(
        matches!(
            e,
            NormError::Length {
                op: "ada_layer_norm",
                name: "scale",
                ..
            }
        ),
        "{e}"
    );
    let m = Modulation {
        scale: &s8,
        shift: &s8,
    };
    let e = ada_rms_norm_forward(&mut y, &x, &[24], &[24], None, m, 1e-5).unwrap_err();
    assert!(
        matches!(
            e,
            NormError::NormalizedShape {
                op: "ada_rms_norm",
                ..
            }
        ),
        "{e}"
    );
    untouched(&y);

    // Switchable: one value per channel in training; three logits needed.
    let (l3, l2) = ([0.0f32; 3], [0.0f32; 2]);
    let w = SwitchWeights {
        mean_weight: &l3,
        var_weight: &l3,
    };
    let scfg = SwitchNormConfig::default();
    let e =
        switch_norm_forward_train(&mut y, &x, &[1, 24], Affine::NONE, w, None, &scfg).unwrap_err();
    assert!(
        matches!(
            e,
            NormError::TooFewValues {
                op: "switch_norm",
                ..
            }
        ),
        "{e}"
    );
    let w = SwitchWeights {
        mean_weight: &l3,
        var_weight: &l2,
    };
    let e = switch_norm_forward_train(&mut y, &x, &[2, 3, 4], Affine::NONE, w, None, &scfg)
        .unwrap_err();
    assert!(
        matches!(
            e,
            NormError::Length {
                name: "var_weight",
                ..
            }
        ),
        "{e}"
    );
    untouched(&y);

    // Batch Renorm: r_max below 1, negative d_max, NaN eps.
    let (mut m, mut v) = (vec![0.0f32; 3], vec![1.0f32; 3]);
    for cfg in [
        BatchRenormConfig {
            r_max: 0.5,
            ..BatchRenormConfig::default()
        },
        BatchRenormConfig {
            d_max: -1.0,
            ..BatchRenormConfig::default()
        },
        BatchRenormConfig {
            eps: f32::NAN,
            ..BatchRenormConfig::default()
        },
    ] {
        let running = RunningStats {
            mean: &mut m,
            var: &mut v,
        };
        let e = batch_renorm_forward_train(&mut y, &x, &[2, 3, 4], Affine::NONE, running, &cfg)
            .unwrap_err();
        assert!(e.to_string().starts_with("batch_renorm:"), "{e}");
    }
    assert_eq!(
        (m, v),
        (vec![0.0; 3], vec![1.0; 3]),
        "running stats written"
    );
    let cfg = BatchRenormConfig {
        r_max: 0.5,
        ..BatchRenormConfig::default()
    };
    let (rm, rv) = ([0.0f32; 3], [1.0f32; 3]);
    let e = batch_renorm_forward_eval(&mut y, &x, &[2, 3, 4], Affine::NONE, &rm, &rv, &cfg)
        .unwrap_err();
    assert!(
        matches!(
            e,
            NormError::Param {
                op: "batch_renorm",
                name: "r_max",
                ..
            }
        ),
        "{e}"
    );
    let cfg = BatchRenormConfig::default();
    let e = batch_renorm_forward_eval(&mut y, &x, &[2, 4, 4], Affine::NONE, &rm, &rv, &cfg)
        .unwrap_err();
    assert!(
        matches!(
            e,
            NormError::Length {
                op: "batch_renorm",
                ..
            }
        ),
        "{e}"
    );
    untouched(&y);
}

/// Results do not depend on the number of threads.
#[test]
fn adaptive_ops_are_deterministic_across_threads() {
    // Split over several threads whatever the default threshold.
    normkit::set_parallel_min(1 << 12);
    let mut rng = Rng::new(81);
    let shape = [8, 16, 24, 24];
    let len = 8 * 16 * 576;
    let x = rng.normals(len, 1.0, 2.0);
    let s = rng.normals(len, -1.0, 0.5);
    let dy = rng.normals(len, 0.0, 1.0);
    let run = || {
        let mut out = Vec::new();
        let mut y = vec![0.0f32; len];
        let cfg = AdaInConfig::default();
        let st = adain_forward(&mut y, &x, &shape, &s, &shape, &cfg).unwrap();
        let (mut dx, mut ds) = (vec![0.0f32; len], vec![0.0f32; len]);
        adain_backward(
            &mut dx,
            Some(&mut ds),
            &dy,
            &x,
            &shape,
            &s,
            &shape,
            &st,
            &cfg,
        )
        .unwrap();
        out.extend([y.clone(), dx.clone(), ds]);
        let l3 = [0.3f32, -0.2, 0.1];
        let w = SwitchWeights {
            mean_weight: &l3,
            var_weight: &l3,
        };
        let scfg = SwitchNormConfig::default();
        let st =
            switch_norm_forward_train(&mut y, &x, &shape, Affine::NONE, w, None, &scfg).unwrap();
        switch_norm_backward(
            Grads::dx(&mut dx),
            SwitchGrads::default(),
            &dy,
            &x,
            &shape,
            None,
            w,
            &st,
            &scfg,
        )
        .unwrap();
        out.extend([y.clone(), dx.clone()]);
        let mod_len = 8 * 576;
        let (sc, sh) = (&s[..mod_len], &s[mod_len..2 * mod_len]);
        let m = Modulation {
            scale: sc,
            shift: sh,
        };
        let lshape = [8, 16, 576];
        let st =
            ada_layer_norm_forward(&mut y, &x, &lshape, &[576], Affine::NONE, m, 1e-5).unwrap();
        let (mut dsc, mut dsh) = (vec![0.0f32; mod_len], vec![0.0f32; mod_len]);
        let dm = ModulationGrads {
            dscale: Some(&mut dsc),
            dshift: Some(&mut dsh),
        };
        ada_layer_norm_backward(
            Grads::dx(&mut dx),
            dm,
            &dy,
            &x,
            &lshape,
            &[576],
            Affine::NONE,
            m,
            &st,
        )
        .unwrap();
        out.extend([y.clone(), dx.clone(), dsc, dsh]);
        let (mut rm, mut rv) = (vec![0.0f32; 16], vec![1.0f32; 16]);
        let running = RunningStats {
            mean: &mut rm,
            var: &mut rv,
        };
        let bcfg = BatchRenormConfig::default();
        let st =
            batch_renorm_forward_train(&mut y, &x, &shape, Affine::NONE, running, &bcfg).unwrap();
        batch_renorm_backward_train(Grads::dx(&mut dx), &dy, &x, &shape, None, &st, &bcfg).unwrap();
        out.extend([y, dx, rm, rv]);
        out
    };
    let pool = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    };
    let one = pool(1).install(run);
    let three = pool(3).install(run);
    for (i, (a, b)) in one.iter().zip(&three).enumerate() {
        let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "output {i} differs between 1 and 3 threads");
    }
}
