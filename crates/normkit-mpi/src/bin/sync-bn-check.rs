//! The MPI test program: `mpirun -np N sync-bn-check [check|die|stall]`.
//!
//! - `check` (the default): [`normkit_mpi::check::run`] on every rank;
//!   exits 0 when every rank passed, 1 otherwise.
//! - `die`: rank 1 exits at once without finalizing MPI, as a crashed
//!   process would; the others enter a SyncBatchNorm call. The MPI runtime
//!   must end the job with an error, or the timeout must.
//! - `stall`: rank 1 stays alive but does not join the call for four
//!   timeouts; the others must fail with a timeout, say so, and abort the
//!   job.
//!
//! `NORMKIT_MPI_TIMEOUT_MS` sets the collectives' timeout (default 120 s).

use std::time::Duration;

use mpi::environment::Threading;
use normkit::comm::Communicator;
use normkit::{sync_batch_norm_forward_train, Affine, BatchNormConfig};
use normkit_mpi::MpiCommunicator;

fn main() {
    let mode = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "check".to_string());
    let timeout = std::env::var("NORMKIT_MPI_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_millis);
    let Some((universe, _)) = mpi::initialize_with_threading(Threading::Serialized) else {
        eprintln!("sync-bn-check: MPI was already initialized");
        std::process::exit(2);
    };
    let comm = MpiCommunicator::new(&universe.world()).with_timeout(timeout);
    let code = match mode.as_str() {
        "check" => check(&comm),
        "die" | "stall" => lose_a_rank(&comm, &mode, timeout),
        other => {
            eprintln!("sync-bn-check: unknown mode {other:?} (check, die or stall)");
            2
        }
    };
    drop(comm);
    drop(universe);
    std::process::exit(code);
}

fn check(comm: &MpiCommunicator) -> i32 {
    let (report, all_passed) = normkit_mpi::check::run(comm);
    for f in &report.failures {
        eprintln!("rank {}: FAILED {f}", comm.rank());
    }
    if comm.rank() == 0 {
        let verdict = if all_passed { "all passed" } else { "FAILED" };
        println!(
            "sync-bn-check: {} ranks, {} comparisons on rank 0: {verdict}",
            comm.size(),
            report.comparisons
        );
    }
    if all_passed {
        0
    } else {
        1
    }
}

/// Rank 1 dies or stalls; the others run a SyncBatchNorm forward, which
/// must fail (or the job must be ended for them), never hang.
fn lose_a_rank(comm: &MpiCommunicator, mode: &str, timeout: Duration) -> i32 {
    if comm.rank() == 1 {
        if mode == "die" {
            eprintln!("rank 1: exiting without finalizing MPI, as a crash would");
            std::process::exit(3);
        }
        eprintln!("rank 1: stalling for {:?}", timeout * 4);
        std::thread::sleep(timeout * 4);
    }
    let shape = [2, 3, 4];
    let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let mut y = vec![0.0f32; 24];
    let cfg = BatchNormConfig::default();
    match sync_batch_norm_forward_train(&mut y, &x, &shape, Affine::NONE, None, &cfg, comm) {
        Ok(_) => {
            eprintln!("rank {}: the call succeeded without rank 1", comm.rank());
            1
        }
        Err(e) => {
            eprintln!("rank {}: {e}; aborting the job", comm.rank());
            comm.abort(4)
        }
    }
}
