//! Integration tests of normkit-candle, one module per area.

mod adaptive;
mod common;
mod errors;
mod fold;
mod fuzz;
mod golden;
mod gpt;
mod grads;
mod parity;
mod qk_norm;
mod state;
mod training;
mod weight_norm;
