//! Channels-last loops over `[rows, c]` blocks: per-channel coefficients
//! and per-channel sums.

use super::drivers::{write_lanewise, Lanewise};
use super::io::{load, load_part};
use crate::elem::Elem;
use crate::simd::{Isa, LANES};

const L: usize = LANES;

/// Per-channel coefficients of channels-last data laid out for flat
/// elementwise loops: value `i` of a `[rows, c]` block has channel
/// `i mod c`, and its coefficient is `ext[i mod c]`, where `ext` repeats
/// the `c` coefficients for 16 more entries so that any 16 consecutive
/// values read one contiguous window.
pub(crate) struct Periodic {
    pub c: usize,
    /// `16 mod c`: how far the channel advances per vector.
    step: usize,
}

impl Periodic {
    pub fn new(c: usize) -> Self {
        Periodic { c, step: L % c }
    }

    /// `v` (length `c`) extended periodically to `c + 16` entries.
    pub fn extend(&self, v: &[f32]) -> Vec<f32> {
        v.iter().copied().cycle().take(self.c + L).collect()
    }

    /// The channel of the value 16 after one of channel `ch`.
    #[inline(always)]
    pub fn next(&self, ch: usize) -> usize {
        let n = ch + self.step;
        if n >= self.c {
            n - self.c
        } else {
            n
        }
    }
}

/// `y = ((x - mh[c]) - ml[c]) · a[c] + b[c]` over a `[rows, c]` block of
/// channels-last data, as one flat loop; the coefficients are
/// [`Periodic::extend`]ed.
#[inline(always)]
pub(crate) fn apply_channels<S: Isa, T: Elem>(
    s: S,
    y: &mut [T],
    x: &[T],
    per: &Periodic,
    k: &[Vec<f32>; 4],
    stream_out: bool,
) {
    struct F<'a, T> {
        x: &'a [T],
        per: &'a Periodic,
        k: &'a [Vec<f32>; 4],
        ch: usize,
    }
    impl<T: Elem> F<'_, T> {
        #[inline(always)]
        fn f<S: Isa>(&self, s: S, v: S::V) -> S::V {
            let ([mh, ml, a, b], ch) = (self.k, self.ch);
            let t = s.sub(s.sub(v, load(s, mh, ch)), load(s, ml, ch));
            s.fma(t, load(s, a, ch), load(s, b, ch))
        }
    }
    impl<S: Isa, T: Elem> Lanewise<S> for F<'_, T> {
        #[inline(always)]
        fn at(&mut self, s: S, i: usize) -> S::V {
            let out = self.f(s, load(s, self.x, i));
            self.ch = self.per.next(self.ch);
            out
        }
        #[inline(always)]
        fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
            let out = self.f(s, load_part(s, self.x, i, n));
            self.ch = (self.ch + n) % self.per.c;
            out
        }
    }
    write_lanewise(s, y, &mut F { x, per, k, ch: 0 }, stream_out);
}

// Channels-last rows: one value per channel, accumulators per channel.
// The `f32` accumulators are flushed into `f64` every [`ROWS_PER_FLUSH`]
// rows, the column counterpart of [`BLOCK`].

/// Rows accumulated in `f32` before a flush into `f64`.
pub(crate) const ROWS_PER_FLUSH: usize = 32;

/// Per-channel sums over the rows of a `[rows, c]` block: `add` adds one
/// row's contribution for a window of channels to `K` accumulators.
pub(crate) trait ColumnSums<S: Isa, const K: usize> {
    /// The last accumulator is a running maximum rather than a sum.
    const LAST_IS_MAX: bool = false;
    /// Adds values `i..i + 16` of row `row` (channels `i..i + 16`).
    fn add(&self, s: S, row: usize, i: usize, acc: [S::V; K]) -> [S::V; K];
    /// As `add` for channels `i..i + n`, `n < 16`; other lanes add nothing.
    fn add_part(&self, s: S, row: usize, i: usize, n: usize, acc: [S::V; K]) -> [S::V; K];
}

