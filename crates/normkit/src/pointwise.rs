//! The engine of the pointwise ops, DyT and Derf:
//!
//! ```text
//! y = weight · f(x) + bias
//! ```
//!
//! with `f` an elementwise function of a few learnable scalars and
//! `weight`, `bias` per channel. Nothing is reduced in the forward pass;
//! the backward sums `dy · f(x)` and `dy` per channel and one or two
//! terms per scalar parameter over everything.
//!
//! An op supplies `f` and its derivative as a [`Pointwise`]; this module
//! walks the data: channels-last rows as flat loops with the parameters
//! extended periodically, channels-first runs of one channel each, in
//! chunks fixed by the shape, so every thread count and instruction set
//! computes the same bits.

use crate::elem::Elem;
use crate::error::Result;
use crate::lanes::{
    load, load_part, reduce, store, store_part, write_lanewise, Lanewise, Periodic, Sums,
    ROWS_PER_FLUSH,
};
use crate::layout::{
    check_affine, check_grads, check_len, numel, Affine, ChannelAxis, Geometry, Grads,
};
use crate::normalize::{Partials, Plan, Scope};
use crate::parallel::{chunk_items, items_per_chunk, map_chunks, stream_output, SharedMut};
use crate::simd::{multiversion, Isa, LANES};
use std::ops::Range;

/// An elementwise function `f(x)` of scalar parameters, on 16 values.
pub(crate) trait Pointwise: Sync {
    /// `f(x)`.
    fn value<S: Isa>(&self, s: S, x: S::V) -> S::V;

    /// The backward pass of one vector, given `g = dy · weight`:
    /// `(dx, terms, f(x))` where `dx = g · f'(x)` and `terms` are the
    /// values whose sums are the gradients of the scalar parameters (a
    /// second one is zero for a function of one parameter).
    fn grad<S: Isa>(&self, s: S, g: S::V, x: S::V) -> (S::V, [S::V; 2], S::V);
}

/// Every row of channels (channels last) or every channel plane (channels
/// first) as one "sample" of a one-group plan, so its runs visit each value
/// once with its channel.
pub(crate) fn plan(op: &'static str, shape: &[usize], axis: ChannelAxis) -> Result<Plan> {
    let geo = match (axis, shape.len()) {
        (ChannelAxis::Last, 1) => Geometry {
            n: 1,
            c: shape[0],
            s: 1,
            axis,
        },
        _ => Geometry::channels(op, shape, axis)?,
    };
    let total = numel(op, shape)?;
    let mut p = Plan {
        geo,
        scope: Scope::PerSample { groups: 1 },
        centered: false,
    };
    if p.geo.s == 1 {
        // [n, c, 1] is [n, 1, c] in memory: rows of channels, not runs of one.
        p.geo.axis = ChannelAxis::Last;
    }
    // (Only with values: `n · s` overflows beside no channels.)
    if p.geo.axis == ChannelAxis::Last && p.geo.s > 1 && total > 0 {
        // Each position's row of channels is its own unit of work.
        p.geo.n *= p.geo.s;
        p.geo.s = 1;
    }
    Ok(p)
}

/// `y = weight · f(x) + bias` after checking every argument.
pub(crate) fn forward<T: Elem, F: Pointwise>(
    op: &'static str,
    f: &F,
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    channel_axis: ChannelAxis,
) -> Result<()> {
    let p = plan(op, shape, channel_axis)?;
    check_len(op, "x", x.len(), p.geo.len(), shape)?;
    check_len(op, "y", y.len(), p.geo.len(), shape)?;
    check_affine(op, affine, p.geo.c, shape)?;
    // An empty input may still have huge extents: do not walk its runs.
    if x.is_empty() {
        return Ok(());
    }
    let c = p.geo.c;
    let weight = affine.weight.map_or_else(|| vec![1.0; c], <[f32]>::to_vec);
    let bias = affine.bias.map_or_else(|| vec![0.0; c], <[f32]>::to_vec);
    let (groups, size) = (p.num_groups(), p.group_size());
    let per_chunk = items_per_chunk(groups, size, 0);
    let stream = stream_output::<T>(y.len());
    let y = SharedMut::new(y);
    if p.geo.axis == ChannelAxis::Last {
        // Rows of channels: each chunk of rows is one flat elementwise
        // loop, the parameters extended periodically.
        let per = Periodic::new(c);
        let (w, b) = (per.extend(&weight), per.extend(&bias));
        map_chunks(groups.div_ceil(per_chunk), x.len(), |i| {
            let rows = chunk_items(i, per_chunk, groups);
            let span = rows.start * c..rows.end * c;
            // SAFETY: chunks cover disjoint rows.
            let out = unsafe { y.range(span.clone()) };
            forward_rows(f, out, &x[span], &per, &w, &b, stream);
        });
    } else {
        map_chunks(groups.div_ceil(per_chunk), x.len(), |i| {
            let groups = chunk_items(i, per_chunk, groups);
            forward_runs(f, &p, groups, &y, x, &weight, &bias, stream);
        });
    }
    Ok(())
}

