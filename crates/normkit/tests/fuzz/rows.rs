//! Fuzz cases of the entry points over rows: LayerNorm, RMSNorm, their
//! modulated forms, the residual add fused with either, Dynamic Tanh,
//! Dynamic erf, WeightNorm and BatchNorm folding.

use normkit::*;

use super::gen::{fresh, fresh_opt, numel, out, out_opt, Call, Case, Gen, Sent};
use super::Tally;

/// Runs `$f::<T>($args)` for a random element type.
macro_rules! any_dtype {
    ($g:expr, $f:ident($($a:expr),*)) => {
        match $g.rng.between(0, 2) {
            0 => $f::<f32>($($a),*),
            1 => $f::<bf16>($($a),*),
            _ => $f::<f16>($($a),*),
        }
    };
}
pub(super) use any_dtype;

/// `Some(len)` when `v` is absent or `len` long.
pub fn fits(v: &Option<Vec<f32>>, len: Option<usize>) -> bool {
    v.as_ref().is_none_or(|v| Some(v.len()) == len)
}

/// Values for a slice whose right length is `right`.
pub fn input<T: Sent>(g: &mut Gen, right: Option<usize>) -> Vec<T> {
    let len = g.len(right);
    g.values(len)
}

/// Parameters (present 70% of the time) for a slice of length `right`.
pub fn param(g: &mut Gen, right: Option<usize>) -> Option<Vec<f32>> {
    let len = g.len(right);
    g.maybe_params(len)
}

/// An output buffer for a slice of length `right`.
pub fn output<T: Sent>(g: &mut Gen, right: Option<usize>) -> Vec<T> {
    let len = g.len(right);
    fresh(len)
}

/// An optional gradient output for a slice of length `right`.
pub fn grad(g: &mut Gen, right: Option<usize>) -> Option<Vec<f32>> {
    let len = g.len(right);
    fresh_opt(g, len)
}

/// Saved statistics for a backward pass: the forward's when it succeeded
/// (now and then damaged), else random ones of about `rows` values.
pub fn saved_stats(g: &mut Gen, fwd: Option<Stats>, rows: Option<usize>) -> Stats {
    let mut s = fwd.unwrap_or_else(|| {
        let (a, b) = (g.len(rows), g.len(rows));
        Stats {
            mean: g.params(a),
            rstd: g.params(b),
        }
    });
    g.damage(&mut s.mean);
    g.damage(&mut s.rstd);
    s
}

pub fn layer_norm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, layer_norm_case(g, t))
}

/// The shapes of a row op: the input's, `normalized_shape`, and their
/// element counts `n`, `d` and `rows = n / d` (`None` on overflow).
#[allow(clippy::type_complexity)]
fn row_shapes(g: &mut Gen) -> (Vec<usize>, Vec<usize>, [Option<usize>; 3]) {
    let shape = g.shape(0, 4);
    let normalized = g.trailing(&shape);
    let (n, d) = (numel(&shape), numel(&normalized));
    let rows = n.zip(d).and_then(|(n, d)| n.checked_div(d));
    (shape, normalized, [n, d, rows])
}

