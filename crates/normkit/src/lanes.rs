//! Inner loops over contiguous slices, written once against [`Isa`] so
//! they compile to 512-bit, 256-bit or scalar code inside a
//! [`multiversion!`] entry point.
//!
//! Two drivers walk a slice 16 values at a time and fix the order of every
//! operation, whatever the instruction set:
//!
//! - [`write_lanewise`] for elementwise outputs: an optional unaligned
//!   head, full vectors, a partial tail. When asked to stream, the head
//!   brings the output to the alignment of streaming stores, which then
//!   write past the cache (for outputs larger than it: no read for
//!   ownership, no eviction of the input).
//! - [`reduce`] for sums: two accumulator vectors, alternating by vector,
//!   summed in `f32` within blocks of [`BLOCK`] values (32 terms per lane)
//!   and in `f64` across blocks ([`Isa::sum_f64`]), so the rounding error
//!   grows with 32 rather than n. Lane `l` of block `b` always holds the
//!   same values, so the result does not depend on the instruction set, the
//!   thread count, or where the slice lies in memory.
//!
//! Values are read as `f32`, `bf16` or `f16` ([`Elem`]) and widened in
//! registers; outputs are rounded once when stored.
//!
//! [`multiversion!`]: crate::simd::multiversion

use crate::elem::{Elem, Storage};
use crate::simd::{Isa, LANES};

const L: usize = LANES;

/// Values per `f32` accumulation block.
pub(crate) const BLOCK: usize = 1024;

// ------------------------------------------------------------ loads, stores

/// Values `i..i + 16` of `x` as `f32`.
#[inline(always)]
pub(crate) fn load<S: Isa, T: Elem>(s: S, x: &[T], i: usize) -> S::V {
    let v: &[T; L] = x[i..i + L].try_into().unwrap();
    let p = v.as_ptr();
    // SAFETY: `v` holds 16 values of T, whose storage matches the load.
    unsafe {
        match T::STORAGE {
            Storage::F32 => s.load(p.cast()),
            Storage::Bf16 => s.load_bf16(p.cast()),
            Storage::F16 => s.load_f16(p.cast()),
        }
    }
}

/// Values `i..i + n` of `x` (`n < 16`) in the first lanes, zeros after.
#[inline(always)]
pub(crate) fn load_part<S: Isa, T: Elem>(s: S, x: &[T], i: usize, n: usize) -> S::V {
    let mut buf = [T::default(); L];
    buf[..n].copy_from_slice(&x[i..i + n]);
    load(s, &buf, 0)
}

/// Values `i..i + m` of `x`, `m ≤ 16` (a full vector when `m` is 16).
#[inline(always)]
pub(crate) fn load_m<S: Isa, T: Elem>(s: S, x: &[T], i: usize, m: usize) -> S::V {
    if m == L {
        load(s, x, i)
    } else {
        load_part(s, x, i, m)
    }
}

/// Stores the first `m ≤ 16` lanes at `y[i..i + m]`.
#[inline(always)]
pub(crate) fn store_m<S: Isa, T: Elem>(s: S, y: &mut [T], i: usize, m: usize, v: S::V) {
    if m == L {
        store(s, y, i, v)
    } else {
        store_part(s, y, i, m, v)
    }
}

/// Stores 16 lanes at `y[i..i + 16]`.
#[inline(always)]
pub(crate) fn store<S: Isa, T: Elem>(s: S, y: &mut [T], i: usize, v: S::V) {
    let out: &mut [T; L] = (&mut y[i..i + L]).try_into().unwrap();
    let p = out.as_mut_ptr();
    // SAFETY: `out` holds 16 writable values of T.
    unsafe {
        match T::STORAGE {
            Storage::F32 => s.store(p.cast(), v),
            Storage::Bf16 => s.store_bf16(p.cast(), v),
            Storage::F16 => s.store_f16(p.cast(), v),
        }
    }
}

/// Stores the first `n` lanes (`n < 16`) at `y[i..i + n]`.
#[inline(always)]
pub(crate) fn store_part<S: Isa, T: Elem>(s: S, y: &mut [T], i: usize, n: usize, v: S::V) {
    let mut buf = [T::default(); L];
    store(s, &mut buf, 0, v);
    y[i..i + n].copy_from_slice(&buf[..n]);
}

/// Streams 16 lanes to `y[i..i + 16]`, which starts at a multiple of
/// [`stream_align`] bytes.
#[inline(always)]
fn stream<S: Isa, T: Elem>(s: S, y: &mut [T], i: usize, v: S::V) {
    let out: &mut [T; L] = (&mut y[i..i + L]).try_into().unwrap();
    let p = out.as_mut_ptr();
    debug_assert_eq!(p as usize % stream_align::<T>(), 0);
    // SAFETY: 16 writable values, aligned as the streaming store needs
    // (the caller peeled the head up to that alignment).
    unsafe {
        match T::STORAGE {
            Storage::F32 => s.stream(p.cast(), v),
            Storage::Bf16 => s.stream_bf16(p.cast(), v),
            Storage::F16 => s.stream_f16(p.cast(), v),
        }
    }
}

