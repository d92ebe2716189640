//! Dynamic Tanh.

use crate::elem::Elem;
use crate::error::Result;
use crate::lanes::{BLOCK, LANES};
use crate::layout::{
    check_affine, check_grads, check_len, numel, Affine, ChannelAxis, Geometry, Grads,
};
use crate::normalize::{Partials, Plan, Scope};
use crate::parallel::{
    as_f32, chunk_items, f32_target, items_per_chunk, map_chunks, store_f32, Buffer, SharedMut,
};
use crate::simd::multiversion;
use crate::tanh::{tanh, tanh_sech2};
use std::ops::Range;

const OP: &str = "dyt";

/// Every row of channels (channels last) or every channel plane (channels
/// first) as one "sample" of a one-group plan, so its runs visit each value
/// once with its channel.
fn plan(shape: &[usize], axis: ChannelAxis) -> Result<Plan> {
    let geo = match (axis, shape.len()) {
        (ChannelAxis::Last, 1) => Geometry {
            n: 1,
            c: shape[0],
            s: 1,
            axis,
        },
        _ => Geometry::channels(OP, shape, axis)?,
    };
    numel(OP, shape)?;
    let mut p = Plan {
        geo,
        scope: Scope::PerSample { groups: 1 },
        centered: false,
    };
    if p.geo.s == 1 {
        // [n, c, 1] is [n, 1, c] in memory: rows of channels, not runs of one.
        p.geo.axis = ChannelAxis::Last;
    }
    if p.geo.axis == ChannelAxis::Last && p.geo.s > 1 {
        // Each position's row of channels is its own unit of work.
        p.geo.n *= p.geo.s;
        p.geo.s = 1;
    }
    Ok(p)
}

/// Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025, "Transformers without
/// Normalization"): an elementwise replacement for LayerNorm.
///
/// ```text
/// y = weight · tanh(alpha · x) + bias
/// ```
///
/// where
/// - `alpha` is one learnable scalar (the paper initializes it to 0.5);
/// - `weight`, `bias` are optional and per channel (initialized to 1, 0);
/// - tanh is computed in `f32` within 3 ulp ([`crate::tanh`]).
///
/// # Shapes
/// - `x`, `y`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2);
/// - `weight`, `bias`: `[C]`.
pub fn dyt_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    alpha: f32,
    affine: Affine<'_>,
    channel_axis: ChannelAxis,
) -> Result<()> {
    let p = plan(shape, channel_axis)?;
    check_len(OP, "x", x.len(), p.geo.len(), shape)?;
    check_len(OP, "y", y.len(), p.geo.len(), shape)?;
    check_affine(OP, affine, p.geo.c, shape)?;
    // An empty input may still have huge extents: do not walk its runs.
    if x.is_empty() {
        return Ok(());
    }
    let c = p.geo.c;
    let weight = affine.weight.map_or_else(|| vec![1.0; c], <[f32]>::to_vec);
    let bias = affine.bias.map_or_else(|| vec![0.0; c], <[f32]>::to_vec);
    let (groups, size) = (p.num_groups(), p.group_size());
    let per_chunk = items_per_chunk(groups, size, 0);
    let y = SharedMut::new(y);
    map_chunks(groups.div_ceil(per_chunk), x.len(), |i| {
        forward_chunk(
            &p,
            chunk_items(i, per_chunk, groups),
            &y,
            x,
            alpha,
            &weight,
            &bias,
        )
    });
    Ok(())
}

