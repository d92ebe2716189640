//! Fuzz cases of SyncBatchNorm across ranks: K = 1..4 ranks as threads of
//! one [`ThreadComm`] group, each with its own batch size (zero included),
//! buffers and settings — now and then a channel count, an eps, a
//! momentum, an axis, an element type, running statistics or a buffer
//! length that differs on one rank or on every rank. Training forward and
//! backward, through the functions or through [`SyncBatchNormOp`].
//!
//! Beyond every call's own verdict (Ok with every output written, or a
//! typed error with nothing written): either every rank succeeds or every
//! rank fails, with the same error on every rank when there are several,
//! and never a failed collective (a rank left waiting).
//!
//! [`sync_batch_norm_local`] adds one rank on [`SingleProcess`] and the
//! evaluation entry points, which never communicate, as BatchNorm's cases
//! run.

use std::sync::Arc;
use std::time::Duration;

use normkit::comm::{Communicator, DistributedError, SingleProcess, ThreadComm};
use normkit::op::{NormOp, OpGrads, SyncBatchNormOp};
use normkit::*;

use super::gen::{fresh, kept, numel, out, out_opt, Call, Case, Gen, Out, Sent};
use super::rows::{any_dtype, channels, fits, grad, input, output, param};
use super::Tally;

/// Far beyond what a small case needs: a collective that times out is a
/// rank left behind, which fails the case instead of hanging the batch.
const TIMEOUT: Duration = Duration::from_secs(20);

/// What one rank's forward and backward are handed and write.
struct Bufs<T> {
    shape: Vec<usize>,
    cfg: BatchNormConfig,
    x: Vec<T>,
    y: Vec<T>,
    w: Option<Vec<f32>>,
    b: Option<Vec<f32>>,
    running: Option<(Vec<f32>, Vec<f32>)>,
    /// Through the op: its flags and packed parameters (`w` then `b`,
    /// whichever are present).
    params: Vec<f32>,
    dy: Vec<T>,
    dx: Vec<T>,
    dw: Option<Vec<f32>>,
    db: Option<Vec<f32>>,
    dparams: Option<Vec<f32>>,
    /// The saved statistics the backward gets when the forward failed.
    fallback: Stats,
    /// How the forward's statistics are damaged before the backward (0:
    /// not at all).
    damage: u8,
}

/// One rank's buffers, of its element type.
enum AnyBufs {
    F32(Bufs<f32>),
    Bf16(Bufs<bf16>),
    F16(Bufs<f16>),
}

/// What one rank brings back: both results, what its outputs hold, its
/// running statistics before and after, and the statistics its backward
/// was handed.
struct Outcome {
    dtype: &'static str,
    fwd: Result<()>,
    fwd_outs: Vec<Option<Out>>,
    running: Option<[(Vec<f32>, Vec<f32>); 2]>,
    bwd: Result<()>,
    bwd_outs: Vec<Option<Out>>,
    stats: Stats,
    /// The backward's buffers matched this rank's shape and `stats`.
    bwd_fits: bool,
}

/// The settings a case draws once and its ranks then share (or not).
#[derive(Clone, Copy)]
struct Plan {
    ranks: usize,
    via_op: bool,
    weight: bool,
    bias: bool,
    with_running: bool,
    /// Every buffer the right length (else each drawn by [`Gen::len`]).
    exact: bool,
}

fn len_for(g: &mut Gen, exact: bool, right: Option<usize>) -> usize {
    match right {
        Some(n) if exact && n <= super::gen::CAP => n,
        _ => g.len(right),
    }
}

