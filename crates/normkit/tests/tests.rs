//! normkit's integration tests: the kernels against the `f64` reference, bad input, and numerical extremes.

mod common;
mod errors;
mod numerics;
mod property;
mod parallel;
