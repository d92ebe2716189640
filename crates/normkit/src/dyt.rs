//! Dynamic Tanh.

use crate::elem::Elem;
use crate::error::Result;
use crate::lanes::{
    load, load_part, reduce, store, store_part, write_lanewise, Lanewise, Periodic, Sums,
    ROWS_PER_FLUSH,
};
use crate::layout::{
    check_affine, check_grads, check_len, numel, Affine, ChannelAxis, Geometry, Grads, RunningStats,
};
use crate::normalize::{Partials, Plan, Scope};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Param, Running,
    Signature,
};
use crate::parallel::{chunk_items, items_per_chunk, map_chunks, stream_output, SharedMut};
use crate::simd::{multiversion, Isa, LANES};
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
    let total = numel(OP, shape)?;
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
/// - tanh is computed in `f32` within 3 ulp (see `tanh.rs`).
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
            forward_rows(out, &x[span], alpha, &per, &w, &b, stream);
        });
    } else {
        map_chunks(groups.div_ceil(per_chunk), x.len(), |i| {
            let groups = chunk_items(i, per_chunk, groups);
            forward_runs(&p, groups, &y, x, alpha, &weight, &bias, stream);
        });
    }
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
    let per_element = p.geo.axis == ChannelAxis::Last;
    let per_chunk = items_per_chunk(groups, size, Partials::bytes(c, per_element));
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
    Partials::finish(parts.into_iter().map(|(p, _)| p).collect(), grads);
    Ok(dalpha as f32)
}

/// `y = w · tanh(alpha · x) + b` for 16 values with their parameters.
#[inline(always)]
fn fwd<S: Isa>(s: S, v: S::V, alpha: S::V, w: S::V, b: S::V) -> S::V {
    s.fma(w, tanh(s, s.mul(alpha, v)), b)
}

multiversion! {
    /// Channels-last rows, flat; `w`, `b` are [`Periodic::extend`]ed.
    fn forward_rows<T: Elem>[s](
        y: &mut [T],
        x: &[T],
        alpha: f32,
        per: &Periodic,
        w: &[f32],
        b: &[f32],
        stream: bool,
    ) {
        struct F<'a, S: Isa, T> {
            x: &'a [T],
            alpha: S::V,
            per: &'a Periodic,
            w: &'a [f32],
            b: &'a [f32],
            ch: usize,
        }
        impl<S: Isa, T: Elem> Lanewise<S> for F<'_, S, T> {
            #[inline(always)]
            fn at(&mut self, s: S, i: usize) -> S::V {
                let (w, b) = (load(s, self.w, self.ch), load(s, self.b, self.ch));
                self.ch = self.per.next(self.ch);
                fwd(s, load(s, self.x, i), self.alpha, w, b)
            }
            #[inline(always)]
            fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
                let (w, b) = (load(s, self.w, self.ch), load(s, self.b, self.ch));
                self.ch = (self.ch + n) % self.per.c;
                fwd(s, load_part(s, self.x, i, n), self.alpha, w, b)
            }
        }
        let mut f = F { x, alpha: s.splat(alpha), per, w, b, ch: 0 };
        write_lanewise(s, y, &mut f, stream);
        if stream {
            s.fence();
        }
    }
}

multiversion! {
    /// Channels-first runs, one channel each.
    fn forward_runs<T: Elem>[s](
        p: &Plan,
        groups: Range<usize>,
        y: &SharedMut<'_, T>,
        x: &[T],
        alpha: f32,
        weight: &[f32],
        bias: &[f32],
        stream: bool,
    ) {
        struct F<'a, S: Isa, T> {
            x: &'a [T],
            alpha: S::V,
            w: S::V,
            b: S::V,
        }
        impl<S: Isa, T: Elem> Lanewise<S> for F<'_, S, T> {
            #[inline(always)]
            fn at(&mut self, s: S, i: usize) -> S::V {
                fwd(s, load(s, self.x, i), self.alpha, self.w, self.b)
            }
            #[inline(always)]
            fn at_part(&mut self, s: S, i: usize, n: usize) -> S::V {
                fwd(s, load_part(s, self.x, i, n), self.alpha, self.w, self.b)
            }
        }
        for k in groups {
            for run in p.runs(k) {
                let (w, b) = (s.splat(weight[run.channel]), s.splat(bias[run.channel]));
                let mut f = F { x: &x[run.range()], alpha: s.splat(alpha), w, b };
                // SAFETY: every value lies in exactly one run of one group,
                // and every group in one chunk.
                let yr = unsafe { y.range(run.range()) };
                write_lanewise(s, yr, &mut f, stream);
            }
        }
        if stream {
            s.fence();
        }
    }
}

/// One vector of the backward pass: `(dx, dt · x, t)` with
/// `dt = dy · w · (1 - t²)`, the derivative taken from [`tanh_sech2`] so
/// it stays accurate as `|t|` nears 1.
#[inline(always)]
fn bwd<S: Isa>(s: S, d: S::V, v: S::V, alpha: S::V, w: S::V) -> [S::V; 3] {
    let (t, sech2) = tanh_sech2(s, s.mul(alpha, v));
    let dt = s.mul(s.mul(d, w), sech2);
    [s.mul(dt, alpha), s.mul(dt, v), t]
}