impl<T: Sent> Bufs<T> {
    fn new(g: &mut Gen, p: &Plan, shape: Vec<usize>, cfg: BatchNormConfig) -> Self {
        let (n, c) = (numel(&shape), channels(&shape, cfg.channel_axis));
        let e = p.exact;
        let x: Vec<T> = if e { input_exact(g, n) } else { input(g, n) };
        let y: Vec<T> = if e {
            fresh(len_for(g, e, n))
        } else {
            output(g, n)
        };
        let param_of = |g: &mut Gen, on: bool| {
            on.then(|| {
                let l = len_for(g, e, c);
                g.params(l)
            })
        };
        let (w, b) = if p.via_op {
            (param_of(g, p.weight), param_of(g, p.bias))
        } else if e {
            let on = (g.rng.chance(0.7), g.rng.chance(0.7));
            (param_of(g, on.0), param_of(g, on.1))
        } else {
            (param(g, c), param(g, c))
        };
        let running = p.with_running.then(|| {
            let (l0, l1) = (len_for(g, e, c), len_for(g, e, c));
            (g.running(l0).0, g.running(l1).1)
        });
        let params: Vec<f32> = w.iter().chain(&b).flatten().copied().collect();
        let packed = packed_len(p, c);
        let dy: Vec<T> = if e { input_exact(g, n) } else { input(g, n) };
        let dx: Vec<T> = if e {
            fresh(len_for(g, e, n))
        } else {
            output(g, n)
        };
        let grad_of = |g: &mut Gen, right| {
            if e {
                g.rng.chance(0.7).then(|| fresh(len_for(g, e, right)))
            } else {
                grad(g, right)
            }
        };
        let (dw, db, dparams) = (grad_of(g, c), grad_of(g, c), grad_of(g, packed));
        let (l0, l1) = (g.len(c), g.len(c));
        let fallback = Stats {
            mean: g.params(l0),
            rstd: g.params(l1),
        };
        let damage = if g.rng.chance(0.05) {
            g.rng.between(1, 3) as u8
        } else {
            0
        };
        Bufs {
            shape,
            cfg,
            x,
            y,
            w,
            b,
            running,
            params,
            dy,
            dx,
            dw,
            db,
            dparams,
            fallback,
            damage,
        }
    }

    /// This rank's forward and backward, collective with the other ranks.
    fn run(mut self, p: &Plan, comm: Arc<dyn Communicator>) -> Outcome {
        let before = self.running.clone();
        let Bufs {
            shape,
            cfg,
            x,
            y,
            w,
            b,
            running,
            params,
            ..
        } = &mut self;
        let running = running
            .as_mut()
            .map(|(m, v)| RunningStats { mean: m, var: v });
        let op = SyncBatchNormOp {
            cfg: *cfg,
            training: true,
            weight: p.weight,
            bias: p.bias,
            comm: Arc::clone(&comm),
        };
        let fwd = if p.via_op {
            op.forward(y, x, shape, params, running)
        } else {
            let affine = Affine {
                weight: w.as_deref(),
                bias: b.as_deref(),
            };
            sync_batch_norm_forward_train(y, x, shape, affine, running, cfg, &*comm)
        };
        let mut stats = match &fwd {
            Ok(s) => s.clone(),
            Err(_) => self.fallback.clone(),
        };
        match self.damage {
            1 => {
                stats.mean.pop();
            }
            2 => stats.rstd.push(1.0),
            3 => {
                if let Some(v) = stats.rstd.first_mut() {
                    *v = f32::NAN;
                }
            }
            _ => {}
        }
        let bwd_fits = self.backward_fits(p, &stats);
        let bwd = if p.via_op {
            let grads = OpGrads {
                dx: &mut self.dx,
                dparams: self.dparams.as_deref_mut(),
            };
            op.backward(grads, &self.dy, &self.x, &self.shape, &self.params, &stats)
        } else {
            let grads = Grads {
                dx: &mut self.dx,
                dweight: self.dw.as_deref_mut(),
                dbias: self.db.as_deref_mut(),
            };
            let w = self.w.as_deref();
            sync_batch_norm_backward_train(
                grads,
                &self.dy,
                &self.x,
                &self.shape,
                w,
                &stats,
                &self.cfg,
                &*comm,
            )
        };
        let bwd_outs = if p.via_op {
            vec![
                Some(out("dx", &self.dx)),
                self.dparams.as_ref().map(|d| out("dparams", d)),
            ]
        } else {
            vec![
                Some(out("dx", &self.dx)),
                out_opt("dweight", &self.dw),
                out_opt("dbias", &self.db),
            ]
        };
        Outcome {
            dtype: T::NAME,
            fwd: fwd.map(drop),
            fwd_outs: vec![Some(out("y", &self.y))],
            running: before.zip(self.running).map(|(a, b)| [a, b]),
            bwd: bwd.map(drop),
            bwd_outs,
            stats,
            bwd_fits,
        }
    }

    /// The forward's buffers match this rank's own shape.
    fn forward_fits(&self, p: &Plan) -> bool {
        let (n, c) = (
            numel(&self.shape),
            channels(&self.shape, self.cfg.channel_axis),
        );
        let packed = packed_len(p, c);
        let params_ok = if p.via_op {
            Some(self.params.len()) == packed
        } else {
            fits(&self.w, c) && fits(&self.b, c)
        };
        Some(self.x.len()) == n
            && Some(self.y.len()) == n
            && params_ok
            && self
                .running
                .as_ref()
                .is_none_or(|(m, v)| Some(m.len()) == c && Some(v.len()) == c)
    }

