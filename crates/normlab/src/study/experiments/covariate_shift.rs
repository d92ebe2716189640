//! Experiment 5: internal covariate shift, the BN paper's Figure 1: how the
//! distribution of a hidden layer's input moves over training, with and
//! without BatchNorm.

use super::models::{Activation, Features, Mlp, MlpSpec, Norm};
use super::train::{device, matrix, train_classifier, values, Curve, OptimSpec, Schedule};
use super::{num, pct, sized, FusedCounter};
use crate::study::report::{Plot, Section, Table};
use crate::study::verdict::{all_of, compare_higher_is_better, median, ratio_at_most};
use crate::study::{Experiment, ExperimentError, StudyContext};
use burn::module::Module;
use burn::tensor::{Device, Gradients};
use normkit_burn::BatchNormConfig;

pub struct CovariateShift;

const CLAIM: &str = "Batch Normalization reduces internal covariate shift: \
without it, the distribution of a layer's inputs keeps moving as the layers \
below it train; with it, the distribution stays put, and the network trains \
faster and reaches higher accuracy (Ioffe & Szegedy 2015, Figure 1: MNIST, \
three hidden layers of 100 sigmoid units, 15th/50th/85th percentiles of a last \
hidden layer sigmoid's input over training). Santurkar et al. (2018) argue that \
this stability is not why BN helps; this experiment measures the stability \
itself.";

const PERCENTILES: [f64; 3] = [15.0, 50.0, 85.0];

/// The `q`-th percentile of sorted values, linearly interpolated between
/// ranks (NumPy's default).
fn percentile(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let t = pos - lo as f64;
    f64::from(sorted[lo]) * (1.0 - t) + f64::from(sorted[hi]) * t
}

