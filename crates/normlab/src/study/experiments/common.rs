//! What the experiments share: sizes by mode, jobs over arms and seeds,
//! the architectures the classifier experiments train, and small helpers
//! for per-seed numbers.

use crate::study::data::Split;
use crate::study::jobs::{Job, Results};
use crate::study::models::{Activation, Cnn1d, Mlp, MlpSpec, NormKind, CNN1D_CHANNELS};
use crate::study::train::{train_classifier, Curve, Schedule};
use crate::study::{ExperimentError, Mode, StudyContext};
use burn::tensor::Device;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The value for `mode`.
pub fn sized<T>(mode: Mode, smoke: T, quick: T, full: T) -> T {
    match mode {
        Mode::Smoke => smoke,
        Mode::Quick => quick,
        Mode::Full => full,
    }
}

/// One job per (arm, replicate): each arm's config, every seed.
pub fn grid<C: Serialize>(experiment: &str, arms: &[(String, C)], seeds: usize) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(arms.len() * seeds);
    for (arm, config) in arms {
        let value = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
        for r in 0..seeds {
            jobs.push(Job::new(experiment, arm.clone(), r, value.clone()));
        }
    }
    jobs
}

/// A job's config, read back.
pub fn config<C: DeserializeOwned>(job: &Job) -> Result<C, ExperimentError> {
    Ok(serde_json::from_value(job.config.clone())?)
}

/// "5 seeds: replicate r starts every arm from seed stream `id`/init/r and
/// batch order `id`/order/r of seed S."
pub fn seeds_sentence(ctx: &StudyContext, id: &str) -> String {
    format!(
        "{} seeds per arm, paired: replicate r draws the initialization from seed stream \
         {id}/init/r and the batch order from {id}/order/r (of study seed {}), shared by every \
         arm it compares, so each effect is a per-seed difference; the data are the same for \
         every replicate.",
        ctx.seeds(),
        ctx.seed()
    )
}

/// The init and order seeds of replicate `r`.
pub fn replicate(ctx: &StudyContext, id: &str, r: usize) -> (u64, u64) {
    (
        ctx.replicate_seed(id, "init", r),
        ctx.replicate_seed(id, "order", r),
    )
}

/// Accuracy in points (percent).
pub fn points(x: f64) -> f64 {
    100.0 * x
}

/// Chance accuracy on ten classes: a diverged run's stand-in.
pub const CHANCE: f64 = 0.1;

/// An accuracy, or chance when the run diverged (NaN).
pub fn or_chance(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        CHANCE
    }
}

/// `f` applied seed by seed.
pub fn per_seed(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// The kind among `kinds` whose slug is `slug` (none when no kind's is).
pub fn kind_named(kinds: &[NormKind], slug: &str) -> NormKind {
    kinds
        .iter()
        .copied()
        .find(|k| k.slug() == slug)
        .unwrap_or(NormKind::None)
}

/// An arm that only names its normalization.
#[derive(Serialize, serde::Deserialize)]
pub struct KindArm {
    pub kind: String,
}

/// One [`KindArm`] per kind, named by its slug.
pub fn kind_arms(kinds: &[NormKind]) -> Vec<(String, KindArm)> {
    kinds
        .iter()
        .map(|k| (k.slug(), KindArm { kind: k.slug() }))
        .collect()
}

/// Curve `key` of `arm`, recorded by every seed at the steps of its
/// `steps` curve, as the points of a seeded plot series.
pub fn seeded_curve(results: &Results, arm: &str, key: &str) -> Vec<(f64, Vec<f64>)> {
    let curves = results.curves(arm, key);
    let steps = results
        .curves(arm, "steps")
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    steps
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let v = curves
                .iter()
                .map(|c| c.get(i).copied().unwrap_or(f64::NAN))
                .collect();
            (s, v)
        })
        .collect()
}

/// `points(a − b)`, seed by seed: a difference of accuracies in points.
pub fn diff_points(a: &[f64], b: &[f64]) -> Vec<f64> {
    per_seed(a, b, |x, y| points(x - y))
}

/// The classifier architectures on MNIST-1D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Arch {
    /// MNIST-1D's CNN (three 1-D convolutions of 25 channels).
    Cnn,
    /// MNIST-1D's MLP (two hidden layers of 100 ReLU units).
    Mlp,
}

impl Arch {
    pub fn label(self) -> &'static str {
        match self {
            Arch::Cnn => "CNN",
            Arch::Mlp => "MLP",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Arch::Cnn => "cnn",
            Arch::Mlp => "mlp",
        }
    }

    /// Whether `kind` applies (InstanceNorm needs positions).
    pub fn takes(self, kind: NormKind) -> bool {
        !(self == Arch::Mlp && kind == NormKind::Instance)
    }

    pub const DESCRIPTION: &'static str = "MNIST-1D's baselines (Greydanus 2020): the CNN \
        has three 1-D convolutions of 25 channels (kernel 5 then 3, stride 2, padding 1) and a \
        linear head; the MLP two hidden layers of 100 ReLU units. Each normalization sits after \
        every convolution or hidden linear layer, before the ReLU (WeightNorm reparameterizes \
        every layer's weight instead; LN and RMSNorm normalize over channels × positions; GN \
        uses groups of 4–5 channels; DyT starts at alpha0 = 0.5). PyTorch's default \
        initialization.";
}

/// MNIST-1D's baseline MLP.
pub fn mnist1d_mlp() -> MlpSpec {
    MlpSpec::new(40, 100, 2, 10, Activation::Relu)
}

/// What [`train_arch`] hands back besides the curve: a closure's result
/// over the trained model.
pub fn train_arch<T>(
    arch: Arch,
    kind: NormKind,
    split: &Split,
    schedule: &Schedule,
    init: u64,
    device: &Device,
    after: impl FnOnce(Trained<'_>) -> T,
) -> Result<(Curve, T), ExperimentError> {
    Ok(match arch {
        Arch::Cnn => {
            let m = Cnn1d::new(40, CNN1D_CHANNELS, 10, kind, init, device)?;
            let (m, c) = train_classifier(m, &split.train, &split.test, schedule, device, None);
            let t = after(Trained::Cnn(&m));
            (c, t)
        }
        Arch::Mlp => {
            let m = Mlp::new(mnist1d_mlp(), kind, init, device)?;
            let (m, c) = train_classifier(m, &split.train, &split.test, schedule, device, None);
            let t = after(Trained::Mlp(&m));
            (c, t)
        }
    })
}

/// A trained MNIST-1D model of either architecture.
pub enum Trained<'a> {
    Cnn(&'a Cnn1d),
    Mlp(&'a Mlp),
}

/// Calls `$body` with `$m` bound to the trained model, whichever it is.
#[macro_export]
macro_rules! with_trained {
    ($t:expr, $m:ident => $body:expr) => {
        match $t {
            $crate::study::experiments::common::Trained::Cnn($m) => $body,
            $crate::study::experiments::common::Trained::Mlp($m) => $body,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_makes_one_job_per_arm_and_seed() {
        let arms = vec![("a".to_string(), 1), ("b".to_string(), 2)];
        let jobs = grid("e", &arms, 3);
        assert_eq!(jobs.len(), 6);
        assert_eq!(jobs[4].arm, "b");
        assert_eq!(jobs[4].replicate, 1);
        let c: i32 = config(&jobs[4]).unwrap();
        assert_eq!(c, 2);
        assert_eq!(or_chance(f64::NAN), CHANCE);
        assert_eq!(per_seed(&[3.0], &[1.0], |a, b| a - b), vec![2.0]);
    }
}