    /// The backward's buffers match this rank's own shape.
    fn backward_fits(&self, p: &Plan, stats: &Stats) -> bool {
        let (n, c) = (
            numel(&self.shape),
            channels(&self.shape, self.cfg.channel_axis),
        );
        let packed = packed_len(p, c);
        let grads_ok = if p.via_op {
            Some(self.params.len()) == packed
                && self
                    .dparams
                    .as_ref()
                    .is_none_or(|d| Some(d.len()) == packed)
        } else {
            fits(&self.w, c) && fits(&self.dw, c) && fits(&self.db, c)
        };
        Some(self.x.len()) == n
            && Some(self.dy.len()) == n
            && Some(self.dx.len()) == n
            && grads_ok
            && Some(stats.mean.len()) == c
            && Some(stats.rstd.len()) == c
    }

    fn desc(&self) -> String {
        format!(
            "{} shape {:?} {:?}, lengths x {} y {} w {:?} b {:?} params {} running {:?} dy {} dx {} dw {:?} db {:?} dparams {:?} fallback {} {} damage {}",
            T::NAME,
            self.shape,
            self.cfg,
            self.x.len(),
            self.y.len(),
            self.w.as_ref().map(Vec::len),
            self.b.as_ref().map(Vec::len),
            self.params.len(),
            self.running.as_ref().map(|(m, v)| (m.len(), v.len())),
            self.dy.len(),
            self.dx.len(),
            self.dw.as_ref().map(Vec::len),
            self.db.as_ref().map(Vec::len),
            self.dparams.as_ref().map(Vec::len),
            self.fallback.mean.len(),
            self.fallback.rstd.len(),
            self.damage,
        )
    }
}

/// The op's packed parameters for `c` channels (`None` on overflow).
fn packed_len(p: &Plan, c: Option<usize>) -> Option<usize> {
    c?.checked_mul(p.weight as usize + p.bias as usize)
}

/// Values for exactly `right` values when that fits a buffer.
fn input_exact<T: Sent>(g: &mut Gen, right: Option<usize>) -> Vec<T> {
    let len = len_for(g, true, right);
    g.values(len)
}

impl AnyBufs {
    fn new(g: &mut Gen, p: &Plan, k: usize, shape: Vec<usize>, cfg: BatchNormConfig) -> Self {
        match k {
            0 => AnyBufs::F32(Bufs::new(g, p, shape, cfg)),
            1 => AnyBufs::Bf16(Bufs::new(g, p, shape, cfg)),
            _ => AnyBufs::F16(Bufs::new(g, p, shape, cfg)),
        }
    }
}

/// Runs `$e` with `$b` bound to the rank's typed buffers.
macro_rules! typed {
    ($any:expr, $b:ident => $e:expr) => {
        match $any {
            AnyBufs::F32($b) => $e,
            AnyBufs::Bf16($b) => $e,
            AnyBufs::F16($b) => $e,
        }
    };
}

/// Which setting a case makes differ between ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    Channels,
    Eps,
    Momentum,
    Axis,
    Dtype,
    Running,
}

