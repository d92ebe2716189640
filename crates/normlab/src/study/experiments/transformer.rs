//! Experiment 6: a small transformer with LayerNorm, RMSNorm, DyT and no
//! normalization, and the time its normalization layers take.

use super::models::{Features, Gpt, GptSpec, Norm, NormKind};
use super::train::{
    cross_entropy, device, one_hot, points, row_loss, scalar, values, Optim, OptimSpec, Progress,
};
use super::{num, sized, FusedCounter, TIME_PREFIX};
use crate::study::data::{CharCorpus, Part, SplitMix64, TokenBatch};
use crate::study::report::{Plot, Section, Table};
use crate::study::verdict::{all_of, close_to, compare_lower_is_better};
use crate::study::{Experiment, ExperimentError, StudyContext};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::time::{Duration, Instant};

pub struct Transformer;

const CLAIM: &str = "Transformers do not need normalization layers: Dynamic Tanh, \
DyT(x) = weight · tanh(alpha · x) + bias with alpha initialized to 0.5, replaces \
LayerNorm (or RMSNorm) and matches its results, while simply removing the \
normalization trains worse or diverges (Zhu, Chen, He, LeCun & Liu 2025, \
\"Transformers without Normalization\").";

const KINDS: [NormKind; 4] = [
    NormKind::Layer,
    NormKind::Rms,
    NormKind::Dyt,
    NormKind::None,
];