/// Backward of [`dyt_forward`]; returns `dalpha`. With `t = tanh(alpha·x)`:
///
/// ```text
/// dx      = dy · weight · (1 - t²) · alpha
/// dalpha  = Σ dy · weight · (1 - t²) · x
/// dweight = Σ dy · t        dbias = Σ dy      (per channel)
/// ```
pub fn dyt_backward<T: Elem>(
    mut grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    alpha: f32,
    weight: Option<&[f32]>,
    channel_axis: ChannelAxis,
) -> Result<f32> {
    let p = plan(shape, channel_axis)?;
    let (len, c) = (p.geo.len(), p.geo.c);
    check_len(OP, "x", x.len(), len, shape)?;
    check_len(OP, "dy", dy.len(), len, shape)?;
    check_grads(OP, &grads, len, c, shape)?;
    check_affine(OP, Affine { weight, bias: None }, c, shape)?;
    if len == 0 {
        // Empty sums, without walking the runs of a possibly huge shape.
        for out in [grads.dweight, grads.dbias].into_iter().flatten() {
            out.fill(0.0);
        }
        return Ok(0.0);
    }
    let weight = weight.map_or_else(|| vec![1.0; c], <[f32]>::to_vec);
    let (groups, size) = (p.num_groups(), p.group_size());
    let per_chunk = items_per_chunk(groups, size, c * 24);
    let dx = SharedMut::new(grads.dx);
    let parts = map_chunks(groups.div_ceil(per_chunk), len, |i| {
        backward_chunk(
            &p,
            chunk_items(i, per_chunk, groups),
            &dx,
            dy,
            x,
            alpha,
            &weight,
        )
    });
    grads.dx = &mut [];
    let dalpha = parts.iter().map(|(_, da)| da).sum::<f64>();
    Partials::finish(parts.into_iter().map(|(p, _)| p).collect(), c, grads);
    Ok(dalpha as f32)
}

multiversion! {
    fn forward_chunk<T: Elem>(
        p: &Plan,
        groups: Range<usize>,
        y: &SharedMut<'_, T>,
        x: &[T],
        alpha: f32,
        weight: &[f32],
        bias: &[f32],
    ) {
        let widen = if T::as_f32(x).is_some() { 0 } else { p.group_size() };
        let (mut xbuf, mut ybuf) = (Buffer::take(widen), Buffer::take(widen));
        for k in groups {
            for run in p.runs(k) {
                let xr = as_f32(&x[run.range()], &mut xbuf);
                // SAFETY: every value lies in exactly one run of one group,
                // and every group in one chunk.
                let yr = unsafe { y.range(run.range()) };
                let o = f32_target(yr, &mut ybuf);
                if run.per_element {
                    let cs = run.channel..run.channel + run.len;
                    let it = o.iter_mut().zip(xr).zip(&weight[cs.clone()]).zip(&bias[cs]);
                    for (((o, &v), &w), &b) in it {
                        *o = w.mul_add(tanh(alpha * v), b);
                    }
                } else {
                    let (w, b) = (weight[run.channel], bias[run.channel]);
                    for (o, &v) in o.iter_mut().zip(xr) {
                        *o = w.mul_add(tanh(alpha * v), b);
                    }
                }
                store_f32(yr, &ybuf);
            }
        }
    }
}

const L: usize = LANES;

/// One value of the backward pass: `(dx, dt · x, t)` with
/// `dt = dy · w · (1 - t²)`, the derivative taken from [`tanh_sech2`] so
/// it stays accurate as `|t|` nears 1.
#[inline(always)]
fn bwd_one(d: f32, v: f32, alpha: f32, w: f32) -> (f32, f32, f32) {
    let (t, sech2) = tanh_sech2(alpha * v);
    let dt = d * w * sech2;
    (dt * alpha, dt * v, t)
}

/// Backward over a channels-last row: writes dx, adds `dy · t` and `dy`
/// into the per-channel sums, returns `Σ dt · x`.
#[inline(always)]
fn bwd_row(
    out: &mut [f32],
    dy: &[f32],
    x: &[f32],
    alpha: f32,
    w: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) -> f64 {
    let mut da = [0.0f32; L];
    let n = out.len() - out.len() % L;
    let (oh, ot) = out.split_at_mut(n);
    let (dwh, dwt) = dw.split_at_mut(n);
    let (dbh, dbt) = db.split_at_mut(n);
    let it = oh
        .chunks_exact_mut(L)
        .zip(dy.chunks_exact(L))
        .zip(x.chunks_exact(L))
        .zip(w.chunks_exact(L))
        .zip(dwh.chunks_exact_mut(L))
        .zip(dbh.chunks_exact_mut(L));
    for (((((o, d), v), w), dw), db) in it {
        for l in 0..L {
            let (g, gx, t) = bwd_one(d[l], v[l], alpha, w[l]);
            o[l] = g;
            da[l] += gx;
            dw[l] = d[l].mul_add(t, dw[l]);
            db[l] += d[l];
        }
    }
    let tail = ot
        .iter_mut()
        .zip(&dy[n..])
        .zip(&x[n..])
        .zip(&w[n..])
        .zip(dwt)
        .zip(dbt);
    for (((((o, &d), &v), &wv), dw), db) in tail {
        let (g, gx, t) = bwd_one(d, v, alpha, wv);
        *o = g;
        da[0] += gx;
        *dw = d.mul_add(t, *dw);
        *db += d;
    }
    da.iter().map(|&v| v as f64).sum()
}

