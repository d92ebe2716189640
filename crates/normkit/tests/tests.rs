//! normkit's integration tests: the kernels against the `f64` reference,
//! bad input, numerical extremes, threading, large (streamed) outputs, and
//! the adaptive ops, and SyncBatchNorm across in-process ranks.

mod adaptive;
mod common;
mod derf;
mod errors;
mod fuzz;
mod large;
mod limits;
mod numerics;
mod op;
mod parallel;
mod property;
mod sync_batch_norm;
