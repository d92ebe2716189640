//! # normkit-mpi
//!
//! normkit's collectives over MPI: `MpiCommunicator` (with the `mpi`
//! feature) lets SyncBatchNorm's ranks be the processes of an MPI job —
//! Open MPI from Debian (`openmpi-bin`, `libopenmpi-dev`, and
//! `libclang-dev` for the bindings) through the `mpi` crate.
//!
//! The `mpi` feature is off by default, so the workspace builds and tests
//! without MPI installed. Without it this crate holds [`check`]: the
//! cross-rank checks of SyncBatchNorm that the MPI test program
//! (`sync-bn-check`, built with the feature) runs on every rank, written
//! against any [`normkit::comm::Communicator`] and so also tested here on
//! in-process ranks.
//!
//! ```text
//! cargo build --release -p normkit-mpi --features mpi --bin sync-bn-check
//! mpirun -np 2 target/release/sync-bn-check
//! mpirun -np 3 --oversubscribe target/release/sync-bn-check
//! ```
//!
//! In a program, every rank runs:
//!
//! ```ignore
//! use std::sync::Arc;
//! use normkit::op::{NormOp, SyncBatchNormOp};
//!
//! let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized).unwrap();
//! let comm = Arc::new(normkit_mpi::MpiCommunicator::new(&universe.world()));
//! let op = SyncBatchNormOp {
//!     cfg: normkit::BatchNormConfig::default(),
//!     training: true,
//!     weight: true,
//!     bias: true,
//!     comm,
//! };
//! let saved = op.forward(&mut y, &x, &shape, &params, Some(running))?;
//! ```
//!
//! Drop the communicator before the `Universe` (which finalizes MPI).

pub mod check;
#[cfg(feature = "mpi")]
mod communicator;

#[cfg(feature = "mpi")]
pub use communicator::MpiCommunicator;
#[cfg(feature = "mpi")]
pub use mpi;