/// Backward over a channels-last row: writes dx, adds `dy · t` and `dy`
/// into the per-channel sums, returns `Σ dt · x`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_row<S: Isa, T: Elem>(
    s: S,
    out: &mut [T],
    dy: &[T],
    x: &[T],
    alpha: f32,
    w: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) -> f64 {
    let alpha = s.splat(alpha);
    let mut da = s.splat(0.0);
    let n = out.len();
    let mut i = 0;
    while i + LANES <= n {
        let (d, v) = (load(s, dy, i), load(s, x, i));
        let [g, gx, t] = bwd(s, d, v, alpha, load(s, w, i));
        store(s, out, i, g);
        da = s.add(da, gx);
        store(s, dw, i, s.fma(d, t, load(s, dw, i)));
        store(s, db, i, s.add(load(s, db, i), d));
        i += LANES;
    }
    if i < n {
        let m = n - i;
        let (d, v) = (load_part(s, dy, i, m), load_part(s, x, i, m));
        let [g, gx, t] = bwd(s, d, v, alpha, load_part(s, w, i, m));
        store_part(s, out, i, m, g);
        da = s.add(da, s.keep_first(gx, m));
        store_part(s, dw, i, m, s.fma(d, t, load_part(s, dw, i, m)));
        store_part(s, db, i, m, s.add(load_part(s, db, i, m), d));
    }
    s.sum_f64(da)
}

/// Backward over a run of one channel: writes dx, returns
/// `[Σ dt · x, Σ dy · t, Σ dy]`.
#[inline(always)]
fn bwd_run<S: Isa, T: Elem>(
    s: S,
    out: &mut [T],
    dy: &[T],
    x: &[T],
    alpha: f32,
    w: f32,
) -> [f64; 3] {
    struct F<'a, S: Isa, T> {
        out: &'a mut [T],
        dy: &'a [T],
        x: &'a [T],
        alpha: S::V,
        w: S::V,
    }
    impl<S: Isa, T: Elem> Sums<S, 3> for F<'_, S, T> {
        #[inline(always)]
        fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 3]) {
            let d = load(s, self.dy, i);
            let [g, gx, t] = bwd(s, d, load(s, self.x, i), self.alpha, self.w);
            store(s, self.out, i, g);
            acc[0] = s.add(acc[0], gx);
            acc[1] = s.fma(d, t, acc[1]);
            acc[2] = s.add(acc[2], d);
        }
        #[inline(always)]
        fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 3]) {
            let d = load_part(s, self.dy, i, n);
            let [g, gx, t] = bwd(s, d, load_part(s, self.x, i, n), self.alpha, self.w);
            store_part(s, self.out, i, n, g);
            acc[0] = s.add(acc[0], s.keep_first(gx, n));
            acc[1] = s.fma(d, t, acc[1]);
            acc[2] = s.add(acc[2], d);
        }
    }
    let n = out.len();
    let mut f = F {
        out,
        dy,
        x,
        alpha: s.splat(alpha),
        w: s.splat(w),
    };
    reduce(s, n, &mut f)
}

multiversion! {
    fn backward_chunk<T: Elem>[s](
        p: &Plan,
        groups: Range<usize>,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        alpha: f32,
        weight: &[f32],
    ) -> (Partials, f64) {
        let c = p.geo.c;
        let mut parts = Partials::new(c, p.geo.axis == ChannelAxis::Last);
        let count = groups.len();
        let mut dalpha = 0.0f64;
        for (done, k) in groups.enumerate() {
            for run in p.runs(k) {
                let (xr, dr) = (&x[run.range()], &dy[run.range()]);
                // SAFETY: as in forward_runs.
                let out = unsafe { dx.range(run.range()) };
                if run.per_element {
                    let cs = run.channel..run.channel + run.len;
                    let (w, dw, db) = (&weight[cs.clone()], &mut parts.dweight32[cs.clone()], &mut parts.dbias32[cs]);
                    dalpha += bwd_row(s, out, dr, xr, alpha, w, dw, db);
                } else {
                    let [da, dw, db] = bwd_run(s, out, dr, xr, alpha, weight[run.channel]);
                    dalpha += da;
                    parts.add(run.channel, dw, db);
                }
            }
            // The last rows' f32 sums stay in the partials.
            if (done + 1) % ROWS_PER_FLUSH == 0 && done + 1 < count {
                parts.flush();
            }
        }
        (parts, dalpha)
    }
}

/// [`dyt_forward`] and [`dyt_backward`] as a [`NormOp`]. The packed
/// parameters start with the scalar `alpha` (PyTorch-style modules keep it
/// as a one-element parameter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DytOp {
    pub channel_axis: ChannelAxis,
    pub weight: bool,
    pub bias: bool,
}

impl NormOp for DytOp {
    type Saved = ();

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = plan(shape, self.channel_axis)?;
        let mut params = vec![Param {
            name: "alpha",
            len: 1,
        }];
        params.extend(affine_params(self.weight, self.bias, p.geo.c));
        checked_signature(self.name(), shape, params, Running::None)
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _running: Option<RunningStats<'_>>,
    ) -> Result<()> {
        let alpha = params[0];
        dyt_forward(
            y,
            x,
            shape,
            alpha,
            affine_of(sig, params),
            self.channel_axis,
        )
    }

    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _saved: &(),
    ) -> Result<()> {
        let (alpha, weight) = (params[0], affine_of(sig, params).weight);
        let (grads, mut rest) = affine_grads(sig, grads);
        let dalpha = dyt_backward(grads, dy, x, shape, alpha, weight, self.channel_axis)?;
        if let Some((_, slot)) = rest.iter_mut().find(|(name, _)| *name == "alpha") {
            slot[0] = dalpha;
        }
        Ok(())
    }
}