fn int_tensor(ids: &[usize], shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Mean next-character cross-entropy of `model` on `batches`, in
/// inference mode, computed on the host in `f64`.
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

/// What one transformer run measured.
struct Run {
    kind: NormKind,
    steps: Vec<usize>,
    train_loss: Vec<f64>,
    val_loss: Vec<f64>,
    diverged: bool,
    steps_done: usize,
    train_time: Duration,
    /// Forward + backward of one normalization layer alone, ms.
    norm_ms: f64,
    norm_layers: usize,
}

impl Run {
    fn final_val(&self) -> f64 {
        if self.diverged {
            f64::NAN
        } else {
            self.val_loss.last().copied().unwrap_or(f64::NAN)
        }
    }

    fn ms_per_step(&self) -> f64 {
        self.train_time.as_secs_f64() * 1e3 / self.steps_done.max(1) as f64
    }

    /// Share of a training step spent in the normalization layers.
    fn norm_share(&self) -> f64 {
        self.norm_layers as f64 * self.norm_ms / self.ms_per_step()
    }
}

/// Milliseconds one normalization layer of `kind` takes for a forward and
/// a backward pass on `[b, t, d]` activations, measured alone: the layer's
/// output is reduced against fixed random weights and differentiated, and
/// the same reduction on the input without the layer is subtracted. Each
/// of `trials` trials times `reps` repetitions; the fastest trial of each
/// counts (the least disturbed by other work on the machine).
fn time_norm(
    kind: NormKind,
    shape: [usize; 3],
    reps: usize,
    trials: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    let Ok(Some(norm)) = Norm::new(kind, Features::Tokens(shape[2]), device) else {
        return 0.0;
    };
    let mut rng = SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let mut random = || -> Tensor<3> {
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    };
    let x = random().require_grad();
    let r = random();
    let once = |with_norm: bool| {
        let y = if with_norm {
            norm.forward(x.clone())
        } else {
            x.clone()
        };
        let grads = (y * r.clone()).sum().backward();
        // Reading the gradient waits for the backward pass to finish.
        x.grad(&grads).map(scalar)
    };
    let best = |with_norm: bool| -> f64 {
        once(with_norm);
        (0..trials)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..reps {
                    once(with_norm);
                }
                start.elapsed().as_secs_f64() * 1e3 / reps as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let with = best(true);
    let without = best(false);
    (with - without).max(0.0)
}

impl Experiment for Transformer {
    fn id(&self) -> &str {
        "transformer"
    }

    fn title(&self) -> &str {
        "Transformers without normalization"
    }

    fn claim(&self) -> &str {
        CLAIM
    }

    fn run(&self, ctx: &StudyContext) -> Result<Section, ExperimentError> {
        let mode = ctx.mode();
        let corpus: &CharCorpus = ctx.text()?;
        let device = device();
        let fused = FusedCounter::start();
        let vocab = corpus.vocab_size();
        let spec = GptSpec {
            vocab,
            context: sized(mode, 16, 32, 48),
            d_model: sized(mode, 16, 32, 48),
            heads: sized(mode, 2, 2, 4),
            layers: sized(mode, 1, 2, 4),
        };
        let batch = sized(mode, 4, 16, 16);
        let steps = sized(mode, 20, 400, 1500);
        let eval_every = sized(mode, 10, 25, 75);
        let val_batches = sized(mode, 2, 8, 16);
        let optim = OptimSpec::Adam { lr: 2e-3 };
        let init = ctx.seed_for("transformer/init");
        let order = ctx.seed_for("transformer/order");
        let mut val_rng = SplitMix64::new(ctx.seed_for("transformer/val"));
        let val: Vec<TokenBatch> = (0..val_batches)
            .map(|_| corpus.sample(Part::Val, batch, spec.context, &mut val_rng))
            .collect::<Result<_, _>>()?;

        let mut runs = Vec::new();
        for kind in KINDS {
            let name = format!("transformer {}", kind.slug());
            let mut model = Gpt::new(spec, kind, init, &device);
            let mut optim_state = Optim::new(optim);
            let mut rng = SplitMix64::new(order);
            let mut run = Run {
                kind,
                steps: vec![0],
                train_loss: vec![f64::NAN],
                val_loss: vec![validation_loss(&model, &val, vocab, &device)],
                diverged: false,
                steps_done: 0,
                train_time: Duration::ZERO,
                norm_ms: 0.0,
                norm_layers: if kind == NormKind::None {
                    0
                } else {
                    model.norm_layers()
                },
            };
            let mut progress = Progress::new();
            let (mut window, mut window_n) = (0.0, 0usize);
            for step in 1..=steps {
                let b = corpus.sample(Part::Train, batch, spec.context, &mut rng)?;
                let started = Instant::now();
                let tokens = int_tensor(&b.inputs, [b.batch, b.context], &device);
                let targets = one_hot(&b.targets, vocab, &device);
                let logits = model.forward(tokens).reshape([b.batch * b.context, vocab]);
                let loss = cross_entropy(logits, targets);
                let value = scalar(loss.clone());
                if !value.is_finite() {
                    run.diverged = true;
                    run.train_time += started.elapsed();
                    break;
                }
                let grads = loss.backward();
                model = optim_state.step(model, grads);
                run.train_time += started.elapsed();
                run.steps_done = step;
                window += value;
                window_n += 1;
                if step % eval_every == 0 || step == steps {
                    let v = validation_loss(&model, &val, vocab, &device);
                    run.steps.push(step);
                    run.train_loss.push(window / window_n as f64);
                    run.val_loss.push(v);
                    window = 0.0;
                    window_n = 0;
                    progress
                        .tick(|| format!("{name}: step {step}/{steps}, validation loss {v:.3}"));
                }
            }
            run.norm_ms = time_norm(
                kind,
                [batch, spec.context, spec.d_model],
                sized(mode, 5, 40, 100),
                sized(mode, 2, 5, 5),
                ctx.seed_for("transformer/timing"),
                &device,
            );
            progress.done(&format!(
                "{name}: {} steps, validation loss {}",
                run.steps_done,
                if run.diverged {
                    "diverged".into()
                } else {
                    num(run.final_val())
                }
            ));
            runs.push(run);
        }

        let mut section = Section::new(self.id(), self.title())
            .claim(CLAIM)
            .setup(format!(
                "A decoder-only character transformer (GPT-2's pre-norm layout: token and learned \
                 position embeddings, {} blocks of causal self-attention with {} heads and a 4× \
                 GELU MLP, d_model {}, context {}, a final normalization before the linear head), \
                 trained on {}; vocabulary {vocab}. Every normalization layer is LayerNorm, \
                 RMSNorm, DyT (alpha0 = 0.5, per-channel weight and bias) or the identity \
                 (none). {}, batch {batch} windows, {steps} steps; windows drawn at random \
                 (seed stream transformer/order of seed {seed}), the same for every run, from \
                 the same initialization (transformer/init). Validation loss: mean next-character \
                 cross-entropy (nats) over {val_batches} fixed batches of held-out windows \
                 (transformer/val).\n\nTime in normalization: one normalization layer is timed \
                 alone on activations of the training shape [{batch}, {}, {}], forward and \
                 backward against a fixed random upstream gradient, minus the same without the \
                 layer, fastest of several trials; multiplied by the {} normalization layers of \
                 a step and divided by the measured wall time of a training step. Timings vary \
                 between runs and machines and do not enter the verdict. The verdict asks that \
                 DyT's final validation loss land within 0.05 nats of LayerNorm's (partly: 0.1) \
                 and that removing normalization cost at least 0.05 nats against LayerNorm. {}",
                spec.layers,
                spec.heads,
                spec.d_model,
                spec.context,
                ctx.text_source(),
                optim.describe(),
                spec.context,
                spec.d_model,
                2 * spec.layers + 1,
                fused.sentence(),
                seed = ctx.seed(),
            ));

        let mut train_plot = Plot::line(
            "Training loss",
            "step",
            "cross-entropy (nats, mean since last point)",
        );
        let mut val_plot = Plot::line("Validation loss", "step", "cross-entropy (nats)");
        for r in &runs {
            train_plot = train_plot.series(r.kind.label(), points(&r.steps, &r.train_loss));
            val_plot = val_plot.series(r.kind.label(), points(&r.steps, &r.val_loss));
        }
        let labels: Vec<&str> = runs.iter().map(|r| r.kind.label()).collect();
        let step_ms: Vec<f64> = runs.iter().map(Run::ms_per_step).collect();
        let norm_ms: Vec<f64> = runs
            .iter()
            .map(|r| r.norm_layers as f64 * r.norm_ms)
            .collect();
        let time_plot = Plot::bars(
            "Time per training step and in its normalization layers",
            "normalization",
            "ms",
            labels,
        )
        .bar_series("whole step", &step_ms)
        .bar_series("in normalization", &norm_ms);
        section = section.plot(train_plot).plot(val_plot).plot(time_plot);

        let mut table = Table::new(
            "Final losses and time",
            [
                "normalization",
                "final validation loss",
                "final training loss",
                "ms per step",
                "ms per norm layer (fwd + bwd)",
                "norm layers",
                "share of the step in normalization",
            ],
        );
        for r in &runs {
            let slug = r.kind.slug();
            table = table.row([
                r.kind.label().to_string(),
                if r.diverged {
                    format!("diverged at step {}", r.steps_done + 1)
                } else {
                    num(r.final_val())
                },
                num(r.train_loss.last().copied().unwrap_or(f64::NAN)),
                num(r.ms_per_step()),
                num(r.norm_ms),
                r.norm_layers.to_string(),
                if r.norm_layers == 0 {
                    "0".into()
                } else {
                    format!("{:.1}%", 100.0 * r.norm_share())
                },
            ]);
            section = section
                .metric(format!("{slug}/final_val_loss"), r.final_val())
                .metric(format!("{TIME_PREFIX}{slug}/ms_per_step"), r.ms_per_step())
                .metric(
                    format!("{TIME_PREFIX}{slug}/norm_share"),
                    if r.norm_layers == 0 {
                        0.0
                    } else {
                        r.norm_share()
                    },
                );
        }
        section = section.table(table);

        let loss = |k: NormKind| {
            runs.iter()
                .find(|r| r.kind == k)
                .map_or(f64::NAN, Run::final_val)
        };
        let (ln, dyt, none) = (
            loss(NormKind::Layer),
            loss(NormKind::Dyt),
            loss(NormKind::None),
        );
        let parts = [
            close_to(dyt, ln, 0.05).prefixed("DyT's final validation loss vs LayerNorm's"),
            compare_lower_is_better(&[ln], &[none], 0.05)
                .prefixed("LayerNorm vs none, final validation loss"),
        ];
        Ok(section.judged(all_of(&parts)))
    }
}
