//! Inner loops over contiguous `f32` slices, written over blocks of
//! [`LANES`] values with two independent accumulators per quantity so that
//! they compile to vector code inside a [`multiversion!`] entry point.
//!
//! Reductions sum in `f32` lanes within a block of [`BLOCK`] values (32
//! values per lane accumulator) and in `f64` across blocks, so the rounding
//! error grows with 32 rather than n; callers pass deviations from a
//! provisional mean, which keeps each term small.
//!
//! [`multiversion!`]: crate::simd::multiversion

// Lane loops index several arrays by the same lane on purpose: that is
// the shape the vectorizer turns into one vector instruction per line.
#![allow(clippy::needless_range_loop)]

pub(crate) use crate::simd::LANES;

/// Values per `f32` accumulation block.
pub(crate) const BLOCK: usize = 1024;
const STEP: usize = 2 * LANES;

#[inline(always)]
fn total(acc: &[[f32; LANES]; 2]) -> f64 {
    let mut t = 0.0f64;
    for l in 0..LANES {
        t += acc[0][l] as f64 + acc[1][l] as f64;
    }
    t
}

/// `max(m, |v|)` as one compare-and-select (a NaN is skipped, which is
/// fine for choosing a scale: NaN reaches the sums anyway).
#[inline(always)]
fn max_abs(m: f32, v: f32) -> f32 {
    let a = v.abs();
    if a > m {
        a
    } else {
        m
    }
}

#[inline(always)]
fn step(c: &[f32]) -> &[f32; STEP] {
    c.try_into().unwrap()
}

/// `(Σx, max|x|)`.
#[inline(always)]
pub(crate) fn sum_maxabs(x: &[f32]) -> (f64, f32) {
    let mut sum = 0.0f64;
    let mut mx = [0.0f32; STEP];
    for block in x.chunks(BLOCK) {
        let mut acc = [[0.0f32; LANES]; 2];
        let chunks = block.chunks_exact(STEP);
        let tail = chunks.remainder();
        for c in chunks {
            let c = step(c);
            for l in 0..LANES {
                acc[0][l] += c[l];
                acc[1][l] += c[LANES + l];
            }
            for l in 0..STEP {
                mx[l] = max_abs(mx[l], c[l]);
            }
        }
        for (l, &v) in tail.iter().enumerate() {
            acc[l / LANES][l % LANES] += v;
            mx[l] = max_abs(mx[l], v);
        }
        sum += total(&acc);
    }
    (sum, mx.iter().fold(0.0f32, |m, &v| max_abs(m, v)))
}

/// `(Σd, Σd²)` with `d = x · scale - shift`.
#[inline(always)]
pub(crate) fn dev_sums(x: &[f32], scale: f32, shift: f32) -> (f64, f64) {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for block in x.chunks(BLOCK) {
        let mut a1 = [[0.0f32; LANES]; 2];
        let mut a2 = [[0.0f32; LANES]; 2];
        let chunks = block.chunks_exact(STEP);
        let tail = chunks.remainder();
        for c in chunks {
            let c = step(c);
            for h in 0..2 {
                for l in 0..LANES {
                    let d = c[h * LANES + l].mul_add(scale, -shift);
                    a1[h][l] += d;
                    a2[h][l] = d.mul_add(d, a2[h][l]);
                }
            }
        }
        for (l, &v) in tail.iter().enumerate() {
            let d = v.mul_add(scale, -shift);
            a1[l / LANES][l % LANES] += d;
            a2[l / LANES][l % LANES] += d * d;
        }
        s1 += total(&a1);
        s2 += total(&a2);
    }
    (s1, s2)
}

/// `y = ((x - mean_hi) - mean_lo) · a + b` with scalar coefficients.
#[inline(always)]
pub(crate) fn apply_scalar(y: &mut [f32], x: &[f32], mean_hi: f32, mean_lo: f32, a: f32, b: f32) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = ((xv - mean_hi) - mean_lo).mul_add(a, b);
    }
}

/// `y = ((x - mean_hi) - mean_lo) · rstd · w + b` with per-element `w`, `b`.
#[inline(always)]
pub(crate) fn apply_vec(
    y: &mut [f32],
    x: &[f32],
    mean_hi: f32,
    mean_lo: f32,
    rstd: f32,
    w: &[f32],
    b: &[f32],
) {
    for (((yv, &xv), &wv), &bv) in y.iter_mut().zip(x).zip(w).zip(b) {
        *yv = (((xv - mean_hi) - mean_lo) * rstd).mul_add(wv, bv);
    }
}