/// The gradients of `sum(y · dy)` after checking every argument: writes
/// `grads` (`dweight = Σ dy · f(x)`, `dbias = Σ dy` per channel) and
/// returns the sums of the scalar parameters' terms.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Elem, F: Pointwise>(
    op: &'static str,
    f: &F,
    mut grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    channel_axis: ChannelAxis,
) -> Result<[f64; 2]> {
    let p = plan(op, shape, channel_axis)?;
    let (len, c) = (p.geo.len(), p.geo.c);
    check_len(op, "x", x.len(), len, shape)?;
    check_len(op, "dy", dy.len(), len, shape)?;
    check_grads(op, &grads, len, c, shape)?;
    check_affine(op, Affine { weight, bias: None }, c, shape)?;
    if len == 0 {
        // Empty sums, without walking the runs of a possibly huge shape.
        for out in [grads.dweight, grads.dbias].into_iter().flatten() {
            out.fill(0.0);
        }
        return Ok([0.0; 2]);
    }
    let weight = weight.map_or_else(|| vec![1.0; c], <[f32]>::to_vec);
    let (groups, size) = (p.num_groups(), p.group_size());
    let per_element = p.geo.axis == ChannelAxis::Last;
    let per_chunk = items_per_chunk(groups, size, Partials::bytes(c, per_element));
    let dx = SharedMut::new(grads.dx);
    let parts = map_chunks(groups.div_ceil(per_chunk), len, |i| {
        let groups = chunk_items(i, per_chunk, groups);
        backward_chunk(f, &p, groups, &dx, dy, x, &weight)
    });
    grads.dx = &mut [];
    let mut scalars = [0.0f64; 2];
    for (_, sums) in &parts {
        scalars = [scalars[0] + sums[0], scalars[1] + sums[1]];
    }
    Partials::finish(parts.into_iter().map(|(p, _)| p).collect(), grads);
    Ok(scalars)
}

/// `y = w · f(v) + b` for 16 values with their parameters.
#[inline(always)]
fn fwd<S: Isa, F: Pointwise>(s: S, f: &F, v: S::V, w: S::V, b: S::V) -> S::V {
    s.fma(w, f.value(s, v), b)
}

multiversion! {
    /// Channels-last rows, flat; `w`, `b` are [`Periodic::extend`]ed.
    fn forward_rows<T: Elem, F: Pointwise>[s](
        f: &F,
        y: &mut [T],
        x: &[T],
        per: &Periodic,
        w: &[f32],
        b: &[f32],
        stream: bool,
    ) {
        struct Rows<'a, T, F> {
            f: &'a F,
            x: &'a [T],
            per: &'a Periodic,
            w: &'a [f32],
            b: &'a [f32],
            ch: usize,
        }
        impl<S: Isa, T: Elem, F: Pointwise> Lanewise<S> for Rows<'_, T, F> {
            #[inline(always)]
            fn at(&mut self, s: S, i: usize) -> S::V {
                let (w, b) = (load(s, self.w, self.ch), load(s, self.b, self.ch));
                self.ch = self.per.next(self.ch);
                fwd(s, self.f, load(s, self.x, i), w, b)
            }
            #[inline(always)]
            fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
                let (w, b) = (load(s, self.w, self.ch), load(s, self.b, self.ch));
                self.ch = (self.ch + n) % self.per.c;
                fwd(s, self.f, load_part(s, self.x, i, n), w, b)
            }
        }
        let mut rows = Rows { f, x, per, w, b, ch: 0 };
        write_lanewise(s, y, &mut rows, stream);
        if stream {
            s.fence();
        }
    }
}

multiversion! {
    /// Channels-first runs, one channel each.
    fn forward_runs<T: Elem, F: Pointwise>[s](
        f: &F,
        p: &Plan,
        groups: Range<usize>,
        y: &SharedMut<'_, T>,
        x: &[T],
        weight: &[f32],
        bias: &[f32],
        stream: bool,
    ) {
        struct Run<'a, S: Isa, T, F> {
            f: &'a F,
            x: &'a [T],
            w: S::V,
            b: S::V,
        }
        impl<S: Isa, T: Elem, F: Pointwise> Lanewise<S> for Run<'_, S, T, F> {
            #[inline(always)]
            fn at(&mut self, s: S, i: usize) -> S::V {
                fwd(s, self.f, load(s, self.x, i), self.w, self.b)
            }
            #[inline(always)]
            fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
                fwd(s, self.f, load_part(s, self.x, i, n), self.w, self.b)
            }
        }
        for k in groups {
            for run in p.runs(k) {
                let (w, b) = (s.splat(weight[run.channel]), s.splat(bias[run.channel]));
                let mut r = Run { f, x: &x[run.range()], w, b };
                // SAFETY: every value lies in exactly one run of one group,
                // and every group in one chunk.
                let yr = unsafe { y.range(run.range()) };
                write_lanewise(s, yr, &mut r, stream);
            }
        }
        if stream {
            s.fence();
        }
    }
}

