//! Fuzz cases of the entry points with per-channel statistics: BatchNorm,
//! GroupNorm, InstanceNorm, AdaIN, Switchable Normalization and Batch
//! Renormalization; [`running_op_case`] serves SyncBatchNorm on one rank
//! too (see `sync`).

use normkit::*;

use super::gen::{kept, numel, out, out_opt, Call, Case, Gen, Sent};
use super::rows::{any_dtype, channels, fits, grad, input, output, param, saved_stats};
use super::Tally;

/// What every per-channel case draws: a shape, a layout, input and output
/// buffers and the affine parameters.
pub(super) struct Common<T> {
    shape: Vec<usize>,
    pub(super) axis: ChannelAxis,
    pub(super) eps: f32,
    n: Option<usize>,
    c: Option<usize>,
    x: Vec<T>,
    y: Vec<T>,
    w: Option<Vec<f32>>,
    b: Option<Vec<f32>>,
}

impl<T: Sent> Common<T> {
    pub(super) fn new(g: &mut Gen) -> Self {
        let shape = g.shape(0, 5);
        let axis = g.axis();
        let (n, c) = (numel(&shape), channels(&shape, axis));
        Common {
            eps: g.eps(),
            x: input(g, n),
            y: output(g, n),
            w: param(g, c),
            b: param(g, c),
            shape,
            axis,
            n,
            c,
        }
    }

    /// The output and the inputs, borrowed apart.
    fn split(&mut self) -> (&mut [T], &[T], Affine<'_>) {
        let affine = Affine {
            weight: self.w.as_deref(),
            bias: self.b.as_deref(),
        };
        (&mut self.y, &self.x, affine)
    }

    fn desc(&self, what: String) -> String {
        format!(
            "{} shape {:?} {:?} eps {:e} {what}, lengths x {} y {} w {:?} b {:?}",
            T::NAME,
            self.shape,
            self.axis,
            self.eps,
            self.x.len(),
            self.y.len(),
            self.w.as_ref().map(Vec::len),
            self.b.as_ref().map(Vec::len)
        )
    }

    /// The forward's buffers match the shape.
    fn forward_fits(&self) -> bool {
        Some(self.x.len()) == self.n
            && Some(self.y.len()) == self.n
            && fits(&self.w, self.c)
            && fits(&self.b, self.c)
    }
}

/// The backward's buffers of a per-channel op.
struct Back<T> {
    dy: Vec<T>,
    dx: Vec<T>,
    dw: Option<Vec<f32>>,
    db: Option<Vec<f32>>,
}

impl<T: Sent> Back<T> {
    fn new(g: &mut Gen, c: &Common<T>) -> Self {
        Back {
            dy: input(g, c.n),
            dx: output(g, c.n),
            dw: grad(g, c.c),
            db: grad(g, c.c),
        }
    }

    fn fits(&self, c: &Common<T>) -> bool {
        Some(self.dy.len()) == c.n
            && Some(self.dx.len()) == c.n
            && Some(c.x.len()) == c.n
            && fits(&c.w, c.c)
            && fits(&self.dw, c.c)
            && fits(&self.db, c.c)
    }

    /// The gradient outputs and `dy`, borrowed apart.
    fn split(&mut self) -> (Grads<'_, T>, &[T]) {
        let grads = Grads {
            dx: &mut self.dx,
            dweight: self.dw.as_deref_mut(),
            dbias: self.db.as_deref_mut(),
        };
        (grads, &self.dy)
    }

    fn verdict<R>(&self, call: &Call<'_>, r: &Result<R>) -> bool {
        let outs = [
            Some(out("dx", &self.dx)),
            out_opt("dweight", &self.dw),
            out_opt("dbias", &self.db),
        ];
        call.verdict(r, &outs, &[])
    }
}

fn stats_fit(s: &Stats, len: Option<usize>) -> bool {
    Some(s.mean.len()) == len && Some(s.rstd.len()) == len
}

