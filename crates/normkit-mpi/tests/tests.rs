//! The cross-rank checks the MPI test program runs, here on 1, 2 and 3
//! in-process ranks (no MPI needed).

use normkit::comm::{SingleProcess, ThreadComm};
use normkit_mpi::check;

#[test]
fn the_mpi_checks_pass_on_in_process_ranks() {
    for size in 1..=3 {
        let results = ThreadComm::run(size, |comm| check::run(comm));
        for (rank, (report, all_passed)) in results.iter().enumerate() {
            assert!(
                report.failures.is_empty(),
                "{size} ranks, rank {rank}: {:?}",
                report.failures
            );
            assert!(all_passed, "{size} ranks: another rank failed");
            assert!(
                report.comparisons > 50,
                "{size} ranks: {} comparisons",
                report.comparisons
            );
        }
    }
    let (report, all_passed) = check::run(&SingleProcess);
    assert!(
        all_passed && report.failures.is_empty(),
        "{:?}",
        report.failures
    );
}