/// Backward over a channels-last row: writes dx, adds `dy · f(x)` and `dy`
/// into the per-channel sums, returns the sums of the scalar terms.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_row<S: Isa, T: Elem, F: Pointwise>(
    s: S,
    f: &F,
    out: &mut [T],
    dy: &[T],
    x: &[T],
    w: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) -> [f64; 2] {
    let mut acc = [s.splat(0.0); 2];
    let n = out.len();
    let mut i = 0;
    while i + LANES <= n {
        let (d, v) = (load(s, dy, i), load(s, x, i));
        let (g, terms, t) = f.grad(s, s.mul(d, load(s, w, i)), v);
        store(s, out, i, g);
        acc = [s.add(acc[0], terms[0]), s.add(acc[1], terms[1])];
        store(s, dw, i, s.fma(d, t, load(s, dw, i)));
        store(s, db, i, s.add(load(s, db, i), d));
        i += LANES;
    }
    if i < n {
        let m = n - i;
        let (d, v) = (load_part(s, dy, i, m), load_part(s, x, i, m));
        let (g, terms, t) = f.grad(s, s.mul(d, load_part(s, w, i, m)), v);
        store_part(s, out, i, m, g);
        acc = [
            s.add(acc[0], s.keep_first(terms[0], m)),
            s.add(acc[1], s.keep_first(terms[1], m)),
        ];
        store_part(s, dw, i, m, s.fma(d, t, load_part(s, dw, i, m)));
        store_part(s, db, i, m, s.add(load_part(s, db, i, m), d));
    }
    [s.sum_f64(acc[0]), s.sum_f64(acc[1])]
}

/// Backward over a run of one channel: writes dx, returns the sums of
/// the two scalar terms, of `dy · f(x)` and of `dy`.
#[inline(always)]
fn bwd_run<S: Isa, T: Elem, F: Pointwise>(
    s: S,
    f: &F,
    out: &mut [T],
    dy: &[T],
    x: &[T],
    w: f32,
) -> [f64; 4] {
    struct Run<'a, S: Isa, T, F> {
        f: &'a F,
        out: &'a mut [T],
        dy: &'a [T],
        x: &'a [T],
        w: S::V,
    }
    impl<S: Isa, T: Elem, F: Pointwise> Sums<S, 4> for Run<'_, S, T, F> {
        #[inline(always)]
        fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 4]) {
            let d = load(s, self.dy, i);
            let (g, terms, t) = self.f.grad(s, s.mul(d, self.w), load(s, self.x, i));
            store(s, self.out, i, g);
            acc[0] = s.add(acc[0], terms[0]);
            acc[1] = s.add(acc[1], terms[1]);
            acc[2] = s.fma(d, t, acc[2]);
            acc[3] = s.add(acc[3], d);
        }
        #[inline(always)]
        fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 4]) {
            let d = load_part(s, self.dy, i, n);
            let (g, terms, t) = self.f.grad(s, s.mul(d, self.w), load_part(s, self.x, i, n));
            store_part(s, self.out, i, n, g);
            acc[0] = s.add(acc[0], s.keep_first(terms[0], n));
            acc[1] = s.add(acc[1], s.keep_first(terms[1], n));
            acc[2] = s.fma(d, t, acc[2]);
            acc[3] = s.add(acc[3], d);
        }
    }
    let n = out.len();
    let mut r = Run {
        f,
        out,
        dy,
        x,
        w: s.splat(w),
    };
    reduce(s, n, &mut r)
}

multiversion! {
    fn backward_chunk<T: Elem, F: Pointwise>[s](
        f: &F,
        p: &Plan,
        groups: Range<usize>,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        weight: &[f32],
    ) -> (Partials, [f64; 2]) {
        let c = p.geo.c;
        let mut parts = Partials::new(c, p.geo.axis == ChannelAxis::Last);
        let count = groups.len();
        let mut scalars = [0.0f64; 2];
        for (done, k) in groups.enumerate() {
            for run in p.runs(k) {
                let (xr, dr) = (&x[run.range()], &dy[run.range()]);
                // SAFETY: as in forward_runs.
                let out = unsafe { dx.range(run.range()) };
                let sums = if run.per_element {
                    let cs = run.channel..run.channel + run.len;
                    let (w, dw, db) = (&weight[cs.clone()], &mut parts.dweight32[cs.clone()], &mut parts.dbias32[cs]);
                    bwd_row(s, f, out, dr, xr, w, dw, db)
                } else {
                    let [a, b, dw, db] = bwd_run(s, f, out, dr, xr, weight[run.channel]);
                    parts.add(run.channel, dw, db);
                    [a, b]
                };
                scalars = [scalars[0] + sums[0], scalars[1] + sums[1]];
            }
            // The last rows' f32 sums stay in the partials.
            if (done + 1) % ROWS_PER_FLUSH == 0 && done + 1 < count {
                parts.flush();
            }
        }
        (parts, scalars)
    }
}