pub fn sync_batch_norm(g: &mut Gen, t: &mut Tally) {
    let p = Plan {
        ranks: g.rng.between(1, 4),
        via_op: g.rng.chance(0.3),
        weight: g.rng.chance(0.6),
        bias: g.rng.chance(0.6),
        with_running: g.rng.chance(0.6),
        exact: g.rng.chance(0.6),
    };
    let fault = if g.rng.chance(0.6) {
        Fault::None
    } else {
        g.rng.pick(&[
            Fault::Channels,
            Fault::Eps,
            Fault::Momentum,
            Fault::Axis,
            Fault::Dtype,
            Fault::Running,
        ])
    };
    // The fault on one rank, or each rank its own value.
    let faulty = g.rng.between(0, p.ranks - 1);
    let every = g.rng.chance(0.3);
    let on = |r: usize| every || r == faulty;
    let base_c = if g.rng.chance(0.9) {
        g.rng.between(1, 4)
    } else {
        g.extent()
    };
    let base_cfg = BatchNormConfig {
        eps: if g.rng.chance(0.8) { 1e-5 } else { g.eps() },
        momentum: if g.rng.chance(0.8) {
            Momentum::Exponential(0.1)
        } else {
            g.momentum()
        },
        channel_axis: g.axis(),
    };
    let base_k = g.rng.between(0, 2);
    let mut ranks = Vec::with_capacity(p.ranks);
    for r in 0..p.ranks {
        let mut cfg = base_cfg;
        let mut c = base_c;
        let mut k = base_k;
        let mut p_r = p;
        if on(r) {
            match fault {
                Fault::Channels => c = g.rng.between(1, 6),
                Fault::Eps => cfg.eps = g.eps(),
                Fault::Momentum => cfg.momentum = g.momentum(),
                Fault::Axis => cfg.channel_axis = g.axis(),
                Fault::Dtype => k = g.rng.between(0, 2),
                Fault::Running => p_r.with_running = !p.with_running,
                Fault::None => {}
            }
        }
        // A batch of 0 to 4 samples (zero a quarter of the time), spatial
        // extents of this rank's own, now and then a huge one.
        let batch = if g.rng.chance(0.25) {
            0
        } else if g.rng.chance(0.05) {
            g.extent()
        } else {
            g.rng.between(1, 4)
        };
        let spatial: Vec<usize> = (0..g.rng.between(0, 2))
            .map(|_| {
                if g.rng.chance(0.05) {
                    g.extent()
                } else {
                    g.rng.between(1, 3)
                }
            })
            .collect();
        let mut shape = vec![batch];
        match cfg.channel_axis {
            ChannelAxis::First => {
                shape.push(c);
                shape.extend(&spatial);
            }
            ChannelAxis::Last => {
                shape.extend(&spatial);
                shape.push(c);
            }
        }
        if g.rng.chance(0.03) {
            // A shape of rank 1 or 0: refused.
            shape.truncate(g.rng.between(0, 1));
        }
        ranks.push(AnyBufs::new(g, &p_r, k, shape, cfg));
    }
    run_case(t, &p, fault, ranks);
}

fn run_case(t: &mut Tally, p: &Plan, fault: Fault, ranks: Vec<AnyBufs>) {
    let descs: Vec<String> = ranks.iter().map(|b| typed!(b, b => b.desc())).collect();
    let case = Case {
        desc: format!(
            "{} ranks, via op {}, weight {} bias {} running {} fault {fault:?}: {}",
            p.ranks,
            p.via_op,
            p.weight,
            p.bias,
            p.with_running,
            descs.join(" | ")
        ),
    };
    // What every rank must share, and every rank's own fit.
    let fwd_fits: Vec<bool> = ranks
        .iter()
        .map(|b| typed!(b, b => b.forward_fits(p)))
        .collect();
    // Channels, element type, eps, axis, momentum, running statistics.
    #[allow(clippy::type_complexity)]
    let shared: Vec<(Option<usize>, &str, u32, ChannelAxis, String, bool)> = ranks
        .iter()
        .map(|b| {
            typed!(b, b => (
                channels(&b.shape, b.cfg.channel_axis),
                dtype_of(&b.x),
                b.cfg.eps.to_bits(),
                b.cfg.channel_axis,
                format!("{:?}", b.cfg.momentum),
                b.running.is_some(),
            ))
        })
        .collect();
    let agree = shared.windows(2).all(|w| w[0] == w[1]);
    let shapes: Vec<Vec<usize>> = ranks
        .iter()
        .map(|b| typed!(b, b => b.shape.clone()))
        .collect();
    let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    let consistent_fwd = agree && fwd_fits.iter().all(|&f| f);
    let fwd_call = Call::new(&case, "sync_batch_norm", consistent_fwd, &shape_refs);
    let mut bwd_call = Call::new(&case, "sync_batch_norm", false, &shape_refs);
    let group: Vec<Arc<dyn Communicator>> = if p.ranks == 1 && fault == Fault::None {
        // One rank also runs on the single-process communicator.
        vec![Arc::new(SingleProcess)]
    } else {
        ThreadComm::group(p.ranks)
            .into_iter()
            .map(|c| Arc::new(c.with_timeout(TIMEOUT)) as Arc<dyn Communicator>)
            .collect()
    };
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .zip(group)
            .map(|(b, comm)| s.spawn(move || typed!(b, b => b.run(p, comm))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });

    // Forward: each rank's verdict, then all alike.
    let mut fwd_ok = Vec::new();
    for o in &outcomes {
        let keep: Vec<_> = o
            .running
            .iter()
            .flat_map(|[(m0, v0), (m1, v1)]| {
                [kept("running_mean", m0, m1), kept("running_var", v0, v1)]
            })
            .collect();
        fwd_ok.push(fwd_call.verdict(&o.fwd, &o.fwd_outs, &keep));
    }
    let fwd: Vec<&Result<()>> = outcomes.iter().map(|o| &o.fwd).collect();
    all_alike(&case, "forward", &fwd);
    let name = "sync_batch_norm_forward_train";
    let via = if p.via_op { "op" } else { "fn" };
    t.add(via, &tally_name(p, name, true), fwd_ok[0]);
    // Per number of ranks too: each must both succeed and refuse.
    let ranks = format!("{} ranks", p.ranks);
    t.add(&ranks, "sync_batch_norm forward", fwd_ok[0]);

    // Backward: consistent when every rank fits and all were handed the
    // same statistics.
    let same_stats = outcomes.windows(2).all(|w| {
        let bits =
            |s: &Stats| -> Vec<u32> { s.mean.iter().chain(&s.rstd).map(|v| v.to_bits()).collect() };
        bits(&w[0].stats) == bits(&w[1].stats) && w[0].stats.mean.len() == w[1].stats.mean.len()
    });
    let fits_all = outcomes.iter().all(|o| o.bwd_fits);
    let dtypes_agree = outcomes.windows(2).all(|w| w[0].dtype == w[1].dtype);
    // The backward compares neither momentum nor running statistics.
    let axes_eps_agree = shared
        .windows(2)
        .all(|w| w[0].0 == w[1].0 && w[0].2 == w[1].2 && w[0].3 == w[1].3);
    bwd_call.consistent = same_stats && fits_all && dtypes_agree && axes_eps_agree;
    let mut bwd_ok = Vec::new();
    for o in &outcomes {
        bwd_ok.push(bwd_call.verdict(&o.bwd, &o.bwd_outs, &[]));
    }
    let bwd: Vec<&Result<()>> = outcomes.iter().map(|o| &o.bwd).collect();
    all_alike(&case, "backward", &bwd);
    let name = "sync_batch_norm_backward_train";
    t.add(via, &tally_name(p, name, false), bwd_ok[0]);
    t.add(&ranks, "sync_batch_norm backward", bwd_ok[0]);
}