/// Alignment of a streaming store of 16 values: one 64-byte line of `f32`,
/// half a line of 2-byte values.
#[inline(always)]
fn stream_align<T>() -> usize {
    L * std::mem::size_of::<T>()
}

/// Values before `y` reaches streaming alignment (less than 16), or
/// `None` when whole values never reach it.
#[inline(always)]
fn stream_head<T>(y: &[T]) -> Option<usize> {
    let (align, size) = (stream_align::<T>(), std::mem::size_of::<T>());
    let off = y.as_ptr() as usize % align;
    (off % size == 0).then(|| ((align - off) % align) / size)
}

// ---------------------------------------------------------------- drivers

/// An elementwise computation: the output vector for 16 values at a time.
/// [`write_lanewise`] asks for the values in order (`i` increasing, each
/// value once), so an implementation may track where it is, such as the
/// channel of value `i`.
pub(crate) trait Lanewise<S: Isa> {
    /// Output for values `i..i + 16`.
    fn at(&mut self, s: S, i: usize) -> S::V;
    /// Output for values `i..i + n`, `n < 16`, in the first lanes.
    fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V;
}

/// Writes `f`'s output for every value of `y`. With `stream_out`, full
/// vectors go past the cache once `y` is aligned for it; the caller issues
/// [`Isa::fence`] before another thread reads the output.
#[inline(always)]
pub(crate) fn write_lanewise<S: Isa, T: Elem, F: Lanewise<S>>(
    s: S,
    y: &mut [T],
    f: &mut F,
    stream_out: bool,
) {
    let n = y.len();
    let mut i = 0;
    if let Some(head) = stream_head(y).filter(|&h| stream_out && h + L <= n) {
        if head > 0 {
            store_part(s, y, 0, head, f.at_part(s, 0, head));
            i = head;
        }
        while i + L <= n {
            stream(s, y, i, f.at(s, i));
            i += L;
        }
    }
    while i + L <= n {
        store(s, y, i, f.at(s, i));
        i += L;
    }
    if i < n {
        store_part(s, y, i, n - i, f.at_part(s, i, n - i));
    }
}

/// `K` sums over `n` values: [`reduce`] calls `add` for each full vector
/// and `add_part` for the tail, whose missing lanes must add nothing.
/// `add` may also write an elementwise output at the same values.
pub(crate) trait Sums<S: Isa, const K: usize> {
    fn add(&mut self, s: S, i: usize, acc: &mut [S::V; K]);
    fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; K]);
}

/// The `K` sums of `f` over `0..n` in the fixed order described above.
#[inline(always)]
pub(crate) fn reduce<S: Isa, const K: usize, F: Sums<S, K>>(s: S, n: usize, f: &mut F) -> [f64; K] {
    let mut out = [0.0f64; K];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let mut a = [s.splat(0.0); K];
        let mut b = [s.splat(0.0); K];
        let mut i = start;
        while i + 2 * L <= end {
            f.add(s, i, &mut a);
            f.add(s, i + L, &mut b);
            i += 2 * L;
        }
        if i + L <= end {
            f.add(s, i, &mut a);
            i += L;
        }
        if i < end {
            f.add_part(s, i, end - i, &mut b);
        }
        for k in 0..K {
            out[k] += s.sum_f64(a[k]) + s.sum_f64(b[k]);
        }
        start = end;
    }
    out
}

// ------------------------------------------------------------- statistics

/// `[Σd, Σd²]` with `d = x - shift`: the one sweep of the statistics (see
/// [`crate::moments`]).
#[inline(always)]
pub(crate) fn shifted_sums<S: Isa, T: Elem>(s: S, x: &[T], shift: f32) -> [f64; 2] {
    struct F<'a, S: Isa, T> {
        x: &'a [T],
        k: S::V,
    }
    impl<S: Isa, T: Elem> Sums<S, 2> for F<'_, S, T> {
        #[inline(always)]
        fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 2]) {
            let d = s.sub(load(s, self.x, i), self.k);
            acc[0] = s.add(acc[0], d);
            acc[1] = s.fma(d, d, acc[1]);
        }
        #[inline(always)]
        fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 2]) {
            let d = s.keep_first(s.sub(load_part(s, self.x, i, n), self.k), n);
            acc[0] = s.add(acc[0], d);
            acc[1] = s.fma(d, d, acc[1]);
        }
    }
    reduce(
        s,
        x.len(),
        &mut F {
            x,
            k: s.splat(shift),
        },
    )
}

