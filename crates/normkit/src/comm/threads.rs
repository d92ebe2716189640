//! `k` ranks as `k` threads of one process, meeting at a shared rendezvous.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{CommError, Communicator, DEFAULT_TIMEOUT};

/// One rank of a group of threads (see [`ThreadComm::group`]).
///
/// Each collective is a rendezvous: a rank leaves its values and waits
/// until every rank has left theirs, then takes the concatenation. A rank
/// that is dropped (its thread ended, or panicked and unwound) makes the
/// collectives it did not join fail on every other rank at once; a rank
/// that stays away makes them fail after the timeout. Either way every
/// rank that reaches the collective gets the same error.
#[derive(Debug)]
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
    timeout: Duration,
    /// Collectives this rank has entered: the next one's number.
    calls: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    size: usize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// Collectives in progress (or failed), by number.
    calls: HashMap<u64, Call>,
    /// Ranks whose handle was dropped.
    left: Vec<bool>,
}

#[derive(Debug)]
struct Call {
    values: Vec<Option<Vec<u64>>>,
    /// Set once: the concatenation, or the error every rank gets.
    outcome: Option<Result<Arc<Vec<u64>>, CommError>>,
    /// Ranks that have taken a successful outcome.
    taken: usize,
}

impl ThreadComm {
    /// The handles of a group of `size` ranks, in rank order: give one to
    /// each thread. Collectives wait at most [`DEFAULT_TIMEOUT`] for the
    /// other ranks.
    pub fn group(size: usize) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(State {
                calls: HashMap::new(),
                left: vec![false; size],
            }),
            changed: Condvar::new(),
        });
        (0..size)
            .map(|rank| ThreadComm {
                rank,
                shared: Arc::clone(&shared),
                timeout: DEFAULT_TIMEOUT,
                calls: AtomicU64::new(0),
            })
            .collect()
    }

    /// The same handle, waiting at most `timeout` in each collective.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `f` once per rank of a new group of `size`, each on its own
    /// thread, and returns the results in rank order. A panic in `f` ends
    /// that rank (the others' collectives then fail) and is raised again
    /// here once every thread has finished.
    pub fn run<R: Send>(size: usize, f: impl Fn(&ThreadComm) -> R + Sync) -> Vec<R> {
        let f = &f;
        let results: Vec<std::thread::Result<R>> = std::thread::scope(|s| {
            let handles: Vec<_> = Self::group(size)
                .into_iter()
                .map(|comm| s.spawn(move || f(&comm)))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only changed in small steps that cannot panic
        // halfway, so a poisoned lock still guards a consistent state.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Call {
    fn new(size: usize) -> Self {
        Call {
            values: vec![None; size],
            outcome: None,
            taken: 0,
        }
    }

    /// The outcome once every rank's values are in.
    fn complete(&mut self, index: u64) {
        let lengths: Vec<usize> = self.values.iter().flatten().map(Vec::len).collect();
        if lengths.len() < self.values.len() || self.outcome.is_some() {
            return;
        }
        self.outcome = Some(if lengths.windows(2).all(|w| w[0] == w[1]) {
            Ok(Arc::new(
                self.values.iter().flatten().flatten().copied().collect(),
            ))
        } else {
            Err(CommError::Lengths {
                call: index,
                lengths,
            })
        });
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>, CommError> {
        let index = self.calls.fetch_add(1, Ordering::Relaxed);
        let size = self.shared.size;
        let deadline = Instant::now() + self.timeout;
        let mut st = self.lock();
        let call = st.calls.entry(index).or_insert_with(|| Call::new(size));
        call.values[self.rank] = Some(local.to_vec());
        call.complete(index);
        self.shared.changed.notify_all();
        loop {
            let State { calls, left } = &mut *st;
            let call = calls
                .get_mut(&index)
                .expect("a call stays until all take it");
            if call.outcome.is_none() {
                let absent = |r: &usize| call.values[*r].is_none();
                if let Some(rank) = (0..size).filter(absent).find(|&r| left[r]) {
                    call.outcome = Some(Err(CommError::PeerLost { call: index, rank }));
                } else if Instant::now() >= deadline {
                    let missing = (0..size).filter(absent).collect();
                    call.outcome = Some(Err(CommError::Timeout {
                        call: index,
                        missing,
                        timeout: self.timeout,
                    }));
                }
                if call.outcome.is_some() {
                    self.shared.changed.notify_all();
                }
            }
            match &call.outcome {
                Some(Ok(all)) => {
                    let all = Arc::clone(all);
                    call.taken += 1;
                    if call.taken == size {
                        calls.remove(&index);
                    }
                    return Ok(all.to_vec());
                }
                // A failed call stays: ranks that arrive later get the
                // same error.
                Some(Err(e)) => return Err(e.clone()),
                None => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    st = self
                        .shared
                        .changed
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
            }
        }
    }
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        let mut st = self.lock();
        st.left[self.rank] = true;
        drop(st);
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_every_contribution_in_rank_order() {
        for size in 1..=4 {
            let got = ThreadComm::run(size, |c| {
                let r = c.rank() as u64;
                // Several rounds back to back: calls are matched by order.
                (0..50u64)
                    .map(|i| c.all_gather_u64(&[r, i * 10 + r]).unwrap())
                    .collect::<Vec<_>>()
            });
            for per_rank in &got {
                for (i, all) in per_rank.iter().enumerate() {
                    let want: Vec<u64> = (0..size as u64)
                        .flat_map(|r| [r, i as u64 * 10 + r])
                        .collect();
                    assert_eq!(all, &want, "size {size}, round {i}");
                }
            }
        }
    }

    #[test]
    fn sums_are_bitwise_identical_on_every_rank() {
        let got = ThreadComm::run(3, |c| {
            let v = [
                0.1f64 * (c.rank() as f64 + 1.0),
                1e16 * (1.0 - c.rank() as f64),
            ];
            c.all_reduce_sum_f64(&v).unwrap()
        });
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got[0]), bits(&got[1]));
        assert_eq!(bits(&got[0]), bits(&got[2]));
        // Rank order: ((0.1 + 0.2) + 0.3) and ((1e16 + 0) + -1e16).
        assert_eq!(got[0], [0.1 + 0.2 + 0.30000000000000004, 0.0]);
    }

    #[test]
    fn different_lengths_fail_on_every_rank() {
        let got = ThreadComm::run(3, |c| c.all_gather_u64(&vec![1; c.rank()]));
        let want = CommError::Lengths {
            call: 0,
            lengths: vec![0, 1, 2],
        };
        assert!(got.iter().all(|r| r.as_ref() == Err(&want)), "{got:?}");
    }

    #[test]
    fn a_rank_that_ends_fails_the_others_at_once() {
        let mut group = ThreadComm::group(3);
        let start = Instant::now();
        let got = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .drain(..)
                .map(|c| {
                    s.spawn(move || {
                        let c = c.with_timeout(Duration::from_secs(60));
                        c.all_gather_u64(&[1]).unwrap();
                        if c.rank() == 1 {
                            // Ends between collectives (as a panic would,
                            // unwinding through the handle's drop).
                            return None;
                        }
                        Some(c.all_gather_u64(&[2]))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        let lost = Some(Err(CommError::PeerLost { call: 1, rank: 1 }));
        assert_eq!(got, [lost.clone(), None, lost]);
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_rank_that_stays_away_fails_the_others_after_the_timeout() {
        let timeout = Duration::from_millis(200);
        let group = ThreadComm::group(2);
        let start = Instant::now();
        let got = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        let c = c.with_timeout(timeout);
                        if c.rank() == 1 {
                            // Arrives after rank 0 gave up, still alive.
                            std::thread::sleep(timeout * 3);
                        }
                        c.all_gather_u64(&[7])
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        let want = CommError::Timeout {
            call: 0,
            missing: vec![1],
            timeout,
        };
        // The late rank gets the error the others got.
        assert_eq!(got, [Err(want.clone()), Err(want)]);
        assert!(start.elapsed() >= timeout);
    }
}