/// The `K` per-channel sums of `f` over `rows` rows of `c` channels, each
/// `[f64; c]`: `f32` accumulators for a window of 16 channels stay in
/// registers through [`ROWS_PER_FLUSH`] rows, then flush into `f64`.
#[inline(always)]
pub(crate) fn column_reduce<S: Isa, const K: usize, F: ColumnSums<S, K>>(
    s: S,
    rows: usize,
    c: usize,
    f: &F,
) -> [Vec<f64>; K] {
    let mut out: [Vec<f64>; K] = std::array::from_fn(|_| vec![0.0; c]);
    // Blocks of rows in memory order; within a block (in cache after the
    // first window), one window of 16 channels at a time.
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + ROWS_PER_FLUSH).min(rows);
        let mut i = 0;
        while i < c {
            let n = (c - i).min(L);
            let mut a = [s.splat(0.0); K];
            if n == L {
                for row in r0..r1 {
                    a = f.add(s, row, i, a);
                }
            } else {
                for row in r0..r1 {
                    a = f.add_part(s, row, i, n, a);
                }
            }
            for k in 0..K {
                let lanes = s.to_array(a[k]);
                let o = &mut out[k][i..i + n];
                if F::LAST_IS_MAX && k == K - 1 {
                    for (o, &v) in o.iter_mut().zip(&lanes) {
                        *o = o.max(v as f64);
                    }
                } else {
                    for (o, &v) in o.iter_mut().zip(&lanes) {
                        *o += v as f64;
                    }
                }
            }
            i += L;
        }
        r0 = r1;
    }
    out
}

/// Per-channel `[Σd, Σd²]` over a `[rows, c]` block with
/// `d = x - shift[c]`.
#[inline(always)]
pub(crate) fn col_shifted_sums<S: Isa, T: Elem>(
    s: S,
    x: &[T],
    c: usize,
    shift: &[f32],
) -> [Vec<f64>; 2] {
    struct F<'a, T> {
        x: &'a [T],
        c: usize,
        shift: &'a [f32],
    }
    impl<S: Isa, T: Elem> ColumnSums<S, 2> for F<'_, T> {
        #[inline(always)]
        fn add(&self, s: S, row: usize, i: usize, [a, b]: [S::V; 2]) -> [S::V; 2] {
            let d = s.sub(load(s, self.x, row * self.c + i), load(s, self.shift, i));
            [s.add(a, d), s.fma(d, d, b)]
        }
        #[inline(always)]
        fn add_part(&self, s: S, row: usize, i: usize, n: usize, [a, b]: [S::V; 2]) -> [S::V; 2] {
            let v = load_part(s, self.x, row * self.c + i, n);
            let d = s.keep_first(s.sub(v, load_part(s, self.shift, i, n)), n);
            [s.add(a, d), s.fma(d, d, b)]
        }
    }
    let rows = x.len() / c.max(1);
    column_reduce(s, rows, c, &F { x, c, shift })
}

/// Per-channel `max|x|` over a `[rows, c]` block (the fallback's scale).
#[inline(always)]
pub(crate) fn col_max_abs<S: Isa, T: Elem>(s: S, x: &[T], c: usize) -> Vec<f32> {
    struct F<'a, T> {
        x: &'a [T],
        c: usize,
    }
    impl<S: Isa, T: Elem> ColumnSums<S, 1> for F<'_, T> {
        const LAST_IS_MAX: bool = true;
        #[inline(always)]
        fn add(&self, s: S, row: usize, i: usize, [m]: [S::V; 1]) -> [S::V; 1] {
            [s.max(s.abs(load(s, self.x, row * self.c + i)), m)]
        }
        #[inline(always)]
        fn add_part(&self, s: S, row: usize, i: usize, n: usize, [m]: [S::V; 1]) -> [S::V; 1] {
            [s.max(s.abs(load_part(s, self.x, row * self.c + i, n)), m)]
        }
    }
    let rows = x.len() / c.max(1);
    let [m] = column_reduce(s, rows, c, &F { x, c });
    m.into_iter().map(|v| v as f32).collect()
}

/// Per-channel `[Σd, Σd²]` with `d = x · scale[c] - shift[c]` (the
/// fallback's second sweep).
#[inline(always)]
pub(crate) fn col_dev_sums<S: Isa, T: Elem>(
    s: S,
    x: &[T],
    c: usize,
    scale: &[f32],
    shift: &[f32],
) -> [Vec<f64>; 2] {
    struct F<'a, T> {
        x: &'a [T],
        c: usize,
        scale: &'a [f32],
        shift: &'a [f32],
    }
    impl<S: Isa, T: Elem> ColumnSums<S, 2> for F<'_, T> {
        #[inline(always)]
        fn add(&self, s: S, row: usize, i: usize, [a, b]: [S::V; 2]) -> [S::V; 2] {
            let v = load(s, self.x, row * self.c + i);
            let d = s.sub(s.mul(v, load(s, self.scale, i)), load(s, self.shift, i));
            [s.add(a, d), s.fma(d, d, b)]
        }
        #[inline(always)]
        fn add_part(&self, s: S, row: usize, i: usize, n: usize, [a, b]: [S::V; 2]) -> [S::V; 2] {
            let v = load_part(s, self.x, row * self.c + i, n);
            let (sc, sh) = (
                load_part(s, self.scale, i, n),
                load_part(s, self.shift, i, n),
            );
            let d = s.keep_first(s.sub(s.mul(v, sc), sh), n);
            [s.add(a, d), s.fma(d, d, b)]
        }
    }
    let rows = x.len() / c.max(1);
    column_reduce(s, rows, c, &F { x, c, scale, shift })
}