/// `y = ((x - mean_hi[i]) - mean_lo[i]) · a[i] + b[i]`: per-channel
/// coefficients on channels-last data.
#[inline(always)]
pub(crate) fn apply_channels(
    y: &mut [f32],
    x: &[f32],
    mean_hi: &[f32],
    mean_lo: &[f32],
    a: &[f32],
    b: &[f32],
) {
    let it = y.iter_mut().zip(x).zip(mean_hi).zip(mean_lo).zip(a).zip(b);
    for (((((yv, &xv), &mh), &ml), &av), &bv) in it {
        *yv = ((xv - mh) - ml).mul_add(av, bv);
    }
}

/// Backward pass 1 on a run of one channel: `[Σdy, Σdy·x̂, Σx̂]` where
/// `x̂ = (x - mean) · rstd` (the caller scales by the channel's weight).
#[inline(always)]
pub(crate) fn bwd_sums_scalar(dy: &[f32], x: &[f32], mean: f32, rstd: f32) -> [f64; 3] {
    let mut out = [0.0f64; 3];
    for (bd, bx) in dy.chunks(BLOCK).zip(x.chunks(BLOCK)) {
        let mut acc = [[[0.0f32; LANES]; 2]; 3];
        let (cd, cx) = (bd.chunks_exact(STEP), bx.chunks_exact(STEP));
        let (td, tx) = (cd.remainder(), cx.remainder());
        for (d, xs) in cd.zip(cx) {
            let (d, xs) = (step(d), step(xs));
            for h in 0..2 {
                for l in 0..LANES {
                    let i = h * LANES + l;
                    let xh = (xs[i] - mean) * rstd;
                    acc[0][h][l] += d[i];
                    acc[1][h][l] = d[i].mul_add(xh, acc[1][h][l]);
                    acc[2][h][l] += xh;
                }
            }
        }
        for (l, (&d, &xv)) in td.iter().zip(tx).enumerate() {
            let xh = (xv - mean) * rstd;
            acc[0][l / LANES][l % LANES] += d;
            acc[1][l / LANES][l % LANES] += d * xh;
            acc[2][l / LANES][l % LANES] += xh;
        }
        for k in 0..3 {
            out[k] += total(&acc[k]);
        }
    }
    out
}

/// Backward pass 1 with per-element weight `w` (LayerNorm rows).
#[inline(always)]
pub(crate) fn bwd_sums_vec(dy: &[f32], x: &[f32], mean: f32, rstd: f32, w: &[f32]) -> [f64; 3] {
    let mut out = [0.0f64; 3];
    for ((bd, bx), bw) in dy.chunks(BLOCK).zip(x.chunks(BLOCK)).zip(w.chunks(BLOCK)) {
        let mut acc = [[[0.0f32; LANES]; 2]; 3];
        let (cd, cx, cw) = (
            bd.chunks_exact(STEP),
            bx.chunks_exact(STEP),
            bw.chunks_exact(STEP),
        );
        let (td, tx, tw) = (cd.remainder(), cx.remainder(), cw.remainder());
        for ((d, xs), ws) in cd.zip(cx).zip(cw) {
            let (d, xs, ws) = (step(d), step(xs), step(ws));
            for h in 0..2 {
                for l in 0..LANES {
                    let i = h * LANES + l;
                    let xh = (xs[i] - mean) * rstd;
                    let g = d[i] * ws[i];
                    acc[0][h][l] += g;
                    acc[1][h][l] = g.mul_add(xh, acc[1][h][l]);
                    acc[2][h][l] += xh;
                }
            }
        }
        for (l, ((&d, &xv), &wv)) in td.iter().zip(tx).zip(tw).enumerate() {
            let xh = (xv - mean) * rstd;
            let g = d * wv;
            acc[0][l / LANES][l % LANES] += g;
            acc[1][l / LANES][l % LANES] += g * xh;
            acc[2][l / LANES][l % LANES] += xh;
        }
        for k in 0..3 {
            out[k] += total(&acc[k]);
        }
    }
    out
}

/// Coefficients of backward pass 2 for one group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DxCoef {
    pub mean_hi: f32,
    pub mean_lo: f32,
    pub rstd: f32,
    /// `mean(g)` (0 when the op does not center).
    pub mean_g: f32,
    /// `mean(g · x̂)`.
    pub mean_gx: f32,
}