fn layer_norm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let (shape, normalized, [n, d, rows]) = row_shapes(g);
    let (rms, eps) = (g.rng.chance(0.4), g.eps());
    let x: Vec<T> = input(g, n);
    let mut y: Vec<T> = output(g, n);
    let w = param(g, d);
    let b = if rms { None } else { param(g, d) };
    let case = Case {
        desc: format!(
            "{} shape {shape:?} normalized {normalized:?} eps {eps:e} rms {rms}, lengths x {} y {} w {:?} b {:?}",
            T::NAME,
            x.len(),
            y.len(),
            w.as_ref().map(Vec::len),
            b.as_ref().map(Vec::len)
        ),
    };
    let op = if rms { "rms_norm" } else { "layer_norm" };
    let lens_ok = Some(x.len()) == n && Some(y.len()) == n && fits(&w, d) && fits(&b, d);
    let shapes: [&[usize]; 2] = [&shape, &normalized];
    let call = Call::new(&case, op, lens_ok, &shapes);
    let r = if rms {
        rms_norm_forward(&mut y, &x, &shape, &normalized, w.as_deref(), eps)
    } else {
        let affine = Affine {
            weight: w.as_deref(),
            bias: b.as_deref(),
        };
        layer_norm_forward(&mut y, &x, &shape, &normalized, affine, eps)
    };
    let ok = call.verdict(&r, &[Some(out("y", &y))], &[]);
    t.add("fn", &format!("{op}_forward"), ok);

    let stats = saved_stats(g, r.ok(), rows);
    let dy: Vec<T> = input(g, n);
    let mut dx: Vec<T> = output(g, n);
    let mut dw = grad(g, d);
    let mut db = if rms && g.rng.chance(0.9) {
        None
    } else {
        grad(g, d)
    };
    let lens_ok = Some(x.len()) == n
        && fits(&w, d)
        && Some(dy.len()) == n
        && Some(dx.len()) == n
        && fits(&dw, d)
        && fits(&db, d)
        && Some(stats.rstd.len()) == rows
        && (rms || Some(stats.mean.len()) == rows)
        && !(rms && db.is_some());
    let call = Call::new(&case, op, lens_ok, &shapes);
    let grads = Grads {
        dx: &mut dx,
        dweight: dw.as_deref_mut(),
        dbias: db.as_deref_mut(),
    };
    let r = if rms {
        rms_norm_backward(grads, &dy, &x, &shape, &normalized, w.as_deref(), &stats)
    } else {
        layer_norm_backward(grads, &dy, &x, &shape, &normalized, w.as_deref(), &stats)
    };
    let outs = [
        Some(out("dx", &dx)),
        out_opt("dweight", &dw),
        out_opt("dbias", &db),
    ];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("fn", &format!("{op}_backward"), ok);
}

pub fn ada_norm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, ada_norm_case(g, t))
}

fn ada_norm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let (shape, normalized, [n, d, rows]) = row_shapes(g);
    let (rms, eps) = (g.rng.chance(0.4), g.eps());
    let nd = shape.first().zip(d).and_then(|(&s, d)| s.checked_mul(d));
    let x: Vec<T> = input(g, n);
    let mut y: Vec<T> = output(g, n);
    let (scale, shift) = (g.params_for(nd), g.params_for(nd));
    let w = param(g, d);
    let b = if rms { None } else { param(g, d) };
    let case = Case {
        desc: format!(
            "{} shape {shape:?} normalized {normalized:?} eps {eps:e} rms {rms}, lengths x {} y {} scale {} shift {} w {:?} b {:?}",
            T::NAME,
            x.len(),
            y.len(),
            scale.len(),
            shift.len(),
            w.as_ref().map(Vec::len),
            b.as_ref().map(Vec::len)
        ),
    };
    let op = if rms {
        "ada_rms_norm"
    } else {
        "ada_layer_norm"
    };
    let m = Modulation {
        scale: &scale,
        shift: &shift,
    };
    let lens_ok = Some(x.len()) == n
        && Some(y.len()) == n
        && Some(scale.len()) == nd
        && Some(shift.len()) == nd
        && fits(&w, d)
        && fits(&b, d);
    let shapes: [&[usize]; 2] = [&shape, &normalized];
    let call = Call::new(&case, op, lens_ok, &shapes);
    let affine = Affine {
        weight: w.as_deref(),
        bias: b.as_deref(),
    };
    let r = if rms {
        ada_rms_norm_forward(&mut y, &x, &shape, &normalized, w.as_deref(), m, eps)
    } else {
        ada_layer_norm_forward(&mut y, &x, &shape, &normalized, affine, m, eps)
    };
    let ok = call.verdict(&r, &[Some(out("y", &y))], &[]);
    t.add("fn", &format!("{op}_forward"), ok);

    let stats = saved_stats(g, r.ok(), rows);
    let dy: Vec<T> = input(g, n);
    let mut dx: Vec<T> = output(g, n);
    let (mut dw, mut dscale, mut dshift) = (grad(g, d), grad(g, nd), grad(g, nd));
    let mut db = if rms { None } else { grad(g, d) };
    let lens_ok = Some(x.len()) == n
        && Some(scale.len()) == nd
        && Some(shift.len()) == nd
        && fits(&w, d)
        && fits(&b, d)
        && Some(dy.len()) == n
        && Some(dx.len()) == n
        && fits(&dw, d)
        && fits(&db, d)
        && fits(&dscale, nd)
        && fits(&dshift, nd)
        && Some(stats.rstd.len()) == rows
        && (rms || Some(stats.mean.len()) == rows);
    let call = Call::new(&case, op, lens_ok, &shapes);
    let grads = Grads {
        dx: &mut dx,
        dweight: dw.as_deref_mut(),
        dbias: db.as_deref_mut(),
    };
    let dm = ModulationGrads {
        dscale: dscale.as_deref_mut(),
        dshift: dshift.as_deref_mut(),
    };
    let r = if rms {
        let w = w.as_deref();
        ada_rms_norm_backward(grads, dm, &dy, &x, &shape, &normalized, w, m, &stats)
    } else {
        ada_layer_norm_backward(grads, dm, &dy, &x, &shape, &normalized, affine, m, &stats)
    };
    let outs = [
        Some(out("dx", &dx)),
        out_opt("dweight", &dw),
        out_opt("dbias", &db),
        out_opt("dscale", &dscale),
        out_opt("dshift", &dshift),
    ];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("fn", &format!("{op}_backward"), ok);
}

