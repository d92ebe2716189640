//! Internal covariate shift (the BN paper's Figure 1): how far each
//! layer's input distribution moves over training, measured before the
//! normalization (what the layer receives) and after it (for contrast).

use super::common::{config, grid, or_chance, points, replicate, seeds_sentence, sized};
use crate::study::fmt::{num, pct};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::{Activation, Features, Mlp, MlpSpec, Norm};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{device, matrix, train_classifier, values, OptimSpec, Schedule};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, StudyContext};
use burn::module::Module;
use burn::tensor::{Device, Gradients, Tensor};
use normkit_burn::BatchNormConfig;
use serde::{Deserialize, Serialize};

pub struct CovariateShift;

const ID: &str = "covariate-shift";
const LAYERS: usize = 3;
const PROBE: usize = 500;

#[derive(Serialize, Deserialize)]
struct Arm {
    bn: bool,
}

/// 1-Wasserstein distance between two sorted samples of the same size:
/// the mean absolute difference of their order statistics.
pub fn wasserstein1(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// Per unit, its sorted values over the rows of a `[rows, units]` tensor,
/// and the unit's standard deviation.
fn columns(t: Tensor<2>) -> Vec<(Vec<f32>, f64)> {
    let [rows, units] = t.dims();
    let v = values(t);
    (0..units)
        .map(|j| {
            let mut col: Vec<f32> = (0..rows).map(|i| v[i * units + j]).collect();
            col.sort_by(f32::total_cmp);
            let m = col.iter().map(|&x| f64::from(x)).sum::<f64>() / rows as f64;
            let var = col.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / rows as f64;
            (col, var.sqrt())
        })
        .collect()
}

/// One probe: per layer, the units' (sorted values, std) before and after
/// the normalization.
type Snapshot = Vec<[Vec<(Vec<f32>, f64)>; 2]>;

fn probe(model: &Mlp, x: &[f32], d: usize, device: &Device) -> Snapshot {
    let plain = device.clone().without_autodiff();
    let (_, trace) = model
        .valid()
        .logits_traced(matrix(x.to_vec(), x.len() / d, d, &plain));
    trace
        .into_iter()
        .map(|t| [columns(t.pre), columns(t.post)])
        .collect()
}

/// Relative drift of layer `l` (`side` 0: before the norm, 1: after)
/// between consecutive probes, summed over training: per step, the mean
/// over units of the W1 distance divided by the mean unit std at the
/// earlier probe — scale-free, so a layer whose inputs are large does not
/// count as moving more.
fn drift(snaps: &[Snapshot], l: usize, side: usize) -> f64 {
    snaps
        .windows(2)
        .map(|w| {
            let (a, b) = (&w[0][l][side], &w[1][l][side]);
            let moved = a
                .iter()
                .zip(b)
                .map(|(x, y)| wasserstein1(&x.0, &y.0))
                .sum::<f64>()
                / a.len().max(1) as f64;
            let scale = a.iter().map(|x| x.1).sum::<f64>() / a.len().max(1) as f64;
            moved / scale.max(1e-12)
        })
        .sum()
}

impl Experiment for CovariateShift {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Internal covariate shift"
    }

    fn topic(&self) -> &'static str {
        "covariate shift"
    }

    fn claim(&self) -> &'static str {
        "Batch Normalization reduces internal covariate shift: without it, the distribution \
         of a layer's inputs keeps moving as the layers below it train; with it, the \
         distribution stays put, and the network trains faster and more accurately (Ioffe & \
         Szegedy 2015, Figure 1: three hidden layers of 100 sigmoid units on MNIST). \
         Santurkar et al. (2018) argue that BN does not in fact reduce it. Here the movement is \
         measured on what each layer receives before its normalization, where BN has not fixed \
         the distribution by construction; after the normalization it is shown for contrast."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        vec![
            Claim::new(
                "bn-vs-none/drift-before-norm/last-layer",
                "BN halves the movement of the last hidden layer's input distribution, \
                 measured before its normalization.",
                "log2(drift(none) / drift(BN)), last hidden layer, before the norm",
                "doublings",
                Direction::AtLeast,
                1.0,
                "practical threshold: a halving (the BN paper shows the shift, gives no number)",
            ),
            Claim::new(
                "bn-vs-none/drift-after-norm/last-layer",
                "After BN the last hidden layer's nonlinearity input moves at most half as \
                 much as without it.",
                "log2(drift(none) / drift(BN)), last hidden layer, after the norm",
                "doublings",
                Direction::AtLeast,
                1.0,
                "practical threshold: a halving",
            )
            .expecting("reproduced by construction: BN fixes each unit's mean and variance"),
            Claim::new(
                "bn-vs-none/accuracy",
                "With BN the network ends more accurate.",
                "final test accuracy, BN − none",
                "points",
                Direction::AtLeast,
                2.0,
                "practical threshold: two points",
            ),
        ]
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "BN here keeps no running statistics: the probe (and the test set) are normalized \
             with their own statistics, as training normalizes a batch.",
            "Drift is scale-free (W1 distance over the unit's std), summed over probes; a \
             different distance (KL, moments) may rank the arms differently.",
            "MNIST-1D instead of MNIST, and far fewer steps than the paper's 50,000.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Ioffe & Szegedy 2015, Batch Normalization, Figure 1.",
            "Santurkar, Tsipras, Ilyas & Madry 2018, How Does Batch Normalization Help Optimization?",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        let arms = vec![
            ("none".to_string(), Arm { bn: false }),
            ("bn".to_string(), Arm { bn: true }),
        ];
        Ok(grid(ID, &arms, ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: Arm = config(job)?;
        let split = ctx.mnist1d()?;
        let device = device();
        let (init, order) = replicate(ctx, ID, job.replicate);
        let steps = sized(ctx.mode(), 20, 600, 5000);
        let probes = sized(ctx.mode(), 4, 20, 50);
        let every = (steps / probes).max(1);
        let d = split.test.example_len();
        let n = split.test.len().min(PROBE);
        let x = split.test.features()[..n * d].to_vec();
        let spec = MlpSpec::new(d, 100, LAYERS, 10, Activation::Sigmoid);
        let model = Mlp::with_norms(spec, false, init, &device, |f| {
            let Features::Flat(c) = f else {
                return Ok(None);
            };
            Ok(arm.bn.then(|| {
                Norm::Batch(
                    BatchNormConfig::new(c)
                        .with_track_running_stats(false)
                        .init(&device),
                )
            }))
        })?;
        let mut snaps = Vec::new();
        let mut hook = |step: usize, m: &Mlp, _: &Gradients| {
            if step % every == 0 {
                snaps.push(probe(m, &x, d, &device));
            }
        };
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps,
            batch: 60,
            optim: OptimSpec::Sgd {
                lr: 0.1,
                momentum: 0.9,
            },
            eval_every: every,
            seed: order,
        };
        let (model, curve) = train_classifier(
            model,
            &split.train,
            &split.test,
            &schedule,
            &device,
            Some(&mut hook),
        );
        if !curve.diverged {
            snaps.push(probe(&model, &x, d, &device));
        }
        let mut out = JobOutput::default().value("accuracy", or_chance(curve.final_accuracy()));
        for l in 0..LAYERS {
            out = out
                .value(format!("drift/pre/{}", l + 1), drift(&snaps, l, 0))
                .value(format!("drift/post/{}", l + 1), drift(&snaps, l, 1));
        }
        // The last layer's unit 0 before the norm: the BN paper's plot.
        let watched: Vec<f64> = snaps
            .iter()
            .flat_map(|s| {
                let col = &s[LAYERS - 1][0][0].0;
                [0.15, 0.5, 0.85].map(|q| f64::from(col[((col.len() - 1) as f64 * q) as usize]))
            })
            .collect();
        Ok(out.curve("watched", watched))
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let steps = sized(ctx.mode(), 20, 600, 5000);
        let probes = sized(ctx.mode(), 4, 20, 50);
        let mut a = Analysis {
            setup: format!(
                "MNIST-1D; an MLP of {LAYERS} hidden layers of 100 sigmoid units, without and with \
                 BN between each linear layer and its sigmoid (the BN paper's Figure 1 network). \
                 SGD (lr 0.1, momentum 0.9), batch 60, {steps} steps. About {probes} times during \
                 training the first {PROBE} test sequences go through the network and every \
                 unit's values are recorded before the normalization (the linear output: what the \
                 layer receives) and after it (the sigmoid's input). A layer's drift is the sum \
                 over consecutive probes of the mean W1 distance between a unit's two \
                 distributions, divided by the units' mean standard deviation at the earlier \
                 probe. Without BN, before and after are the same values. {}",
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let v = |arm: &str, key: &str| results.values(arm, key);
        let log2ratio = |side: &str, l: usize| -> Vec<f64> {
            let none = v("none", &format!("drift/pre/{l}"));
            let bn = v("bn", &format!("drift/{side}/{l}"));
            none.iter().zip(bn).map(|(n, b)| (n / b).log2()).collect()
        };
        a.effects.insert(
            "bn-vs-none/drift-before-norm/last-layer".into(),
            log2ratio("pre", LAYERS),
        );
        a.effects.insert(
            "bn-vs-none/drift-after-norm/last-layer".into(),
            log2ratio("post", LAYERS),
        );
        a.effects.insert(
            "bn-vs-none/accuracy".into(),
            v("bn", "accuracy")
                .iter()
                .zip(v("none", "accuracy"))
                .map(|(b, n)| points(b - n))
                .collect(),
        );
        let mut table = Table::new(
            "Relative drift per layer (mean over seeds) and final accuracy",
            [
                "network",
                "measured",
                "layer 1",
                "layer 2",
                "layer 3",
                "test accuracy",
            ],
        );
        let mut bars = Plot::bars(
            "Drift of each layer's input (95% intervals)",
            "layer",
            "relative drift over training",
            (1..=LAYERS).map(|l| format!("layer {l}")),
        );
        for (arm, side, name) in [
            ("none", "pre", "none"),
            ("bn", "pre", "BN, before the norm"),
            ("bn", "post", "BN, after the norm"),
        ] {
            let per: Vec<Vec<f64>> = (1..=LAYERS)
                .map(|l| v(arm, &format!("drift/{side}/{l}")))
                .collect();
            let mut row = vec![
                arm.to_string(),
                if side == "pre" {
                    "before the norm"
                } else {
                    "after the norm"
                }
                .to_string(),
            ];
            row.extend(per.iter().map(|p| num(mean(p))));
            row.push(pct(mean(&v(arm, "accuracy"))));
            table = table.row(row);
            for (l, p) in per.iter().enumerate() {
                a.metrics
                    .insert(format!("{arm}/drift/{side}/{}", l + 1), p.clone());
            }
            bars = bars.seeded_bars(name, &per);
        }
        a.tables.push(table);
        a.plots.push(bars);
        let mut effect = Plot::bars(
            "BN's effect on drift, last layer: log2(none / BN)",
            "where measured",
            "doublings (above the margin: reproduced)",
            ["before the norm", "after the norm"],
        )
        .guide(1.0, "margin: a halving");
        effect = effect.seeded_bars(
            "log2 ratio",
            &[
                a.effects["bn-vs-none/drift-before-norm/last-layer"].clone(),
                a.effects["bn-vs-none/drift-after-norm/last-layer"].clone(),
            ],
        );
        a.plots.push(effect);
        for arm in ["none", "bn"] {
            let curves = results.curves(arm, "watched");
            let first = curves.first().cloned().unwrap_or_default();
            let count = first.len() / 3;
            let mut p = Plot::line(
                format!(
                    "Last-layer unit before the norm, {} (seed 0)",
                    if arm == "bn" { "with BN" } else { "without BN" }
                ),
                "probe",
                "15th / 50th / 85th percentile",
            );
            for (q, name) in ["15th", "50th", "85th"].iter().enumerate() {
                let pts = (0..count).map(|t| (t as f64, first[3 * t + q])).collect();
                p = p.series(format!("{name} percentile"), pts);
            }
            a.plots.push(p);
        }
        a.result = format!(
            "Before the normalization, the last layer's input moved {} doublings less with BN on \
             average (log2 ratio); after it, {}. BN ended {} points more accurate.",
            num(mean(&a.effects["bn-vs-none/drift-before-norm/last-layer"])),
            num(mean(&a.effects["bn-vs-none/drift-after-norm/last-layer"])),
            num(mean(&a.effects["bn-vs-none/accuracy"]))
        );
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasserstein_of_a_shift_is_the_shift() {
        let a = [0.0f32, 1.0, 2.0];
        let b = [0.5f32, 1.5, 2.5];
        assert!((wasserstein1(&a, &b) - 0.5).abs() < 1e-12);
        assert_eq!(wasserstein1(&a, &a), 0.0);
        assert!(wasserstein1(&a, &b[..2]).is_nan());
    }
}
