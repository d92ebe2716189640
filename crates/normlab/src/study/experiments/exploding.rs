//! Exploding gradients: a plain deep ReLU net initialized so that its
//! signals and gradients grow layer by layer, with and without
//! normalization.

use super::common::{
    config, grid, kind_arms, kind_named, or_chance, points, replicate, seeded_curve,
    seeds_sentence, sized, KindArm, CHANCE,
};
use super::gradient_flow::grads_at;
use crate::study::fmt::{num, pct};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::{Activation, Init, Mlp, MlpSpec, NormKind};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{device, train_classifier, OptimSpec, Schedule};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, StudyContext};

pub struct Exploding;

const ID: &str = "exploding-gradients";
const KINDS: [NormKind; 3] = [NormKind::None, NormKind::Batch, NormKind::Layer];
const DEPTH: usize = 20;
/// Weights `N(0, GAIN² / fan_in)`: ReLU's critical gain is √2, so each
/// layer multiplies the signal's scale by `GAIN / √2 = √2`.
const GAIN: f64 = 2.0;
const LR: f64 = 0.01;

/// log10 of the whole gradient's norm over the hidden layers.
fn log_total(profile: &[f64]) -> f64 {
    profile.iter().map(|g| g * g).sum::<f64>().sqrt().log10()
}

