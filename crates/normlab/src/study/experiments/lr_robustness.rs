//! Experiment 3: the largest learning rate that still trains, with and
//! without normalization.

use super::convergence::{train_arch, Arch};
use super::models::NormKind;
use super::train::{device, OptimSpec, Schedule};
use super::{pct, sized, FusedCounter};
use crate::study::report::{fmt_num, Plot, Section, Table};
use crate::study::verdict::{all_of, ratio_at_least, Judgement};
use crate::study::{Experiment, ExperimentError, StudyContext};

pub struct LrRobustness;

const CLAIM: &str = "Normalization lets a network train at much higher learning \
rates: Batch Normalization keeps small changes to the parameters from being \
amplified through the layers, so higher learning rates no longer diverge (Ioffe \
& Szegedy 2015, §3.3, who raised theirs 5 and 30 times); the scale invariance \
that normalization gives the weights keeps large steps from blowing up (Bjorck \
et al. 2018; Arora et al. 2019).";

const KINDS: [NormKind; 6] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Layer,
    NormKind::Rms,
    NormKind::Weight,
    NormKind::Dyt,
];

/// The normalizations the verdict judges.
const JUDGED: [NormKind; 2] = [NormKind::Batch, NormKind::Layer];

/// A run "trains" when its loss stays finite and its final test accuracy
/// reaches this (chance is 10%).
const TRAINS_AT: f64 = 0.4;

/// Learning rates `10^(e/2)` for `e` in `lo..=hi`: half a decade apart.
fn grid(lo: i32, hi: i32) -> Vec<f64> {
    (lo..=hi).map(|e| 10f64.powf(e as f64 / 2.0)).collect()
}

struct Row {
    arch: Arch,
    kind: NormKind,
    /// (learning rate, final accuracy or NaN when diverged).
    results: Vec<(f64, f64)>,
}

impl Row {
    fn trains(acc: f64) -> bool {
        acc.is_finite() && acc >= TRAINS_AT
    }

    /// The largest learning rate that trained, or `None`.
    fn max_lr(&self) -> Option<f64> {
        self.results
            .iter()
            .filter(|(_, a)| Self::trains(*a))
            .map(|(lr, _)| *lr)
            .fold(None, |m, lr| Some(m.map_or(lr, |m: f64| m.max(lr))))
    }
}

impl Experiment for LrRobustness {
    fn id(&self) -> &str {
        "lr-robustness"
    }

    fn title(&self) -> &str {
        "Learning-rate robustness"
    }

    fn claim(&self) -> &str {
        CLAIM
    }

    fn run(&self, ctx: &StudyContext) -> Result<Section, ExperimentError> {
        let mode = ctx.mode();
        let split = ctx.mnist1d()?;
        let device = device();
        let fused = FusedCounter::start();
        let lrs = sized(mode, grid(-2, 2), grid(-4, 3), grid(-4, 4));
        let steps = sized(mode, 150, 300, 1500);
        let archs = sized(
            mode,
            vec![Arch::Mlp],
            vec![Arch::Mlp],
            vec![Arch::Mlp, Arch::Cnn],
        );
        let batch = 100;
        let momentum = 0.9;
        let mut rows = Vec::new();
        for &arch in &archs {
            let init = ctx.seed_for(&format!("lr-robustness/{}/init", arch.slug()));
            let order = ctx.seed_for(&format!("lr-robustness/{}/order", arch.slug()));
            for kind in KINDS {
                let mut results = Vec::new();
                for &lr in &lrs {
                    let schedule = Schedule {
                        name: format!(
                            "lr-robustness {}/{} lr {}",
                            arch.slug(),
                            kind.slug(),
                            fmt_num(lr)
                        ),
                        steps,
                        batch,
                        optim: OptimSpec::Sgd { lr, momentum },
                        eval_every: steps,
                        seed: order,
                    };
                    let curve = train_arch(arch, kind, split, &schedule, init, &device)?;
                    results.push((lr, curve.final_accuracy()));
                }
                rows.push(Row {
                    arch,
                    kind,
                    results,
                });
            }
        }

        let arch_names: Vec<&str> = archs.iter().map(|a| a.label()).collect();
        let mut section = Section::new(self.id(), self.title())
            .claim(CLAIM)
            .setup(format!(
                "MNIST-1D; {} (as in the convergence experiment: MLP of two hidden layers of \
                 100 ReLU units{}). SGD with momentum {momentum}, batch {batch}, {steps} steps at \
                 each learning rate of a grid half a decade apart, {} to {}; no warm-up, no \
                 schedule, no gradient clipping. A run trains when its loss stays finite and \
                 its final test accuracy reaches {} (chance is 10%). Every run of an \
                 architecture starts from the same initialization and sees the same batches \
                 (seed streams lr-robustness/<arch>/init and /order of seed {seed}). The \
                 verdict compares the largest learning rate that trains with BN and with LN \
                 against none: reproduced at 10 times (two grid steps) or more, partly at one \
                 grid step. {}",
                arch_names.join(" and "),
                if archs.contains(&Arch::Cnn) {
                    "; MNIST-1D's CNN"
                } else {
                    ""
                },
                fmt_num(lrs[0]),
                fmt_num(lrs[lrs.len() - 1]),
                pct(TRAINS_AT),
                fused.sentence(),
                seed = ctx.seed(),
            ));

        for &arch in &archs {
            let mut plot = Plot::line(
                format!("{}: final test accuracy by learning rate", arch.label()),
                "learning rate",
                "final test accuracy (missing: diverged)",
            )
            .log_x();
            for r in rows.iter().filter(|r| r.arch == arch) {
                plot = plot.series(r.kind.label(), r.results.clone());
            }
            section = section.plot(plot);
        }
        let labels: Vec<&str> = KINDS.iter().map(|k| k.label()).collect();
        let mut bars = Plot::bars(
            "Largest learning rate that trains",
            "normalization",
            "learning rate",
            labels,
        )
        .log_y();
        for &arch in &archs {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r.arch == arch)
                .map(|r| r.max_lr().unwrap_or(f64::NAN))
                .collect();
            bars = bars.bar_series(arch.label(), &v);
        }
        section = section.plot(bars);

