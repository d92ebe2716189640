//! Compute cost: the time each normalization takes in training and
//! inference, and BatchNorm folded into the convolution before it at
//! inference.

use super::common::{config, grid, sized};
use crate::study::data::SplitMix64;
use crate::study::fmt::{fmt_num, num};
use crate::study::jobs::{Job, JobOutput, Results, TIME_PREFIX};
use crate::study::models::{Classifier, Cnn2d, Features, Norm, NormKind, FASHION_WIDTHS};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{cross_entropy, device, one_hot, scalar, values, Optim, OptimSpec};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, StudyContext};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use normkit_burn::fold_batch_norm_conv2d;
use serde::{Deserialize, Serialize};
use std::time::Instant;

pub struct ComputeCost;

const ID: &str = "compute-cost";
/// Token activations the LN/RMSNorm layers are timed on: `[B, T, C]`.
const TOKENS: [usize; 3] = [16, 64, 256];
/// Inference batch.
const INFER_BATCH: usize = 64;
const STEP_KINDS: [NormKind; 6] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Group,
    NormKind::Layer,
    NormKind::Instance,
    NormKind::Rms,
];

#[derive(Serialize, Deserialize)]
struct Trial {
    reps: usize,
}

fn random<const D: usize>(rng: &mut SplitMix64, shape: [usize; D], device: &Device) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The fastest of `trials` timings of `reps` calls, in ms per call.
fn best_ms(reps: usize, trials: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..trials)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() * 1e3 / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// One normalization layer's forward + backward on `TOKENS`, ms.
fn norm_ms(kind: NormKind, reps: usize, rng: &mut SplitMix64, device: &Device) -> f64 {
    let Ok(Some(norm)) = Norm::new(kind, Features::Tokens(TOKENS[2]), device) else {
        return f64::NAN;
    };
    let x = random(rng, TOKENS, device).require_grad();
    let r = random(rng, TOKENS, device);
    best_ms(reps, 3, || {
        let grads = (norm.forward(x.clone()) * r.clone()).sum().backward();
        // Reading the gradient waits for the backward pass to finish.
        let _ = x.grad(&grads).map(scalar);
    })
}

/// The Fashion-MNIST CNN with every BatchNorm folded into its convolution.
fn folded(model: &Cnn2d) -> Result<Cnn2d, ExperimentError> {
    let mut m = model.clone();
    for b in &mut m.blocks {
        if let Some(Norm::Batch(bn)) = b.norm.take() {
            b.conv = fold_batch_norm_conv2d(b.conv.clone(), &bn)?;
        }
    }
    Ok(m)
}

