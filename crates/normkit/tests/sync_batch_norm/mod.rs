//! SyncBatchNorm over `k` ranks in one process (threads sharing a
//! rendezvous): against BatchNorm over the concatenated batch and the `f64`
//! reference, bit-for-bit agreement between ranks, the op interface, and
//! errors across ranks.

mod errors;
mod numerics;
mod op;

use normkit::comm::{Communicator, ThreadComm};
use normkit::{
    batch_norm_backward_train, batch_norm_forward_train, sync_batch_norm_backward_train,
    sync_batch_norm_forward_train, Affine, BatchNormConfig, ChannelAxis, Elem, Grads, RunningStats,
    Stats,
};

use crate::common::{cast, Rng};

/// Written into every output first: an output left unwritten shows.
pub const UNSET: f32 = f32::NAN;

/// One batch, cut into shards along the batch dimension.
#[derive(Clone)]
pub struct Case<T> {
    /// The shape of one sample (the input shape without its batch
    /// dimension).
    pub sample: Vec<usize>,
    /// Samples per rank.
    pub shards: Vec<usize>,
    pub x: Vec<T>,
    pub dy: Vec<T>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
    /// Running statistics before the step, if updated.
    pub running: Option<(Vec<f32>, Vec<f32>)>,
    pub cfg: BatchNormConfig,
}

/// What one rank (or single-process BatchNorm) wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Out<T> {
    pub y: Vec<T>,
    pub stats: Stats,
    pub running: Option<(Vec<f32>, Vec<f32>)>,
    pub dx: Vec<T>,
    pub dweight: Vec<f32>,
    pub dbias: Vec<f32>,
}

impl<T: Elem> Case<T> {
    /// Random values around `mean` with spread `std`, parameters and
    /// running statistics present or not at random.
    pub fn random(
        rng: &mut Rng,
        sample: &[usize],
        shards: &[usize],
        axis: ChannelAxis,
        mean: f64,
        std: f64,
    ) -> Self {
        let per: usize = sample.iter().product();
        let len = per * shards.iter().sum::<usize>();
        let c = match axis {
            ChannelAxis::First => sample[0],
            ChannelAxis::Last => sample[sample.len() - 1],
        };
        let momentum = if rng.chance(0.5) {
            normkit::Momentum::Exponential(rng.uniform(0.05, 0.9) as f32)
        } else {
            normkit::Momentum::CumulativeAverage {
                num_batches_tracked: rng.between(0, 5) as u64,
            }
        };
        Case {
            sample: sample.to_vec(),
            shards: shards.to_vec(),
            x: cast(&rng.normals(len, mean, std)),
            dy: cast(&rng.normals(len, 0.0, 1.0)),
            weight: rng.maybe_param(c),
            bias: rng.maybe_param(c),
            running: rng
                .chance(0.7)
                .then(|| (rng.uniforms(c, -2.0, 2.0), rng.uniforms(c, 0.1, 3.0))),
            cfg: BatchNormConfig {
                eps: rng.pick(&[1e-5, 1e-3, 0.1]),
                momentum,
                channel_axis: axis,
            },
        }
    }

    pub fn channels(&self) -> usize {
        match self.cfg.channel_axis {
            ChannelAxis::First => self.sample[0],
            ChannelAxis::Last => self.sample[self.sample.len() - 1],
        }
    }

    fn shape_of(&self, n: usize) -> Vec<usize> {
        let mut s = vec![n];
        s.extend(&self.sample);
        s
    }

    /// The shape of the whole batch.
    pub fn whole_shape(&self) -> Vec<usize> {
        self.shape_of(self.shards.iter().sum())
    }

