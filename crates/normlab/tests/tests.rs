//! normlab's integration tests, one module per command.

mod bench;
mod conform;
mod study;
mod study_e2e;