pub fn add_norm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, add_norm_case(g, t))
}

/// The residual add fused with LayerNorm or RMSNorm: two inputs, two
/// outputs (`y`, `sum`); the backward reads the forward's `sum` and an
/// optional `dsum`.
fn add_norm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let (shape, normalized, [n, d, rows]) = row_shapes(g);
    let (rms, eps) = (g.rng.chance(0.4), g.eps());
    let x: Vec<T> = input(g, n);
    let residual: Vec<T> = input(g, n);
    let mut y: Vec<T> = output(g, n);
    let mut sum: Vec<T> = output(g, n);
    let w = param(g, d);
    let b = if rms { None } else { param(g, d) };
    let case = Case {
        desc: format!(
            "{} shape {shape:?} normalized {normalized:?} eps {eps:e} rms {rms}, lengths x {} residual {} y {} sum {} w {:?} b {:?}",
            T::NAME,
            x.len(),
            residual.len(),
            y.len(),
            sum.len(),
            w.as_ref().map(Vec::len),
            b.as_ref().map(Vec::len)
        ),
    };
    let op = if rms {
        "add_rms_norm"
    } else {
        "add_layer_norm"
    };
    let lens_ok = [x.len(), residual.len(), y.len(), sum.len()]
        .iter()
        .all(|&l| Some(l) == n)
        && fits(&w, d)
        && fits(&b, d);
    let shapes: [&[usize]; 2] = [&shape, &normalized];
    let call = Call::new(&case, op, lens_ok, &shapes);
    let r = if rms {
        add_rms_norm_forward(
            &mut y,
            &mut sum,
            &x,
            &residual,
            &shape,
            &normalized,
            w.as_deref(),
            eps,
        )
    } else {
        let affine = Affine {
            weight: w.as_deref(),
            bias: b.as_deref(),
        };
        add_layer_norm_forward(
            &mut y,
            &mut sum,
            &x,
            &residual,
            &shape,
            &normalized,
            affine,
            eps,
        )
    };
    let outs = [Some(out("y", &y)), Some(out("sum", &sum))];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("fn", &format!("{op}_forward"), ok);

    // The backward reads the forward's `sum` when there is one (values
    // otherwise: a refused forward left sentinels in it).
    let sum: Vec<T> = if ok && g.rng.chance(0.9) {
        sum
    } else {
        input(g, n)
    };
    let stats = saved_stats(g, r.ok(), rows);
    let dy: Vec<T> = input(g, n);
    let dsum: Option<Vec<T>> = g.rng.chance(0.6).then(|| input(g, n));
    let mut dx: Vec<T> = output(g, n);
    let mut dw = grad(g, d);
    let mut db = if rms && g.rng.chance(0.9) {
        None
    } else {
        grad(g, d)
    };
    let lens_ok = Some(sum.len()) == n
        && fits(&w, d)
        && Some(dy.len()) == n
        && dsum.as_ref().is_none_or(|v| Some(v.len()) == n)
        && Some(dx.len()) == n
        && fits(&dw, d)
        && fits(&db, d)
        && Some(stats.rstd.len()) == rows
        && (rms || Some(stats.mean.len()) == rows)
        && !(rms && db.is_some());
    let call = Call::new(&case, op, lens_ok, &shapes);
    let grads = Grads {
        dx: &mut dx,
        dweight: dw.as_deref_mut(),
        dbias: db.as_deref_mut(),
    };
    let (ds, w) = (dsum.as_deref(), w.as_deref());
    let r = if rms {
        add_rms_norm_backward(grads, &dy, ds, &sum, &shape, &normalized, w, &stats)
    } else {
        add_layer_norm_backward(grads, &dy, ds, &sum, &shape, &normalized, w, &stats)
    };
    let outs = [
        Some(out("dx", &dx)),
        out_opt("dweight", &dw),
        out_opt("dbias", &db),
    ];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("fn", &format!("{op}_backward"), ok);
}

