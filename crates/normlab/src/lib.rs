//! normlab: normkit's command line, as a library so its parts are tested.
//!
//! - [`conform`] runs golden conformance cases against the kernels.

pub mod conform;
pub mod golden;
