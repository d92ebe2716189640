//! Variable-length sequences: BatchNorm against LayerNorm when batches mix
//! sequences of different lengths, padded to the longest.

use super::common::{
    config, grid, kind_arms, kind_named, or_chance, points, replicate, seeded_curve,
    seeds_sentence, sized, KindArm,
};
use crate::study::data::mnist1d::interpolate;
use crate::study::data::{Dataset, Split, SplitMix64};
use crate::study::fmt::{num, pct};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::{NormKind, SeqNet};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{device, train_classifier, OptimSpec, Schedule};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, StudyContext};

pub struct VariableLength;

const ID: &str = "variable-length";
const KINDS: [NormKind; 4] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Layer,
    NormKind::Rms,
];
const MAX_LEN: usize = 40;
const MIN_LEN: usize = 10;
const CHANNELS: usize = 32;

/// Each sequence resampled to a random length in `MIN_LEN..=MAX_LEN`,
/// zero-padded to `MAX_LEN`, its length appended.
pub fn variable_length(data: &Dataset, rng: &mut SplitMix64) -> Result<Dataset, ExperimentError> {
    let d = data.example_len();
    let mut features = Vec::with_capacity(data.len() * (MAX_LEN + 1));
    for i in 0..data.len() {
        let len = MIN_LEN + rng.below((MAX_LEN - MIN_LEN + 1) as u64) as usize;
        let x: Vec<f64> = data.features()[i * d..(i + 1) * d]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let y = interpolate(&x, len);
        features.extend(y.iter().map(|&v| v as f32));
        features.extend(std::iter::repeat_n(0.0, MAX_LEN - len));
        features.push(len as f32);
    }
    Ok(Dataset::new(
        features,
        data.labels().to_vec(),
        vec![MAX_LEN + 1],
        data.num_classes(),
    )?)
}

impl Experiment for VariableLength {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Variable-length sequences: BatchNorm vs LayerNorm with padding"
    }

    fn topic(&self) -> &'static str {
        "sequences (LN vs BN)"
    }

    fn claim(&self) -> &'static str {
        "Batch Normalization suits sequences of varying length poorly: its statistics are \
         taken over every position of a padded batch, so they depend on how much padding the \
         batch holds and differ between training and inference, while Layer Normalization \
         normalizes each position by its own features and is indifferent to padding (Ba, Kiros \
         & Hinton 2016, §1 and §6; Shen et al. 2020 find naive BN behind LN in Transformers for \
         NLP)."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        vec![
            Claim::new(
                "ln-vs-bn/accuracy",
                "With padded batches of mixed lengths, LN's test accuracy is at least 1 point \
                 above BN's.",
                "test accuracy, LN − BN",
                "points",
                Direction::AtLeast,
                1.0,
                "practical threshold: one point (Shen et al. 2020 report about a BLEU point on \
                 translation)",
            ),
            Claim::new(
                "rms-vs-bn/accuracy",
                "RMSNorm, per position like LN, is also at least 1 point above BN.",
                "test accuracy, RMSNorm − BN",
                "points",
                Direction::AtLeast,
                1.0,
                "practical threshold: one point",
            ),
        ]
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "BN here is the naive kind: padded positions enter its statistics. Masked BN (or \
             PowerNorm) would remove much of the problem and is not tested.",
            "The task is MNIST-1D resampled to random lengths; sequence models in NLP have \
             longer sequences and attention.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Ba, Kiros & Hinton 2016, Layer Normalization.",
            "Shen, Yao, Gholami, Mahoney & Keutzer 2020, PowerNorm: Rethinking Batch Normalization in Transformers.",
            "Greydanus 2020, Scaling down Deep Learning (MNIST-1D).",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        Ok(grid(ID, &kind_arms(&KINDS), ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: KindArm = config(job)?;
        let base = ctx.mnist1d()?;
        let mut rng = SplitMix64::new(ctx.seed_for(&format!("{ID}/lengths")));
        let split = Split {
            train: variable_length(&base.train, &mut rng)?,
            test: variable_length(&base.test, &mut rng)?,
        };
        let device = device();
        let (init, order) = replicate(ctx, ID, job.replicate);
        let steps = sized(ctx.mode(), 20, 400, 3000);
        let model = SeqNet::new(
            MAX_LEN,
            CHANNELS,
            10,
            kind_named(&KINDS, &arm.kind),
            init,
            &device,
        )?;
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps,
            batch: 32,
            optim: OptimSpec::Adam { lr: 3e-3 },
            eval_every: (steps / 10).max(1),
            seed: order,
        };
        let (_, curve) =
            train_classifier(model, &split.train, &split.test, &schedule, &device, None);
        Ok(JobOutput::default()
            .value("accuracy", or_chance(curve.final_accuracy()))
            .curve("accuracy", curve.test_accuracy.clone())
            .curve("steps", curve.steps.iter().map(|&s| s as f64).collect()))
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let steps = sized(ctx.mode(), 20, 400, 3000);
        let mut a = Analysis {
            setup: format!(
                "MNIST-1D with every sequence resampled (linearly) to a random length from \
                 {MIN_LEN} to {MAX_LEN} (seed stream {ID}/lengths), zero-padded, each batch cut \
                 to its longest sequence. The network: a 1-D convolution (1→{CHANNELS}, kernel \
                 5), then the normalization over channels at every position and ReLU, twice more \
                 a convolution (kernel 3), normalization and ReLU, then the mean over the real \
                 positions (padding masked) and a linear head. BN normalizes over batch × \
                 positions, padding included, and is read with its running statistics at test; \
                 LN and RMSNorm normalize each position's {CHANNELS} channels. Adam (lr 0.003), \
                 batch 32, {steps} steps; test batches of 1,000 mixed lengths. {}",
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let acc = |k: NormKind| results.values(&k.slug(), "accuracy");
        for k in [NormKind::Layer, NormKind::Rms] {
            a.effects.insert(
                format!("{}-vs-bn/accuracy", k.slug()),
                acc(k)
                    .iter()
                    .zip(acc(NormKind::Batch))
                    .map(|(x, b)| points(x - b))
                    .collect(),
            );
        }
        let mut table = Table::new(
            "Final test accuracy (means over seeds)",
            ["normalization", "test accuracy"],
        );
        let mut plot = Plot::line("Test accuracy, padded batches", "step", "test accuracy");
        for k in KINDS {
            table = table.row([k.label(), pct(mean(&acc(k)))]);
            a.metrics.insert(format!("{}/accuracy", k.slug()), acc(k));
            plot = plot.seeded_series(k.label(), seeded_curve(results, &k.slug(), "accuracy"));
        }
        a.tables.push(table);
        a.plots.push(plot);
        a.result = format!(
            "LN ended {} points above BN on average, RMSNorm {}.",
            num(mean(&a.effects["ln-vs-bn/accuracy"])),
            num(mean(&a.effects["rms-vs-bn/accuracy"]))
        );
        Ok(a)
    }
}
