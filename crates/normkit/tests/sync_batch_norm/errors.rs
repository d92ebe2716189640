//! Bad input across ranks: whatever one rank gets wrong — its own input,
//! or what it must share with the others — every rank returns the same
//! typed error, naming the op, and writes nothing; a rank that leaves or
//! stays away makes the others fail, never wait forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use normkit::comm::{CommError, Communicator, DistributedError, SingleProcess, ThreadComm};
use normkit::op::{ElemSlice, ElemSliceMut, ErasedOp, NormOp, SyncBatchNormOp};
use normkit::{
    bf16, f16, sync_batch_norm_backward_train, sync_batch_norm_forward_train, Affine,
    BatchNormConfig, ChannelAxis, Elem, Grads, NormError, RunningStats, Stats,
};

use super::bits;

/// A NaN with a payload no kernel would produce: an output still holding
/// it was not written.
const SENTINEL: f32 = f32::from_bits(0x7fc0_1234);

/// Runs `f` on each rank of a new group of `k` threads.
pub fn on_ranks<R: Send>(k: usize, f: impl Fn(Arc<dyn Communicator>) -> R + Sync) -> Vec<R> {
    on_group(ThreadComm::group(k), f)
}

fn on_group<R: Send>(
    group: Vec<ThreadComm>,
    f: impl Fn(Arc<dyn Communicator>) -> R + Sync,
) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|c| s.spawn(move || f(Arc::new(c))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// One rank's call: its shape and settings, and whether it passes
/// running statistics and a `y` of the wrong length.
#[derive(Clone)]
struct Call {
    shape: Vec<usize>,
    cfg: BatchNormConfig,
    running: bool,
    y_short: bool,
}

impl Call {
    fn new(shape: &[usize]) -> Self {
        Call {
            shape: shape.to_vec(),
            cfg: BatchNormConfig::default(),
            running: true,
            y_short: false,
        }
    }

    fn channels(&self) -> usize {
        let at = match self.cfg.channel_axis {
            ChannelAxis::First => 1,
            ChannelAxis::Last => self.shape.len() - 1,
        };
        self.shape.get(at).copied().unwrap_or(0)
    }

    /// The forward on this rank: its result, and whether `y` and the
    /// running statistics are as they were.
    fn forward<T: Elem>(&self, comm: &dyn Communicator) -> (normkit::Result<Stats>, bool) {
        let len: usize = self.shape.iter().product();
        let x: Vec<T> = (0..len).map(|i| T::from_f32((i % 7) as f32)).collect();
        let mut y = vec![T::from_f32(SENTINEL); len - self.y_short as usize];
        let c = self.channels();
        let (mut mean, mut var) = (vec![SENTINEL; c], vec![SENTINEL; c]);
        let running = self.running.then_some(RunningStats {
            mean: &mut mean,
            var: &mut var,
        });
        let r = sync_batch_norm_forward_train(
            &mut y,
            &x,
            &self.shape,
            Affine::NONE,
            running,
            &self.cfg,
            comm,
        );
        let unset = T::from_f32(SENTINEL).to_f32().to_bits();
        let untouched = y.iter().all(|v| v.to_f32().to_bits() == unset)
            && bits(&mean) == bits(&vec![SENTINEL; c])
            && bits(&var) == bits(&vec![SENTINEL; c]);
        (r, untouched)
    }
}

fn distributed(error: DistributedError) -> NormError {
    NormError::Distributed {
        op: "sync_batch_norm",
        error,
    }
}

fn mismatch(what: &'static str, values: &[&str]) -> NormError {
    distributed(DistributedError::Mismatch {
        what,
        values: values.iter().map(|v| v.to_string()).collect(),
    })
}

/// Every rank returned `want` and wrote nothing.
fn assert_all(ctx: &str, got: &[(normkit::Result<Stats>, bool)], want: &NormError) {
    for (r, (res, untouched)) in got.iter().enumerate() {
        assert_eq!(res.as_ref().err(), Some(want), "{ctx}: rank {r}");
        assert!(untouched, "{ctx}: rank {r} wrote an output");
        assert!(want.to_string().starts_with("sync_batch_norm: "), "{ctx}");
    }
}

#[test]
fn ranks_that_disagree_get_the_same_error_and_write_nothing() {
    let base = Call::new(&[4, 3, 2]);
    type Breaks = fn(&mut Call, usize);
    let cases: [(&str, Breaks, NormError); 5] = [
        (
            "channels",
            |c, r| c.shape[1] = 3 + 2 * r,
            mismatch("channels", &["3", "5"]),
        ),
        (
            "channel axis",
            |c, r| {
                c.shape = vec![2, 3, 3];
                if r == 1 {
                    c.cfg.channel_axis = ChannelAxis::Last;
                }
            },
            mismatch("channel axis", &["first", "last"]),
        ),
        (
            "eps",
            |c, r| c.cfg.eps = [1e-5, 1e-3][r],
            mismatch("eps", &["0.00001", "0.001"]),
        ),
        (
            "momentum",
            |c, r| {
                if r == 0 {
                    c.cfg.momentum = normkit::Momentum::CumulativeAverage {
                        num_batches_tracked: 3,
                    };
                }
            },
            mismatch("momentum", &["cumulative average after 3 batches", "0.1"]),
        ),
        (
            "running statistics",
            |c, r| c.running = r == 0,
            mismatch("running statistics", &["updated", "none"]),
        ),
    ];
    for (ctx, breaks, want) in cases {
        let got = on_ranks(2, |comm| {
            let mut call = base.clone();
            breaks(&mut call, comm.rank());
            call.forward::<f32>(&*comm)
        });
        assert_all(ctx, &got, &want);
    }
    // Element types: each rank its own.
    let call = Call::new(&[2, 3, 2]);
    let got = on_ranks(3, |comm| match comm.rank() {
        0 => call.forward::<f32>(&*comm),
        1 => call.forward::<bf16>(&*comm),
        _ => call.forward::<f16>(&*comm),
    });
    assert_all("dtype", &got, &mismatch("dtype", &["f32", "bf16", "f16"]));
}

#[test]
fn a_rank_that_refuses_its_input_fails_every_rank_alike() {
    // A `y` one value short on rank 1, a shape of rank 1 on rank 2.
    let got = on_ranks(3, |comm| {
        let mut call = Call::new(&[2, 3, 2]);
        call.y_short = comm.rank() == 1;
        if comm.rank() == 2 {
            call.shape = vec![6];
        }
        call.forward::<f32>(&*comm)
    });
    let want = distributed(DistributedError::Refused {
        ranks: vec![1, 2],
        message: "sync_batch_norm: `y` has 11 values, expected 12 (input shape [2, 3, 2])"
            .to_string(),
    });
    assert_all("refused", &got, &want);
    assert!(want.to_string().contains("rank 1 refused its input"));

    // On one rank, the error is BatchNorm's own, named sync_batch_norm.
    let mut call = Call::new(&[2, 3, 2]);
    call.y_short = true;
    let (res, untouched) = call.forward::<f32>(&SingleProcess);
    let want = NormError::Length {
        op: "sync_batch_norm",
        name: "y",
        expected: 12,
        got: 11,
        shape: vec![2, 3, 2],
    };
    assert_eq!(res.err(), Some(want));
    assert!(untouched);
}

#[test]
fn one_value_per_channel_over_all_ranks_is_too_few() {
    let got = on_ranks(3, |comm| {
        Call::new(&[[1, 0, 0][comm.rank()], 4]).forward::<f32>(&*comm)
    });
    let want = distributed(DistributedError::TooFewValues {
        count: 1,
        channels: 4,
        ranks: 3,
    });
    assert_all("too few", &got, &want);
    let (res, _) = Call::new(&[1, 4]).forward::<f32>(&SingleProcess);
    assert!(matches!(
        res,
        Err(NormError::TooFewValues {
            op: "sync_batch_norm",
            ..
        })
    ));
    // Two values over two ranks, one each, are enough.
    let got = on_ranks(2, |comm| Call::new(&[1, 4]).forward::<f32>(&*comm).0);
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
}

/// The backward of rank `r`, with statistics that may differ by rank.
fn backward(comm: &dyn Communicator, stats: &Stats) -> (normkit::Result<()>, bool) {
    let shape = [2, 3, 2];
    let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let mut dx = vec![SENTINEL; 12];
    let mut dw = vec![SENTINEL; 3];
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: None,
    };
    let cfg = BatchNormConfig::default();
    let r = sync_batch_norm_backward_train(grads, &x, &x, &shape, None, stats, &cfg, comm);
    let untouched = bits(&dx) == bits(&[SENTINEL; 12]) && bits(&dw) == bits(&[SENTINEL; 3]);
    (r, untouched)
}

