//! The adaptive layers (AdaIN, adaLN, Switchable Normalization, Batch
//! Renormalization): gradients of every input and parameter, fused against
//! composed against central finite differences in `f64`; the golden cases
//! 037–073 through the layers by both routes; the identities the layers
//! promise; and a small model training with each.

mod golden;
mod gradients;
mod identities;
mod training;

pub use golden::is_adaptive;
