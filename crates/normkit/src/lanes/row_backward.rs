//! Backward passes over a contiguous run: the sums of pass 1, `dx` of
//! pass 2, and both skewed in one loop.

use super::drivers::{reduce, write_lanewise, Lanewise, Sums, BLOCK};
use super::io::{load, load_m, load_part, store, store_m, store_part, Ahead};
use crate::elem::Elem;
use crate::simd::{Isa, LANES};

const L: usize = LANES;

/// Backward pass 1 on a run of one channel: `[Σdy, Σdy·x̂, Σx̂]` where
/// `x̂ = (x - mean) · rstd` (the caller scales by the channel's weight).
#[inline(always)]
pub(crate) fn bwd_sums_scalar<S: Isa, T: Elem>(
    s: S,
    dy: &[T],
    x: &[T],
    mean: f32,
    rstd: f32,
) -> [f64; 3] {
    struct F<'a, S: Isa, T> {
        dy: &'a [T],
        x: &'a [T],
        m: S::V,
        r: S::V,
    }
    impl<S: Isa, T: Elem> F<'_, S, T> {
        #[inline(always)]
        fn acc(&self, s: S, d: S::V, xh: S::V, acc: &mut [S::V; 3]) {
            acc[0] = s.add(acc[0], d);
            acc[1] = s.fma(d, xh, acc[1]);
            acc[2] = s.add(acc[2], xh);
        }
    }
    impl<S: Isa, T: Elem> Sums<S, 3> for F<'_, S, T> {
        #[inline(always)]
        fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 3]) {
            let xh = s.mul(s.sub(load(s, self.x, i), self.m), self.r);
            self.acc(s, load(s, self.dy, i), xh, acc);
        }
        #[inline(always)]
        fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 3]) {
            let xh = s.mul(s.sub(load_part(s, self.x, i, n), self.m), self.r);
            self.acc(s, load_part(s, self.dy, i, n), s.keep_first(xh, n), acc);
        }
    }
    let mut f = F {
        dy,
        x,
        m: s.splat(mean),
        r: s.splat(rstd),
    };
    reduce(s, x.len(), &mut f)
}

/// Backward pass 1 with per-element weight `w` (LayerNorm rows):
/// `[Σg, Σg·x̂, Σx̂]` with `g = dy · w`.
#[inline(always)]
pub(crate) fn bwd_sums_vec<S: Isa, T: Elem>(
    s: S,
    dy: &[T],
    x: &[T],
    mean: f32,
    rstd: f32,
    w: &[f32],
) -> [f64; 3] {
    struct F<'a, S: Isa, T> {
        dy: &'a [T],
        x: &'a [T],
        w: &'a [f32],
        m: S::V,
        r: S::V,
    }
    impl<S: Isa, T: Elem> F<'_, S, T> {
        #[inline(always)]
        fn acc(&self, s: S, g: S::V, xh: S::V, acc: &mut [S::V; 3]) {
            acc[0] = s.add(acc[0], g);
            acc[1] = s.fma(g, xh, acc[1]);
            acc[2] = s.add(acc[2], xh);
        }
    }
    impl<S: Isa, T: Elem> Sums<S, 3> for F<'_, S, T> {
        #[inline(always)]
        fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 3]) {
            let xh = s.mul(s.sub(load(s, self.x, i), self.m), self.r);
            let g = s.mul(load(s, self.dy, i), load(s, self.w, i));
            self.acc(s, g, xh, acc);
        }
        #[inline(always)]
        fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 3]) {
            let xh = s.mul(s.sub(load_part(s, self.x, i, n), self.m), self.r);
            let g = s.mul(load_part(s, self.dy, i, n), load_part(s, self.w, i, n));
            self.acc(s, g, s.keep_first(xh, n), acc);
        }
    }
    let mut f = F {
        dy,
        x,
        w,
        m: s.splat(mean),
        r: s.splat(rstd),
    };
    reduce(s, x.len(), &mut f)
}

