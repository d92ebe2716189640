//! # normkit-data
//!
//! The one reader of each file format normkit's tools and tests take:
//!
//! - [`golden`]: golden conformance cases, one safetensors file per case
//!   (format: `tests/golden/FORMAT.md`), read by `normlab conform` and by
//!   the adapters' tests;
//! - [`idx`]: IDX arrays of unsigned bytes (the MNIST format, gzipped or
//!   not), read by the study and the examples for Fashion-MNIST.

#![forbid(unsafe_code)]

pub mod golden;
pub mod idx;