/// The channel count of a `[N, C, *]` / `[*, C]` shape, as the op reads it.
pub fn channels(shape: &[usize], axis: ChannelAxis) -> Option<usize> {
    match axis {
        ChannelAxis::First => shape.get(1).copied(),
        ChannelAxis::Last => shape.last().copied(),
    }
}

pub fn dyt(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, pointwise_case(g, t, Pointwise::Dyt))
}

pub fn derf(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, pointwise_case(g, t, Pointwise::Derf))
}

/// The elementwise stand-ins for a norm: the same arguments but Derf's
/// `shift`.
#[derive(Clone, Copy, PartialEq)]
enum Pointwise {
    Dyt,
    Derf,
}

/// A scalar of DyT's or Derf's (`alpha`, `shift`): mostly moderate, now and
/// then zero, huge or not a number.
fn pointwise_scalar(g: &mut Gen) -> f32 {
    g.rng.pick(&[
        0.5,
        0.5,
        0.0,
        -2.0,
        1e30,
        -f32::MAX,
        f32::NAN,
        f32::INFINITY,
    ])
}

fn pointwise_case<T: Sent>(g: &mut Gen, t: &mut Tally, which: Pointwise) {
    let shape = g.shape(0, 4);
    let axis = g.axis();
    let alpha = pointwise_scalar(g);
    let shift = (which == Pointwise::Derf).then(|| pointwise_scalar(g));
    let op = if shift.is_some() { "derf" } else { "dyt" };
    let (n, c) = (numel(&shape), channels(&shape, axis));
    let x: Vec<T> = input(g, n);
    let mut y: Vec<T> = output(g, n);
    let (w, b) = (param(g, c), param(g, c));
    let case = Case {
        desc: format!(
            "{} {op} shape {shape:?} {axis:?} alpha {alpha:e} shift {shift:?}, lengths x {} y {} w {:?} b {:?}",
            T::NAME,
            x.len(),
            y.len(),
            w.as_ref().map(Vec::len),
            b.as_ref().map(Vec::len)
        ),
    };
    let lens_ok = Some(x.len()) == n && Some(y.len()) == n && fits(&w, c) && fits(&b, c);
    let shapes: [&[usize]; 1] = [&shape];
    let call = Call::new(&case, op, lens_ok, &shapes);
    let affine = Affine {
        weight: w.as_deref(),
        bias: b.as_deref(),
    };
    let r = match shift {
        Some(shift) => derf_forward(&mut y, &x, &shape, alpha, shift, affine, axis),
        None => dyt_forward(&mut y, &x, &shape, alpha, affine, axis),
    };
    let ok = call.verdict(&r, &[Some(out("y", &y))], &[]);
    t.add("fn", &format!("{op}_forward"), ok);

    let dy: Vec<T> = input(g, n);
    let mut dx: Vec<T> = output(g, n);
    let (mut dw, mut db) = (grad(g, c), grad(g, c));
    let lens_ok = Some(x.len()) == n
        && Some(dy.len()) == n
        && Some(dx.len()) == n
        && fits(&w, c)
        && fits(&dw, c)
        && fits(&db, c);
    let call = Call::new(&case, op, lens_ok, &shapes);
    let grads = Grads {
        dx: &mut dx,
        dweight: dw.as_deref_mut(),
        dbias: db.as_deref_mut(),
    };
    let w = w.as_deref();
    // The scalar gradients are values, not outputs written in place.
    let r = match shift {
        Some(shift) => derf_backward(grads, &dy, &x, &shape, alpha, shift, w, axis).map(drop),
        None => dyt_backward(grads, &dy, &x, &shape, alpha, w, axis).map(drop),
    };
    let outs = [
        Some(out("dx", &dx)),
        out_opt("dweight", &dw),
        out_opt("dbias", &db),
    ];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("fn", &format!("{op}_backward"), ok);
}