/// Running statistics for `c` channels (right length or not) and their
/// values before the call.
fn running(g: &mut Gen, c: Option<usize>) -> (Vec<f32>, Vec<f32>) {
    let (a, b) = (g.len(c), g.len(c));
    let (mean, _) = g.running(a);
    let (_, var) = g.running(b);
    (mean, var)
}

/// A forward pass with training-mode running statistics.
pub(super) type TrainFn<T, C> =
    fn(&mut [T], &[T], &[usize], Affine<'_>, Option<RunningStats<'_>>, &C) -> Result<Stats>;
/// A forward pass normalizing with running statistics.
pub(super) type EvalFn<T, C> =
    fn(&mut [T], &[T], &[usize], Affine<'_>, &[f32], &[f32], &C) -> Result<Stats>;
/// A backward pass.
pub(super) type BackFn<T, C> =
    fn(Grads<'_, T>, &[T], &[T], &[usize], Option<&[f32]>, &Stats, &C) -> Result<()>;

/// The four entry points of an op with running statistics (BatchNorm,
/// InstanceNorm), and how many statistics it saves in either mode.
pub(super) struct RunningOp<T, C> {
    pub(super) op: &'static str,
    pub(super) cfg: C,
    pub(super) train: (TrainFn<T, C>, BackFn<T, C>),
    pub(super) eval: (EvalFn<T, C>, BackFn<T, C>),
    pub(super) saved: fn(&[usize], Option<usize>, bool) -> Option<usize>,
}

/// `base` with the mode's suffix, as the entry points are named.
fn mode(base: &str, train: bool) -> String {
    format!("{base}_{}", if train { "train" } else { "eval" })
}

pub(super) fn running_op_case<T: Sent, C: std::fmt::Debug>(
    g: &mut Gen,
    t: &mut Tally,
    mut k: Common<T>,
    e: RunningOp<T, C>,
) {
    let train = g.rng.chance(0.6);
    let (mut rm, mut rv) = running(g, k.c);
    let (rm0, rv0) = (rm.clone(), rv.clone());
    let with_running = !train || g.rng.chance(0.6);
    let case = Case {
        desc: k.desc(format!(
            "train {train} {:?} running {with_running} lengths {} {}",
            e.cfg,
            rm.len(),
            rv.len()
        )),
    };
    let run_ok = !with_running || (Some(rm.len()) == k.c && Some(rv.len()) == k.c);
    let shape = k.shape.clone();
    let call = Call::new(&case, e.op, k.forward_fits() && run_ok, &[&shape]);
    let (y, x, a) = k.split();
    let r = if train {
        let running = with_running.then_some(RunningStats {
            mean: &mut rm,
            var: &mut rv,
        });
        (e.train.0)(y, x, &shape, a, running, &e.cfg)
    } else {
        (e.eval.0)(y, x, &shape, a, &rm, &rv, &e.cfg)
    };
    let keep = [
        kept("running_mean", &rm0, &rm),
        kept("running_var", &rv0, &rv),
    ];
    let ok = call.verdict(&r, &[Some(out("y", &k.y))], &keep);
    t.add("fn", &mode(&format!("{}_forward", e.op), train), ok);

    let per = (e.saved)(&shape, k.c, train);
    let stats = saved_stats(g, r.ok(), per);
    let mut bk = Back::new(g, &k);
    let lens_ok = bk.fits(&k) && stats_fit(&stats, per);
    let call = Call::new(&case, e.op, lens_ok, &[&shape]);
    let backward = if train { e.train.1 } else { e.eval.1 };
    let (gr, dy) = bk.split();
    let r = backward(gr, dy, &k.x, &shape, k.w.as_deref(), &stats, &e.cfg);
    t.add(
        "fn",
        &mode(&format!("{}_backward", e.op), train),
        bk.verdict(&call, &r),
    );
}

pub fn batch_norm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, batch_norm_case(g, t))
}

