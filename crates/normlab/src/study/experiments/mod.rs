//! The study's six experiments, each a published claim about normalization
//! tested by training models through normkit-burn on burn's `flex`
//! backend:
//!
//! 1. [`gradient_flow`]: gradient norms through deep MLPs;
//! 2. [`convergence`]: steps to an accuracy, final accuracy, time per step;
//! 3. [`lr_robustness`]: the largest learning rate that still trains;
//! 4. [`batch_size`]: BatchNorm against GroupNorm as batches shrink;
//! 5. [`covariate_shift`]: how a hidden layer's input distribution moves;
//! 6. [`transformer`]: a character transformer with LayerNorm, RMSNorm,
//!    DyT and nothing.
//!
//! [`models`] holds the networks with a pluggable normalization, [`train`]
//! the training loop. Sizes come from the study's [`Mode`].

pub mod batch_size;
pub mod conditioning;
pub mod convergence;
pub mod covariate_shift;
pub mod gradient_flow;
pub mod lr_robustness;
pub mod models;
pub mod train;
pub mod transformer;

use super::report::fmt_num;
use super::{Experiment, Mode};
use normkit_burn::{fused_calls, FusedCalls};

/// Every experiment, in report order.
pub fn all() -> Vec<Box<dyn Experiment>> {
    vec![
        Box::new(gradient_flow::GradientFlow),
        Box::new(convergence::Convergence),
        Box::new(lr_robustness::LrRobustness),
        Box::new(batch_size::BatchSize),
        Box::new(covariate_shift::CovariateShift),
        Box::new(transformer::Transformer),
        Box::new(conditioning::Conditioning),
    ]
}

/// The value for `mode`.
pub fn sized<T>(mode: Mode, smoke: T, quick: T, full: T) -> T {
    match mode {
        Mode::Smoke => smoke,
        Mode::Quick => quick,
        Mode::Full => full,
    }
}

/// Counts normkit's fused kernel calls over a stretch of work, so a
/// section can say that its normalizations ran on them.
pub struct FusedCounter(FusedCalls);

impl FusedCounter {
    pub fn start() -> Self {
        Self(fused_calls())
    }

    /// "normkit's fused kernels ran F forward and B backward passes."
    pub fn sentence(&self) -> String {
        let now = fused_calls();
        format!(
            "Every normalization ran on normkit's fused kernels through normkit-burn \
             (this experiment made {} fused forward and {} fused backward calls; \
             counts include any other work in the process at the same time).",
            now.forward.saturating_sub(self.0.forward),
            now.backward.saturating_sub(self.0.backward)
        )
    }
}

/// Metric keys holding wall-clock timings start with this: they differ
/// between reruns, everything else is a function of the seed.
pub const TIME_PREFIX: &str = "time/";

/// `x` as a percentage with one decimal ("68.3%"), or "n/a".
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}

/// [`fmt_num`], or "n/a" for a non-finite value.
pub fn num(x: f64) -> String {
    if x.is_finite() {
        fmt_num(x)
    } else {
        "n/a".into()
    }
}
