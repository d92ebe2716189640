//! Integration tests of normkit-burn, one module per area.

mod adaptive;
mod backends;
mod common;
mod errors;
mod fold;
mod fused;
mod golden;
mod gradients;
mod pytorch;
mod qk_norm;
mod running_stats;
mod shapes;
mod swap;
mod training;
mod weight_norm;
