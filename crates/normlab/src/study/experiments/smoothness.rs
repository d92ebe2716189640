//! Santurkar et al. 2018: BatchNorm with noise injected after it (more
//! covariate shift, not less) against BatchNorm and none, and the loss
//! landscape's smoothness along the gradient.

use super::common::{
    config, grid, or_chance, points, replicate, seeded_curve, seeds_sentence, sized,
};
use crate::study::data::{Dataset, Order};
use crate::study::fmt::{num, pct};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::{Activation, Mlp, MlpSpec, NormKind};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{
    cross_entropy, device, matrix, one_hot, scalar, train_classifier, values, Optim, OptimSpec,
    Schedule,
};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, StudyContext};
use burn::tensor::{Device, Gradients, Tensor};
use serde::{Deserialize, Serialize};

pub struct Smoothness;

const ID: &str = "smoothness";
/// Step sizes along the gradient at which the landscape is probed.
const ETAS: [f64; 4] = [0.05, 0.1, 0.2, 0.4];
const LR: f64 = 0.05;

#[derive(Serialize, Deserialize)]
struct Arm {
    bn: bool,
    noise: bool,
}

fn arms() -> Vec<(String, Arm)> {
    vec![
        (
            "none".into(),
            Arm {
                bn: false,
                noise: false,
            },
        ),
        (
            "bn".into(),
            Arm {
                bn: true,
                noise: false,
            },
        ),
        (
            "noisy-bn".into(),
            Arm {
                bn: true,
                noise: true,
            },
        ),
    ]
}

/// Every weight gradient of `m`, flattened.
fn flat_grads(m: &Mlp, g: &Gradients) -> Vec<f32> {
    m.blocks
        .iter()
        .map(|b| &b.linear.weight)
        .chain([&m.head.weight])
        .flat_map(|w| w.grad(g).map(values).unwrap_or_default())
        .collect()
}

