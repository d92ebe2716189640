//! Batch size: BatchNorm against batch-independent normalizations as the
//! batch shrinks, with BatchNorm read three ways (running, recomputed
//! population and batch statistics).

use super::common::{
    config, grid, kind_named, or_chance, points, replicate, seeds_sentence, sized,
};
use crate::study::data::{Split, SplitMix64};
use crate::study::fmt::{fmt_num, num, pct};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::{
    Classifier, Cnn1d, Cnn2d, HasNorms, NormKind, CNN1D_CHANNELS, FASHION_WIDTHS,
};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{
    device, evaluate, evaluate_batch_stats, recompute_population_stats, train_classifier,
    OptimSpec, Schedule,
};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, Mode, StudyContext};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

pub struct BatchSize;

const ID: &str = "batch-size";
const MNIST1D_KINDS: [NormKind; 5] = [
    NormKind::Batch,
    NormKind::Renorm,
    NormKind::Group,
    NormKind::Layer,
    NormKind::Instance,
];
const FASHION_KINDS: [NormKind; 5] = [
    NormKind::Batch,
    NormKind::GroupOf(8),
    NormKind::GroupOf(1),
    NormKind::Instance,
    NormKind::None,
];
/// The ways of reading a BatchNorm model.
const WAYS: [&str; 3] = ["running", "recomputed", "batch"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Data {
    Mnist1d,
    Fashion,
}

impl Data {
    fn slug(self) -> &'static str {
        match self {
            Data::Mnist1d => "mnist1d",
            Data::Fashion => "fashion",
        }
    }

    fn kinds(self) -> [NormKind; 5] {
        match self {
            Data::Mnist1d => MNIST1D_KINDS,
            Data::Fashion => FASHION_KINDS,
        }
    }

    /// The GroupNorm the claims compare BN with.
    fn gn(self) -> NormKind {
        match self {
            Data::Mnist1d => NormKind::Group,
            Data::Fashion => NormKind::GroupOf(8),
        }
    }
}

/// One arm's schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Arm {
    data: Data,
    kind: String,
    batch: usize,
    train: usize,
    test: usize,
    epochs: usize,
    /// The learning rate at batch 32; it scales linearly with the batch.
    lr32: f64,
}

/// Per data set: batch sizes, training and test examples, epochs.
fn sizes(mode: Mode, data: Data) -> (Vec<usize>, usize, usize, usize) {
    match data {
        Data::Mnist1d => sized(
            mode,
            (vec![2, 32], 256, 1000, 1),
            (vec![2, 8, 32], 1000, 1000, 3),
            (vec![2, 4, 8, 16, 32, 64], 4000, 1000, 6),
        ),
        // Full mode is the exact arm: the first 10,000 training images,
        // all 10,000 test images, 3 epochs.
        Data::Fashion => sized(
            mode,
            (vec![2, 32], 200, 200, 1),
            (vec![2, 32], 500, 1000, 1),
            (vec![2, 4, 8, 16, 32, 64], 10_000, 10_000, 3),
        ),
    }
}

fn arm_name(data: Data, kind: NormKind, batch: usize) -> String {
    format!("{}/{}/b{batch}", data.slug(), kind.slug())
}

/// The data sets this run uses: Fashion-MNIST when it can be read.
fn datasets(ctx: &StudyContext) -> Vec<Data> {
    let mut d = vec![Data::Mnist1d];
    if ctx.fashion_mnist().is_ok() {
        d.push(Data::Fashion);
    }
    d
}

/// The data set the primary claim is judged on.
fn primary(ctx: &StudyContext) -> Data {
    *datasets(ctx).last().unwrap_or(&Data::Mnist1d)
}

/// Trains, then reads the model three ways; test errors.
fn run<M: Classifier + HasNorms>(
    model: M,
    split: &Split,
    schedule: &Schedule,
    batch_stats: bool,
    device: &Device,
) -> [f64; 3] {
    let (model, curve) = train_classifier(model, &split.train, &split.test, schedule, device, None);
    if curve.diverged {
        return [1.0 - or_chance(f64::NAN); 3];
    }
    let running = evaluate(&model, &split.test, device).accuracy;
    if !batch_stats {
        return [1.0 - running; 3];
    }
    let fresh = recompute_population_stats(&model, &split.train, 500, device);
    let recomputed = evaluate(&fresh, &split.test, device).accuracy;
    let batch = evaluate_batch_stats(&model, &split.test, schedule.batch, device).accuracy;
    [1.0 - running, 1.0 - recomputed, 1.0 - batch]
}

