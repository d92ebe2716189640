//! Learning-rate robustness: the largest learning rate that still trains,
//! with and without normalization.

use super::common::{config, grid, kind_named, replicate, seeds_sentence, sized, train_arch, Arch};
use crate::study::fmt::{fmt_num, num, pct};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::NormKind;
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{device, evaluate, recompute_population_stats, OptimSpec, Schedule};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, Mode, StudyContext};
use crate::with_trained;
use serde::{Deserialize, Serialize};

pub struct LrRobustness;

const ID: &str = "lr-robustness";
const KINDS: [NormKind; 6] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Layer,
    NormKind::Rms,
    NormKind::Weight,
    NormKind::Dyt,
];
/// A run trains when its loss stays finite and its final test accuracy
/// reaches this (chance is 10%).
const TRAINS_AT: f64 = 0.4;

#[derive(Serialize, Deserialize)]
struct Arm {
    arch: Arch,
    kind: String,
    lr: f64,
}

/// Learning rates `10^(e/2)`, half a decade apart.
fn lrs(mode: Mode) -> Vec<f64> {
    let (lo, hi) = sized(mode, (-2, 1), (-4, 3), (-4, 4));
    (lo..=hi).map(|e| 10f64.powf(e as f64 / 2.0)).collect()
}

fn archs(mode: Mode) -> Vec<Arch> {
    sized(
        mode,
        vec![Arch::Mlp],
        vec![Arch::Mlp],
        vec![Arch::Mlp, Arch::Cnn],
    )
}

fn arm(arch: Arch, kind: NormKind, lr: f64) -> String {
    format!("{}/{}/lr{}", arch.slug(), kind.slug(), fmt_num(lr))
}

/// Per seed, log10 of the largest learning rate whose run trained; half a
/// grid step below the grid when none did.
fn max_lr(results: &Results, arch: Arch, kind: NormKind, grid: &[f64]) -> Vec<f64> {
    let per_lr: Vec<Vec<f64>> = grid
        .iter()
        .map(|&lr| results.values(&arm(arch, kind, lr), "accuracy"))
        .collect();
    (0..results.seeds)
        .map(|r| {
            let trained = grid
                .iter()
                .zip(&per_lr)
                .filter(|(_, acc)| acc[r].is_finite() && acc[r] >= TRAINS_AT)
                .map(|(&lr, _)| lr.log10())
                .fold(f64::NEG_INFINITY, f64::max);
            if trained.is_finite() {
                trained
            } else {
                grid[0].log10() - 0.5
            }
        })
        .collect()
}