/// Backward over a run of one channel: writes dx, returns
/// `[Σ dt · x, Σ dy · t, Σ dy]`, in `f32` lanes within blocks.
#[inline(always)]
fn bwd_run(out: &mut [f32], dy: &[f32], x: &[f32], alpha: f32, w: f32) -> [f64; 3] {
    let mut total = [0.0f64; 3];
    for ((ob, db), xb) in out
        .chunks_mut(BLOCK)
        .zip(dy.chunks(BLOCK))
        .zip(x.chunks(BLOCK))
    {
        let mut acc = [[0.0f32; L]; 3];
        let n = ob.len() - ob.len() % L;
        let (oh, ot) = ob.split_at_mut(n);
        for ((o, d), v) in oh
            .chunks_exact_mut(L)
            .zip(db.chunks_exact(L))
            .zip(xb.chunks_exact(L))
        {
            for l in 0..L {
                let (g, gx, t) = bwd_one(d[l], v[l], alpha, w);
                o[l] = g;
                acc[0][l] += gx;
                acc[1][l] = d[l].mul_add(t, acc[1][l]);
                acc[2][l] += d[l];
            }
        }
        for ((o, &d), &v) in ot.iter_mut().zip(&db[n..]).zip(&xb[n..]) {
            let (g, gx, t) = bwd_one(d, v, alpha, w);
            *o = g;
            acc[0][0] += gx;
            acc[1][0] += d * t;
            acc[2][0] += d;
        }
        for (t, a) in total.iter_mut().zip(&acc) {
            *t += a.iter().map(|&v| v as f64).sum::<f64>();
        }
    }
    total
}

multiversion! {
    fn backward_chunk<T: Elem>(
        p: &Plan,
        groups: Range<usize>,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        alpha: f32,
        weight: &[f32],
    ) -> (Partials, f64) {
        let c = p.geo.c;
        let mut parts = Partials::new(c);
        let (mut dw32, mut db32) = (vec![0.0f32; c], vec![0.0f32; c]);
        let mut dalpha = 0.0f64;
        let widen = if T::as_f32(x).is_some() { 0 } else { p.group_size() };
        let (mut xbuf, mut dbuf, mut obuf) = (Buffer::take(widen), Buffer::take(widen), Buffer::take(widen));
        for (done, k) in groups.enumerate() {
            for run in p.runs(k) {
                let (xr, dr) = (as_f32(&x[run.range()], &mut xbuf), as_f32(&dy[run.range()], &mut dbuf));
                // SAFETY: as in forward_chunk.
                let out = unsafe { dx.range(run.range()) };
                let o = f32_target(out, &mut obuf);
                if run.per_element {
                    let cs = run.channel..run.channel + run.len;
                    let (w, dw, db) = (&weight[cs.clone()], &mut dw32[cs.clone()], &mut db32[cs]);
                    dalpha += bwd_row(o, dr, xr, alpha, w, dw, db);
                } else {
                    let [da, dw, db] = bwd_run(o, dr, xr, alpha, weight[run.channel]);
                    dalpha += da;
                    parts.dweight[run.channel] += dw;
                    parts.dbias[run.channel] += db;
                }
                store_f32(out, &obuf);
            }
            if (done + 1) % crate::lanes::ROWS_PER_FLUSH == 0 {
                parts.add_f32(&mut dw32, &mut db32);
            }
        }
        parts.add_f32(&mut dw32, &mut db32);
        (parts, dalpha)
    }
}