fn batch_norm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let k = Common::<T>::new(g);
    let cfg = BatchNormConfig {
        eps: k.eps,
        momentum: g.momentum(),
        channel_axis: k.axis,
    };
    let e = RunningOp {
        op: "batch_norm",
        cfg,
        train: (batch_norm_forward_train, batch_norm_backward_train),
        eval: (batch_norm_forward_eval, batch_norm_backward_eval),
        saved: |_, c, _| c,
    };
    running_op_case(g, t, k, e);
}

pub fn group_norm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, group_norm_case(g, t))
}

fn group_norm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let mut k = Common::<T>::new(g);
    let num_groups = if g.rng.chance(0.5) {
        k.c.unwrap_or(1)
    } else {
        g.count()
    };
    let cfg = GroupNormConfig {
        num_groups,
        eps: k.eps,
        channel_axis: k.axis,
    };
    let case = Case {
        desc: k.desc(format!("groups {num_groups}")),
    };
    let shape = k.shape.clone();
    let call = Call::new(&case, "group_norm", k.forward_fits(), &[&shape]);
    let r = {
        let (y, x, a) = k.split();
        group_norm_forward(y, x, &shape, a, &cfg)
    };
    let ok = call.verdict(&r, &[Some(out("y", &k.y))], &[]);
    t.add("fn", "group_norm_forward", ok);

    let groups = shape.first().and_then(|&n| n.checked_mul(num_groups));
    let stats = saved_stats(g, r.ok(), groups);
    let mut bk = Back::new(g, &k);
    let lens_ok = bk.fits(&k) && stats_fit(&stats, groups);
    let call = Call::new(&case, "group_norm", lens_ok, &[&shape]);
    let w = k.w.as_deref();
    let r = {
        let (gr, dy) = bk.split();
        group_norm_backward(gr, dy, &k.x, &shape, w, &stats, &cfg)
    };
    t.add("fn", "group_norm_backward", bk.verdict(&call, &r));
}

pub fn instance_norm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, instance_norm_case(g, t))
}

fn instance_norm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let k = Common::<T>::new(g);
    let cfg = InstanceNormConfig {
        eps: k.eps,
        momentum: g.momentum(),
        channel_axis: k.axis,
    };
    let e = RunningOp {
        op: "instance_norm",
        cfg,
        train: (instance_norm_forward_train, instance_norm_backward_train),
        eval: (instance_norm_forward_eval, instance_norm_backward_eval),
        // Training saves per (sample, channel), evaluation per channel.
        saved: |shape, c, train| match train {
            true => shape.first().zip(c).and_then(|(&n, c)| n.checked_mul(c)),
            false => c,
        },
    };
    running_op_case(g, t, k, e);
}

pub fn adain(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, adain_case(g, t))
}

