//! Convergence: steps each normalization needs to reach a fixed fraction
//! of the unnormalized network's smoothed final accuracy.

use super::common::{
    config, grid, kind_named, or_chance, replicate, seeded_curve, seeds_sentence, sized,
    train_arch, Arch,
};
use crate::study::fmt::{num, pct};
use crate::study::jobs::{Job, JobOutput, Results, TIME_PREFIX};
use crate::study::models::{HasNorms, NormKind};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{device, first_step_at, OptimSpec, Schedule};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, StudyContext};
use crate::with_trained;
use serde::{Deserialize, Serialize};

pub struct Convergence;

const ID: &str = "convergence";

/// Every normalization this experiment trains.
pub const KINDS: [NormKind; 9] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Layer,
    NormKind::Group,
    NormKind::Instance,
    NormKind::Rms,
    NormKind::Weight,
    NormKind::Dyt,
    NormKind::Switch,
];
const ARCHS: [Arch; 2] = [Arch::Cnn, Arch::Mlp];
/// The target: this fraction of the baseline's smoothed final accuracy.
const FRACTION: f64 = 0.95;
/// Evaluations in the trailing mean that smooths a curve.
const WINDOW: usize = 3;

#[derive(Serialize, Deserialize)]
struct Arm {
    arch: Arch,
    kind: String,
}

fn arm(arch: Arch, kind: NormKind) -> String {
    format!("{}/{}", arch.slug(), kind.slug())
}

fn schedule(ctx: &StudyContext) -> (usize, usize) {
    (
        sized(ctx.mode(), 40, 300, 3000),
        sized(ctx.mode(), 10, 30, 100),
    )
}

