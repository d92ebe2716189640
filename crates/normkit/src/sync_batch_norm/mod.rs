//! Synchronized Batch Normalization: BatchNorm over a batch split across
//! ranks (processes or threads), each holding a shard.

mod agree;

use std::sync::Arc;

use crate::batch_norm::{
    batch_norm_backward_eval, batch_norm_forward_eval, check_backward, check_forward_train,
    BatchNormConfig, BatchNormOp,
};
use crate::comm::{fold_ranks, Communicator, DistributedError};
use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::{Affine, Grads, RunningStats, Stats};
use crate::moments::Moments;
use crate::normalize::update_running;
use crate::op::{affine_grads, affine_of, NormOp, OpGrads, Signature};
use agree::{agree, hash_stats, Descriptor, Pass};

const OP: &str = "sync_batch_norm";

/// Synchronized Batch Normalization (PyTorch's `SyncBatchNorm`; Peng et al.,
/// 2018, "MegDet: A Large Mini-Batch Object Detector", and Zhang et al.,
/// 2018, "Context Encoding for Semantic Segmentation"): BatchNorm whose
/// statistics come from the whole batch, of which each of `R` ranks holds
/// a shard `x_r`.
///
/// ```text
/// y_r = (x_r - E[x]) / sqrt(Var[x] + eps) · weight + bias,   x = x_0 ‖ x_1 ‖ … ‖ x_{R-1}
/// ```
///
/// where
/// - `E[x]`, `Var[x]` are per channel over every rank's batch and spatial
///   positions, `Var` biased (divide by the global count `N = Σ n_r`);
/// - each rank computes its shard's count, mean and squared deviations
///   `(n_r, mean_r, M2_r)` with normkit's exact statistics, the ranks
///   exchange them, and every rank merges them in rank order with Chan's
///   update in `f64` (`M2 = M2_a + M2_b + δ² · n_a · n_b / n`, with `δ` the
///   difference of the means): no `E[x²] - E[x]²`, so a large mean loses
///   nothing, and every rank holds the same bits;
/// - the running statistics follow as in BatchNorm, with the unbiased
///   variance over the global count (`N / (N - 1)`), identically on every
///   rank;
/// - the backward sums `Σdy` and `Σdy · x̂` per channel over all ranks (in
///   rank order) and gives `dx_r = rstd · w · (dy - Σdy / N - x̂ · Σdy·x̂ / N)`;
///   `dweight`, `dbias` are this rank's share (`Σ_r dy · x̂` and `Σ_r dy`):
///   their sum over ranks, what a data-parallel gradient all-reduce adds,
///   is BatchNorm's over the whole batch (PyTorch's semantics).
///
/// Ranks may hold different batch sizes, zero included, and different
/// spatial extents; they must agree on the channel count, element type,
/// channel axis, eps, momentum and whether running statistics are updated.
/// Every call is collective: each rank makes the same sequence of forward
/// and backward calls. Before exchanging statistics the ranks compare a
/// small descriptor of the call, so a rank that refuses its input or
/// disagrees makes every rank return the same
/// [`NormError::Distributed`], writing nothing; a rank that stops
/// responding makes the others fail when the communicator times out.
/// With one rank, errors are BatchNorm's own (named `sync_batch_norm`).
///
/// Evaluation uses the running statistics and no communication: it is
/// BatchNorm's evaluation.
///
/// # Shapes
/// - `x`, `y`: `[N_r, C, *]` (channels first) or `[N_r, *, C]` (channels
///   last) on rank `r`, rank ≥ 2;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
/// - saved [`Stats`]: one mean and rstd per channel, the same on every
///   rank.
pub fn sync_batch_norm_forward_train<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    running: Option<RunningStats<'_>>,
    cfg: &BatchNormConfig,
    comm: &dyn Communicator,
) -> Result<Stats> {
    let local = check_forward_train(y.len(), x.len(), shape, affine, running.as_ref(), cfg)
        .map(|p| {
            let desc = Descriptor {
                momentum: Some(cfg.momentum),
                running: running.is_some(),
                ..Descriptor::new::<T>(&p, cfg)
            };
            (p, desc)
        })
        .map_err(|e| e.with_op(OP));
    let (p, counts) = agree(OP, comm, Pass::Forward, local)?;
    let c = p.geo.c;
    check_total(&counts, c, comm.size(), shape)?;
    let mine: Vec<f64> = p.moments(x).iter().flat_map(|m| [m.mean, m.var]).collect();
    let all = comm.all_gather_f64(&mine).map_err(comm_error)?;
    let moments = merge_moments(&all, &counts, c);
    let stats = p.forward_with_moments(y, x, affine, &moments, cfg.eps);
    if let Some(r) = running {
        update_running(r, &moments, cfg.momentum.factor());
    }
    Ok(stats)
}