fn adain_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let mut k = Common::<T>::new(g);
    let mut style_shape = k.shape.clone();
    if g.rng.chance(0.7) {
        if let Some(last) = style_shape.last_mut() {
            *last = g.extent().min(7);
        }
    } else {
        style_shape = g.shape(0, 4);
    }
    let cfg = AdaInConfig {
        eps: k.eps,
        unbiased: g.rng.chance(0.5),
        channel_axis: k.axis,
    };
    let ns = numel(&style_shape);
    let style: Vec<T> = input(g, ns);
    let case = Case {
        desc: k.desc(format!("style {style_shape:?} ({}) {:?}", style.len(), cfg)),
    };
    let shape = k.shape.clone();
    let shapes: [&[usize]; 2] = [&shape, &style_shape];
    let lens_ok = Some(k.x.len()) == k.n && Some(k.y.len()) == k.n && Some(style.len()) == ns;
    let call = Call::new(&case, "adain", lens_ok, &shapes);
    let r = adain_forward(&mut k.y, &k.x, &shape, &style, &style_shape, &cfg);
    let ok = call.verdict(&r, &[Some(out("y", &k.y))], &[]);
    t.add("fn", "adain_forward", ok);

    let instances = shape.first().zip(k.c).and_then(|(&n, c)| n.checked_mul(c));
    let mut stats = r.unwrap_or_default();
    if stats.content.rstd.is_empty() {
        let s = saved_stats(g, None, instances);
        let l = g.len(instances);
        stats = AdaInStats {
            content: s,
            style_mean: g.params(l),
            style_std: g.params(l),
        };
    }
    g.damage(&mut stats.style_std);
    let dy: Vec<T> = input(g, k.n);
    let mut dx: Vec<T> = output(g, k.n);
    let mut dstyle: Option<Vec<T>> = g.rng.chance(0.7).then(|| output(g, ns));
    let lens_ok = Some(k.x.len()) == k.n
        && Some(style.len()) == ns
        && Some(dy.len()) == k.n
        && Some(dx.len()) == k.n
        && dstyle.as_ref().is_none_or(|d| Some(d.len()) == ns)
        && stats_fit(&stats.content, instances)
        && Some(stats.style_mean.len()) == instances
        && Some(stats.style_std.len()) == instances;
    let call = Call::new(&case, "adain", lens_ok, &shapes);
    let r = adain_backward(
        &mut dx,
        dstyle.as_deref_mut(),
        &dy,
        &k.x,
        &shape,
        &style,
        &style_shape,
        &stats,
        &cfg,
    );
    let outs = [
        Some(out("dx", &dx)),
        dstyle.as_ref().map(|d| out("dstyle", d)),
    ];
    t.add("fn", "adain_backward", call.verdict(&r, &outs, &[]));
}

pub fn switch_norm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, switch_norm_case(g, t))
}

fn switch_norm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let mut k = Common::<T>::new(g);
    let cfg = SwitchNormConfig {
        eps: k.eps,
        momentum: g.momentum(),
        channel_axis: k.axis,
    };
    let train = g.rng.chance(0.6);
    let (mut rm, mut rv) = running(g, k.c);
    let (rm0, rv0) = (rm.clone(), rv.clone());
    let with_running = !train || g.rng.chance(0.5);
    let (mw, vw) = (g.params_for(Some(3)), g.params_for(Some(3)));
    let weights = SwitchWeights {
        mean_weight: &mw,
        var_weight: &vw,
    };
    let case = Case {
        desc: k.desc(format!(
            "train {train} running {with_running} ({} {}) logits {} {}",
            rm.len(),
            rv.len(),
            mw.len(),
            vw.len()
        )),
    };
    let run_ok = !with_running || (Some(rm.len()) == k.c && Some(rv.len()) == k.c);
    let lens_ok = k.forward_fits() && run_ok && mw.len() == 3 && vw.len() == 3;
    let shape = k.shape.clone();
    let call = Call::new(&case, "switch_norm", lens_ok, &[&shape]);
    let r = if train {
        let running = with_running.then_some(RunningStats {
            mean: &mut rm,
            var: &mut rv,
        });
        let (y, x, a) = k.split();
        switch_norm_forward_train(y, x, &shape, a, weights, running, &cfg)
    } else {
        let (m, v) = (&rm[..], &rv[..]);
        let (y, x, a) = k.split();
        switch_norm_forward_eval(y, x, &shape, a, weights, m, v, &cfg)
    };
    let keep = [
        kept("running_mean", &rm0, &rm),
        kept("running_var", &rv0, &rv),
    ];
    let ok = call.verdict(&r, &[Some(out("y", &k.y))], &keep);
    let name = if train {
        "switch_norm_forward_train"
    } else {
        "switch_norm_forward_eval"
    };
    t.add("fn", name, ok);

    // Saved statistics: the forward's, or none (which must be refused).
    let fwd_ok = r.is_ok();
    let stats = r.unwrap_or_default();
    let mut bk = Back::new(g, &k);
    let (mut dmw, mut dvw) = (grad(g, Some(3)), grad(g, Some(3)));
    let lens_ok = fwd_ok && bk.fits(&k) && fits(&dmw, Some(3)) && fits(&dvw, Some(3));
    let call = Call::new(&case, "switch_norm", lens_ok, &[&shape]);
    let dweights = SwitchGrads {
        dmean_weight: dmw.as_deref_mut(),
        dvar_weight: dvw.as_deref_mut(),
    };
    let w = k.w.as_deref();
    let (gr, dy) = bk.split();
    let r = switch_norm_backward(gr, dweights, dy, &k.x, &shape, w, weights, &stats, &cfg);
    let ok = bk.verdict(&call, &r);
    let outs = [out_opt("dmean_weight", &dmw), out_opt("dvar_weight", &dvw)];
    let ok = call.verdict(&r, &outs, &[]) && ok;
    t.add("fn", "switch_norm_backward", ok);
}