/// Backward pass 1 on a `[rows, c]` block, `x̂ = (x - mean[c]) · rstd[c]`:
/// per channel `[Σdy, Σdy·x̂, Σx̂]`.
#[inline(always)]
pub(crate) fn col_bwd_sums<S: Isa, T: Elem>(
    s: S,
    dy: &[T],
    x: &[T],
    c: usize,
    mean: &[f32],
    rstd: &[f32],
) -> [Vec<f64>; 3] {
    struct F<'a, T> {
        dy: &'a [T],
        x: &'a [T],
        c: usize,
        mean: &'a [f32],
        rstd: &'a [f32],
    }
    impl<S: Isa, T: Elem> ColumnSums<S, 3> for F<'_, T> {
        #[inline(always)]
        fn add(&self, s: S, row: usize, i: usize, [a, b, e]: [S::V; 3]) -> [S::V; 3] {
            let j = row * self.c + i;
            let xh = s.mul(
                s.sub(load(s, self.x, j), load(s, self.mean, i)),
                load(s, self.rstd, i),
            );
            let d = load(s, self.dy, j);
            [s.add(a, d), s.fma(d, xh, b), s.add(e, xh)]
        }
        #[inline(always)]
        fn add_part(
            &self,
            s: S,
            row: usize,
            i: usize,
            n: usize,
            [a, b, e]: [S::V; 3],
        ) -> [S::V; 3] {
            let j = row * self.c + i;
            let xh = s.mul(
                s.sub(load_part(s, self.x, j, n), load_part(s, self.mean, i, n)),
                load_part(s, self.rstd, i, n),
            );
            let xh = s.keep_first(xh, n);
            let d = load_part(s, self.dy, j, n);
            [s.add(a, d), s.fma(d, xh, b), s.add(e, xh)]
        }
    }
    let rows = x.len() / c.max(1);
    column_reduce(
        s,
        rows,
        c,
        &F {
            dy,
            x,
            c,
            mean,
            rstd,
        },
    )
}

/// Per-channel coefficients of backward pass 2 on channels-last data,
/// each [`Periodic::extend`]ed.
pub(crate) struct DxChannels {
    pub mean_hi: Vec<f32>,
    pub mean_lo: Vec<f32>,
    pub rstd: Vec<f32>,
    /// `weight · rstd`.
    pub wr: Vec<f32>,
    /// `rstd · mean(g)` of the channel's group.
    pub cg: Vec<f32>,
    /// `rstd · mean(g · x̂)` of the channel's group.
    pub cgx: Vec<f32>,
}

/// `dx = dy · wr[c] - (x̂ · cgx[c] + cg[c])` over a `[rows, c]` block, as
/// one flat loop.
#[inline(always)]
pub(crate) fn bwd_dx_channels<S: Isa, T: Elem>(
    s: S,
    dx: &mut [T],
    dy: &[T],
    x: &[T],
    per: &Periodic,
    k: &DxChannels,
) {
    struct F<'a, T> {
        dy: &'a [T],
        x: &'a [T],
        per: &'a Periodic,
        k: &'a DxChannels,
        ch: usize,
    }
    impl<T: Elem> F<'_, T> {
        #[inline(always)]
        fn f<S: Isa>(&self, s: S, d: S::V, v: S::V) -> S::V {
            let (k, ch) = (self.k, self.ch);
            let t = s.sub(s.sub(v, load(s, &k.mean_hi, ch)), load(s, &k.mean_lo, ch));
            let xh = s.mul(t, load(s, &k.rstd, ch));
            let corr = s.fma(xh, load(s, &k.cgx, ch), load(s, &k.cg, ch));
            s.sub(s.mul(d, load(s, &k.wr, ch)), corr)
        }
    }
    impl<S: Isa, T: Elem> Lanewise<S> for F<'_, T> {
        #[inline(always)]
        fn at(&mut self, s: S, i: usize) -> S::V {
            let out = self.f(s, load(s, self.dy, i), load(s, self.x, i));
            self.ch = self.per.next(self.ch);
            out
        }
        #[inline(always)]
        fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
            let (d, v) = (load_part(s, self.dy, i, n), load_part(s, self.x, i, n));
            let out = self.f(s, d, v);
            self.ch = (self.ch + n) % self.per.c;
            out
        }
    }
    write_lanewise(
        s,
        dx,
        &mut F {
            dy,
            x,
            per,
            k,
            ch: 0,
        },
        false,
    );
}