    /// Rank `r`'s shape and its part of `v` (a tensor of the whole batch).
    pub fn shard<'a, E>(&self, v: &'a [E], r: usize) -> (Vec<usize>, &'a [E]) {
        let per: usize = self.sample.iter().product();
        let start: usize = self.shards[..r].iter().sum::<usize>() * per;
        let len = self.shards[r] * per;
        (self.shape_of(self.shards[r]), &v[start..start + len])
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
        }
    }

    /// Forward and backward through `step` on `shape`, `x`, `dy`.
    fn run_with(
        &self,
        shape: &[usize],
        x: &[T],
        dy: &[T],
        forward: impl FnOnce(&mut [T], Option<RunningStats<'_>>) -> normkit::Result<Stats>,
        backward: impl FnOnce(Grads<'_, T>, &Stats) -> normkit::Result<()>,
    ) -> Out<T> {
        let len: usize = shape.iter().product();
        debug_assert_eq!((x.len(), dy.len()), (len, len));
        let c = self.channels();
        let mut running = self.running.clone();
        let mut y = vec![T::from_f32(UNSET); len];
        let r = running
            .as_mut()
            .map(|(mean, var)| RunningStats { mean, var });
        let stats = forward(&mut y, r).unwrap_or_else(|e| panic!("forward: {e}"));
        let (mut dx, mut dweight, mut dbias) = (
            vec![T::from_f32(UNSET); len],
            vec![UNSET; c],
            vec![UNSET; c],
        );
        let grads = Grads {
            dx: &mut dx,
            dweight: Some(&mut dweight),
            dbias: Some(&mut dbias),
        };
        backward(grads, &stats).unwrap_or_else(|e| panic!("backward: {e}"));
        Out {
            y,
            stats,
            running,
            dx,
            dweight,
            dbias,
        }
    }

    /// Single-process BatchNorm on the whole batch.
    pub fn batch_norm(&self) -> Out<T> {
        let shape = self.whole_shape();
        let w = self.weight.as_deref();
        self.run_with(
            &shape,
            &self.x,
            &self.dy,
            |y, r| batch_norm_forward_train(y, &self.x, &shape, self.affine(), r, &self.cfg),
            |g, st| batch_norm_backward_train(g, &self.dy, &self.x, &shape, w, st, &self.cfg),
        )
    }

    /// SyncBatchNorm, rank `comm.rank()` running its shard.
    pub fn sync_rank(&self, comm: &dyn Communicator) -> Out<T> {
        let (shape, x) = self.shard(&self.x, comm.rank());
        let (_, dy) = self.shard(&self.dy, comm.rank());
        let (w, cfg) = (self.weight.as_deref(), &self.cfg);
        self.run_with(
            &shape,
            x,
            dy,
            |y, r| sync_batch_norm_forward_train(y, x, &shape, self.affine(), r, cfg, comm),
            |g, st| sync_batch_norm_backward_train(g, dy, x, &shape, w, st, cfg, comm),
        )
    }

    /// SyncBatchNorm over one thread per shard.
    pub fn sync(&self) -> Vec<Out<T>> {
        ThreadComm::run(self.shards.len(), |comm| self.sync_rank(comm))
    }
}

/// Bit patterns, so that NaNs compare too.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Asserts that every rank holds the same statistics and running
/// statistics, bit for bit.
pub fn assert_ranks_agree<T: Elem>(ctx: &str, outs: &[Out<T>]) {
    for (r, o) in outs.iter().enumerate().skip(1) {
        let first = &outs[0];
        assert_eq!(
            bits(&o.stats.mean),
            bits(&first.stats.mean),
            "{ctx}: mean on rank {r}"
        );
        assert_eq!(
            bits(&o.stats.rstd),
            bits(&first.stats.rstd),
            "{ctx}: rstd on rank {r}"
        );
        let run = |o: &Out<T>| o.running.as_ref().map(|(m, v)| (bits(m), bits(v)));
        assert_eq!(run(o), run(first), "{ctx}: running statistics on rank {r}");
    }
}

/// The ranks' shards of a per-sample tensor, put back together.
pub fn concat<T: Clone>(parts: impl Iterator<Item = Vec<T>>) -> Vec<T> {
    parts.flatten().collect()
}

/// Each channel's parameter gradient summed over the ranks in `f64`, as a
/// data-parallel gradient all-reduce adds them.
pub fn sum_over_ranks(parts: impl Iterator<Item = Vec<f32>>) -> Vec<f64> {
    let mut total: Vec<f64> = Vec::new();
    for p in parts {
        total.resize(p.len(), 0.0);
        for (t, v) in total.iter_mut().zip(p) {
            *t += v as f64;
        }
    }
    total
}
