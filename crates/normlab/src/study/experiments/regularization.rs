//! Regularization and generalization: on a training set small enough for
//! a plain network to overfit, the gap between training and test accuracy
//! for every normalization, and BatchNorm against dropout.

use super::common::{
    config, grid, kind_named, or_chance, points, replicate, seeds_sentence, sized,
};
use crate::study::data::{Split, SplitMix64};
use crate::study::fmt::{num, pct};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::{Activation, Mlp, MlpSpec, NormKind};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{device, evaluate, train_classifier, OptimSpec, Schedule};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, StudyContext};
use serde::{Deserialize, Serialize};

pub struct Regularization;

const ID: &str = "regularization";
const KINDS: [NormKind; 7] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Layer,
    NormKind::Group,
    NormKind::Rms,
    NormKind::Weight,
    NormKind::Dyt,
];
const DROPOUT: f64 = 0.5;
const TRAIN: usize = 500;
const WIDTH: usize = 256;

#[derive(Serialize, Deserialize)]
struct Arm {
    kind: String,
    dropout: bool,
}

fn arms() -> Vec<(String, Arm)> {
    let mut arms: Vec<(String, Arm)> = KINDS
        .iter()
        .map(|k| {
            (
                k.slug(),
                Arm {
                    kind: k.slug(),
                    dropout: false,
                },
            )
        })
        .collect();
    arms.push((
        "dropout".into(),
        Arm {
            kind: NormKind::None.slug(),
            dropout: true,
        },
    ));
    arms
}

