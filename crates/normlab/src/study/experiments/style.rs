//! Per-instance normalization and style: how each normalization copes
//! with per-example contrast and brightness changes of the test set, and
//! AdaIN moving channel statistics from one example to another.

use super::common::{
    config, grid, kind_arms, kind_named, or_chance, points, replicate, seeds_sentence, sized,
    KindArm,
};
use crate::study::data::{Dataset, Order, SplitMix64};
use crate::study::fmt::{fmt_num, num, pct};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::{Cnn1d, NormKind, CNN1D_CHANNELS};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{
    device, matrix, row_loss, train_classifier, values, OptimSpec, Schedule,
};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, StudyContext};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use normkit_burn::AdaInConfig;

pub struct Style;

const ID: &str = "style";
const KINDS: [NormKind; 5] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Instance,
    NormKind::Layer,
    NormKind::Group,
];
/// Contrast factors are log-uniform in [1/3, 3]; brightness offsets
/// uniform in ±2 (the data are standardized).
const CONTRAST: f64 = 3.0;
const BRIGHTNESS: f64 = 2.0;

/// `data` with each example `x ↦ a·x + b`, a and b drawn per example.
fn restyled(data: &Dataset, seed: u64) -> Result<Dataset, ExperimentError> {
    let mut rng = SplitMix64::new(seed);
    let d = data.example_len();
    let mut features = Vec::with_capacity(data.features().len());
    for i in 0..data.len() {
        let a = (CONTRAST.ln() * (2.0 * rng.next_f64() - 1.0)).exp();
        let b = BRIGHTNESS * (2.0 * rng.next_f64() - 1.0);
        features.extend(
            data.features()[i * d..(i + 1) * d]
                .iter()
                .map(|&x| (a * f64::from(x) + b) as f32),
        );
    }
    Ok(Dataset::new(
        features,
        data.labels().to_vec(),
        data.example_shape().to_vec(),
        data.num_classes(),
    )?)
}

fn accuracy(logits: &[f32], labels: &[usize]) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &l)| row_loss(&logits[i * 10..(i + 1) * 10], l).1 == Some(l))
        .count()
}

/// Accuracy on `data` with the first block's maps given the channel
/// statistics of the same number of clean training examples (AdaIN), and
/// the largest deviation of the result's per-channel mean and std from the
/// style's.
fn adain_accuracy(
    model: &Cnn1d,
    data: &Dataset,
    style: &Dataset,
    seed: u64,
    device: &Device,
) -> (f64, f64) {
    let model = model.valid();
    let plain = device.clone().without_autodiff();
    let adain = AdaInConfig::new().init(&plain);
    let d = data.example_len();
    let (mut correct, mut worst) = (0usize, 0.0f64);
    let mut styles = style
        .batches(500, Order::Shuffled(seed), true)
        .into_iter()
        .flatten()
        .cycle();
    for b in data
        .batches(500, Order::Sequential, false)
        .into_iter()
        .flatten()
    {
        let n = b.labels.len();
        let Some(s) = styles.next() else { break };
        let content = model.features(matrix(b.features, n, d, &plain), 1);
        let style = model.features(matrix(s.features[..n * d].to_vec(), n, d, &plain), 1);
        let out = adain.forward(content, style.clone());
        worst = worst.max(moment_gap(out.clone(), style));
        let logits = values(model.logits_from(out, 1));
        correct += accuracy(&logits, &b.labels);
    }
    (correct as f64 / data.len().max(1) as f64, worst)
}

/// The largest difference between two `[N, C, L]` maps' per-(example,
/// channel) means and standard deviations (unbiased, as AdaIN's).
fn moment_gap(a: Tensor<3>, b: Tensor<3>) -> f64 {
    let [n, c, l] = a.dims();
    let stats = |t: Tensor<3>| -> Vec<(f64, f64)> {
        let v = values(t);
        (0..n * c)
            .map(|k| {
                let row = &v[k * l..(k + 1) * l];
                let m = row.iter().map(|&x| f64::from(x)).sum::<f64>() / l as f64;
                let var =
                    row.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / (l - 1) as f64;
                (m, var.sqrt())
            })
            .collect()
    };
    stats(a)
        .iter()
        .zip(stats(b))
        .map(|(x, y)| (x.0 - y.0).abs().max((x.1 - y.1).abs()))
        .fold(0.0, f64::max)
}