impl Experiment for LrRobustness {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Learning-rate robustness"
    }

    fn topic(&self) -> &'static str {
        "learning rate"
    }

    fn claim(&self) -> &'static str {
        "Normalization lets a network train at much higher learning rates: BatchNorm keeps \
         small changes to the parameters from being amplified through the layers, so higher \
         learning rates no longer diverge (Ioffe & Szegedy 2015, §3.3 and §4.2.1, who raised \
         theirs 5 and 30 times); the scale invariance normalization gives the weights keeps \
         large steps from blowing up (Bjorck et al. 2018; Arora et al. 2019)."
    }

    fn claims(&self, ctx: &StudyContext) -> Vec<Claim> {
        let mut claims = Vec::new();
        for arch in archs(ctx.mode()) {
            for kind in KINDS.iter().skip(1) {
                claims.push(Claim::new(
                    format!("{}-vs-none/{}", kind.slug(), arch.slug()),
                    format!(
                        "{} trains at a learning rate at least 5× the largest that trains the \
                         unnormalized {}.",
                        kind.label(),
                        arch.label()
                    ),
                    "log10(largest lr that trains, norm / none)",
                    "decades",
                    Direction::AtLeast,
                    5f64.log10(),
                    "the BN paper's 5× (BN-x5), log10 5 = 0.7",
                ));
            }
        }
        claims
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "The grid is half a decade apart, so the measured ratio moves in steps of 0.5 \
             decades; a run that trains at the top of the grid could train higher.",
            "BatchNorm's accuracy is read with population statistics recomputed after \
             training, so a stale running average at a large learning rate does not count as \
             failing to train.",
            "Short runs: a rate that trains slowly may fall under the 40% bar.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Ioffe & Szegedy 2015, Batch Normalization, §3.3 and §4.2.1.",
            "Bjorck, Gomes, Selman & Weinberger 2018, Understanding Batch Normalization.",
            "Arora, Li & Lyu 2019, Theoretical Analysis of Auto Rate-Tuning by Batch Normalization.",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        let mut arms = Vec::new();
        for arch in archs(ctx.mode()) {
            for kind in KINDS {
                for lr in lrs(ctx.mode()) {
                    arms.push((
                        arm(arch, kind, lr),
                        Arm {
                            arch,
                            kind: kind.slug(),
                            lr,
                        },
                    ));
                }
            }
        }
        Ok(grid(ID, &arms, ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: Arm = config(job)?;
        let split = ctx.mnist1d()?;
        let device = device();
        let (init, order) = replicate(ctx, ID, job.replicate);
        let steps = sized(ctx.mode(), 30, 200, 1500);
        let kind = kind_named(&KINDS, &arm.kind);
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps,
            batch: 100,
            optim: OptimSpec::Sgd {
                lr: arm.lr,
                momentum: 0.9,
            },
            eval_every: steps,
            seed: order,
        };
        let (curve, recomputed) =
            train_arch(arm.arch, kind, split, &schedule, init, &device, |t| {
                kind.uses_batch().then(|| {
                    with_trained!(t, m => {
                        let fresh = recompute_population_stats(m, &split.train, 500, &device);
                        evaluate(&fresh, &split.test, &device).accuracy
                    })
                })
            })?;
        let acc = if curve.diverged {
            f64::NAN
        } else if let Some(acc) = recomputed {
            acc
        } else {
            curve.final_accuracy()
        };
        Ok(JobOutput::default()
            .value("accuracy", acc)
            .value("running_accuracy", curve.final_accuracy()))
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let grid = lrs(ctx.mode());
        let steps = sized(ctx.mode(), 30, 200, 1500);
        let mut a = Analysis {
            setup: format!(
                "MNIST-1D; {} SGD with momentum 0.9, batch 100, {steps} steps at each learning \
                 rate of a grid half a decade apart, {} to {}; no warm-up, schedule or clipping. \
                 A run trains when its loss stays finite and its final test accuracy reaches {} \
                 (BN read with population statistics recomputed over the training set). Per \
                 seed, each normalization's largest learning rate that trains is compared with \
                 none's (a normalization that never trains counts half a step below the grid). \
                 {}",
                Arch::DESCRIPTION,
                fmt_num(grid[0]),
                fmt_num(grid[grid.len() - 1]),
                pct(TRAINS_AT),
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let mut table = Table::new(
            "Largest learning rate that trains (geometric mean over seeds)",
            [
                "model",
                "normalization",
                "largest lr",
                "log10 ratio to none",
            ],
        );
        let mut summary = Vec::new();
        for arch in archs(ctx.mode()) {
            let base = max_lr(results, arch, NormKind::None, &grid);
            let mut plot = Plot::line(
                format!("{}: final test accuracy by learning rate", arch.label()),
                "learning rate",
                "test accuracy (missing: diverged)",
            )
            .log_x()
            .guide(TRAINS_AT, "trains");
            for kind in KINDS {
                let m = max_lr(results, arch, kind, &grid);
                let effect: Vec<f64> = m.iter().zip(&base).map(|(k, n)| k - n).collect();
                table = table.row([
                    arch.label().to_string(),
                    kind.label(),
                    fmt_num(10f64.powf(mean(&m))),
                    num(mean(&effect)),
                ]);
                a.metrics
                    .insert(format!("{}/{}/log10_max_lr", arch.slug(), kind.slug()), m);
                if kind != NormKind::None {
                    if arch == Arch::Mlp && kind == NormKind::Batch {
                        summary.push(mean(&effect));
                    }
                    a.effects
                        .insert(format!("{}-vs-none/{}", kind.slug(), arch.slug()), effect);
                }
                let pts = grid
                    .iter()
                    .map(|&lr| (lr, results.values(&arm(arch, kind, lr), "accuracy")))
                    .collect();
                plot = plot.seeded_series(kind.label(), pts);
            }
            a.plots.push(plot);
        }
        a.tables.push(table);
        a.result = format!(
            "On the MLP, BN's largest trainable learning rate is 10^{} times none's on average; \
             the table lists every normalization.",
            num(summary.first().copied().unwrap_or(f64::NAN))
        );
        Ok(a)
    }
}
