//! normkit's integration tests: the kernels against the `f64` reference,
//! bad input, numerical extremes, fuzzing, threading, large (streamed)
//! outputs, the adaptive ops, the residual-add norms, Derf, QK-norm and
//! LayerNorm Scaling, and SyncBatchNorm across in-process ranks.

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
mod qk_norm;
mod residual;
mod scaling;
mod sync_batch_norm;
