//! Forward outputs over a contiguous run, alone or skewed with the
//! statistics sweep of the next group.

use super::drivers::{write_lanewise, Lanewise, BLOCK};
use super::io::{load, load_m, load_part, store, store_part, stream, stream_head, Ahead};
use crate::elem::Elem;
use crate::simd::{Isa, LANES};

const L: usize = LANES;

/// `y = ((x - mean_hi) - mean_lo) · a + b` with scalar coefficients (a run
/// of one channel).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn apply_scalar<S: Isa, T: Elem>(
    s: S,
    y: &mut [T],
    x: &[T],
    mean_hi: f32,
    mean_lo: f32,
    a: f32,
    b: f32,
    ahead: Ahead<T>,
    stream_out: bool,
) {
    struct F<'a, S: Isa, T> {
        x: &'a [T],
        ahead: Ahead<T>,
        mh: S::V,
        ml: S::V,
        a: S::V,
        b: S::V,
    }
    impl<S: Isa, T: Elem> F<'_, S, T> {
        #[inline(always)]
        fn f(&self, s: S, v: S::V) -> S::V {
            s.fma(s.sub(s.sub(v, self.mh), self.ml), self.a, self.b)
        }
    }
    impl<S: Isa, T: Elem> Lanewise<S> for F<'_, S, T> {
        #[inline(always)]
        fn at(&mut self, s: S, i: usize) -> S::V {
            self.ahead.at(i);
            self.f(s, load(s, self.x, i))
        }
        #[inline(always)]
        fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
            self.f(s, load_part(s, self.x, i, n))
        }
    }
    let mut f = F {
        x,
        ahead,
        mh: s.splat(mean_hi),
        ml: s.splat(mean_lo),
        a: s.splat(a),
        b: s.splat(b),
    };
    write_lanewise(s, y, &mut f, stream_out);
}

/// `y = ((x - mean_hi) - mean_lo) · rstd · w + b` with per-element `w`, `b`
/// (a row whose channels advance with each value).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn apply_vec<S: Isa, T: Elem>(
    s: S,
    y: &mut [T],
    x: &[T],
    mean_hi: f32,
    mean_lo: f32,
    rstd: f32,
    w: &[f32],
    b: &[f32],
    ahead: Ahead<T>,
    stream_out: bool,
) {
    struct F<'a, S: Isa, T> {
        x: &'a [T],
        ahead: Ahead<T>,
        w: &'a [f32],
        b: &'a [f32],
        mh: S::V,
        ml: S::V,
        r: S::V,
    }
    impl<S: Isa, T: Elem> F<'_, S, T> {
        #[inline(always)]
        fn f(&self, s: S, v: S::V, w: S::V, b: S::V) -> S::V {
            s.fma(s.mul(s.sub(s.sub(v, self.mh), self.ml), self.r), w, b)
        }
    }
    impl<S: Isa, T: Elem> Lanewise<S> for F<'_, S, T> {
        #[inline(always)]
        fn at(&mut self, s: S, i: usize) -> S::V {
            self.ahead.at(i);
            let (w, b) = (load(s, self.w, i), load(s, self.b, i));
            self.f(s, load(s, self.x, i), w, b)
        }
        #[inline(always)]
        fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
            let (w, b) = (load_part(s, self.w, i, n), load_part(s, self.b, i, n));
            self.f(s, load_part(s, self.x, i, n), w, b)
        }
    }
    let mut f = F {
        x,
        ahead,
        w,
        b,
        mh: s.splat(mean_hi),
        ml: s.splat(mean_lo),
        r: s.splat(rstd),
    };
    write_lanewise(s, y, &mut f, stream_out);
}

/// The sweeps of the row forward, skewed: the statistics sweep of one
/// group (from memory) and the output sweep of the group before it (from
/// cache) in one loop, so that memory sees one input and one output stream
/// at a steady rate, as in a copy. Each half computes exactly what it
/// computes alone ([`shifted_sums`](super::shifted_sums), [`apply_scalar`] / [`apply_vec`]), in
/// the same order. Output vectors follow the input's index; they are
/// streamed only when that lands on the streaming alignment.
pub(crate) struct SkewedFwd<'a, T> {
    /// The next group's run and its shift.
    pub x1: &'a [T],
    pub shift1: f32,
    /// The earlier group's run: output, input, statistics.
    pub y0: &'a mut [T],
    pub x0: &'a [T],
    pub mean_hi: f32,
    pub mean_lo: f32,
    /// Prefetched while the loop runs: the group after the next.
    pub ahead: Ahead<T>,
    pub stream: bool,
}

/// [`SkewedFwd`] where the earlier run has one channel:
/// `y = ((x - mean_hi) - mean_lo) · a + b`. Returns `[Σd, Σd²]` of the next
/// run.
#[inline(always)]
pub(crate) fn fwd_skewed_scalar<S: Isa, T: Elem>(
    s: S,
    k: SkewedFwd<'_, T>,
    a: f32,
    b: f32,
) -> [f64; 2] {
    struct F<'a, S: Isa, T> {
        x0: &'a [T],
        /// mean_hi, mean_lo, a, b.
        c: [S::V; 4],
    }
    impl<S: Isa, T: Elem> Lanewise<S> for F<'_, S, T> {
        #[inline(always)]
        fn at(&mut self, s: S, i: usize) -> S::V {
            self.at_part(s, i, L)
        }
        #[inline(always)]
        fn at_part(&mut self, s: S, i: usize, m: usize) -> S::V {
            let [mh, ml, a, b] = self.c;
            s.fma(s.sub(s.sub(load_m(s, self.x0, i, m), mh), ml), a, b)
        }
    }
    let n = k.x1.len();
    let c = [
        s.splat(k.mean_hi),
        s.splat(k.mean_lo),
        s.splat(a),
        s.splat(b),
    ];
    let out = Cursor::new(s, &mut k.y0[..n], F { x0: &k.x0[..n], c }, k.stream);
    skewed_fwd_loop(s, k.x1, s.splat(k.shift1), k.ahead, out)
}

