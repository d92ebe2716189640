//! Golden conformance cases, read by the workspace's one reader.

pub use normkit_data::golden::*;
