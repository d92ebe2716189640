//! [`MpiCommunicator`]: normkit's [`Communicator`] over an MPI
//! communicator.

use std::mem::ManuallyDrop;
use std::sync::{Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use mpi::environment::{self, Threading};
use mpi::request::StaticScope;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use normkit::comm::{CommError, Communicator, DEFAULT_TIMEOUT};

/// The ranks of an MPI communicator as a normkit [`Communicator`].
///
/// It works on its own duplicate of the communicator it is made from, so
/// its collectives never match the application's. Each gather is a
/// non-blocking `MPI_Iallgather` polled until it completes or the timeout
/// passes; a rank that stops calling (stuck, deadlocked, or simply on
/// another code path) then makes the others fail with
/// [`CommError::Timeout`] instead of waiting forever. After a failure the
/// communicator refuses every later call with the same error: its ranks
/// no longer agree on how many calls they made. The usual reaction is to
/// report the error and [`MpiCommunicator::abort`] the job.
///
/// A rank that dies is handled by the MPI runtime: Open MPI's `mpirun`
/// ends every other rank of the job and exits with an error. MPI errors
/// keep MPI's default handler, which aborts the job with MPI's message.
///
/// Calls are serialized by a lock. When MPI was initialized below
/// `Threading::Serialized`, only the thread that made the communicator
/// may use it; other threads get [`CommError::Transport`].
pub struct MpiCommunicator {
    /// Freed on drop unless MPI is finalized by then or a collective on
    /// it never completed.
    comm: ManuallyDrop<SimpleCommunicator>,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// The one thread allowed to call MPI, when MPI's threading level
    /// requires it.
    owner: Option<ThreadId>,
    state: Mutex<State>,
}

struct State {
    /// Collectives started: the next one's number.
    calls: u64,
    /// Set by the first failure, returned by every later call.
    broken: Option<CommError>,
}

// SAFETY: MPI communicator handles may be used from any thread that MPI's
// threading level allows. Every MPI call made through this type (the
// collectives and the free on drop) runs while holding `state`'s lock, so
// calls are never concurrent, which `Threading::Serialized` permits; below
// that level, calls from threads other than `owner` are refused before
// they reach MPI.
unsafe impl Send for MpiCommunicator {}
// SAFETY: as for `Send`: shared use goes through the same lock and check.
unsafe impl Sync for MpiCommunicator {}

impl MpiCommunicator {
    /// A communicator over the ranks of `comm` (duplicated), waiting at
    /// most [`DEFAULT_TIMEOUT`] in each collective. Collective: every rank
    /// of `comm` must call it.
    pub fn new(comm: &impl mpi::topology::Communicator) -> Self {
        let owner = match environment::threading_support() {
            Threading::Serialized | Threading::Multiple => None,
            Threading::Single | Threading::Funneled => Some(std::thread::current().id()),
        };
        MpiCommunicator {
            rank: comm.rank() as usize,
            size: comm.size() as usize,
            comm: ManuallyDrop::new(comm.duplicate()),
            timeout: DEFAULT_TIMEOUT,
            owner,
            state: Mutex::new(State {
                calls: 0,
                broken: None,
            }),
        }
    }

    /// The same communicator, waiting at most `timeout` in each
    /// collective.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Ends every rank of the job (`MPI_Abort`) with `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    /// The lock, once this thread may call MPI and no earlier call failed.
    fn enter(&self) -> Result<MutexGuard<'_, State>, CommError> {
        if let Some(owner) = self.owner {
            if std::thread::current().id() != owner {
                return Err(CommError::Transport(format!(
                    "MPI was initialized with {:?} threading: only the thread that made the \
                     communicator may use it (initialize with Threading::Serialized to lift this)",
                    environment::threading_support()
                )));
            }
        }
        let st = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &st.broken {
            Some(e) => Err(e.clone()),
            None => Ok(st),
        }
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>, CommError> {
        let mut st = self.enter()?;
        let call = st.calls;
        st.calls += 1;
        // The buffers live on the heap, reached through references made
        // from these raw pointers: if the gather never completes, MPI may
        // still write into them, and they are leaked rather than freed.
        let send = Box::into_raw(local.to_vec().into_boxed_slice());
        let recv = Box::into_raw(vec![0u64; local.len() * self.size].into_boxed_slice());
        // SAFETY: both pointers come from `Box::into_raw` just above and
        // are not used again until the request that borrows them is done.
        let (send_ref, recv_ref): (&'static [u64], &'static mut [u64]) =
            unsafe { (&*send, &mut *recv) };
        let mut request = self
            .comm
            .immediate_all_gather_into(StaticScope, send_ref, recv_ref);
        let deadline = Instant::now() + self.timeout;
        let mut polls = 0u32;
        loop {
            // MPI_Test also drives the collective's progress.
            match request.test() {
                Ok(_) => break,
                Err(pending) if Instant::now() >= deadline => {
                    // MPI still owns the buffers: forget the request and
                    // leak them, and refuse every later call.
                    std::mem::forget(pending);
                    let e = CommError::Timeout {
                        call,
                        missing: Vec::new(),
                        timeout: self.timeout,
                    };
                    st.broken = Some(e.clone());
                    return Err(e);
                }
                Err(pending) => request = pending,
            }
            polls += 1;
            if polls < 1000 {
                std::thread::yield_now();
            } else {
                let backoff = Duration::from_micros(u64::from(polls.min(2000) - 999));
                std::thread::sleep(backoff);
            }
        }
        // SAFETY: the request completed, so MPI no longer reads `send` nor
        // writes `recv`; the references lent to it are gone, and the
        // pointers came from `Box::into_raw`.
        let (out, _) = unsafe { (Box::from_raw(recv), Box::from_raw(send)) };
        Ok(out.into_vec())
    }
}

impl Drop for MpiCommunicator {
    fn drop(&mut self) {
        let st = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let other_thread = self
            .owner
            .is_some_and(|owner| owner != std::thread::current().id());
        // Freeing is an MPI call: not after MPI_Finalize, not from a thread
        // MPI does not allow, and not with a gather still pending on it.
        if st.broken.is_none() && !other_thread && !environment::is_finalized() {
            // SAFETY: dropped once, here; the field is not used after.
            unsafe { ManuallyDrop::drop(&mut self.comm) };
        }
    }
}