/// The loss of `m` on a fixed batch and its gradient.
fn loss_and_grads(m: &Mlp, x: &Tensor<2>, y: &Tensor<2>) -> (f64, Vec<f32>) {
    let loss = cross_entropy(m.logits_traced(x.clone()).0, y.clone());
    let value = scalar(loss.clone());
    let g = loss.backward();
    (value, flat_grads(m, &g))
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Santurkar et al.'s landscape probe at `m`: steps of `ETAS` along the
/// negative gradient of a fixed batch; the spread of the loss along them
/// (max − min) and the largest change of the gradient relative to the
/// step taken (an effective β-smoothness, ‖∇L(θ − η∇L) − ∇L(θ)‖ / ‖η∇L‖).
/// Runs in training mode on copies, without injected noise.
fn landscape(m: &Mlp, x: &Tensor<2>, y: &Tensor<2>) -> (f64, f64) {
    let mut base = m.clone();
    base.noise = false;
    let (l0, g0) = loss_and_grads(&base, x, y);
    let g0_norm = distance(&g0, &vec![0.0; g0.len()]);
    let (mut lo, mut hi, mut beta) = (l0, l0, 0.0f64);
    for eta in ETAS {
        let loss = cross_entropy(base.logits_traced(x.clone()).0, y.clone());
        let grads = loss.backward();
        let mut step = Optim::new(OptimSpec::Sgd {
            lr: eta,
            momentum: 0.0,
        });
        let moved = step.step(base.clone(), grads);
        let (l, g) = loss_and_grads(&moved, x, y);
        lo = lo.min(l);
        hi = hi.max(l);
        beta = beta.max(distance(&g, &g0) / (eta * g0_norm).max(1e-12));
    }
    (hi - lo, beta)
}

fn probe_batch(data: &Dataset, seed: u64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let b = data
        .batches(256, Order::Shuffled(seed), true)
        .ok()
        .and_then(|mut it| it.next())
        .unwrap_or_else(|| panic!("MNIST-1D has 256 training examples"));
    let n = b.labels.len();
    (
        matrix(b.features, n, data.example_len(), device),
        one_hot(&b.labels, data.num_classes(), device),
    )
}

impl Experiment for Smoothness {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Santurkar et al.: noisy BatchNorm and the smoothness of the landscape"
    }

    fn topic(&self) -> &'static str {
        "why BN helps (smoothness)"
    }

    fn claim(&self) -> &'static str {
        "BatchNorm's benefit does not come from reducing internal covariate shift: a network \
         with noise injected after every BN layer — a distribution that changes at every step, \
         more covariate shift than without BN — trains as well as with plain BN and better than \
         without it. What BN does is make the loss landscape smoother: the loss changes less, \
         and the gradient stays more predictive, along the gradient direction (Santurkar, \
         Tsipras, Ilyas & Madry 2018, Figures 2 and 4)."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        vec![
            Claim::new(
                "noisy-bn-vs-bn/accuracy",
                "BN with time-varying noise after it reaches the same test accuracy as BN.",
                "final test accuracy, noisy BN − BN",
                "points",
                Direction::Within,
                2.0,
                "practical threshold: two points (the paper's curves overlap)",
            ),
            Claim::new(
                "noisy-bn-vs-none/accuracy",
                "Noisy BN still beats no normalization.",
                "final test accuracy, noisy BN − none",
                "points",
                Direction::AtLeast,
                0.0,
                "practical threshold: any gain",
            ),
            Claim::new(
                "bn-vs-none/gradient-change",
                "BN makes the gradient more predictive: it changes less along the gradient \
                 direction, relative to the step.",
                "log10(β_eff(none) / β_eff(BN)), mean over checkpoints",
                "decades",
                Direction::AtLeast,
                0.3,
                "practical threshold: a factor of two (the paper shows several-fold)",
            ),
            Claim::new(
                "bn-vs-none/loss-variation",
                "With BN the loss varies less along the gradient direction.",
                "log10(loss range(none) / loss range(BN)), mean over checkpoints",
                "decades",
                Direction::AtLeast,
                0.3,
                "practical threshold: a factor of two",
            ),
        ]
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "The paper trains VGG on CIFAR-10; this is a 4-layer MLP on MNIST-1D.",
            "The noise is a per-unit scale U(0.5, 1.5) and shift U(−1, 1), redrawn every step, \
             after every BN layer; the paper's noise has a different scale. (The study's first \
             version drew the scale from U(0.5, 2), whose mean 1.25 left a systematic gap \
             between training and noise-free inference; it was changed for that reason.)",
            "The landscape is probed on one fixed batch of 256 at a few checkpoints, in training \
             mode, with steps of 0.05 to 0.4 along the gradient.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Santurkar, Tsipras, Ilyas & Madry 2018, How Does Batch Normalization Help Optimization? (NeurIPS).",
            "Ioffe & Szegedy 2015, Batch Normalization.",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        Ok(grid(ID, &arms(), ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: Arm = config(job)?;
        let split = ctx.mnist1d()?;
        let device = device();
        let (init, order) = replicate(ctx, ID, job.replicate);
        let steps = sized(ctx.mode(), 20, 400, 3000);
        let checkpoints = sized(ctx.mode(), 2, 4, 8);
        let every = (steps / checkpoints).max(1);
        let kind = if arm.bn {
            NormKind::Batch
        } else {
            NormKind::None
        };
        let mut model = Mlp::new(
            MlpSpec::new(40, 100, 4, 10, Activation::Relu),
            kind,
            init,
            &device,
        )?;
        if arm.noise {
            model = model.with_noise();
        }
        let (x, y) = probe_batch(&split.train, ctx.seed_for(&format!("{ID}/probe")), &device);
        let (mut spread, mut beta) = (Vec::new(), Vec::new());
        let mut hook = |step: usize, m: &Mlp, _: &Gradients| {
            if step % every == 0 && step > 0 {
                let (s, b) = landscape(m, &x, &y);
                spread.push(s);
                beta.push(b);
            }
        };
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps,
            batch: 64,
            optim: OptimSpec::Sgd {
                lr: LR,
                momentum: 0.9,
            },
            eval_every: (steps / 10).max(1),
            seed: order,
        };
        let (_, curve) = train_classifier(
            model,
            &split.train,
            &split.test,
            &schedule,
            &device,
            Some(&mut hook),
        );
        Ok(JobOutput::default()
            .value("accuracy", or_chance(curve.final_accuracy()))
            .value("log_spread", mean(&spread).log10())
            .value("log_beta", mean(&beta).log10())
            .curve("accuracy", curve.test_accuracy.clone())
            .curve("steps", curve.steps.iter().map(|&s| s as f64).collect()))
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let steps = sized(ctx.mode(), 20, 400, 3000);
        let mut a = Analysis {
            setup: format!(
                "MNIST-1D; an MLP of 4 hidden layers of 100 ReLU units, with none, BN, or BN \
                 followed by noise (noisy BN). SGD (lr {LR}, momentum 0.9), batch 64, {steps} \
                 steps. At {} checkpoints the landscape is probed on a fixed batch of 256 \
                 training examples: from the current parameters, steps of {:?} along the negative \
                 gradient; the loss range over them and the largest gradient change per unit \
                 step (β_eff) are recorded and averaged over checkpoints. {}",
                sized(ctx.mode(), 2, 4, 8) - 1,
                ETAS,
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let v = |arm: &str, key: &str| results.values(arm, key);
        let diff_pts = |x: &str, y: &str| -> Vec<f64> {
            v(x, "accuracy")
                .iter()
                .zip(v(y, "accuracy"))
                .map(|(p, q)| points(p - q))
                .collect()
        };
        a.effects
            .insert("noisy-bn-vs-bn/accuracy".into(), diff_pts("noisy-bn", "bn"));
        a.effects.insert(
            "noisy-bn-vs-none/accuracy".into(),
            diff_pts("noisy-bn", "none"),
        );
        let log_ratio = |key: &str| -> Vec<f64> {
            v("none", key)
                .iter()
                .zip(v("bn", key))
                .map(|(n, b)| n - b)
                .collect()
        };
        a.effects
            .insert("bn-vs-none/gradient-change".into(), log_ratio("log_beta"));
        a.effects
            .insert("bn-vs-none/loss-variation".into(), log_ratio("log_spread"));
        let mut table = Table::new(
            "Final accuracy and landscape (means over seeds)",
            ["arm", "test accuracy", "log10 loss range", "log10 β_eff"],
        );
        let mut curve = Plot::line("Test accuracy", "step", "test accuracy");
        for (arm, _) in arms() {
            table = table.row([
                arm.clone(),
                pct(mean(&v(&arm, "accuracy"))),
                num(mean(&v(&arm, "log_spread"))),
                num(mean(&v(&arm, "log_beta"))),
            ]);
            for key in ["accuracy", "log_spread", "log_beta"] {
                a.metrics.insert(format!("{arm}/{key}"), v(&arm, key));
            }
            let pts = seeded_curve(results, &arm, "accuracy");
            curve = curve.seeded_series(arm, pts);
        }
        let smooth = Plot::bars(
            "BN vs none: landscape, log10(none / BN)",
            "measure",
            "decades (above the margin: smoother with BN)",
            ["β_eff", "loss range"],
        )
        .guide(0.3, "margin: ×2")
        .seeded_bars(
            "log10 ratio",
            &[
                a.effects["bn-vs-none/gradient-change"].clone(),
                a.effects["bn-vs-none/loss-variation"].clone(),
            ],
        );
        a.tables.push(table);
        a.plots.push(curve);
        a.plots.push(smooth);
        a.result = format!(
            "Noisy BN ended {} points from BN and {} points above none on average; along the \
             gradient, BN's β_eff was 10^{} times smaller than none's.",
            num(mean(&a.effects["noisy-bn-vs-bn/accuracy"])),
            num(mean(&a.effects["noisy-bn-vs-none/accuracy"])),
            num(mean(&a.effects["bn-vs-none/gradient-change"]))
        );
        Ok(a)
    }
}