impl Experiment for Exploding {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Exploding gradients"
    }

    fn topic(&self) -> &'static str {
        "exploding gradients"
    }

    fn claim(&self) -> &'static str {
        "Normalization prevents exploding gradients: in a deep plain network whose \
         initialization amplifies the signal at every layer, activations and gradients grow \
         exponentially with depth and plain SGD fails, while normalizing every layer keeps \
         their scale fixed whatever the weights' scale (Ioffe & Szegedy 2015, §3.3: the layer \
         Jacobian is unaffected by the scale of its weights; Bjorck et al. 2018)."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        let grad = |k: NormKind| {
            Claim::new(
                format!("{}-vs-none/gradient-norm", k.slug()),
                format!(
                    "With {}, the gradient's norm at initialization is at least ten times \
                     smaller than the exploding plain network's.",
                    k.label()
                ),
                "log10 ‖∇W‖(none) − log10 ‖∇W‖(norm), all hidden layers",
                "decades",
                Direction::AtLeast,
                1.0,
                "practical threshold: a tenfold gradient",
            )
        };
        let trains = |k: NormKind| {
            Claim::new(
                format!("{}-vs-none/accuracy", k.slug()),
                format!(
                    "With {}, plain SGD trains the network the plain version cannot.",
                    k.label()
                ),
                "test accuracy, norm − none",
                "points",
                Direction::AtLeast,
                10.0,
                "practical threshold: ten points of accuracy (a diverged run counts as chance, 10%)",
            )
        };
        vec![
            grad(NormKind::Batch),
            grad(NormKind::Layer),
            trains(NormKind::Batch),
            trains(NormKind::Layer),
        ]
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "The initialization is chosen to explode (twice He's variance); at the critical \
             initialization a plain 20-layer ReLU net trains.",
            "One learning rate (SGD 0.01, no momentum): a smaller one might let the plain \
             network train slowly, which this experiment does not test.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Ioffe & Szegedy 2015, Batch Normalization, §3.3.",
            "He, Zhang, Ren & Sun 2015, Delving Deep into Rectifiers (critical initialization).",
            "Bjorck, Gomes, Selman & Weinberger 2018, Understanding Batch Normalization.",
            "Pascanu, Mikolov & Bengio 2013, On the difficulty of training recurrent neural networks.",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        Ok(grid(ID, &kind_arms(&KINDS), ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: KindArm = config(job)?;
        let split = ctx.mnist1d()?;
        let device = device();
        let (init, order) = replicate(ctx, ID, job.replicate);
        let steps = sized(ctx.mode(), 10, 200, 1000);
        let spec = MlpSpec {
            init: Init::Scaled { gain: GAIN },
            ..MlpSpec::new(
                40,
                sized(ctx.mode(), 32, 64, 128),
                DEPTH,
                10,
                Activation::Relu,
            )
        };
        let model = Mlp::new(spec, kind_named(&KINDS, &arm.kind), init, &device)?;
        let at_init = grads_at(&model, &split.train, 4, order, &device);
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps,
            batch: 64,
            optim: OptimSpec::Sgd {
                lr: LR,
                momentum: 0.0,
            },
            eval_every: (steps / 10).max(1),
            seed: order,
        };
        let (_, curve) =
            train_classifier(model, &split.train, &split.test, &schedule, &device, None);
        Ok(JobOutput::default()
            .value("init/log_grad", log_total(&at_init))
            .value("accuracy", or_chance(curve.final_accuracy()))
            .value("diverged", f64::from(u8::from(curve.diverged)))
            .curve("init/profile", at_init)
            .curve(
                "accuracy",
                curve.test_accuracy.iter().map(|&a| or_chance(a)).collect(),
            )
            .curve("steps", curve.steps.iter().map(|&s| s as f64).collect()))
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let steps = sized(ctx.mode(), 10, 200, 1000);
        let mut a = Analysis {
            setup: format!(
                "MNIST-1D; an MLP of {DEPTH} hidden ReLU layers of {} units (linear, norm, ReLU), \
                 weights N(0, {GAIN}²/fan_in) and zero biases — twice He's variance, so each \
                 layer multiplies the signal's scale by √2 — and a linear head with PyTorch's \
                 initialization. Arms: none, BN, LN. The gradient norm is over every hidden \
                 weight, averaged over 4 batches of 64 at initialization. Then plain SGD (lr \
                 {LR}, no momentum, batch 64) for {steps} steps; a run whose loss goes \
                 non-finite stops and counts as chance accuracy. {}",
                sized(ctx.mode(), 32, 64, 128),
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let grad = |k: NormKind| results.values(&k.slug(), "init/log_grad");
        let acc = |k: NormKind| results.values(&k.slug(), "accuracy");
        let mut table = Table::new(
            "Gradient norm at initialization and final accuracy (means over seeds)",
            [
                "normalization",
                "log10 ‖∇W‖ at init",
                "test accuracy",
                "diverged runs",
            ],
        );
        for k in KINDS {
            let diverged: f64 = results.values(&k.slug(), "diverged").iter().sum();
            table = table.row([
                k.label(),
                num(mean(&grad(k))),
                pct(mean(&acc(k))),
                format!("{diverged}"),
            ]);
            a.metrics.insert(format!("{}/log_grad", k.slug()), grad(k));
            a.metrics.insert(format!("{}/accuracy", k.slug()), acc(k));
        }
        for k in [NormKind::Batch, NormKind::Layer] {
            let d: Vec<f64> = grad(NormKind::None)
                .iter()
                .zip(grad(k))
                .map(|(n, g)| n - g)
                .collect();
            a.effects
                .insert(format!("{}-vs-none/gradient-norm", k.slug()), d);
            let d: Vec<f64> = acc(k)
                .iter()
                .zip(acc(NormKind::None))
                .map(|(x, n)| points(x - n))
                .collect();
            a.effects
                .insert(format!("{}-vs-none/accuracy", k.slug()), d);
        }
        a.tables.push(table);
        let mut profile = Plot::line(
            "‖∇W‖ per layer at initialization",
            "hidden layer (1 = next to the input)",
            "gradient norm",
        )
        .log_y();
        let mut curve =
            Plot::line("Test accuracy under SGD", "step", "test accuracy").guide(CHANCE, "chance");
        for k in KINDS {
            let curves = results.curves(&k.slug(), "init/profile");
            let pts = (0..DEPTH)
                .map(|l| {
                    let v = curves
                        .iter()
                        .map(|c| c.get(l).copied().unwrap_or(f64::NAN))
                        .collect();
                    ((l + 1) as f64, v)
                })
                .collect();
            profile = profile.seeded_series(k.label(), pts);
            curve = curve.seeded_series(k.label(), seeded_curve(results, &k.slug(), "accuracy"));
        }
        a.plots.push(profile);
        a.plots.push(curve);
        a.result = format!(
            "At initialization the plain network's gradient norm is 10^{} on average, BN's \
             10^{} and LN's 10^{}; after SGD the plain network reaches {} test accuracy, BN {} \
             and LN {}.",
            num(mean(&grad(NormKind::None))),
            num(mean(&grad(NormKind::Batch))),
            num(mean(&grad(NormKind::Layer))),
            pct(mean(&acc(NormKind::None))),
            pct(mean(&acc(NormKind::Batch))),
            pct(mean(&acc(NormKind::Layer)))
        );
        Ok(a)
    }
}