#[test]
fn backward_and_forward_calls_must_match_across_ranks() {
    let stats = |m: f32| Stats {
        mean: vec![m; 3],
        rstd: vec![1.0; 3],
    };
    // Statistics that are not the same forward's.
    let got = on_ranks(2, |comm| backward(&*comm, &stats(comm.rank() as f32)));
    for (res, untouched) in &got {
        let e = res.as_ref().unwrap_err();
        let what = match e {
            NormError::Distributed {
                error: DistributedError::Mismatch { what, .. },
                ..
            } => *what,
            _ => panic!("{e:?}"),
        };
        assert_eq!(what, "saved statistics");
        assert!(untouched);
    }
    assert_eq!(got[0].0, got[1].0);
    // One rank in a forward call while the other is in a backward call.
    let got = on_ranks(2, |comm| match comm.rank() {
        0 => Call::new(&[2, 3, 2]).forward::<f32>(&*comm).0.map(|_| ()),
        _ => backward(&*comm, &stats(0.0)).0,
    });
    let want = mismatch("call", &["forward", "backward"]);
    assert_eq!(got, [Err(want.clone()), Err(want)]);
}

#[test]
fn a_rank_that_leaves_or_stays_away_fails_the_others() {
    let start = Instant::now();
    let got = on_ranks(3, |comm| {
        if comm.rank() == 1 {
            return None; // Ends without calling: its handle is dropped.
        }
        Some(Call::new(&[2, 3, 2]).forward::<f32>(&*comm))
    });
    let want = distributed(DistributedError::Comm(CommError::PeerLost {
        call: 0,
        rank: 1,
    }));
    for r in [0, 2] {
        let (res, untouched) = got[r].as_ref().unwrap();
        assert_eq!(res.as_ref().err(), Some(&want));
        assert!(untouched);
    }
    assert!(start.elapsed() < Duration::from_secs(30));

    // Alive but late, past the timeout: the others give up; the late rank
    // then finds the same error.
    let timeout = Duration::from_millis(200);
    let group = ThreadComm::group(2)
        .into_iter()
        .map(|c| c.with_timeout(timeout))
        .collect();
    let got = on_group(group, |comm| {
        if comm.rank() == 1 {
            std::thread::sleep(timeout * 3);
        }
        Call::new(&[2, 3, 2]).forward::<f32>(&*comm)
    });
    let want = distributed(DistributedError::Comm(CommError::Timeout {
        call: 0,
        missing: vec![1],
        timeout,
    }));
    assert_all("timeout", &got, &want);
}

