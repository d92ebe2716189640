//! normkit's integration tests: the kernels against the `f64` reference,
//! bad input, numerical extremes, threading, large (streamed) outputs, and
//! the adaptive ops.

mod adaptive;
mod common;
mod derf;
mod errors;
mod large;
mod numerics;
mod op;
mod parallel;
mod property;
mod qk_norm;
mod residual;
mod scaling;