/// The tally's key: the entry point, or the op's pass.
fn tally_name(p: &Plan, name: &str, forward: bool) -> String {
    match (p.via_op, forward) {
        (false, _) => name.to_string(),
        (true, true) => "sync_batch_norm forward".to_string(),
        (true, false) => "sync_batch_norm backward".to_string(),
    }
}

fn dtype_of<T: Elem>(_: &[T]) -> &'static str {
    T::NAME
}

/// Every rank succeeded, or every rank failed — with the same error when
/// there are several ranks — and no collective failed.
fn all_alike(case: &Case, pass: &str, results: &[&Result<()>]) {
    let oks = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        oks == 0 || oks == results.len(),
        "sync_batch_norm {pass}: {oks} of {} ranks succeeded ({results:?}): {}",
        results.len(),
        case.desc
    );
    for r in results {
        if let Err(NormError::Distributed {
            error: DistributedError::Comm(e),
            ..
        }) = r
        {
            panic!(
                "sync_batch_norm {pass}: a collective failed ({e}): {}",
                case.desc
            );
        }
    }
    if results.len() > 1 && oks == 0 {
        let first = results[0].as_ref().unwrap_err();
        for (rank, r) in results.iter().enumerate() {
            let e = r.as_ref().unwrap_err();
            assert!(
                e == first,
                "sync_batch_norm {pass}: rank {rank} says `{e}`, rank 0 `{first}`: {}",
                case.desc
            );
            assert!(
                matches!(e, NormError::Distributed { .. }),
                "sync_batch_norm {pass}: not a distributed error on rank {rank}: `{e}`: {}",
                case.desc
            );
        }
    }
}

pub fn sync_batch_norm_local(g: &mut Gen, t: &mut Tally) {
    any_dtype!(g, local_case(g, t))
}

/// One rank on the single-process communicator, and evaluation (which
/// never communicates): BatchNorm's contract under SyncBatchNorm's name.
fn local_case<T: Sent>(g: &mut Gen, t: &mut Tally) {
    let k = super::channels::Common::<T>::new(g);
    let cfg = BatchNormConfig {
        eps: k.eps,
        momentum: g.momentum(),
        channel_axis: k.axis,
    };
    let e = super::channels::RunningOp {
        op: "sync_batch_norm",
        cfg,
        train: (
            |y, x, s, a, r, c| sync_batch_norm_forward_train(y, x, s, a, r, c, &SingleProcess),
            |gr, dy, x, s, w, st, c| {
                sync_batch_norm_backward_train(gr, dy, x, s, w, st, c, &SingleProcess)
            },
        ),
        eval: (sync_batch_norm_forward_eval, sync_batch_norm_backward_eval),
        saved: |_, c, _| c,
    };
    super::channels::running_op_case(g, t, k, e);
}