pub fn batch_renorm(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, batch_renorm_case(g, t))
}

fn batch_renorm_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let mut k = Common::<T>::new(g);
    let cfg = BatchRenormConfig {
        eps: k.eps,
        momentum: g.momentum(),
        channel_axis: k.axis,
        r_max: g.rng.pick(&[3.0, 1.0, 0.5, f32::NAN, f32::INFINITY]),
        d_max: g.rng.pick(&[5.0, 0.0, -1.0, f32::NAN]),
    };
    let train = g.rng.chance(0.6);
    let (mut rm, mut rv) = running(g, k.c);
    let (rm0, rv0) = (rm.clone(), rv.clone());
    let case = Case {
        desc: k.desc(format!(
            "train {train} {cfg:?} running lengths {} {}",
            rm.len(),
            rv.len()
        )),
    };
    let run_ok = Some(rm.len()) == k.c && Some(rv.len()) == k.c;
    let shape = k.shape.clone();
    let call = Call::new(&case, "batch_renorm", k.forward_fits() && run_ok, &[&shape]);
    let r = if train {
        let running = RunningStats {
            mean: &mut rm,
            var: &mut rv,
        };
        ({
            let (y, x, a) = k.split();
            batch_renorm_forward_train(y, x, &shape, a, running, &cfg)
        })
        .map(|s| (Some(s.clone()), s.stats))
    } else {
        ({
            let (y, x, a) = k.split();
            batch_renorm_forward_eval(y, x, &shape, a, &rm, &rv, &cfg)
        })
        .map(|s| (None, s))
    };
    let keep = [
        kept("running_mean", &rm0, &rm),
        kept("running_var", &rv0, &rv),
    ];
    let ok = call.verdict(&r, &[Some(out("y", &k.y))], &keep);
    let name = if train {
        "batch_renorm_forward_train"
    } else {
        "batch_renorm_forward_eval"
    };
    t.add("fn", name, ok);

    let (renorm, stats) = match r {
        Ok((renorm, stats)) => (renorm, Some(stats)),
        Err(_) => (None, None),
    };
    let stats = saved_stats(g, stats, k.c);
    let mut bk = Back::new(g, &k);
    let w = k.w.as_deref();
    let (r, lens_ok) = if train {
        let mut s = renorm.unwrap_or_else(|| RenormStats {
            stats: stats.clone(),
            r: g.params_for(k.c),
            d: g.params_for(k.c),
        });
        g.damage(&mut s.r);
        let fit = stats_fit(&s.stats, k.c) && Some(s.r.len()) == k.c && Some(s.d.len()) == k.c;
        let r = {
            let (gr, dy) = bk.split();
            batch_renorm_backward_train(gr, dy, &k.x, &shape, w, &s, &cfg)
        };
        (r, fit)
    } else {
        let r = {
            let (gr, dy) = bk.split();
            batch_renorm_backward_eval(gr, dy, &k.x, &shape, w, &stats, &cfg)
        };
        (r, stats_fit(&stats, k.c))
    };
    let call = Call::new(&case, "batch_renorm", lens_ok && bk.fits(&k), &[&shape]);
    let name = if train {
        "batch_renorm_backward_train"
    } else {
        "batch_renorm_backward_eval"
    };
    t.add("fn", name, bk.verdict(&call, &r));
}