/// Through the op interface, calls it refuses before running the op (bad
/// packing, mixed element types, saved state of another op) fail on every
/// rank alike too.
#[test]
fn the_op_interface_refuses_collectively() {
    let shape = [2, 3, 2];
    let op = |comm: Arc<dyn Communicator>| SyncBatchNormOp {
        cfg: BatchNormConfig::default(),
        training: true,
        weight: true,
        bias: true,
        comm,
    };
    let x = vec![1.0f32; 12];
    let params_ok = vec![0.5f32; 6];
    let got = on_ranks(2, |comm| {
        let params = if comm.rank() == 1 {
            &params_ok[..5]
        } else {
            &params_ok[..]
        };
        let mut y = vec![SENTINEL; 12];
        let r = op(comm).forward(&mut y, &x, &shape, params, None);
        (r, bits(&y) == bits(&[SENTINEL; 12]))
    });
    let want = distributed(DistributedError::Refused {
        ranks: vec![1],
        message: "sync_batch_norm: `params` has 5 values, expected 6 (input shape [2, 3, 2])"
            .to_string(),
    });
    assert_all("packing", &got, &want);

    // Erased: a bf16 output for f32 input on rank 0.
    let got = on_ranks(2, |comm| {
        let (mut y32, mut y16) = (vec![SENTINEL; 12], vec![bf16::from_f32(SENTINEL); 12]);
        let y = match comm.rank() {
            0 => ElemSliceMut::Bf16(&mut y16),
            _ => ElemSliceMut::F32(&mut y32),
        };
        let r = op(comm).forward_erased(y, ElemSlice::F32(&x), &shape, &params_ok, None);
        r.map(|_| ()).err()
    });
    let e = got[0].clone().expect("refused");
    assert_eq!(got[1].as_ref(), Some(&e));
    assert!(e.to_string().contains("`y` is bf16, expected f32"), "{e}");

    // Erased backward handed another op's saved state on rank 1.
    let got = on_ranks(2, |comm| {
        let op = op(comm.clone());
        let mut y = vec![0.0f32; 12];
        let xs: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let saved = op
            .forward_erased(
                ElemSliceMut::F32(&mut y),
                ElemSlice::F32(&xs),
                &shape,
                &params_ok,
                None,
            )
            .unwrap();
        let saved = if comm.rank() == 1 {
            Arc::new(0u8) as _
        } else {
            saved
        };
        let mut dx = vec![SENTINEL; 12];
        let r = op.backward_erased(
            ElemSliceMut::F32(&mut dx),
            None,
            ElemSlice::F32(&xs),
            ElemSlice::F32(&xs),
            &shape,
            &params_ok,
            &saved,
        );
        (r.err(), bits(&dx) == bits(&[SENTINEL; 12]))
    });
    let want = distributed(DistributedError::Refused {
        ranks: vec![1],
        message: "sync_batch_norm: the saved state was not made by this op's forward pass"
            .to_string(),
    });
    for (e, untouched) in got {
        assert_eq!(e, Some(want.clone()));
        assert!(untouched);
    }
}