/// `max|x|`, NaN skipped (the fallback's scale).
#[inline(always)]
pub(crate) fn max_abs<S: Isa, T: Elem>(s: S, x: &[T]) -> f32 {
    let (mut a, mut b) = (s.splat(0.0), s.splat(0.0));
    let n = x.len();
    let mut i = 0;
    while i + 2 * L <= n {
        a = s.max(s.abs(load(s, x, i)), a);
        b = s.max(s.abs(load(s, x, i + L)), b);
        i += 2 * L;
    }
    while i < n {
        let m = (n - i).min(L);
        a = s.max(s.abs(load_part(s, x, i, m)), a);
        i += m;
    }
    s.max_lane(s.max(a, b))
}

/// The mean of the first `min(16, x.len())` values, in `f64`.
#[inline(always)]
pub(crate) fn head_mean<S: Isa, T: Elem>(s: S, x: &[T]) -> f64 {
    let n = x.len().min(L);
    let v = if n == L {
        load(s, x, 0)
    } else {
        load_part(s, x, 0, n)
    };
    s.sum_f64(v) / n.max(1) as f64
}

/// `[Σd, Σd²]` with `d = x · scale - shift` (the two-pass fallback's
/// second sweep, on data in cache).
#[inline(always)]
pub(crate) fn dev_sums<S: Isa, T: Elem>(s: S, x: &[T], scale: f32, shift: f32) -> [f64; 2] {
    struct F<'a, S: Isa, T> {
        x: &'a [T],
        scale: S::V,
        shift: S::V,
    }
    impl<S: Isa, T: Elem> F<'_, S, T> {
        #[inline(always)]
        fn acc(&self, s: S, d: S::V, acc: &mut [S::V; 2]) {
            acc[0] = s.add(acc[0], d);
            acc[1] = s.fma(d, d, acc[1]);
        }
    }
    impl<S: Isa, T: Elem> Sums<S, 2> for F<'_, S, T> {
        #[inline(always)]
        fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 2]) {
            let v = load(s, self.x, i);
            let d = s.sub(s.mul(v, self.scale), self.shift);
            self.acc(s, d, acc);
        }
        #[inline(always)]
        fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 2]) {
            let v = load_part(s, self.x, i, n);
            let d = s.keep_first(s.sub(s.mul(v, self.scale), self.shift), n);
            self.acc(s, d, acc);
        }
    }
    let mut f = F {
        x,
        scale: s.splat(scale),
        shift: s.splat(shift),
    };
    reduce(s, x.len(), &mut f)
}

// ------------------------------------------------------------ forward apply

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
/// computes alone ([`shifted_sums`], [`apply_scalar`] / [`apply_vec`]), in
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

/// The loop of [`SkewedFwd`]: [`shifted_sums`] of `x1` (shift `k1`) in the
/// order of [`reduce`], with the output half keeping pace.
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

// ---------------------------------------------------------------- backward

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

/// The next group's inputs at the same offsets as the current one's,
/// fetched into cache while a sweep over the current group runs from
/// cache: one line per vector keeps memory busy without flooding it.
#[derive(Clone, Copy)]
pub(crate) struct Ahead<T> {
    ptrs: [*const T; 2],
    len: usize,
}

impl<T> Ahead<T> {
    pub const NONE: Ahead<T> = Ahead {
        ptrs: [std::ptr::null(); 2],
        len: 0,
    };

    /// `a` and `b` at the offsets of the sweep that fetches them.
    pub fn two(a: &[T], b: &[T]) -> Self {
        Ahead {
            ptrs: [a.as_ptr(), b.as_ptr()],
            len: a.len().min(b.len()),
        }
    }

    /// `a` alone.
    pub fn one(a: &[T]) -> Self {
        Ahead {
            ptrs: [a.as_ptr(), std::ptr::null()],
            len: a.len(),
        }
    }

    /// Fetches the lines at offset `i` (once per 16 values: a line of
    /// `f32`, half a line of 2-byte values): one stream into the first
    /// level, two (the backward's `x` and `dy`) into the second.
    #[inline(always)]
    pub fn at(&self, i: usize) {
        if i < self.len {
            if self.ptrs[1].is_null() {
                crate::simd::prefetch::<true, T>(self.ptrs[0].wrapping_add(i));
            } else {
                crate::simd::prefetch::<false, T>(self.ptrs[0].wrapping_add(i));
                crate::simd::prefetch::<false, T>(self.ptrs[1].wrapping_add(i));
            }
        }
    }
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

// --------------------------------------------------------- channels last

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