/// The sweeps of the row backward, skewed: pass 1 of one group (from
/// memory) and pass 2 of the group before it (from cache) in one loop, so
/// that memory sees two input streams and one output stream at a steady
/// rate, as in a plain 2-read-1-write loop. Each half computes exactly what
/// it computes alone ([`bwd_sums_scalar`] / [`bwd_sums_vec`],
/// [`bwd_dx_scalar`] / [`bwd_dx_vec`]), in the same order.
pub(crate) struct Skewed<'a, T> {
    /// Pass 1 inputs: `dy`, `x` of the next group's run, and its saved mean
    /// and rstd.
    pub dy1: &'a [T],
    pub x1: &'a [T],
    pub mean1: f32,
    pub rstd1: f32,
    /// Pass 2 of the earlier group's run: output, inputs, coefficients.
    pub dx0: &'a mut [T],
    pub dy0: &'a [T],
    pub x0: &'a [T],
    pub k0: DxCoef,
    /// Prefetched while the loop runs: the group after the next.
    pub ahead: Ahead<T>,
}

/// [`Skewed`] on runs of one channel each: pass 1 returns
/// `[Σdy, Σdy·x̂, Σx̂]` of the next run; pass 2 uses the earlier run's
/// channel weight `w0`. One explicit loop over locals, in the order of
/// [`reduce`] (see [`bwd_skewed_vec`]).
#[inline(always)]
pub(crate) fn bwd_skewed_scalar<S: Isa, T: Elem>(s: S, k: Skewed<'_, T>, w0: f32) -> [f64; 3] {
    let Skewed {
        dy1,
        x1,
        mean1,
        rstd1,
        dx0,
        dy0,
        x0,
        k0,
        ahead,
    } = k;
    let n = x1.len();
    let (dy1, dx0, dy0, x0) = (&dy1[..n], &mut dx0[..n], &dy0[..n], &x0[..n]);
    let c = [
        s.splat(mean1),
        s.splat(rstd1),
        s.splat(k0.mean_hi),
        s.splat(k0.mean_lo),
        s.splat(k0.rstd),
        s.splat(w0 * k0.rstd),
        s.splat(k0.mean_g * k0.rstd),
        s.splat(k0.mean_gx * k0.rstd),
    ];
    /// Values `i..i + m` (`m ≤ 16`) of both halves; pass 1 adds into `acc`.
    #[inline(always)]
    fn step<S: Isa, T: Elem>(
        s: S,
        i: usize,
        m: usize,
        [m1, r1, mh, ml, r, wr, mg, mgx]: [S::V; 8],
        acc: &mut [S::V; 3],
        (dy1, x1): (&[T], &[T]),
        (dx0, dy0, x0): (&mut [T], &[T], &[T]),
    ) {
        // Pass 1 of the next run; missing lanes add nothing.
        let xh = s.mul(s.sub(load_m(s, x1, i, m), m1), r1);
        let xh = if m == L { xh } else { s.keep_first(xh, m) };
        let d = load_m(s, dy1, i, m);
        acc[0] = s.add(acc[0], d);
        acc[1] = s.fma(d, xh, acc[1]);
        acc[2] = s.add(acc[2], xh);
        // Pass 2 of the earlier run.
        let xh0 = s.mul(s.sub(s.sub(load_m(s, x0, i, m), mh), ml), r);
        let o = s.sub(s.mul(load_m(s, dy0, i, m), wr), s.fma(xh0, mgx, mg));
        store_m(s, dx0, i, m, o);
    }
    let mut out = [0.0f64; 3];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let (mut a, mut b) = ([s.splat(0.0); 3], [s.splat(0.0); 3]);
        let mut i = start;
        while i + 2 * L <= end {
            ahead.at(i);
            ahead.at(i + L);
            step(s, i, L, c, &mut a, (dy1, x1), (dx0, dy0, x0));
            step(s, i + L, L, c, &mut b, (dy1, x1), (dx0, dy0, x0));
            i += 2 * L;
        }
        if i + L <= end {
            ahead.at(i);
            step(s, i, L, c, &mut a, (dy1, x1), (dx0, dy0, x0));
            i += L;
        }
        if i < end {
            step(s, i, end - i, c, &mut b, (dy1, x1), (dx0, dy0, x0));
        }
        for q in 0..3 {
            out[q] += s.sum_f64(a[q]) + s.sum_f64(b[q]);
        }
        start = end;
    }
    out
}