impl Experiment for Style {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Per-instance normalization and style: contrast, brightness, AdaIN"
    }

    fn topic(&self) -> &'static str {
        "style (instance normalization)"
    }

    fn claim(&self) -> &'static str {
        "Instance Normalization removes instance-specific contrast information: normalizing \
         each example's channels by their own statistics makes a network's output invariant to \
         the contrast (and offset) of its input, which is what fast style transfer relies on \
         (Ulyanov, Vedaldi & Lempitsky 2016/2017). The per-channel mean and variance of \
         features carry the style, and AdaIN transfers a style by giving one input's features \
         another's channel statistics (Huang & Belongie 2017). LN and GN also normalize per \
         example; BN, whose statistics are the batch's, does not."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        let drop = |k: NormKind| {
            Claim::new(
                format!("{}-vs-bn/contrast-drop", k.slug()),
                format!(
                    "Under per-example contrast and brightness changes, {}'s accuracy drops at \
                     least 5 points less than BN's.",
                    k.label()
                ),
                format!(
                    "drop(BN) − drop({}), drop = clean − changed accuracy",
                    k.label()
                ),
                "points",
                Direction::AtLeast,
                5.0,
                "practical threshold: five points",
            )
        };
        vec![
            drop(NormKind::Instance),
            drop(NormKind::Layer),
            drop(NormKind::Group),
            Claim::new(
                "adain-restores-bn/accuracy",
                "Giving the changed examples' first-layer features the channel statistics of \
                 clean examples (AdaIN) recovers at least 5 points of the BN network's accuracy.",
                "accuracy with AdaIN − without, BN network, changed test set",
                "points",
                Direction::AtLeast,
                5.0,
                "practical threshold: five points",
            ),
        ]
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "1-D signals (MNIST-1D) stand in for images: contrast and brightness are a per-example \
             scale and offset of the whole sequence.",
            "Zero padding in the convolutions does not move with the offset, so even IN is only \
             nearly invariant.",
            "AdaIN here borrows statistics from random clean training examples, not from the \
             changed example's own clean version.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Ulyanov, Vedaldi & Lempitsky 2016, Instance Normalization: The Missing Ingredient for Fast Stylization.",
            "Ulyanov, Vedaldi & Lempitsky 2017, Improved Texture Networks.",
            "Huang & Belongie 2017, Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization.",
            "Wu & He 2018, Group Normalization.",
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
        let steps = sized(ctx.mode(), 20, 450, 3000);
        let kind = kind_named(&KINDS, &arm.kind);
        let model = Cnn1d::new(40, CNN1D_CHANNELS, 10, kind, init, &device)?;
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps,
            batch: 100,
            optim: OptimSpec::Adam { lr: 1e-2 },
            eval_every: steps,
            seed: order,
        };
        let (model, curve) =
            train_classifier(model, &split.train, &split.test, &schedule, &device, None);
        let changed = restyled(&split.test, ctx.seed_for(&format!("{ID}/changes")))?;
        let shifted = if curve.diverged {
            f64::NAN
        } else {
            crate::study::train::evaluate(&model, &changed, &device).accuracy
        };
        let mut out = JobOutput::default()
            .value("clean", or_chance(curve.final_accuracy()))
            .value("changed", or_chance(shifted));
        if kind == NormKind::Batch && !curve.diverged {
            let (acc, gap) = adain_accuracy(
                &model,
                &changed,
                &split.train,
                ctx.replicate_seed(ID, "styles", job.replicate),
                &device,
            );
            out = out.value("adain", acc).value("adain_moment_gap", gap);
        }
        Ok(out)
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let steps = sized(ctx.mode(), 20, 450, 3000);
        let mut a = Analysis {
            setup: format!(
                "MNIST-1D's CNN ({CNN1D_CHANNELS} channels) with none, BN, IN (affine), LN or GN \
                 after every convolution, trained on clean data (Adam, lr 0.01, batch 100, {steps} \
                 steps). The changed test set scales every sequence by a contrast factor \
                 log-uniform in [1/{CONTRAST}, {CONTRAST}] and adds a brightness offset uniform \
                 in ±{BRIGHTNESS} (one draw per sequence, seed stream {ID}/changes). A \
                 normalization's drop is its clean minus its changed test accuracy. AdaIN: in \
                 the BN network, the changed sequences' first-block feature maps (after the \
                 ReLU) are given, channel by channel, the mean and standard deviation of a \
                 random clean training sequence's maps (normkit's AdaIN layer), and the rest of \
                 the network runs on. {}",
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let drop = |k: NormKind| -> Vec<f64> {
            results
                .values(&k.slug(), "clean")
                .iter()
                .zip(results.values(&k.slug(), "changed"))
                .map(|(c, s)| points(c - s))
                .collect()
        };
        for k in [NormKind::Instance, NormKind::Layer, NormKind::Group] {
            let e = drop(NormKind::Batch)
                .iter()
                .zip(drop(k))
                .map(|(b, x)| b - x)
                .collect();
            a.effects
                .insert(format!("{}-vs-bn/contrast-drop", k.slug()), e);
        }
        let bn = NormKind::Batch.slug();
        a.effects.insert(
            "adain-restores-bn/accuracy".into(),
            results
                .values(&bn, "adain")
                .iter()
                .zip(results.values(&bn, "changed"))
                .map(|(x, y)| points(x - y))
                .collect(),
        );
        let labels: Vec<String> = KINDS.iter().map(|k| k.label()).collect();
        let mut plot = Plot::bars(
            "Test accuracy, clean and with contrast/brightness changes",
            "normalization",
            "test accuracy",
            labels,
        );
        let mut table = Table::new(
            "Accuracy (means over seeds)",
            ["normalization", "clean", "changed", "drop (points)"],
        );
        for key in ["clean", "changed"] {
            let per: Vec<Vec<f64>> = KINDS
                .iter()
                .map(|k| results.values(&k.slug(), key))
                .collect();
            plot = plot.seeded_bars(key, &per);
        }
        for k in KINDS {
            table = table.row([
                k.label(),
                pct(mean(&results.values(&k.slug(), "clean"))),
                pct(mean(&results.values(&k.slug(), "changed"))),
                num(mean(&drop(k))),
            ]);
            a.metrics.insert(format!("{}/drop", k.slug()), drop(k));
        }
        let gaps = results.values(&bn, "adain_moment_gap");
        table = table.row([
            "BN + AdaIN".to_string(),
            String::new(),
            pct(mean(&results.values(&bn, "adain"))),
            format!(
                "AdaIN output's channel statistics within {} of the style's",
                fmt_num(gaps.iter().copied().fold(0.0, f64::max))
            ),
        ]);
        a.plots.push(plot);
        a.tables.push(table);
        a.result = format!(
            "BN's accuracy drops {} points under the changes, IN's {}; AdaIN gives the BN \
             network back {} points.",
            num(mean(&drop(NormKind::Batch))),
            num(mean(&drop(NormKind::Instance))),
            num(mean(&a.effects["adain-restores-bn/accuracy"]))
        );
        Ok(a)
    }
}
