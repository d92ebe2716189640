//! The study's experiments, each a published claim about normalization
//! tested by training models through normkit-burn on burn's `flex`
//! backend, in report order:
//!
//! 1. [`gradient_flow`]: per-layer gradient norms through deep MLPs;
//! 2. [`exploding`]: a deep net initialized to explode, with and without
//!    normalization;
//! 3. [`covariate_shift`]: how far each layer's input distribution moves;
//! 4. [`smoothness`]: Santurkar et al.'s noisy BatchNorm and landscape;
//! 5. [`convergence`]: steps to the baseline's accuracy;
//! 6. [`lr_robustness`]: the largest learning rate that trains;
//! 7. [`regularization`]: the generalization gap, BN against dropout;
//! 8. [`batch_size`]: BatchNorm against GroupNorm as batches shrink;
//! 9. [`compute_cost`]: time in training and inference, BN folded;
//! 10. [`style`]: per-instance normalization, contrast changes, AdaIN;
//! 11. [`variable_length`]: BN vs LN with padded batches;
//! 12. [`transformer`]: DyT against LayerNorm and none;
//! 13. [`conditioning`]: adaLN-Zero against FiLM and the condition as
//!     input.
//!
//! [`common`] holds what they share.

pub mod batch_size;
pub mod common;
pub mod compute_cost;
pub mod conditioning;
pub mod convergence;
pub mod covariate_shift;
pub mod exploding;
pub mod gradient_flow;
pub mod lr_robustness;
pub mod regularization;
pub mod smoothness;
pub mod style;
pub mod transformer;
pub mod variable_length;

use super::Experiment;

/// Every experiment, in report order.
pub fn all() -> Vec<Box<dyn Experiment>> {
    vec![
        Box::new(gradient_flow::GradientFlow),
        Box::new(exploding::Exploding),
        Box::new(covariate_shift::CovariateShift),
        Box::new(smoothness::Smoothness),
        Box::new(convergence::Convergence),
        Box::new(lr_robustness::LrRobustness),
        Box::new(regularization::Regularization),
        Box::new(batch_size::BatchSize),
        Box::new(compute_cost::ComputeCost),
        Box::new(style::Style),
        Box::new(variable_length::VariableLength),
        Box::new(transformer::Transformer),
        Box::new(conditioning::Conditioning),
    ]
}