/// [`Skewed`] on rows whose channels advance with each value (LayerNorm):
/// pass 1 returns `[Σg, Σg·x̂, Σx̂]` with `g = dy · w1`; pass 2 adds the
/// earlier row's `dy · x̂` and `dy` into `dweight`, `dbias`, the sums of
/// its channels, whose weight is `w0` (the same channels as the next row's
/// in LayerNorm, others in channels-last GroupNorm).
///
/// Written as one explicit loop over locals (the order of [`reduce`]):
/// with three output streams, a driver holding them in a struct left the
/// compiler reloading every coefficient from the stack on each iteration.
#[inline(always)]
pub(crate) fn bwd_skewed_vec<S: Isa, T: Elem>(
    s: S,
    k: Skewed<'_, T>,
    w1: &[f32],
    w0: &[f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
) -> [f64; 3] {
    let Skewed {
        dy1,
        x1,
        mean1,
        rstd1,
        dx0,
        dy0,
        x0,
        k0,
        ahead,
    } = k;
    let n = x1.len();
    // Every slice cut to n: the loop's own bounds then cover every access,
    // and the compiler drops the per-slice checks.
    let (dy1, w1, w0) = (&dy1[..n], &w1[..n], &w0[..n]);
    let (dx0, dy0, x0) = (&mut dx0[..n], &dy0[..n], &x0[..n]);
    let (dweight, dbias) = (&mut dweight[..n], &mut dbias[..n]);
    let c = [
        s.splat(mean1),
        s.splat(rstd1),
        s.splat(k0.mean_hi),
        s.splat(k0.mean_lo),
        s.splat(k0.rstd),
        s.splat(k0.mean_g * k0.rstd),
        s.splat(k0.mean_gx * k0.rstd),
    ];
    /// Values `i..i + m` (`m ≤ 16`) of both halves; pass 1 adds into `acc`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn step<S: Isa, T: Elem>(
        s: S,
        i: usize,
        m: usize,
        [m1, r1, mh, ml, r, mg, mgx]: [S::V; 7],
        acc: &mut [S::V; 3],
        (dy1, x1, w1): (&[T], &[T], &[f32]),
        (dx0, dy0, x0, w0): (&mut [T], &[T], &[T], &[f32]),
        (dweight, dbias): (&mut [f32], &mut [f32]),
    ) {
        // Pass 1 of the next row; missing lanes add nothing.
        let xh = s.mul(s.sub(load_m(s, x1, i, m), m1), r1);
        let xh = if m == L { xh } else { s.keep_first(xh, m) };
        let g = s.mul(load_m(s, dy1, i, m), load_m(s, w1, i, m));
        acc[0] = s.add(acc[0], g);
        acc[1] = s.fma(g, xh, acc[1]);
        acc[2] = s.add(acc[2], xh);
        // Pass 2 of the earlier row.
        let d = load_m(s, dy0, i, m);
        let xh0 = s.mul(s.sub(s.sub(load_m(s, x0, i, m), mh), ml), r);
        let o = s.sub(s.mul(s.mul(d, load_m(s, w0, i, m)), r), s.fma(xh0, mgx, mg));
        let dw = s.fma(d, xh0, load_m(s, dweight, i, m));
        let db = s.add(load_m(s, dbias, i, m), d);
        store_m(s, dx0, i, m, o);
        store_m(s, dweight, i, m, dw);
        store_m(s, dbias, i, m, db);
    }
    let mut out = [0.0f64; 3];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let (mut a, mut b) = ([s.splat(0.0); 3], [s.splat(0.0); 3]);
        let mut i = start;
        // The order of `reduce`: full vectors alternate a, b; a tail goes
        // to b.
        while i + 2 * L <= end {
            ahead.at(i);
            ahead.at(i + L);
            step(
                s,
                i,
                L,
                c,
                &mut a,
                (dy1, x1, w1),
                (dx0, dy0, x0, w0),
                (dweight, dbias),
            );
            step(
                s,
                i + L,
                L,
                c,
                &mut b,
                (dy1, x1, w1),
                (dx0, dy0, x0, w0),
                (dweight, dbias),
            );
            i += 2 * L;
        }
        if i + L <= end {
            ahead.at(i);
            step(
                s,
                i,
                L,
                c,
                &mut a,
                (dy1, x1, w1),
                (dx0, dy0, x0, w0),
                (dweight, dbias),
            );
            i += L;
        }
        if i < end {
            step(
                s,
                i,
                end - i,
                c,
                &mut b,
                (dy1, x1, w1),
                (dx0, dy0, x0, w0),
                (dweight, dbias),
            );
        }
        for q in 0..3 {
            out[q] += s.sum_f64(a[q]) + s.sum_f64(b[q]);
        }
        start = end;
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
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn bwd_dx_scalar<S: Isa, T: Elem>(
    s: S,
    dx: &mut [T],
    dy: &[T],
    x: &[T],
    k: DxCoef,
    w: f32,
    ahead: Ahead<T>,
    stream_out: bool,
) {
    struct F<'a, S: Isa, T> {
        dy: &'a [T],
        x: &'a [T],
        ahead: Ahead<T>,
        mh: S::V,
        ml: S::V,
        r: S::V,
        wr: S::V,
        mg: S::V,
        mgx: S::V,
    }
    impl<S: Isa, T: Elem> F<'_, S, T> {
        #[inline(always)]
        fn f(&self, s: S, d: S::V, v: S::V) -> S::V {
            let xh = s.mul(s.sub(s.sub(v, self.mh), self.ml), self.r);
            s.sub(s.mul(d, self.wr), s.fma(xh, self.mgx, self.mg))
        }
    }
    impl<S: Isa, T: Elem> Lanewise<S> for F<'_, S, T> {
        #[inline(always)]
        fn at(&mut self, s: S, i: usize) -> S::V {
            self.ahead.at(i);
            self.f(s, load(s, self.dy, i), load(s, self.x, i))
        }
        #[inline(always)]
        fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
            self.f(s, load_part(s, self.dy, i, n), load_part(s, self.x, i, n))
        }
    }
    let mut f = F {
        dy,
        x,
        ahead,
        mh: s.splat(k.mean_hi),
        ml: s.splat(k.mean_lo),
        r: s.splat(k.rstd),
        wr: s.splat(w * k.rstd),
        mg: s.splat(k.mean_g * k.rstd),
        mgx: s.splat(k.mean_gx * k.rstd),
    };
    write_lanewise(s, dx, &mut f, stream_out);
}

