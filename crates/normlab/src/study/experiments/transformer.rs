//! Transformers without normalization: a small character transformer with
//! LayerNorm, RMSNorm, DyT (alpha0 0.5, 1, 2) and nothing, and a
//! learning-rate sweep for LayerNorm and nothing.

use super::common::{config, grid, kind_named, replicate, seeded_curve, seeds_sentence, sized};
use crate::study::data::{CharCorpus, Part, SplitMix64, TokenBatch};
use crate::study::fmt::{fmt_num, num};
use crate::study::jobs::{Job, JobOutput, Results};
use crate::study::models::{Gpt, GptSpec, NormKind};
use crate::study::report::{Plot, Table};
use crate::study::stats::mean;
use crate::study::train::{
    cross_entropy, device, one_hot, row_loss, scalar, values, Optim, OptimSpec,
};
use crate::study::verdict::{Claim, Direction};
use crate::study::{Analysis, Experiment, ExperimentError, Mode, StudyContext};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub struct Transformer;

const ID: &str = "transformer";
/// The learning rate every normalization trains at; LN and none also
/// sweep `LRS`.
const BASE_LR: f64 = 2e-3;
const ALPHAS: [f64; 3] = [0.5, 1.0, 2.0];
const KINDS: [NormKind; 4] = [
    NormKind::Layer,
    NormKind::Rms,
    NormKind::Dyt,
    NormKind::None,
];
/// DyT's equivalence margin against LN, in nats.
const MARGIN: f64 = 0.05;

#[derive(Serialize, Deserialize)]
struct Arm {
    kind: String,
    alpha0: f64,
    lr: f64,
}

fn lrs(mode: Mode) -> Vec<f64> {
    sized(
        mode,
        vec![BASE_LR],
        vec![5e-4, BASE_LR, 8e-3],
        vec![5e-4, 1e-3, BASE_LR, 4e-3, 8e-3],
    )
}

fn spec(mode: Mode, vocab: usize) -> (GptSpec, usize, usize) {
    let spec = GptSpec {
        vocab,
        context: sized(mode, 16, 32, 64),
        d_model: sized(mode, 16, 32, 64),
        heads: sized(mode, 2, 2, 4),
        layers: sized(mode, 1, 2, 4),
    };
    (spec, sized(mode, 4, 16, 32), sized(mode, 10, 150, 2000))
}

fn arm_name(kind: NormKind, alpha0: f64, lr: f64) -> String {
    if kind == NormKind::Dyt {
        format!("dyt/alpha{}/lr{}", fmt_num(alpha0), fmt_num(lr))
    } else {
        format!("{}/lr{}", kind.slug(), fmt_num(lr))
    }
}

