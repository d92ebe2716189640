//! Communicators: how the ranks of a distributed op (SyncBatchNorm) share
//! the few values they must agree on.
//!
//! A [`Communicator`] is one rank's handle on a group of `size` ranks. Its
//! one required collective is [`Communicator::all_gather_u64`]: every rank
//! contributes the same number of values and receives everyone's,
//! concatenated in rank order. Everything else — floating-point gathers
//! (as bit patterns, so nothing is rounded in transit) and sums — is built
//! on it and folds the contributions **in rank order on every rank**, so
//! every rank computes the same bits. A tree reduction inside a transport
//! (MPI's `Allreduce`) makes no such promise.
//!
//! Implementations:
//! - [`SingleProcess`]: one rank, for code written for several that runs
//!   on one;
//! - [`ThreadComm`]: `k` ranks as `k` threads of one process, for tests
//!   and for data-parallel work inside one process;
//! - `normkit-mpi`'s `MpiCommunicator`: ranks as MPI processes.
//!
//! Collectives are matched by call order: every rank must make the same
//! sequence of calls. A rank that leaves or stops calling makes the others
//! fail with a [`CommError`] (at the latest after the communicator's
//! timeout), never wait forever.

mod threads;

pub use threads::ThreadComm;

use std::time::Duration;

/// How long a collective waits for the other ranks unless told otherwise:
/// long enough for a rank to finish a large step on a busy machine, short
/// enough that a stuck job ends the same day.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a collective failed. A failed communicator should not be used
/// again: the ranks no longer agree on how many calls they have made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommError {
    /// The collective did not complete within the timeout: some ranks
    /// did not reach it.
    #[error(
        "collective #{call} did not complete within {timeout:?}{}",
        missing_ranks(missing)
    )]
    Timeout {
        /// The collective's number on this communicator (from 0).
        call: u64,
        /// The ranks that did not join, where the transport can tell
        /// (empty otherwise).
        missing: Vec<usize>,
        timeout: Duration,
    },
    /// A rank left the group (its thread or process ended) before joining.
    #[error("rank {rank} left before joining collective #{call}")]
    PeerLost { call: u64, rank: usize },
    /// Ranks contributed different numbers of values to one gather.
    #[error("collective #{call}: ranks contributed different numbers of values {lengths:?}")]
    Lengths { call: u64, lengths: Vec<usize> },
    /// The transport itself failed (an MPI error, a broken communicator).
    #[error("{0}")]
    Transport(String),
}

/// Why the ranks of a distributed op could not run it together (see
/// [`crate::NormError::Distributed`]). Built from what every rank gathered,
/// so it is the same value on every rank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistributedError {
    /// Some ranks refused their own input (a wrong length, a bad shape):
    /// `message` is the error of the first of them, as it reads there.
    #[error("rank {} refused its input (refusing: {ranks:?}): {message}", ranks[0])]
    Refused { ranks: Vec<usize>, message: String },
    /// The ranks disagree on something they must share: `values` lists
    /// each rank's, in rank order.
    #[error("ranks disagree on {what}: {}", by_rank(values))]
    Mismatch {
        what: &'static str,
        values: Vec<String>,
    },
    /// Batch statistics need more than one value per channel over all
    /// ranks together.
    #[error("expected more than 1 value per channel over all {ranks} ranks when training, got {count} ({channels} channels)")]
    TooFewValues {
        count: u64,
        channels: usize,
        ranks: usize,
    },
    /// A collective failed.
    #[error("communication failed: {0}")]
    Comm(#[from] CommError),
}

fn missing_ranks(missing: &[usize]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!(": ranks {missing:?} never joined")
    }
}

fn by_rank(values: &[String]) -> String {
    let each: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(r, v)| format!("rank {r}: {v}"))
        .collect();
    each.join(", ")
}

/// One rank's handle on a group of ranks (see the [module](self)).
pub trait Communicator: Send + Sync {
    /// This rank, in `0..size()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Every rank's `local` values, concatenated in rank order, on every
    /// rank. Every rank must pass the same number of values.
    fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>, CommError>;

    /// [`Communicator::all_gather_u64`] of `f64` bit patterns: exact.
    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<f64>, CommError> {
        let bits: Vec<u64> = local.iter().map(|v| v.to_bits()).collect();
        let all = self.all_gather_u64(&bits)?;
        Ok(all.into_iter().map(f64::from_bits).collect())
    }

    /// [`Communicator::all_gather_u64`] of `f32` bit patterns: exact.
    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>, CommError> {
        let bits: Vec<u64> = local.iter().map(|v| v.to_bits() as u64).collect();
        let all = self.all_gather_u64(&bits)?;
        Ok(all.into_iter().map(|b| f32::from_bits(b as u32)).collect())
    }

    /// Element-wise sum over the ranks, added in rank order: the same bits
    /// on every rank.
    fn all_reduce_sum_f64(&self, local: &[f64]) -> Result<Vec<f64>, CommError> {
        let all = self.all_gather_f64(local)?;
        Ok(fold_ranks(&all, local.len(), |a, b| a + b))
    }

    /// Element-wise sum over the ranks, added in `f64` in rank order and
    /// rounded once: the same bits on every rank.
    fn all_reduce_sum_f32(&self, local: &[f32]) -> Result<Vec<f32>, CommError> {
        let all = self.all_gather_f32(local)?;
        let wide: Vec<f64> = all.into_iter().map(f64::from).collect();
        let sum = fold_ranks(&wide, local.len(), |a, b| a + b);
        Ok(sum.into_iter().map(|v| v as f32).collect())
    }

    /// Element-wise maximum over the ranks.
    fn all_reduce_max_u64(&self, local: &[u64]) -> Result<Vec<u64>, CommError> {
        let all = self.all_gather_u64(local)?;
        Ok(fold_ranks(&all, local.len(), u64::max))
    }
}

/// Folds a rank-major table of `per_rank` values per rank, column by
/// column, rank 0 first.
pub(crate) fn fold_ranks<V: Copy>(all: &[V], per_rank: usize, f: impl Fn(V, V) -> V) -> Vec<V> {
    let mut rows = all.chunks_exact(per_rank.max(1));
    let Some(first) = rows.next() else {
        return Vec::new();
    };
    let mut acc = first.to_vec();
    for row in rows {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a = f(*a, v);
        }
    }
    acc
}

/// The communicator of a single process: rank 0 of 1; every collective
/// returns this rank's own values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>, CommError> {
        Ok(local.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_returns_its_own_values() {
        let c = SingleProcess;
        assert_eq!((c.rank(), c.size()), (0, 1));
        assert_eq!(c.all_gather_u64(&[3, 4]).unwrap(), [3, 4]);
        let v = [1.5f64, -0.0, f64::NAN];
        let got = c.all_gather_f64(&v).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&v));
        assert_eq!(c.all_reduce_sum_f32(&[0.1, 2.0]).unwrap(), [0.1, 2.0]);
        assert_eq!(c.all_gather_u64(&[]).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn folds_run_in_rank_order() {
        // Rank order matters in floating point: (1e16 + 1) + -1e16 = 0
        // but (1e16 + -1e16) + 1 = 1.
        let all = [1e16, 0.0, 1.0, 2.0, -1e16, 3.0];
        assert_eq!(fold_ranks(&all, 2, |a, b| a + b), [0.0, 5.0]);
        assert_eq!(fold_ranks(&[7u64, 9, 8], 1, u64::max), [9]);
        assert!(fold_ranks::<f64>(&[], 0, |a, b| a + b).is_empty());
    }
}