impl Experiment for Regularization {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Regularization and the generalization gap"
    }

    fn topic(&self) -> &'static str {
        "generalization / regularization"
    }

    fn claim(&self) -> &'static str {
        "Batch Normalization regularizes: the noise of batch statistics acts like dropout, \
         so a BN network generalizes better and needs less dropout (Ioffe & Szegedy 2015, §3.4 \
         and §4.2.1, where removing dropout from BN-Inception did not hurt). Dropout itself \
         narrows the gap between training and test accuracy (Srivastava et al. 2014). The \
         other normalizations were not proposed as regularizers; their gaps are reported."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        vec![
            Claim::new(
                "bn-vs-none/gap",
                "BN narrows the train−test accuracy gap of an overfitting MLP by at least 2 points.",
                "gap(none) − gap(BN), gap = train − test accuracy",
                "points",
                Direction::AtLeast,
                2.0,
                "practical threshold: two points",
            ),
            Claim::new(
                "dropout-vs-none/gap",
                "Dropout (p = 0.5) narrows the gap by at least 2 points.",
                "gap(none) − gap(dropout)",
                "points",
                Direction::AtLeast,
                2.0,
                "practical threshold: two points",
            )
            .expecting("reproduced: the positive control"),
            Claim::new(
                "bn-vs-none/test-accuracy",
                "BN's test accuracy is higher than none's.",
                "test accuracy, BN − none",
                "points",
                Direction::AtLeast,
                0.0,
                "practical threshold: any gain",
            ),
            Claim::new(
                "bn-vs-dropout/test-accuracy",
                "BN does as well on the test set as dropout (it reduces the need for it).",
                "test accuracy, BN − dropout",
                "points",
                Direction::Within,
                2.0,
                "practical threshold: two points",
            ),
        ]
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "A 500-example training set and a wide MLP make overfitting easy; with more data \
             the gaps shrink for every arm.",
            "BN is read with its running statistics (it trains long enough for them to settle).",
            "One dropout rate (0.5) and no weight decay or early stopping.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Ioffe & Szegedy 2015, Batch Normalization, §3.4 and §4.2.1.",
            "Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov 2014, Dropout.",
            "Luo, Wang, Shao & Peng 2019, Towards Understanding Regularization in Batch Normalization.",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        Ok(grid(ID, &arms(), ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: Arm = config(job)?;
        let full = ctx.mnist1d()?;
        let picked: Vec<usize> = SplitMix64::new(ctx.seed_for(&format!("{ID}/subset")))
            .permutation(full.train.len())
            .into_iter()
            .take(TRAIN)
            .collect();
        let split = Split {
            train: full.train.subset(&picked)?,
            test: full.test.clone(),
        };
        let device = device();
        let (init, order) = replicate(ctx, ID, job.replicate);
        let steps = sized(ctx.mode(), 20, 800, 3000);
        let spec = MlpSpec {
            dropout: if arm.dropout { DROPOUT } else { 0.0 },
            ..MlpSpec::new(40, WIDTH, 3, 10, Activation::Relu)
        };
        let model = Mlp::new(spec, kind_named(&KINDS, &arm.kind), init, &device)?;
        let schedule = Schedule {
            name: format!("{ID} {}", job.arm),
            steps,
            batch: 50,
            optim: OptimSpec::Adam { lr: 1e-3 },
            eval_every: (steps / 10).max(1),
            seed: order,
        };
        let (model, curve) =
            train_classifier(model, &split.train, &split.test, &schedule, &device, None);
        let train_acc = if curve.diverged {
            f64::NAN
        } else {
            evaluate(&model, &split.train, &device).accuracy
        };
        Ok(JobOutput::default()
            .value("train", or_chance(train_acc))
            .value("test", or_chance(curve.final_accuracy())))
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let steps = sized(ctx.mode(), 20, 800, 3000);
        let mut a = Analysis {
            setup: format!(
                "MNIST-1D, a fixed random {TRAIN} of its training sequences (seed stream \
                 {ID}/subset) and all 1,000 test sequences. An MLP of 3 hidden layers of {WIDTH} \
                 ReLU units with each normalization (linear, norm, ReLU), and a plain one with \
                 dropout p = {DROPOUT} after every hidden layer. Adam (lr 0.001), batch 50, \
                 {steps} steps ({} epochs). The gap is training accuracy (on all {TRAIN}, \
                 inference mode) minus test accuracy, in points. {}",
                steps * 50 / TRAIN,
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let gap = |arm: &str| -> Vec<f64> {
            results
                .values(arm, "train")
                .iter()
                .zip(results.values(arm, "test"))
                .map(|(t, s)| points(t - s))
                .collect()
        };
        let test = |arm: &str| results.values(arm, "test");
        let sub = |x: Vec<f64>, y: Vec<f64>| -> Vec<f64> {
            x.iter().zip(y).map(|(p, q)| p - q).collect()
        };
        a.effects
            .insert("bn-vs-none/gap".into(), sub(gap("none"), gap("bn")));
        a.effects.insert(
            "dropout-vs-none/gap".into(),
            sub(gap("none"), gap("dropout")),
        );
        a.effects.insert(
            "bn-vs-none/test-accuracy".into(),
            sub(test("bn"), test("none"))
                .into_iter()
                .map(points)
                .collect(),
        );
        a.effects.insert(
            "bn-vs-dropout/test-accuracy".into(),
            sub(test("bn"), test("dropout"))
                .into_iter()
                .map(points)
                .collect(),
        );
        let names: Vec<String> = arms().into_iter().map(|(n, _)| n).collect();
        let labels: Vec<String> = names
            .iter()
            .map(|n| {
                if n == "dropout" {
                    "dropout".to_string()
                } else {
                    kind_named(&KINDS, n).label()
                }
            })
            .collect();
        let mut table = Table::new(
            "Training and test accuracy and their gap (means over seeds)",
            ["arm", "train accuracy", "test accuracy", "gap (points)"],
        );
        let mut bars = Plot::bars(
            "Generalization gap: train − test accuracy",
            "arm",
            "points",
            labels.clone(),
        );
        let mut acc = Plot::bars("Test accuracy", "arm", "test accuracy", labels.clone());
        let gaps: Vec<Vec<f64>> = names.iter().map(|n| gap(n)).collect();
        let tests: Vec<Vec<f64>> = names.iter().map(|n| test(n)).collect();
        for (i, n) in names.iter().enumerate() {
            table = table.row([
                labels[i].clone(),
                pct(mean(&results.values(n, "train"))),
                pct(mean(&tests[i])),
                num(mean(&gaps[i])),
            ]);
            a.metrics.insert(format!("{n}/gap"), gaps[i].clone());
            a.metrics.insert(format!("{n}/test"), tests[i].clone());
        }
        bars = bars.seeded_bars("gap", &gaps);
        acc = acc.seeded_bars("test accuracy", &tests);
        a.tables.push(table);
        a.plots.push(bars);
        a.plots.push(acc);
        a.result = format!(
            "The plain MLP's gap is {} points; BN narrows it by {} and dropout by {} on average.",
            num(mean(&gap("none"))),
            num(mean(&a.effects["bn-vs-none/gap"])),
            num(mean(&a.effects["dropout-vs-none/gap"]))
        );
        Ok(a)
    }
}