/// Backward pass 2 with per-element weight (LayerNorm rows): writes dx and
/// adds `dy · x̂` and `dy` into the per-element sums `dweight`, `dbias`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn bwd_dx_vec<S: Isa, T: Elem>(
    s: S,
    dx: &mut [T],
    dy: &[T],
    x: &[T],
    k: DxCoef,
    w: &[f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    ahead: Ahead<T>,
    stream_out: bool,
) {
    struct F<'a, S: Isa, T> {
        dy: &'a [T],
        x: &'a [T],
        w: &'a [f32],
        dw: &'a mut [f32],
        db: &'a mut [f32],
        ahead: Ahead<T>,
        /// mean_hi, mean_lo, rstd, rstd · mean(g), rstd · mean(g · x̂).
        c: [S::V; 5],
    }
    impl<S: Isa, T: Elem> F<'_, S, T> {
        /// `(dx, dweight + dy·x̂, dbias + dy)` for one vector.
        #[inline(always)]
        fn one(&self, s: S, [d, v, w, dw, db]: [S::V; 5]) -> [S::V; 3] {
            let [mh, ml, r, mg, mgx] = self.c;
            let xh = s.mul(s.sub(s.sub(v, mh), ml), r);
            let o = s.sub(s.mul(s.mul(d, w), r), s.fma(xh, mgx, mg));
            [o, s.fma(d, xh, dw), s.add(db, d)]
        }
    }
    impl<S: Isa, T: Elem> Lanewise<S> for F<'_, S, T> {
        #[inline(always)]
        fn at(&mut self, s: S, i: usize) -> S::V {
            self.ahead.at(i);
            let ins = [
                load(s, self.dy, i),
                load(s, self.x, i),
                load(s, self.w, i),
                load(s, self.dw, i),
                load(s, self.db, i),
            ];
            let [o, dw, db] = self.one(s, ins);
            store(s, self.dw, i, dw);
            store(s, self.db, i, db);
            o
        }
        #[inline(always)]
        fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
            let ins = [
                load_part(s, self.dy, i, n),
                load_part(s, self.x, i, n),
                load_part(s, self.w, i, n),
                load_part(s, self.dw, i, n),
                load_part(s, self.db, i, n),
            ];
            let [o, dw, db] = self.one(s, ins);
            store_part(s, self.dw, i, n, dw);
            store_part(s, self.db, i, n, db);
            o
        }
    }
    let c = [
        s.splat(k.mean_hi),
        s.splat(k.mean_lo),
        s.splat(k.rstd),
        s.splat(k.mean_g * k.rstd),
        s.splat(k.mean_gx * k.rstd),
    ];
    let mut f = F {
        dy,
        x,
        w,
        dw: dweight,
        db: dbias,
        ahead,
        c,
    };
    write_lanewise(s, dx, &mut f, stream_out);
}