/// [`SkewedFwd`] where the earlier run's channels advance with each value:
/// `y = ((x - mean_hi) - mean_lo) · rstd · w + b`.
#[inline(always)]
pub(crate) fn fwd_skewed_vec<S: Isa, T: Elem>(
    s: S,
    k: SkewedFwd<'_, T>,
    rstd: f32,
    w: &[f32],
    b: &[f32],
) -> [f64; 2] {
    struct F<'a, S: Isa, T> {
        x0: &'a [T],
        w: &'a [f32],
        b: &'a [f32],
        /// mean_hi, mean_lo, rstd.
        c: [S::V; 3],
    }
    impl<S: Isa, T: Elem> Lanewise<S> for F<'_, S, T> {
        #[inline(always)]
        fn at(&mut self, s: S, i: usize) -> S::V {
            self.at_part(s, i, L)
        }
        #[inline(always)]
        fn at_part(&mut self, s: S, i: usize, m: usize) -> S::V {
            let [mh, ml, r] = self.c;
            let t = s.mul(s.sub(s.sub(load_m(s, self.x0, i, m), mh), ml), r);
            s.fma(t, load_m(s, self.w, i, m), load_m(s, self.b, i, m))
        }
    }
    let n = k.x1.len();
    let c = [s.splat(k.mean_hi), s.splat(k.mean_lo), s.splat(rstd)];
    let f = F {
        x0: &k.x0[..n],
        w: &w[..n],
        b: &b[..n],
        c,
    };
    let out = Cursor::new(s, &mut k.y0[..n], f, k.stream);
    skewed_fwd_loop(s, k.x1, s.splat(k.shift1), k.ahead, out)
}

/// The output half of a skewed loop: writes an elementwise output at its
/// own pace and alignment. [`Cursor::advance`] writes the full vectors
/// that end by a given value, streamed once aligned (after a partial head)
/// when asked; [`Cursor::finish`] writes the rest.
struct Cursor<'a, S: Isa, T, F> {
    y: &'a mut [T],
    f: F,
    pos: usize,
    stream: bool,
    _s: std::marker::PhantomData<S>,
}

impl<'a, S: Isa, T: Elem, F: Lanewise<S>> Cursor<'a, S, T, F> {
    #[inline(always)]
    fn new(s: S, y: &'a mut [T], mut f: F, stream_out: bool) -> Self {
        let mut pos = 0;
        let head = stream_head(y).filter(|&h| stream_out && h + L <= y.len());
        if let Some(h) = head.filter(|&h| h > 0) {
            store_part(s, y, 0, h, f.at_part(s, 0, h));
            pos = h;
        }
        Cursor {
            y,
            f,
            pos,
            stream: head.is_some(),
            _s: std::marker::PhantomData,
        }
    }

    #[inline(always)]
    fn advance(&mut self, s: S, upto: usize) {
        while self.pos + L <= upto {
            let v = self.f.at(s, self.pos);
            if self.stream {
                stream(s, self.y, self.pos, v);
            } else {
                store(s, self.y, self.pos, v);
            }
            self.pos += L;
        }
    }

    #[inline(always)]
    fn finish(&mut self, s: S) {
        let n = self.y.len();
        self.advance(s, n);
        if self.pos < n {
            let m = n - self.pos;
            store_part(s, self.y, self.pos, m, self.f.at_part(s, self.pos, m));
        }
    }
}

/// The loop of [`SkewedFwd`]: [`shifted_sums`](super::shifted_sums) of `x1` (shift `k1`) in the
/// order of [`reduce`](super::reduce), with the output half keeping pace.
#[inline(always)]
fn skewed_fwd_loop<S: Isa, T: Elem, F: Lanewise<S>>(
    s: S,
    x1: &[T],
    k1: S::V,
    ahead: Ahead<T>,
    mut out: Cursor<'_, S, T, F>,
) -> [f64; 2] {
    let n = x1.len();
    let mut sums = [0.0f64; 2];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let (mut a, mut b) = ([s.splat(0.0); 2], [s.splat(0.0); 2]);
        let mut i = start;
        while i + 2 * L <= end {
            ahead.at(i);
            ahead.at(i + L);
            let d = s.sub(load(s, x1, i), k1);
            a = [s.add(a[0], d), s.fma(d, d, a[1])];
            let d = s.sub(load(s, x1, i + L), k1);
            b = [s.add(b[0], d), s.fma(d, d, b[1])];
            out.advance(s, i + 2 * L);
            i += 2 * L;
        }
        if i + L <= end {
            ahead.at(i);
            let d = s.sub(load(s, x1, i), k1);
            a = [s.add(a[0], d), s.fma(d, d, a[1])];
            i += L;
        }
        if i < end {
            let m = end - i;
            let d = s.keep_first(s.sub(load_part(s, x1, i, m), k1), m);
            b = [s.add(b[0], d), s.fma(d, d, b[1])];
        }
        for q in 0..2 {
            sums[q] += s.sum_f64(a[q]) + s.sum_f64(b[q]);
        }
        start = end;
    }
    out.finish(s);
    sums
}
