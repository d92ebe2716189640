//! normlab's integration tests, one module per command.

mod conform;