impl Experiment for BatchSize {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Batch size: BatchNorm vs GroupNorm, LayerNorm, InstanceNorm"
    }

    fn topic(&self) -> &'static str {
        "batch size"
    }

    fn claim(&self) -> &'static str {
        "Batch Normalization degrades when batches are small, because its statistics come \
         from the batch; Group Normalization does not depend on the batch (Wu & He 2018, \
         Figure 1: ResNet-50 on ImageNet, the learning rate scaled linearly, BN's error rises \
         from 23.6% at 32 images per GPU to 34.7% at 2 while GN stays near 24%). Batch \
         Renormalization corrects the batch statistics towards the running ones and is claimed \
         to narrow the gap (Ioffe 2017: 4 images per batch, BN 67% accuracy, Batch Renorm \
         73%). BN is judged here with population statistics recomputed over the training set \
         after training, so a stale moving average is not mistaken for the batch effect; its \
         running and batch statistics are shown beside them."
    }

    fn claims(&self, ctx: &StudyContext) -> Vec<Claim> {
        let p = primary(ctx);
        let rise = |d: Data| {
            Claim::new(
                format!("bn-degrades-more-than-gn/{}", d.slug()),
                format!(
                    "From batch 32 to batch 2, BN's test error rises at least 2 points more than \
                     GN's ({}).",
                    d.slug()
                ),
                "[err_BN(2) − err_BN(32)] − [err_GN(2) − err_GN(32)], BN recomputed",
                "points",
                Direction::AtLeast,
                2.0,
                "practical threshold: two points (the GN paper's ImageNet gap is 10.6)",
            )
        };
        let mut claims = vec![rise(p)];
        for d in datasets(ctx) {
            if d != p {
                claims.push(rise(d));
            }
        }
        for d in datasets(ctx) {
            claims.push(Claim::new(
                format!("gn-flat/{}", d.slug()),
                "GN's test error stays within 2 points from batch 32 to batch 2.",
                "err_GN(2) − err_GN(32)",
                "points",
                Direction::Within,
                2.0,
                "practical threshold: two points (the GN paper's GN varies by under one)",
            ));
            claims.push(Claim::new(
                format!("gn-beats-bn-at-2/{}", d.slug()),
                "At batch 2, GN's error is at least 2 points below BN's.",
                "err_BN(2) − err_GN(2), BN recomputed",
                "points",
                Direction::AtLeast,
                2.0,
                "practical threshold: two points (the GN paper: 10.6)",
            ));
            claims.push(
                Claim::new(
                    format!("running-stats-inflate-bn-error-at-2/{}", d.slug()),
                    "At batch 2, reading BN with its running statistics overstates its error \
                     compared with recomputed population statistics.",
                    "err_BN,running(2) − err_BN,recomputed(2)",
                    "points",
                    Direction::AtLeast,
                    0.0,
                    "practical threshold: any excess",
                )
                .expecting("the moving average lags at small batches and high noise"),
            );
        }
        claims.push(Claim::new(
            "brn-beats-bn-at-2/mnist1d",
            "At batch 2, Batch Renorm's error is at least 1 point below BN's.",
            "err_BN(2) − err_BRN(2), both recomputed",
            "points",
            Direction::AtLeast,
            1.0,
            "practical threshold: one point (the Batch Renorm paper: 6 points at 4 per batch)",
        ));
        claims
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "Every run sees the same number of examples (equal epochs), so small batches take \
             more, noisier steps; the learning rate scales linearly with the batch, as in the \
             GN paper.",
            "Batch statistics at evaluation use test batches of the training batch size; for \
             Batch Renorm they are its training-mode output, which corrects toward the running \
             statistics.",
            "Quick mode reads Fashion-MNIST's first 500 training and 1,000 test images for \
             one epoch at batch sizes 2 and 32; only full mode runs the exact arm (10,000 \
             training images, all 10,000 test images, 3 epochs, six batch sizes).",
            "Without Fashion-MNIST installed the primary claim is judged on MNIST-1D.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Wu & He 2018, Group Normalization, Figure 1 and §4.1.",
            "Ioffe 2017, Batch Renormalization.",
            "Ioffe & Szegedy 2015, Batch Normalization.",
            "Xiao, Rasul & Vollgraf 2017, Fashion-MNIST.",
            "Wu & Johnson 2021, Rethinking \"Batch\" in BatchNorm (population statistics).",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        let mut arms = Vec::new();
        for data in datasets(ctx) {
            let (batches, train, test, epochs) = sizes(ctx.mode(), data);
            for kind in data.kinds() {
                for &batch in &batches {
                    arms.push((
                        arm_name(data, kind, batch),
                        Arm {
                            data,
                            kind: kind.slug(),
                            batch,
                            train,
                            test,
                            epochs,
                            lr32: match data {
                                Data::Mnist1d => 0.025,
                                Data::Fashion => 0.05,
                            },
                        },
                    ));
                }
            }
        }
        Ok(grid(ID, &arms, ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: Arm = config(job)?;
        let device = device();
        let (init, order) = replicate(ctx, ID, job.replicate);
        let kind = kind_named(&arm.data.kinds(), &arm.kind);
        let split = match arm.data {
            Data::Mnist1d => {
                let full = ctx.mnist1d()?;
                // A fixed random subset, the same for every run.
                let picked: Vec<usize> = SplitMix64::new(ctx.seed_for(&format!("{ID}/subset")))
                    .permutation(full.train.len())
                    .into_iter()
                    .take(arm.train)
                    .collect();
                Split {
                    train: full.train.subset(&picked)?,
                    test: full.test.head(arm.test),
                }
            }
            Data::Fashion => {
                let full = ctx.fashion_mnist()?;
                Split {
                    train: full.train.head(arm.train),
                    test: full.test.head(arm.test),
                }
            }
        };
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps: arm.epochs * (split.train.len() / arm.batch),
            batch: arm.batch,
            optim: OptimSpec::Sgd {
                lr: arm.lr32 * arm.batch as f64 / 32.0,
                momentum: 0.9,
            },
            eval_every: usize::MAX,
            seed: order,
        };
        let batch_stats = kind.uses_batch();
        let errors = match arm.data {
            Data::Mnist1d => run(
                Cnn1d::new(40, CNN1D_CHANNELS, 10, kind, init, &device)?,
                &split,
                &schedule,
                batch_stats,
                &device,
            ),
            Data::Fashion => run(
                Cnn2d::new(28, FASHION_WIDTHS, 10, kind, init, &device)?,
                &split,
                &schedule,
                batch_stats,
                &device,
            ),
        };
        let mut out = JobOutput::default();
        for (way, e) in WAYS.iter().zip(errors) {
            out = out.value(format!("error/{way}"), e);
        }
        Ok(out)
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let mut a = Analysis::default();
        let mut setup = String::from(
            "Every run trains from scratch with SGD (momentum 0.9), the learning rate scaled \
             linearly with the batch (lr = lr₃₂ · B / 32), a fresh permutation every epoch and \
             the last short batch dropped. Test error is read with BN's running statistics, \
             with population statistics recomputed over the training set after training \
             (cumulative average over batches of 500), and with each test batch's own \
             statistics (batches of the training size). ",
        );
        for data in datasets(ctx) {
            let (batches, train, test, epochs) = sizes(ctx.mode(), data);
            setup.push_str(&match data {
                Data::Mnist1d => format!(
                    "MNIST-1D: its CNN ({CNN1D_CHANNELS} channels; GN with 5 groups, LN over \
                     channels × positions, IN affine), {train} training sequences (a fixed random \
                     subset) and {test} test sequences, {epochs} epochs, lr₃₂ = 0.025, batch sizes \
                     {batches:?}. "
                ),
                Data::Fashion => format!(
                    "Fashion-MNIST: the first {train} training images in file order and the \
                     first {test} test images, x = (p/255 − 0.2860)/0.3530; Conv(1→32, 3×3, \
                     stride 1, pad 1) → norm → ReLU → Conv(32→64, 3×3, stride 2, pad 1) → norm → \
                     ReLU → Conv(64→64, 3×3, stride 2, pad 1) → norm → ReLU → spatial mean → \
                     Linear(64→10), conv bias on, PyTorch's default initialization; norms BN, \
                     GN(8), GN(1), IN (affine), none; lr₃₂ = 0.05, {epochs} epoch(s), batch sizes \
                     {batches:?}. "
                ),
            });
            let err = |kind: NormKind, b: usize, way: &str| {
                results
                    .values(&arm_name(data, kind, b), &format!("error/{way}"))
                    .into_iter()
                    .map(points)
                    .collect::<Vec<f64>>()
            };
            let (small, large) = (batches[0], 32);
            let bn = NormKind::Batch;
            let gn = data.gn();
            let sub = |x: Vec<f64>, y: Vec<f64>| -> Vec<f64> {
                x.iter().zip(y).map(|(p, q)| p - q).collect()
            };
            let bn_rise = sub(err(bn, small, "recomputed"), err(bn, large, "recomputed"));
            let gn_rise = sub(err(gn, small, "recomputed"), err(gn, large, "recomputed"));
            let slug = data.slug();
            a.effects.insert(
                format!("bn-degrades-more-than-gn/{slug}"),
                sub(bn_rise, gn_rise.clone()),
            );
            a.effects.insert(format!("gn-flat/{slug}"), gn_rise);
            a.effects.insert(
                format!("gn-beats-bn-at-2/{slug}"),
                sub(err(bn, small, "recomputed"), err(gn, small, "recomputed")),
            );
            a.effects.insert(
                format!("running-stats-inflate-bn-error-at-2/{slug}"),
                sub(err(bn, small, "running"), err(bn, small, "recomputed")),
            );
            if data == Data::Mnist1d {
                a.effects.insert(
                    "brn-beats-bn-at-2/mnist1d".into(),
                    sub(
                        err(bn, small, "recomputed"),
                        err(NormKind::Renorm, small, "recomputed"),
                    ),
                );
            }
            // Small multiples: one plot per way of reading BN.
            for way in WAYS {
                let mut plot = Plot::line(
                    format!("{slug}: test error, BN read with {way} statistics"),
                    "batch size",
                    "test error (points)",
                )
                .log_x();
                for kind in data.kinds() {
                    let pts = batches
                        .iter()
                        .map(|&b| (b as f64, err(kind, b, way)))
                        .collect();
                    plot = plot.seeded_series(kind.label(), pts);
                }
                a.plots.push(plot);
            }
            let mut headers = vec!["normalization".to_string(), "read with".to_string()];
            headers.extend(batches.iter().map(|b| format!("batch {b}")));
            let mut table = Table::new(format!("{slug}: test error (mean over seeds)"), headers);
            for kind in data.kinds() {
                let ways: &[&str] = if kind.uses_batch() { &WAYS } else { &WAYS[..1] };
                for way in ways {
                    let mut row = vec![
                        kind.label(),
                        if kind.uses_batch() {
                            way.to_string()
                        } else {
                            "—".into()
                        },
                    ];
                    row.extend(
                        batches
                            .iter()
                            .map(|&b| pct(mean(&err(kind, b, way)) / 100.0)),
                    );
                    table = table.row(row);
                    for &b in &batches {
                        a.metrics.insert(
                            format!("{}/{way}/error", arm_name(data, kind, b)),
                            err(kind, b, way),
                        );
                    }
                }
            }
            let mut lr_row = vec!["(learning rate)".to_string(), String::new()];
            let lr32 = if data == Data::Mnist1d { 0.025 } else { 0.05 };
            lr_row.extend(batches.iter().map(|&b| fmt_num(lr32 * b as f64 / 32.0)));
            a.tables.push(table.row(lr_row));
        }
        a.setup = format!("{setup}{}", seeds_sentence(ctx, ID));
        let keys: Vec<String> = a
            .effects
            .keys()
            .filter(|k| k.starts_with("bn-degrades") || k.starts_with("gn-beats"))
            .cloned()
            .collect();
        let short = |k: &str| {
            let (what, data) = k.split_once('/').unwrap_or((k, ""));
            let what = if what.starts_with("bn-degrades") {
                "BN's rise − GN's"
            } else {
                "BN − GN at 2"
            };
            format!("{what}, {data}")
        };
        let mut bars = Plot::bars(
            "Batch-size effects (points, 95% intervals)",
            "effect",
            "points",
            keys.iter().map(|k| short(k)),
        )
        .guide(2.0, "margin: 2 points");
        bars = bars.seeded_bars(
            "mean effect",
            &keys
                .iter()
                .map(|k| a.effects[k].clone())
                .collect::<Vec<_>>(),
        );
        a.plots.push(bars);
        let p = primary(ctx).slug();
        a.result = format!(
            "On {p}, from batch 32 to 2 BN's error (recomputed statistics) rose {} points more \
             than GN's on average; GN's own change was {} points.",
            num(mean(&a.effects[&format!("bn-degrades-more-than-gn/{p}")])),
            num(mean(&a.effects[&format!("gn-flat/{p}")]))
        );
        Ok(a)
    }
}