        let mut headers = vec!["model".to_string(), "normalization".to_string()];
        headers.extend(lrs.iter().map(|&lr| format!("lr {}", fmt_num(lr))));
        headers.push("largest that trains".into());
        let mut table = Table::new("Final test accuracy by learning rate", headers);
        for r in &rows {
            let mut cells = vec![r.arch.label().to_string(), r.kind.label().to_string()];
            cells.extend(r.results.iter().map(|&(_, a)| {
                if a.is_finite() {
                    pct(a)
                } else {
                    "diverged".into()
                }
            }));
            cells.push(r.max_lr().map_or("none".into(), fmt_num));
            table = table.row(cells);
            section = section.metric(
                format!("{}/{}/max_lr", r.arch.slug(), r.kind.slug()),
                r.max_lr().unwrap_or(f64::NAN),
            );
        }
        section = section.table(table);

        let top = lrs[lrs.len() - 1];
        let mut parts: Vec<Judgement> = Vec::new();
        for &arch in &archs {
            let find = |k: NormKind| {
                rows.iter()
                    .find(|r| r.arch == arch && r.kind == k)
                    .and_then(Row::max_lr)
            };
            let base = find(NormKind::None);
            for kind in JUDGED {
                let what = format!(
                    "{} {} vs none, largest learning rate that trains",
                    arch.label(),
                    kind.label()
                );
                // No learning rate training the baseline leaves nothing to
                // divide by: the ratio helper calls that inconclusive.
                let value = find(kind).unwrap_or(0.0);
                let mut j = ratio_at_least(value, base.unwrap_or(0.0), 9.9, 3.1).prefixed(&what);
                if find(kind) == Some(top) {
                    j.reason.push_str(
                        " (it trains at the top of the grid: the true ratio may be larger)",
                    );
                }
                if base == Some(top) {
                    j.reason.push_str(
                        " (none trains at the top of the grid: the grid cannot separate them)",
                    );
                }
                parts.push(j);
            }
        }
        Ok(section.judged(all_of(&parts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_half_decades() {
        let g = grid(-2, 2);
        let want = [0.1, 0.316227766, 1.0, 3.16227766, 10.0];
        assert_eq!(g.len(), want.len());
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-8 * b, "{a} vs {b}");
        }
    }

    #[test]
    fn max_lr_ignores_failed_runs() {
        let r = Row {
            arch: Arch::Mlp,
            kind: NormKind::None,
            results: vec![(0.1, 0.8), (1.0, f64::NAN), (0.3, 0.5), (3.0, 0.2)],
        };
        assert_eq!(r.max_lr(), Some(0.3));
    }
}