impl Experiment for Convergence {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Convergence: steps to the baseline's accuracy"
    }

    fn topic(&self) -> &'static str {
        "convergence"
    }

    fn claim(&self) -> &'static str {
        "Normalization makes a network train in fewer steps. With Batch Normalization and \
         nothing else changed, Inception reached its baseline's best ImageNet accuracy in less \
         than half the training steps (Ioffe & Szegedy 2015, §4.2: 13.3 against 31 million); \
         Layer, Group, Instance, RMS and Weight Normalization, DyT and Switchable Normalization \
         were each proposed as training faster or as fast."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        let halving = "the BN paper: less than half the steps (31 / 13.3 = 2.3×)";
        let mut claims = vec![Claim::new(
            "bn-vs-none/cnn",
            "BN reaches the target in at most half the unnormalized CNN's steps.",
            "log2(steps(none) / steps(BN)), CNN",
            "doublings",
            Direction::AtLeast,
            1.0,
            halving,
        )];
        for arch in ARCHS {
            for kind in KINDS.iter().skip(1).copied() {
                if (arch == Arch::Cnn && kind == NormKind::Batch) || !arch.takes(kind) {
                    continue;
                }
                let (margin, source) = if kind == NormKind::Batch {
                    (1.0, halving)
                } else {
                    (
                        0.0,
                        "practical threshold: any speed-up (the papers claim faster or as fast)",
                    )
                };
                claims.push(Claim::new(
                    format!("{}-vs-none/{}", kind.slug(), arch.slug()),
                    format!(
                        "{} reaches the target in fewer steps than none on the {}.",
                        kind.label(),
                        arch.label()
                    ),
                    format!(
                        "log2(steps(none) / steps({})), {}",
                        kind.label(),
                        arch.label()
                    ),
                    "doublings",
                    Direction::AtLeast,
                    margin,
                    source,
                ));
            }
        }
        claims
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "One optimizer and learning rate for every arm (Adam, 0.01): the BN paper's larger \
             speed-ups came with a 5–30× larger learning rate, tested in the learning-rate \
             experiment.",
            "A run that never reaches the target counts as reaching it one evaluation after the \
             last step: a lower bound on its steps, which can only favour the claim.",
            "Steps are counted at evaluations (every 30 steps in quick mode), so small \
             speed-ups fall under the resolution.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Ioffe & Szegedy 2015, Batch Normalization, §4.2.",
            "Ba, Kiros & Hinton 2016, Layer Normalization.",
            "Wu & He 2018, Group Normalization.",
            "Ulyanov, Vedaldi & Lempitsky 2016, Instance Normalization.",
            "Salimans & Kingma 2016, Weight Normalization.",
            "Zhang & Sennrich 2019, Root Mean Square Layer Normalization.",
            "Luo, Ren, Peng, Zhang & Li 2019, Differentiable Learning-to-Normalize via Switchable Normalization.",
            "Zhu, Chen, He, LeCun & Liu 2025, Transformers without Normalization.",
            "Greydanus 2020, Scaling down Deep Learning (MNIST-1D).",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        let mut arms = Vec::new();
        for arch in ARCHS {
            for kind in KINDS.into_iter().filter(|&k| arch.takes(k)) {
                arms.push((
                    arm(arch, kind),
                    Arm {
                        arch,
                        kind: kind.slug(),
                    },
                ));
            }
        }
        Ok(grid(ID, &arms, ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: Arm = config(job)?;
        let split = ctx.mnist1d()?;
        let device = device();
        let (init, order) = replicate(ctx, ID, job.replicate);
        let (steps, eval_every) = schedule(ctx);
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps,
            batch: 100,
            optim: OptimSpec::Adam { lr: 1e-2 },
            eval_every,
            seed: order,
        };
        let (curve, switch) = train_arch(
            arm.arch,
            kind_named(&KINDS, &arm.kind),
            split,
            &schedule,
            init,
            &device,
            |t| with_trained!(t, m => m.switch_importances()),
        )?;
        let mut out = JobOutput::default()
            .value("final", or_chance(curve.final_accuracy()))
            .value(
                "smoothed_final",
                curve
                    .smoothed_accuracy(WINDOW)
                    .last()
                    .copied()
                    .unwrap_or(f64::NAN),
            )
            .value(format!("{TIME_PREFIX}ms_per_step"), curve.ms_per_step())
            .curve("accuracy", curve.smoothed_accuracy(WINDOW))
            .curve("steps", curve.steps.iter().map(|&s| s as f64).collect());
        for (l, (m, v)) in switch.iter().enumerate() {
            for (f, family) in ["in", "ln", "bn"].iter().enumerate() {
                out = out
                    .value(format!("sn/layer{}/mean_{family}", l + 1), f64::from(m[f]))
                    .value(format!("sn/layer{}/var_{family}", l + 1), f64::from(v[f]));
            }
        }
        Ok(out)
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let (steps, eval_every) = schedule(ctx);
        let censored = (steps + eval_every) as f64;
        let mut a = Analysis {
            setup: format!(
                "MNIST-1D (4,000 training, 1,000 test sequences). {} Adam (lr 0.01), batch 100, \
                 {steps} steps, test accuracy every {eval_every} steps (BN with its running \
                 statistics), smoothed by a trailing mean over {WINDOW} evaluations. Per seed, \
                 the target is {FRACTION} × the unnormalized network's smoothed final accuracy, \
                 and a run's steps are the first evaluation at which its smoothed accuracy \
                 reaches it. {}",
                Arch::DESCRIPTION,
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let mut table = Table::new(
            "Steps to the target and final accuracy (means over seeds)",
            [
                "model",
                "normalization",
                "steps to target",
                "final test accuracy",
                "ms per step",
            ],
        );
        for arch in ARCHS {
            let base = results.values(&arm(arch, NormKind::None), "smoothed_final");
            let steps_of = |kind: NormKind| -> Vec<f64> {
                let curves = results.curves(&arm(arch, kind), "accuracy");
                let xs = results.curves(&arm(arch, kind), "steps");
                (0..results.seeds)
                    .map(|r| {
                        let target = FRACTION * base[r];
                        if !target.is_finite() || curves[r].is_empty() {
                            return f64::NAN;
                        }
                        let at: Vec<usize> = xs[r].iter().map(|&s| s as usize).collect();
                        first_step_at(&at, &curves[r], target).map_or(censored, |s| s as f64)
                    })
                    .collect()
            };
            let none_steps = steps_of(NormKind::None);
            let mut plot = Plot::line(
                format!("{}: test accuracy (smoothed)", arch.label()),
                "step",
                "test accuracy",
            );
            for kind in KINDS.into_iter().filter(|&k| arch.takes(k)) {
                let s = steps_of(kind);
                let key = arm(arch, kind);
                table = table.row([
                    arch.label().to_string(),
                    kind.label(),
                    num(mean(&s)),
                    pct(mean(&results.values(&key, "final"))),
                    num(mean(
                        &results.values(&key, &format!("{TIME_PREFIX}ms_per_step")),
                    )),
                ]);
                if kind != NormKind::None {
                    let effect: Vec<f64> = none_steps
                        .iter()
                        .zip(&s)
                        .map(|(n, k)| (n.max(1.0) / k.max(1.0)).log2())
                        .collect();
                    a.effects
                        .insert(format!("{}-vs-none/{}", kind.slug(), arch.slug()), effect);
                }
                a.metrics.insert(format!("{key}/steps_to_target"), s);
                a.metrics.insert(
                    format!("{key}/final_accuracy"),
                    results.values(&key, "final"),
                );
                plot = plot.seeded_series(kind.label(), seeded_curve(results, &key, "accuracy"));
            }
            let target = FRACTION * mean(&base);
            a.plots
                .push(plot.guide(target, format!("target ≈ {}", pct(target))));
        }
        let mut speed = Plot::bars(
            "Speed-up over none: log2(steps(none) / steps(norm))",
            "normalization",
            "doublings",
            KINDS.iter().skip(1).map(|k| k.label()),
        )
        .guide(1.0, "BN paper: halving");
        for arch in ARCHS {
            let per: Vec<Vec<f64>> = KINDS
                .iter()
                .skip(1)
                .map(|k| {
                    a.effects
                        .get(&format!("{}-vs-none/{}", k.slug(), arch.slug()))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            speed = speed.seeded_bars(arch.label(), &per);
        }
        a.plots.push(speed);
        a.tables.push(table);
        let mut sn = Table::new(
            "SwitchNorm: learned importance of IN / LN / BN statistics, seed 0",
            [
                "model",
                "layer",
                "mean: IN / LN / BN",
                "variance: IN / LN / BN",
            ],
        );
        for arch in ARCHS {
            let Some(o) = results.get(&arm(arch, NormKind::Switch), 0) else {
                continue;
            };
            for l in 1..=3 {
                let get = |w: &str, f: &str| {
                    o.values
                        .get(&format!("sn/layer{l}/{w}_{f}"))
                        .map_or("n/a".to_string(), |v| format!("{v:.2}"))
                };
                let three =
                    |w: &str| format!("{} / {} / {}", get(w, "in"), get(w, "ln"), get(w, "bn"));
                sn = sn.row([
                    arch.label().to_string(),
                    l.to_string(),
                    three("mean"),
                    three("var"),
                ]);
            }
        }
        a.tables.push(sn);
        a.result = format!(
            "BN's speed-up on the CNN is 2^{} on average (log2 {}); the bar plot shows every \
             normalization's with 95% intervals.",
            num(mean(&a.effects["bn-vs-none/cnn"])),
            num(mean(&a.effects["bn-vs-none/cnn"]))
        );
        Ok(a)
    }
}