fn int_tensor(ids: &[usize], shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Mean next-character cross-entropy of `model` on `batches`, in
/// inference mode, on the host in `f64`.
fn validation_loss(model: &Gpt, batches: &[TokenBatch], vocab: usize, device: &Device) -> f64 {
    let plain = device.clone().without_autodiff();
    let model = model.valid();
    let (mut sum, mut n) = (0.0, 0usize);
    for b in batches {
        let logits = values(model.forward(int_tensor(&b.inputs, [b.batch, b.context], &plain)));
        for (i, &target) in b.targets.iter().enumerate() {
            sum += row_loss(&logits[i * vocab..(i + 1) * vocab], target).0;
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

impl Experiment for Transformer {
    fn id(&self) -> &'static str {
        ID
    }

    fn title(&self) -> &'static str {
        "Transformers without normalization: DyT"
    }

    fn topic(&self) -> &'static str {
        "DyT"
    }

    fn claim(&self) -> &'static str {
        "Transformers do not need normalization layers: Dynamic Tanh, DyT(x) = weight · \
         tanh(alpha · x) + bias with alpha initialized to alpha0 (0.5 by default), replaces \
         LayerNorm and matches its results, while simply removing the normalization trains \
         worse or diverges (Zhu, Chen, He, LeCun & Liu 2025, \"Transformers without \
         Normalization\"; their LLaMA losses with DyT are within 0.01–0.02 of RMSNorm's). \
         RMSNorm matches LayerNorm (Zhang & Sennrich 2019)."
    }

    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        let within = |key: String, what: &str| {
            Claim::new(
                key,
                format!("{what} reaches LayerNorm's validation loss within {MARGIN} nats."),
                format!("validation loss, {what} − LN (both at lr {BASE_LR})"),
                "nats",
                Direction::Within,
                MARGIN,
                "practical threshold: 0.05 nats, 5% perplexity (the paper's LLaMA gaps are \
                 0.01–0.02)",
            )
        };
        let mut claims = vec![within("dyt0.5-vs-ln".into(), "DyT (alpha0 = 0.5)")];
        for a in &ALPHAS[1..] {
            claims.push(within(
                format!("dyt{}-vs-ln", fmt_num(*a)),
                &format!("DyT (alpha0 = {})", fmt_num(*a)),
            ));
        }
        claims.push(within("rms-vs-ln".into(), "RMSNorm"));
        claims.push(Claim::new(
            "none-vs-ln/best-lr",
            "Without normalization the transformer ends at least 0.05 nats worse than with \
             LN, each at its best learning rate of the sweep.",
            "validation loss, none − LN, each at the sweep's best learning rate (by mean)",
            "nats",
            Direction::AtLeast,
            MARGIN,
            "practical threshold: 0.05 nats",
        ));
        claims
    }

    fn caveats(&self) -> Vec<&'static str> {
        vec![
            "A toy transformer (2 layers, d_model 32 in quick mode) trained for a few hundred \
             steps: the paper's claim is about large models trained to convergence.",
            "The best learning rate of the sweep is chosen by its mean over seeds and then \
             compared, which favours both arms equally but is a selection.",
            "A diverged run counts as the uniform predictor's loss, ln(vocabulary).",
        ]
    }

    fn references(&self) -> Vec<&'static str> {
        vec![
            "Zhu, Chen, He, LeCun & Liu 2025, Transformers without Normalization (CVPR).",
            "Ba, Kiros & Hinton 2016, Layer Normalization.",
            "Zhang & Sennrich 2019, Root Mean Square Layer Normalization.",
            "Radford et al. 2019, Language Models are Unsupervised Multitask Learners (GPT-2's pre-norm layout).",
        ]
    }

    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        let mut arms = Vec::new();
        let mut push = |kind: NormKind, alpha0: f64, lr: f64| {
            arms.push((
                arm_name(kind, alpha0, lr),
                Arm {
                    kind: kind.slug(),
                    alpha0,
                    lr,
                },
            ));
        };
        for lr in lrs(ctx.mode()) {
            push(NormKind::Layer, 0.5, lr);
            push(NormKind::None, 0.5, lr);
        }
        for a in ALPHAS {
            push(NormKind::Dyt, a, BASE_LR);
        }
        push(NormKind::Rms, 0.5, BASE_LR);
        Ok(grid(ID, &arms, ctx.seeds()))
    }

    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        let arm: Arm = config(job)?;
        let corpus: &CharCorpus = ctx.text()?;
        let device = device();
        let vocab = corpus.vocab_size();
        let (spec, batch, steps) = spec(ctx.mode(), vocab);
        let (init, order) = replicate(ctx, ID, job.replicate);
        let mut val_rng = SplitMix64::new(ctx.seed_for(&format!("{ID}/val")));
        let val: Vec<TokenBatch> = (0..sized(ctx.mode(), 2, 8, 20))
            .map(|_| corpus.sample(Part::Val, batch, spec.context, &mut val_rng))
            .collect::<Result<_, _>>()?;
        let kind = kind_named(&KINDS, &arm.kind);
        let mut model = Gpt::new(spec, kind, arm.alpha0, init, &device);
        let mut optim = Optim::new(OptimSpec::Adam { lr: arm.lr });
        let mut rng = SplitMix64::new(order);
        let eval_every = (steps / 10).max(1);
        let (mut at, mut val_curve) = (
            vec![0.0],
            vec![validation_loss(&model, &val, vocab, &device)],
        );
        let mut diverged = false;
        for step in 1..=steps {
            let b = corpus.sample(Part::Train, batch, spec.context, &mut rng)?;
            let tokens = int_tensor(&b.inputs, [b.batch, b.context], &device);
            let targets = one_hot(&b.targets, vocab, &device);
            let logits = model.forward(tokens).reshape([b.batch * b.context, vocab]);
            let loss = cross_entropy(logits, targets);
            if !scalar(loss.clone()).is_finite() {
                diverged = true;
                break;
            }
            model = optim.step(model, loss.backward());
            if step % eval_every == 0 || step == steps {
                at.push(step as f64);
                val_curve.push(validation_loss(&model, &val, vocab, &device));
            }
        }
        let uniform = (vocab as f64).ln();
        let last = val_curve.last().copied().unwrap_or(f64::NAN);
        let final_loss = if diverged || !last.is_finite() {
            uniform
        } else {
            last
        };
        Ok(JobOutput::default()
            .value("val_loss", final_loss)
            .value("diverged", f64::from(u8::from(diverged)))
            .curve("val_loss", val_curve)
            .curve("steps", at))
    }

    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let vocab = ctx.text().map(|c| c.vocab_size()).unwrap_or(0);
        let (spec, batch, steps) = spec(ctx.mode(), vocab);
        let sweep = lrs(ctx.mode());
        let mut a = Analysis {
            setup: format!(
                "A decoder-only character transformer (GPT-2's pre-norm layout: token and learned \
                 position embeddings, {} blocks of causal self-attention with {} heads and a 4× \
                 GELU MLP, d_model {}, context {}, a final normalization before the head), \
                 trained on {}; vocabulary {vocab}. Every normalization layer is LayerNorm, \
                 RMSNorm, DyT (alpha0 0.5, 1 or 2; per-channel weight and bias) or the identity. \
                 Adam, batch {batch} windows, {steps} steps; LN and none at learning rates {:?}, \
                 DyT and RMSNorm at {BASE_LR}. Validation loss: mean next-character \
                 cross-entropy (nats) over fixed held-out windows. {}",
                spec.layers,
                spec.heads,
                spec.d_model,
                spec.context,
                ctx.text_source(),
                sweep,
                seeds_sentence(ctx, ID)
            ),
            ..Analysis::default()
        };
        let loss = |name: &str| results.values(name, "val_loss");
        let ln = loss(&arm_name(NormKind::Layer, 0.5, BASE_LR));
        let vs_ln = |x: Vec<f64>| -> Vec<f64> { x.iter().zip(&ln).map(|(p, q)| p - q).collect() };
        for al in ALPHAS {
            a.effects.insert(
                format!("dyt{}-vs-ln", fmt_num(al)),
                vs_ln(loss(&arm_name(NormKind::Dyt, al, BASE_LR))),
            );
        }
        a.effects.insert(
            "rms-vs-ln".into(),
            vs_ln(loss(&arm_name(NormKind::Rms, 0.5, BASE_LR))),
        );
        let best = |kind: NormKind| -> (f64, Vec<f64>) {
            sweep
                .iter()
                .map(|&lr| (lr, loss(&arm_name(kind, 0.5, lr))))
                .min_by(|x, y| mean(&x.1).total_cmp(&mean(&y.1)))
                .unwrap_or((f64::NAN, Vec::new()))
        };
        let (ln_lr, ln_best) = best(NormKind::Layer);
        let (none_lr, none_best) = best(NormKind::None);
        a.effects.insert(
            "none-vs-ln/best-lr".into(),
            none_best.iter().zip(&ln_best).map(|(n, l)| n - l).collect(),
        );
        let mut sweep_plot =
            Plot::line("Validation loss by learning rate", "learning rate", "nats").log_x();
        for kind in [NormKind::Layer, NormKind::None] {
            let pts = sweep
                .iter()
                .map(|&lr| (lr, loss(&arm_name(kind, 0.5, lr))))
                .collect();
            sweep_plot = sweep_plot.seeded_series(kind.label(), pts);
        }
        let mut curves = Plot::line(
            format!("Validation loss during training (lr {BASE_LR})"),
            "step",
            "nats",
        );
        let mut table = Table::new(
            "Final validation loss (nats, mean over seeds)",
            ["arm", "validation loss", "diverged runs"],
        );
        let mut names: Vec<(String, String)> = sweep
            .iter()
            .flat_map(|&lr| {
                [NormKind::Layer, NormKind::None].map(|k| {
                    (
                        arm_name(k, 0.5, lr),
                        format!("{} lr {}", k.label(), fmt_num(lr)),
                    )
                })
            })
            .collect();
        names.extend(ALPHAS.iter().map(|&al| {
            (
                arm_name(NormKind::Dyt, al, BASE_LR),
                format!("DyT alpha0 {}", fmt_num(al)),
            )
        }));
        names.push((arm_name(NormKind::Rms, 0.5, BASE_LR), "RMSNorm".into()));
        for (name, label) in &names {
            let diverged: f64 = results.values(name, "diverged").iter().sum();
            table = table.row([label.clone(), num(mean(&loss(name))), format!("{diverged}")]);
            a.metrics.insert(format!("{name}/val_loss"), loss(name));
            if name.contains(&format!("lr{}", fmt_num(BASE_LR))) {
                curves =
                    curves.seeded_series(label.clone(), seeded_curve(results, name, "val_loss"));
            }
        }
        let keys: Vec<String> = [
            "dyt0.5-vs-ln",
            "dyt1-vs-ln",
            "dyt2-vs-ln",
            "rms-vs-ln",
            "none-vs-ln/best-lr",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let diff = Plot::bars(
            "Validation loss minus LayerNorm's",
            "arm",
            "nats",
            keys.clone(),
        )
        .guide(MARGIN, "+margin")
        .guide(-MARGIN, "−margin")
        .seeded_bars(
            "difference",
            &keys
                .iter()
                .map(|k| a.effects[k].clone())
                .collect::<Vec<_>>(),
        );
        a.plots.extend([curves, sweep_plot, diff]);
        a.tables.push(table);
        a.result = format!(
            "DyT (alpha0 0.5) ended {} nats from LayerNorm on average; LayerNorm's best learning \
             rate was {}, none's {}, and none ended {} nats above LayerNorm at them.",
            num(mean(&a.effects["dyt0.5-vs-ln"])),
            fmt_num(ln_lr),
            fmt_num(none_lr),
            num(mean(&a.effects["none-vs-ln/best-lr"]))
        );
        Ok(a)
    }
}