/// Backward of [`sync_batch_norm_forward_train`], collective like it:
/// gradients of `Σ_r sum(y_r · dy_r)`. `stats` are the forward's, the same
/// on every rank.
#[allow(clippy::too_many_arguments)]
pub fn sync_batch_norm_backward_train<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &BatchNormConfig,
    comm: &dyn Communicator,
) -> Result<()> {
    let local = check_backward(&grads, dy, x, shape, weight, stats, cfg)
        .map(|p| {
            let desc = Descriptor {
                saved: hash_stats(stats),
                ..Descriptor::new::<T>(&p, cfg)
            };
            (p, desc)
        })
        .map_err(|e| e.with_op(OP));
    let (p, counts) = agree(OP, comm, Pass::Backward, local)?;
    let c = p.geo.c;
    let total = check_total(&counts, c, comm.size(), shape)?;
    let mine = p.backward_sums(dy, x, stats);
    let flat: Vec<f64> = mine.iter().flatten().copied().collect();
    let all = comm.all_gather_f64(&flat).map_err(comm_error)?;
    let global: Vec<[f64; 3]> = fold_ranks(&all, 3 * c, |a, b| a + b)
        .chunks_exact(3)
        .map(|s| [s[0], s[1], s[2]])
        .collect();
    let Grads { dx, dweight, dbias } = grads;
    let delta = p.backward_dx_from_sums(dx, dy, x, weight, stats, &global, total);
    // This rank's share of the parameter gradients, with the residual of
    // the rounded mean taken over the whole batch.
    if let Some(dw) = dweight {
        for ((o, s), d) in dw.iter_mut().zip(&mine).zip(&delta) {
            *o = (s[1] - d * s[0]) as f32;
        }
    }
    if let Some(db) = dbias {
        for (o, s) in db.iter_mut().zip(&mine) {
            *o = s[0] as f32;
        }
    }
    Ok(())
}

/// Evaluation forward: BatchNorm's, with the running statistics (the same
/// on every rank); no communication.
pub fn sync_batch_norm_forward_eval<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    running_mean: &[f32],
    running_var: &[f32],
    cfg: &BatchNormConfig,
) -> Result<Stats> {
    batch_norm_forward_eval(y, x, shape, affine, running_mean, running_var, cfg)
        .map_err(|e| e.with_op(OP))
}

/// Backward of [`sync_batch_norm_forward_eval`]: BatchNorm's; no
/// communication.
pub fn sync_batch_norm_backward_eval<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    stats: &Stats,
    cfg: &BatchNormConfig,
) -> Result<()> {
    batch_norm_backward_eval(grads, dy, x, shape, weight, stats, cfg).map_err(|e| e.with_op(OP))
}

fn comm_error(e: crate::comm::CommError) -> NormError {
    NormError::Distributed {
        op: OP,
        error: DistributedError::Comm(e),
    }
}

/// The global count of values per channel, which must exceed 1. On one
/// rank the error is BatchNorm's.
fn check_total(counts: &[u64], channels: usize, ranks: usize, shape: &[usize]) -> Result<u64> {
    let total: u64 = counts.iter().sum();
    match total {
        2.. => Ok(total),
        _ if ranks == 1 => Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        }),
        count => Err(NormError::Distributed {
            op: OP,
            error: DistributedError::TooFewValues {
                count,
                channels,
                ranks,
            },
        }),
    }
}

/// Merges every rank's moments, channel by channel, in rank order.
/// `all` holds each rank's `[mean, var]` per channel, rank after rank.
fn merge_moments(all: &[f64], counts: &[u64], channels: usize) -> Vec<Moments> {
    let mut merged = vec![Moments::EMPTY; channels];
    for (row, &count) in all.chunks_exact(2 * channels.max(1)).zip(counts) {
        for (m, pair) in merged.iter_mut().zip(row.chunks_exact(2)) {
            *m = m.merge(Moments {
                count: count as usize,
                mean: pair[0],
                var: pair[1],
            });
        }
    }
    merged
}

/// The SyncBatchNorm entry points as a [`NormOp`]: PyTorch's
/// `SyncBatchNorm(num_features, eps, momentum, affine,
/// track_running_stats)` for one call, over the ranks of `comm`.
///
/// Parameters and running statistics are packed as [`BatchNormOp`]'s. In
/// training, every call is collective — including calls the interface
/// refuses before running the op (wrong packing, mixed element types),
/// which fail on every rank alike ([`NormOp::refuse`]).
#[derive(Clone)]
pub struct SyncBatchNormOp {
    pub cfg: BatchNormConfig,
    pub training: bool,
    pub weight: bool,
    pub bias: bool,
    pub comm: Arc<dyn Communicator>,
}

impl std::fmt::Debug for SyncBatchNormOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncBatchNormOp")
            .field("cfg", &self.cfg)
            .field("training", &self.training)
            .field("weight", &self.weight)
            .field("bias", &self.bias)
            .field("rank", &self.comm.rank())
            .field("size", &self.comm.size())
            .finish()
    }
}

impl SyncBatchNormOp {
    /// The same op on one process.
    fn local(&self) -> BatchNormOp {
        BatchNormOp {
            cfg: self.cfg,
            training: self.training,
            weight: self.weight,
            bias: self.bias,
        }
    }
}

impl NormOp for SyncBatchNormOp {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        self.local()
            .signature_counting(shape, false)
            .map_err(|e| e.with_op(OP))
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        running: Option<RunningStats<'_>>,
    ) -> Result<Stats> {
        if !self.training {
            return self
                .local()
                .run_forward(sig, y, x, shape, params, running)
                .map_err(|e| e.with_op(OP));
        }
        let affine = affine_of(sig, params);
        let comm = &*self.comm;
        sync_batch_norm_forward_train(y, x, shape, affine, running, &self.cfg, comm)
    }

    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> Result<()> {
        if !self.training {
            return self
                .local()
                .run_backward(sig, grads, dy, x, shape, params, saved)
                .map_err(|e| e.with_op(OP));
        }
        let weight = affine_of(sig, params).weight;
        let (grads, _) = affine_grads(sig, grads);
        let comm = &*self.comm;
        sync_batch_norm_backward_train(grads, dy, x, shape, weight, saved, &self.cfg, comm)
    }

    fn refuse(&self, backward: bool, error: NormError) -> NormError {
        if !self.training {
            return error;
        }
        let pass = if backward {
            Pass::Backward
        } else {
            Pass::Forward
        };
        agree::refuse(OP, &*self.comm, pass, error)
    }
}