impl Experiment for ComputeCost {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Compute cost of normalization in training and inference"
    }

    fn topic(&self) -> &'static str {
        "LN cost"
    }

    fn claim(&self) -> &'static str {
        "Normalization costs time: LayerNorm's two statistics per row make it slow enough that \
         RMSNorm, which drops the mean, cuts running time by 7% to 64% (Zhang & Sennrich 2019); \
         BatchNorm, by contrast, is free at inference, where its fixed statistics fold into \
         the preceding convolution or linear layer (Ioffe & Szegedy 2015, §3.2; Jacob et al. \
         2018)."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        vec![
            Claim::new(
                "rms-vs-ln/layer-time",
                "RMSNorm's forward + backward is at least 7% faster than LayerNorm's.",
                "100 · (t_LN − t_RMS) / t_LN, one layer on [16, 64, 256] tokens",
                "%",
                Direction::AtLeast,
                7.0,
                "Zhang & Sennrich 2019: 7% to 64% less running time",
            ),
            Claim::new(
                "folded-bn-vs-none/inference-time",
                "With BN folded into the convolutions, inference costs the same as the network \
                 without normalization.",
                "100 · (t_folded / t_none − 1), CNN inference, batch 64",
                "%",
                Direction::Within,
                5.0,
                "practical threshold: 5% (folding leaves the same convolutions)",
            ),
            Claim::new(
                "unfolded-bn-vs-folded/inference-time",
                "Unfolded, BN's inference costs measurably more than folded.",
                "100 · (t_BN / t_folded − 1)",
                "%",
                Direction::AtLeast,
                0.0,
                "practical threshold: any excess",
            ),
        ]
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "Times are wall-clock on a shared two-core machine under other engineers' load: \
             each seed is a timing trial (the fastest of three repetitions of several calls), \
             run alone after the training jobs, and the numbers vary between runs.",
            "normkit's LayerNorm and RMSNorm kernels are memory-bound fused kernels; the RMSNorm \
             paper measured GPU frameworks of 2019.",
            "report.json keeps these numbers under time/ keys: they differ between reruns.",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Zhang & Sennrich 2019, Root Mean Square Layer Normalization, Table 1–5.",
            "Ioffe & Szegedy 2015, Batch Normalization, §3.2.",
            "Jacob et al. 2018, Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference (folding).",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        let trial = Trial {
            reps: sized(ctx.mode(), 2, 10, 30),
        };
        Ok(grid(ID, &[("trial".to_string(), trial)], ctx.seeds())
            .into_iter()
            .map(Job::alone)
            .collect())
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let trial: Trial = config(job)?;
        let device = device();
        let plain = device.clone().without_autodiff();
        let mut rng = SplitMix64::new(ctx.replicate_seed(ID, "data", job.replicate));
        let t = |k: &str| format!("{TIME_PREFIX}{k}");
        let mut out = JobOutput::default()
            .value(
                t("ln_ms"),
                norm_ms(NormKind::Layer, trial.reps, &mut rng, &device),
            )
            .value(
                t("rms_ms"),
                norm_ms(NormKind::Rms, trial.reps, &mut rng, &device),
            );
        // Inference: BN with running statistics set by a few training
        // batches, the same folded, and no normalization.
        let init = ctx.replicate_seed(ID, "init", job.replicate);
        let batch = random(&mut rng, [INFER_BATCH, 784], &plain);
        let bn = Cnn2d::new(28, FASHION_WIDTHS, 10, NormKind::Batch, init, &device)?;
        for _ in 0..3 {
            let _ = bn.logits(random(&mut rng, [64, 784], &device));
        }
        let bn = bn.valid();
        let fold = folded(&bn)?;
        let none = Cnn2d::new(28, FASHION_WIDTHS, 10, NormKind::None, init, &device)?.valid();
        let reps = (trial.reps / 5).max(1);
        let time = |m: &Cnn2d| best_ms(reps, 3, || drop(values(m.logits(batch.clone()))));
        let diff = values(bn.logits(batch.clone()))
            .iter()
            .zip(values(fold.logits(batch.clone())))
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max);
        out = out
            .value(t("bn_infer_ms"), time(&bn))
            .value(t("folded_infer_ms"), time(&fold))
            .value(t("none_infer_ms"), time(&none))
            .value("fold_max_abs_diff", diff);
        // A training step (forward, backward, SGD update) per normalization.
        let x = random(&mut rng, [32, 784], &device);
        let labels: Vec<usize> = (0..32).map(|i| i % 10).collect();
        let y = one_hot(&labels, 10, &device);
        for kind in STEP_KINDS {
            let mut model = Cnn2d::new(28, FASHION_WIDTHS, 10, kind, init, &device)?;
            let mut optim = Optim::new(OptimSpec::Sgd {
                lr: 0.01,
                momentum: 0.9,
            });
            let ms = best_ms(reps, 3, || {
                let loss = cross_entropy(model.logits(x.clone()), y.clone());
                let grads = loss.backward();
                model = optim.step(model.clone(), grads);
            });
            out = out.value(t(&format!("step_ms/{}", kind.slug())), ms);
        }
        Ok(out)
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let v = |k: &str| results.values("trial", &format!("{TIME_PREFIX}{k}"));
        let mut a = Analysis {
            setup: format!(
                "Timings on this machine through normkit-burn on burn's flex backend (normkit's \
                 fused kernels). LayerNorm and RMSNorm: one layer's forward and backward on \
                 [16, 64, 256] token activations. Inference: the Fashion-MNIST CNN (widths \
                 32/64/64) on a batch of 64 28×28 inputs, with BN in inference mode, with BN \
                 folded into each convolution by normkit-burn's fold_batch_norm_conv2d, and \
                 without normalization. Training: one SGD step of the same CNN at batch 32 per \
                 normalization. {} timing trials, one per seed, each the fastest of three \
                 repetitions of {} calls.",
                ctx.seeds(),
                sized(ctx.mode(), 2, 10, 30)
            ),
            ..Analysis::default()
        };
        let pct_diff = |x: Vec<f64>, y: Vec<f64>| -> Vec<f64> {
            x.iter()
                .zip(y)
                .map(|(p, q)| 100.0 * (p / q - 1.0))
                .collect()
        };
        a.effects.insert(
            "rms-vs-ln/layer-time".into(),
            v("ln_ms")
                .iter()
                .zip(v("rms_ms"))
                .map(|(l, r)| 100.0 * (l - r) / l)
                .collect(),
        );
        a.effects.insert(
            "folded-bn-vs-none/inference-time".into(),
            pct_diff(v("folded_infer_ms"), v("none_infer_ms")),
        );
        a.effects.insert(
            "unfolded-bn-vs-folded/inference-time".into(),
            pct_diff(v("bn_infer_ms"), v("folded_infer_ms")),
        );
        let diff = results.values("trial", "fold_max_abs_diff");
        let mut table = Table::new("Times in ms (means over trials)", ["what", "ms"])
            .row(["LayerNorm fwd+bwd".to_string(), num(mean(&v("ln_ms")))])
            .row(["RMSNorm fwd+bwd".to_string(), num(mean(&v("rms_ms")))])
            .row([
                "CNN inference, BN".to_string(),
                num(mean(&v("bn_infer_ms"))),
            ])
            .row([
                "CNN inference, BN folded".to_string(),
                num(mean(&v("folded_infer_ms"))),
            ])
            .row([
                "CNN inference, none".to_string(),
                num(mean(&v("none_infer_ms"))),
            ]);
        for kind in STEP_KINDS {
            table = table.row([
                format!("CNN training step, {}", kind.label()),
                num(mean(&v(&format!("step_ms/{}", kind.slug())))),
            ]);
        }
        table = table.row([
            "largest |logit difference|, folded vs BN".to_string(),
            fmt_num(diff.iter().copied().fold(0.0, f64::max)),
        ]);
        a.tables.push(table);
        let steps: Vec<Vec<f64>> = STEP_KINDS
            .iter()
            .map(|k| v(&format!("step_ms/{}", k.slug())))
            .collect();
        a.plots.push(
            Plot::bars(
                "CNN training step (batch 32)",
                "normalization",
                "ms per step",
                STEP_KINDS.iter().map(|k| k.label()),
            )
            .seeded_bars("ms", &steps),
        );
        a.plots.push(
            Plot::bars(
                "CNN inference (batch 64)",
                "network",
                "ms",
                ["BN", "BN folded", "none"],
            )
            .seeded_bars(
                "ms",
                &[v("bn_infer_ms"), v("folded_infer_ms"), v("none_infer_ms")],
            ),
        );
        a.plots.push(
            Plot::bars(
                "One layer fwd+bwd on [16, 64, 256]",
                "layer",
                "ms",
                ["LayerNorm", "RMSNorm"],
            )
            .seeded_bars("ms", &[v("ln_ms"), v("rms_ms")]),
        );
        a.result = format!(
            "RMSNorm took {}% less time than LayerNorm on average; folded BN inference was {}% \
             off the unnormalized network's, unfolded BN {}% above folded. Folding changed the \
             logits by at most {}.",
            num(mean(&a.effects["rms-vs-ln/layer-time"])),
            num(mean(&a.effects["folded-bn-vs-none/inference-time"])),
            num(mean(&a.effects["unfolded-bn-vs-folded/inference-time"])),
            fmt_num(diff.iter().copied().fold(0.0, f64::max))
        );
        Ok(a)
    }
}