/// 1-Wasserstein distance between two empirical distributions of the same
/// size: the mean absolute difference of their sorted values.
fn wasserstein1(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// One probe: per layer, per unit, the unit's sorted inputs over the
/// probe examples.
type Snapshot = Vec<Vec<Vec<f32>>>;

/// Runs the probe examples through the network in inference mode and
/// sorts each unit's nonlinearity inputs.
fn probe(model: &Mlp, x: &[f32], n: usize, d: usize, device: &Device) -> Snapshot {
    let plain = device.clone().without_autodiff();
    let (_, trace) = model
        .valid()
        .logits_traced(matrix(x.to_vec(), n, d, &plain));
    trace
        .into_iter()
        .map(|z| {
            let [rows, units] = z.dims();
            let v = values(z);
            (0..units)
                .map(|j| {
                    let mut col: Vec<f32> = (0..rows).map(|i| v[i * units + j]).collect();
                    col.sort_by(f32::total_cmp);
                    col
                })
                .collect()
        })
        .collect()
}

/// What one network measured.
struct Track {
    curve: Curve,
    steps: Vec<usize>,
    /// `percentiles[t][q]` of the watched unit at probe `t`.
    watched: Vec<[f64; 3]>,
    /// Per unit of the last hidden layer: the summed movement of its three
    /// percentiles over training, `Σ_t Σ_q |p_q(t) − p_q(t−1)| / 3`.
    unit_paths: Vec<f64>,
    /// `drift[l][t]`: mean over layer `l`'s units of the W1 distance
    /// between probes `t` and `t + 1`.
    drift: Vec<Vec<f64>>,
}

impl Track {
    fn from_snapshots(curve: Curve, steps: Vec<usize>, snaps: &[Snapshot]) -> Self {
        let layers = snaps.first().map_or(0, Vec::len);
        let last = layers.saturating_sub(1);
        let pcts = |s: &Snapshot, unit: usize| -> [f64; 3] {
            PERCENTILES.map(|q| percentile(&s[last][unit], q))
        };
        let watched = snaps.iter().map(|s| pcts(s, 0)).collect();
        let units = snaps.first().map_or(0, |s| s[last].len());
        let unit_paths = (0..units)
            .map(|j| {
                snaps
                    .windows(2)
                    .map(|w| {
                        let (a, b) = (pcts(&w[0], j), pcts(&w[1], j));
                        (0..3).map(|q| (b[q] - a[q]).abs()).sum::<f64>() / 3.0
                    })
                    .sum()
            })
            .collect();
        let drift = (0..layers)
            .map(|l| {
                snaps
                    .windows(2)
                    .map(|w| {
                        let n = w[0][l].len();
                        (0..n)
                            .map(|j| wasserstein1(&w[0][l][j], &w[1][l][j]))
                            .sum::<f64>()
                            / n.max(1) as f64
                    })
                    .collect()
            })
            .collect();
        Self {
            curve,
            steps,
            watched,
            unit_paths,
            drift,
        }
    }

    fn total_drift(&self) -> f64 {
        self.drift.iter().flatten().sum()
    }
}

impl Experiment for CovariateShift {
    fn id(&self) -> &str {
        "covariate-shift"
    }

    fn title(&self) -> &str {
        "Internal covariate shift"
    }

    fn claim(&self) -> &str {
        CLAIM
    }

    fn run(&self, ctx: &StudyContext) -> Result<Section, ExperimentError> {
        let mode = ctx.mode();
        let split = ctx.mnist1d()?;
        let device = device();
        let fused = FusedCounter::start();
        let steps = sized(mode, 60, 2000, 10000);
        let probes = sized(mode, 6, 50, 100);
        let probe_every = (steps / probes).max(1);
        let batch = 60;
        let optim = OptimSpec::Sgd {
            lr: 0.1,
            momentum: 0.9,
        };
        let n_probe = split.test.len().min(500);
        let d = split.test.example_len();
        let probe_x = split.test.features()[..n_probe * d].to_vec();
        let spec = MlpSpec {
            inputs: d,
            width: 100,
            depth: 3,
            classes: split.train.num_classes(),
            activation: Activation::Sigmoid,
        };
        let init = ctx.seed_for("covariate-shift/init");
        let order = ctx.seed_for("covariate-shift/order");
        let mut tracks = Vec::new();
        for bn in [false, true] {
            let model = Mlp::with_norms(spec, false, init, &device, |f| {
                let c = match f {
                    Features::Flat(c) | Features::Tokens(c) => c,
                    Features::Conv { channels, .. } => channels,
                };
                // Without running statistics, inference normalizes the probe
                // with its own statistics: what a training batch sees, with
                // 500 examples instead of 60.
                Ok(bn.then(|| {
                    Norm::Batch(
                        BatchNormConfig::new(c)
                            .with_track_running_stats(false)
                            .init(&device),
                    )
                }))
            })?;
            let mut snaps = Vec::new();
            let mut at = Vec::new();
            let mut hook = |step: usize, m: &Mlp, _: &Gradients| {
                if step % probe_every == 0 {
                    snaps.push(probe(m, &probe_x, n_probe, d, &device));
                    at.push(step);
                }
            };
            let schedule = Schedule {
                name: format!("covariate-shift {}", if bn { "bn" } else { "none" }),
                steps,
                batch,
                optim,
                eval_every: probe_every,
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
                snaps.push(probe(&model, &probe_x, n_probe, d, &device));
                at.push(curve.steps_done);
            }
            tracks.push(Track::from_snapshots(curve, at, &snaps));
        }
        let (none, bn) = (&tracks[0], &tracks[1]);

        let mut section = Section::new(self.id(), self.title())
            .claim(CLAIM)
            .setup(format!(
                "MNIST-1D; an MLP of three hidden layers of 100 sigmoid units, without and with \
                 BN between each linear layer and its sigmoid, from the same initialization and \
                 batches (seed streams covariate-shift/init and /order of seed {seed}). {}, batch \
                 {batch}, {steps} steps. Every {probe_every} steps the first {n_probe} test \
                 sequences go through the network in inference mode and every sigmoid's input \
                 is recorded. BN here keeps no running statistics, so it normalizes the probe \
                 (and the test set, for accuracy) with the probe's own statistics, as training \
                 normalizes a batch. The watched unit is unit 0 of the last hidden layer; a \
                 unit's percentile path is the summed movement of its 15th, 50th and 85th \
                 percentiles from probe to probe (averaged over the three); a layer's drift \
                 between two probes is the mean over its units of the 1-Wasserstein distance \
                 between the unit's input distributions. The verdict asks that BN at least \
                 halve the median percentile path of the last hidden layer's units and the \
                 total drift over all layers (partly: reduce them), and that it end at least \
                 2 points more accurate. {}",
                optim.describe(),
                fused.sentence(),
                seed = ctx.seed(),
            ));

        let mut acc = Plot::line("Test accuracy", "step", "test accuracy");
        for (name, t) in [("none", none), ("BN", bn)] {
            acc = acc.series(name, t.curve.accuracy_points());
        }
        section = section.plot(acc);
        for (name, t) in [("without BN", none), ("with BN", bn)] {
            let mut p = Plot::line(
                format!("Input to a last-hidden-layer sigmoid, {name}"),
                "step",
                "percentiles of the sigmoid's input",
            );
            for (qi, q) in PERCENTILES.iter().enumerate() {
                let pts = t
                    .steps
                    .iter()
                    .zip(&t.watched)
                    .map(|(&s, w)| (s as f64, w[qi]))
                    .collect();
                p = p.series(format!("{q}th percentile"), pts);
            }
            section = section.plot(p);
        }
        let mut drift = Plot::line(
            "Drift of each layer's input distribution between probes",
            "step",
            "mean W1 distance to the previous probe",
        )
        .log_y();
        for (name, t) in [("none", none), ("BN", bn)] {
            for (l, series) in t.drift.iter().enumerate() {
                let pts = t
                    .steps
                    .iter()
                    .skip(1)
                    .zip(series)
                    .map(|(&s, &v)| (s as f64, v))
                    .collect();
                drift = drift.series(format!("{name}, layer {}", l + 1), pts);
            }
        }
        section = section.plot(drift);

        let mut table = Table::new(
            "Distribution movement over training and accuracy",
            [
                "network",
                "median percentile path, last hidden layer",
                "total drift, layer 1",
                "total drift, layer 2",
                "total drift, layer 3",
                "final test accuracy",
            ],
        );
        for (name, slug, t) in [("none", "none", none), ("BN", "bn", bn)] {
            let path = median(&t.unit_paths).unwrap_or(f64::NAN);
            let per_layer: Vec<f64> = t.drift.iter().map(|d| d.iter().sum()).collect();
            let mut cells = vec![name.to_string(), num(path)];
            cells.extend((0..3).map(|l| num(per_layer.get(l).copied().unwrap_or(f64::NAN))));
            cells.push(pct(t.curve.final_accuracy()));
            table = table.row(cells);
            section = section
                .metric(format!("{slug}/median_percentile_path"), path)
                .metric(format!("{slug}/total_drift"), t.total_drift())
                .metric(format!("{slug}/final_accuracy"), t.curve.final_accuracy());
        }
        section = section.table(table);

        let parts = [
            ratio_at_most(
                median(&bn.unit_paths).unwrap_or(f64::NAN),
                median(&none.unit_paths).unwrap_or(f64::NAN),
                0.5,
                0.99,
            )
            .prefixed("BN / none, median percentile path of the last hidden layer's units"),
            ratio_at_most(bn.total_drift(), none.total_drift(), 0.5, 0.99)
                .prefixed("BN / none, total drift of the layer inputs"),
            compare_higher_is_better(
                &[bn.curve.final_accuracy()],
                &[none.curve.final_accuracy()],
                0.02,
            )
            .prefixed("BN vs none, final test accuracy"),
        ];
        Ok(section.judged(all_of(&parts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        // numpy.percentile([1, 2, 3, 4, 5], 15) = 1.6
        assert!((percentile(&v, 15.0) - 1.6).abs() < 1e-12);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn wasserstein_of_a_shift_is_the_shift() {
        let a = [0.0f32, 1.0, 2.0];
        let b = [0.5f32, 1.5, 2.5];
        assert!((wasserstein1(&a, &b) - 0.5).abs() < 1e-12);
        assert_eq!(wasserstein1(&a, &a), 0.0);
        assert!(wasserstein1(&a, &b[..2]).is_nan());
    }
}