/// Backward pass 2 on a run of one channel:
/// `dx = rstd · (dy · w - mean_g - x̂ · mean_gx)`.
#[inline(always)]
pub(crate) fn bwd_dx_scalar(dx: &mut [f32], dy: &[f32], x: &[f32], k: DxCoef, w: f32) {
    let wr = w * k.rstd;
    let (mg, mgx) = (k.mean_g * k.rstd, k.mean_gx * k.rstd);
    for ((o, &d), &xv) in dx.iter_mut().zip(dy).zip(x) {
        let xh = ((xv - k.mean_hi) - k.mean_lo) * k.rstd;
        *o = d.mul_add(wr, -xh.mul_add(mgx, mg));
    }
}

/// Backward pass 2 with per-element weight (LayerNorm rows): writes dx and
/// adds `dy · x̂` and `dy` into the per-element partial sums.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn bwd_dx_vec(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    k: DxCoef,
    w: &[f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
) {
    let (mg, mgx) = (k.mean_g * k.rstd, k.mean_gx * k.rstd);
    let it = dx
        .iter_mut()
        .zip(dy)
        .zip(x)
        .zip(w)
        .zip(dweight.iter_mut())
        .zip(dbias.iter_mut());
    for (((((o, &d), &xv), &wv), dw), db) in it {
        let xh = ((xv - k.mean_hi) - k.mean_lo) * k.rstd;
        *o = (d * wv).mul_add(k.rstd, -xh.mul_add(mgx, mg));
        *dw = d.mul_add(xh, *dw);
        *db += d;
    }
}

// Channels-last rows: one value per channel, accumulators per channel.
// Callers flush the `f32` accumulators into `f64` every [`ROWS_PER_FLUSH`]
// rows, the column counterpart of [`BLOCK`].

/// Rows accumulated in `f32` before a flush into `f64`.
pub(crate) const ROWS_PER_FLUSH: usize = 32;

/// `sum[c] += x[c]`, `maxabs[c] = max(maxabs[c], |x[c]|)`.
#[inline(always)]
pub(crate) fn col_sum_maxabs(x: &[f32], sum: &mut [f32], maxabs: &mut [f32]) {
    for ((&v, s), m) in x.iter().zip(sum.iter_mut()).zip(maxabs.iter_mut()) {
        *s += v;
        *m = max_abs(*m, v);
    }
}

/// `d = x · scale[c] - shift[c]`; `s1[c] += d`, `s2[c] += d²`.
#[inline(always)]
pub(crate) fn col_dev_sums(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    s1: &mut [f32],
    s2: &mut [f32],
) {
    let it = x
        .iter()
        .zip(scale)
        .zip(shift)
        .zip(s1.iter_mut())
        .zip(s2.iter_mut());
    for ((((&v, &sc), &sh), a), b) in it {
        let d = v.mul_add(sc, -sh);
        *a += d;
        *b = d.mul_add(d, *b);
    }
}

/// Backward pass 1 on a channels-last row, `x̂ = (x - mean[c]) · rstd[c]`:
/// `s0[c] += dy`, `s1[c] += dy · x̂`, `s2[c] += x̂`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn col_bwd_sums(
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    s0: &mut [f32],
    s1: &mut [f32],
    s2: &mut [f32],
) {
    let it = dy
        .iter()
        .zip(x)
        .zip(mean)
        .zip(rstd)
        .zip(s0.iter_mut())
        .zip(s1.iter_mut())
        .zip(s2.iter_mut());
    for ((((((&d, &xv), &m), &r), a), b), c) in it {
        let xh = (xv - m) * r;
        *a += d;
        *b = d.mul_add(xh, *b);
        *c += xh;
    }
}

/// Per-channel coefficients of backward pass 2 on channels-last rows.
pub(crate) struct DxChannels<'a> {
    pub mean_hi: &'a [f32],
    pub mean_lo: &'a [f32],
    pub rstd: &'a [f32],
    /// `weight · rstd`.
    pub wr: &'a [f32],
    /// `rstd · mean(g)` of the channel's group.
    pub cg: &'a [f32],
    /// `rstd · mean(g · x̂)` of the channel's group.
    pub cgx: &'a [f32],
}

/// `dx = dy · wr[c] - (x̂ · cgx[c] + cg[c])`.
#[inline(always)]
pub(crate) fn bwd_dx_channels(dx: &mut [f32], dy: &[f32], x: &[f32], k: &DxChannels<'_>) {
    let it = dx
        .iter_mut()
        .zip(dy)
        .zip(x)
        .zip(k.mean_hi)
        .zip(k.mean_lo)
        .zip(k.rstd)
        .zip(k.wr)
        .zip(k.cg)
        .zip(k.cgx);
    for ((((((((o, &d), &xv), &mh), &ml), &r), &wr), &cg), &cgx) in it {
        let xh = ((xv - mh) - ml) * r;
        *o = d.mul_add(wr, -xh.mul_add(cgx, cg));
    }
}
