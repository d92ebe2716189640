//! normlab: normkit's command line, as a library so its parts are tested.
//!
//! - [`conform`] runs golden conformance cases against the kernels.
//! - [`bench`](mod@bench) times the kernels against the memory roofline and against
//!   burn, candle and normkit's reference twin.
//! - [`study`] trains models with each normalization and reports what
//!   normalization does.

pub mod bench;
pub mod conform;
pub mod golden;
pub mod study;