pub fn weight_norm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, weight_norm_case(g, t))
}

fn weight_norm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let shape = g.shape(0, 4);
    let dim = if g.rng.chance(0.2) {
        None
    } else {
        Some(g.rng.between(0, 10) as isize - 5)
    };
    let n = numel(&shape);
    let rank = shape.len() as isize;
    let kept = match dim {
        None => Some(1),
        Some(d) if (-rank..rank).contains(&d) => Some(shape[d.rem_euclid(rank.max(1)) as usize]),
        Some(_) => None,
    };
    let v: Vec<T> = input(g, n);
    let mut w: Vec<T> = output(g, n);
    let gain = g.params_for(kept);
    let case = Case {
        desc: format!(
            "{} shape {shape:?} dim {dim:?}, lengths v {} w {} g {}",
            T::NAME,
            v.len(),
            w.len(),
            gain.len()
        ),
    };
    let lens_ok = Some(v.len()) == n && Some(w.len()) == n && Some(gain.len()) == kept;
    let shapes: [&[usize]; 1] = [&shape];
    let call = Call::new(&case, "weight_norm", lens_ok, &shapes);
    let r = weight_norm_forward(&mut w, &v, &shape, &gain, dim);
    let ok = call.verdict(&r, &[Some(out("w", &w))], &[]);
    t.add("fn", "weight_norm_forward", ok);

    let mut norms = r.unwrap_or_else(|_| g.params_for(kept));
    g.damage(&mut norms);
    let dw: Vec<T> = input(g, n);
    let mut dv: Vec<T> = output(g, n);
    let mut dg: Vec<f32> = {
        let l = g.len(kept);
        fresh(l)
    };
    let lens_ok = Some(v.len()) == n
        && Some(gain.len()) == kept
        && Some(dw.len()) == n
        && Some(dv.len()) == n
        && Some(dg.len()) == kept
        && Some(norms.len()) == kept;
    let call = Call::new(&case, "weight_norm", lens_ok, &shapes);
    let r = weight_norm_backward(&mut dv, &mut dg, &dw, &v, &shape, &gain, dim, &norms);
    let outs = [Some(out("dv", &dv)), Some(out("dg", &dg))];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("fn", "weight_norm_backward", ok);
}

pub fn fold(g: &mut Gen, t: &mut Tally) {
    let c = g.rng.between(0, 6);
    let row = g.rng.between(0, 5);
    let weight = g.params_for(Some(c * row));
    let bias = param(g, Some(c));
    let l = g.len(Some(c));
    let (mean, mut var) = g.running(l);
    var.resize(g.len(Some(mean.len())), 1.0);
    let (bw, bb) = (param(g, Some(c)), param(g, Some(c)));
    let eps = g.eps();
    let mut weight_out: Vec<f32> = fresh(g.len(Some(weight.len())));
    let mut bias_out: Vec<f32> = fresh(g.len(Some(mean.len())));
    let case = Case {
        desc: format!(
            "c {c} row {row} eps {eps:e}, lengths weight {} mean {} var {} out {} {}",
            weight.len(),
            mean.len(),
            var.len(),
            weight_out.len(),
            bias_out.len()
        ),
    };
    let m = mean.len();
    let lens_ok = m > 0
        && weight.len().is_multiple_of(m)
        && var.len() == m
        && fits(&bias, Some(m))
        && fits(&bw, Some(m))
        && fits(&bb, Some(m))
        && weight_out.len() == weight.len()
        && bias_out.len() == m;
    let shape = [weight.len()];
    let shapes: [&[usize]; 1] = [&shape];
    let call = Call::new(&case, "fold_batch_norm", lens_ok, &shapes);
    let bn = BatchNormEval {
        running_mean: &mean,
        running_var: &var,
        weight: bw.as_deref(),
        bias: bb.as_deref(),
        eps,
    };
    let r = fold_batch_norm(&mut weight_out, &mut bias_out, &weight, bias.as_deref(), bn);
    let outs = [
        Some(out("weight_out", &weight_out)),
        Some(out("bias_out", &bias_out)),
    ];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("fn", "fold_batch_norm", ok);
}
