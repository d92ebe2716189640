//! Experiment 2: how fast each normalization trains the same CNN and MLP.

use super::models::{
    Activation, Classifier, Cnn1d, Cnn2d, HasNorms, Importances, Mlp, MlpSpec, NormKind,
    Unsupported,
};
use super::train::{device, train_classifier, Curve, OptimSpec, Schedule};
use super::{num, pct, sized, FusedCounter, TIME_PREFIX};
use crate::study::data::{Split, SplitMix64};
use crate::study::report::{Plot, Section, Table};
use crate::study::verdict::{all_of, ratio_at_most, Judgement};
use crate::study::{Experiment, ExperimentError, StudyContext};
use burn::tensor::Device;

pub struct Convergence;

const CLAIM: &str = "Normalization makes a network train in fewer steps. \
With Batch Normalization and nothing else changed, Inception matched its \
baseline's best ImageNet accuracy in less than half the training steps, and in \
14 times fewer once the learning rate was raised 5 times (Ioffe & Szegedy \
2015); Layer, Group, Instance, RMS and Weight Normalization and DyT were each \
proposed as making training faster or as fast (Ba et al. 2016; Wu & He 2018; \
Ulyanov et al. 2016; Zhang & Sennrich 2019; Salimans & Kingma 2016; Zhu et al. \
2025).";

/// Every normalization this experiment trains.
pub const KINDS: [NormKind; 9] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Layer,
    NormKind::Group,
    NormKind::Instance,
    NormKind::Rms,
    NormKind::Weight,
    NormKind::Dyt,
    NormKind::Switch,
];

/// MNIST-1D's published test accuracies for its baselines (Greydanus
/// 2020): the generator's sanity check.
pub const PUBLISHED_MLP: f64 = 0.68;
pub const PUBLISHED_CNN: f64 = 0.94;

/// The architectures: MNIST-1D's CNN and MLP, and a 2-D CNN for
/// Fashion-MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Cnn,
    Mlp,
    Fashion,
}

impl Arch {
    pub fn label(self) -> &'static str {
        match self {
            Arch::Cnn => "CNN",
            Arch::Mlp => "MLP",
            Arch::Fashion => "Fashion-MNIST CNN",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Arch::Cnn => "cnn",
            Arch::Mlp => "mlp",
            Arch::Fashion => "fashion",
        }
    }
}

/// The Fashion-MNIST CNN's first width (then twice that).
pub const FASHION_CHANNELS: usize = 8;

/// MNIST-1D's baseline MLP: two hidden layers of 100 ReLU units.
pub fn mnist1d_mlp_spec() -> MlpSpec {
    MlpSpec {
        inputs: 40,
        width: 100,
        depth: 2,
        classes: 10,
        activation: Activation::Relu,
    }
}

/// MNIST-1D's baseline CNN width.
pub const CNN_CHANNELS: usize = 25;

/// Trains `arch` with `kind` on `split`; `Err` when the normalization does
/// not apply to the architecture.
pub fn train_arch(
    arch: Arch,
    kind: NormKind,
    split: &Split,
    schedule: &Schedule,
    init_seed: u64,
    device: &Device,
) -> Result<Curve, Unsupported> {
    train_arch_probed(arch, kind, split, schedule, init_seed, device).map(|(c, _)| c)
}

/// [`train_arch`], also returning the trained model's SwitchNorm
/// importances, layer by layer (empty for other normalizations).
pub fn train_arch_probed(
    arch: Arch,
    kind: NormKind,
    split: &Split,
    schedule: &Schedule,
    init_seed: u64,
    device: &Device,
) -> Result<(Curve, Vec<Importances>), Unsupported> {
    fn go<M: Classifier + HasNorms>(
        m: M,
        split: &Split,
        s: &Schedule,
        device: &Device,
    ) -> (Curve, Vec<Importances>) {
        let (model, curve) = train_classifier(m, &split.train, &split.test, s, device, None);
        (curve, model.switch_importances())
    }
    Ok(match arch {
        Arch::Cnn => go(
            Cnn1d::new(40, CNN_CHANNELS, 10, kind, init_seed, device)?,
            split,
            schedule,
            device,
        ),
        Arch::Mlp => go(
            Mlp::new(mnist1d_mlp_spec(), kind, init_seed, device)?,
            split,
            schedule,
            device,
        ),
        Arch::Fashion => go(
            Cnn2d::new(28, FASHION_CHANNELS, 10, kind, init_seed, device)?,
            split,
            schedule,
            device,
        ),
    })
}

/// One architecture's runs, by normalization (`None` where it does not
/// apply, with why).
struct ArchRuns {
    arch: Arch,
    runs: Vec<(NormKind, Result<Curve, Unsupported>)>,
    /// SwitchNorm's learned importances per layer, after training.
    switch: Vec<Importances>,
    steps: usize,
    eval_every: usize,
}

impl ArchRuns {
    fn curve(&self, kind: NormKind) -> Option<&Curve> {
        self.runs
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, r)| r.as_ref().ok())
    }

    /// The baseline's best test accuracy: the target every run is timed
    /// to, as in the BN paper.
    fn target(&self) -> f64 {
        self.curve(NormKind::None)
            .filter(|c| !c.diverged)
            .map(|c| {
                c.test_accuracy
                    .iter()
                    .copied()
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .unwrap_or(f64::NAN)
    }
}

/// Steps `curve` took to reach `target`, or `None`.
fn steps_to(curve: &Curve, target: f64) -> Option<usize> {
    if curve.diverged || !target.is_finite() {
        return None;
    }
    curve.steps_to(target)
}

/// Judges "reaches the baseline's best accuracy in at most half its steps
/// (reproduced), in fewer (partly)". A run that never reaches it stands at
/// one evaluation past the budget, a lower bound that can only make it
/// look faster than it was.
fn judge_speedup(runs: &ArchRuns, kind: NormKind, budget: usize, eval_every: usize) -> Judgement {
    let what = format!("{} {} vs none", runs.arch.label(), kind.label());
    let target = runs.target();
    let (Some(base), Some(curve)) = (runs.curve(NormKind::None), runs.curve(kind)) else {
        return ratio_at_most(f64::NAN, f64::NAN, 0.5, 0.99).prefixed(&what);
    };
    let base_steps = steps_to(base, target).unwrap_or(budget) as f64;
    let (steps, note) = match steps_to(curve, target) {
        Some(s) => (s as f64, String::new()),
        None => (
            (budget + eval_every) as f64,
            format!(
                " ({} never reached it; counted as {})",
                kind.label(),
                budget + eval_every
            ),
        ),
    };
    let mut j = ratio_at_most(steps, base_steps.max(1.0), 0.5, 0.99).prefixed(&format!(
        "{what}, steps to the baseline's best accuracy {}",
        pct(target)
    ));
    j.reason.push_str(&note);
    j
}

/// Fashion-MNIST subset sizes and schedule (full mode only).
const FASHION_TRAIN: usize = 10_000;
const FASHION_TEST: usize = 1_000;
const FASHION_STEPS: usize = 600;
const FASHION_EVAL: usize = 50;

/// Fixed random subsets of Fashion-MNIST, standardized with the training
/// subset's mean and std.
fn fashion_subset(ctx: &StudyContext, train: usize, test: usize) -> Result<Split, ExperimentError> {
    let full = ctx.fashion_mnist()?;
    let mut rng = SplitMix64::new(ctx.seed_for("convergence/fashion/subset"));
    let mut pick = |n: usize, total: usize| -> Vec<usize> {
        rng.permutation(total).into_iter().take(n).collect()
    };
    let train_idx = pick(train, full.train.len());
    let test_idx = pick(test, full.test.len());
    let mut split = Split {
        train: full.train.subset(&train_idx)?,
        test: full.test.subset(&test_idx)?,
    };
    split.standardize()?;
    Ok(split)
}

impl Experiment for Convergence {
    fn id(&self) -> &str {
        "convergence"
    }

    fn title(&self) -> &str {
        "Convergence: steps to an accuracy, final accuracy, time per step"
    }

    fn claim(&self) -> &str {
        CLAIM
    }

    fn run(&self, ctx: &StudyContext) -> Result<Section, ExperimentError> {
        let mode = ctx.mode();
        let split = ctx.mnist1d()?;
        let device = device();
        let fused = FusedCounter::start();
        let steps = sized(mode, 60, 900, 4500);
        let eval_every = sized(mode, 20, 30, 150);
        let batch = 100;
        let optim = OptimSpec::Adam { lr: 1e-2 };
        // Full mode adds a 2-D CNN on a Fashion-MNIST subset when the data
        // can be found.
        let mut fashion_note = String::new();
        let mut archs = vec![(Arch::Cnn, split.clone(), steps, eval_every)];
        archs.push((Arch::Mlp, split.clone(), steps, eval_every));
        if mode == crate::study::Mode::Full {
            match fashion_subset(ctx, FASHION_TRAIN, FASHION_TEST) {
                Ok(fashion) => {
                    fashion_note = format!(
                        "\n\nFashion-MNIST CNN: {FASHION_TRAIN} training and {FASHION_TEST} test \
                         images (fixed random subsets, seed stream convergence/fashion/subset), \
                         standardized with the training mean and std; three 3×3 convolutions of \
                         {FASHION_CHANNELS}, {c2} and {c2} channels (strides 1, 2, 2), each followed \
                         by the normalization (GN: groups of 4 channels) and ReLU, global average \
                         pooling and a linear head; \
                         {FASHION_STEPS} steps, evaluated every {FASHION_EVAL}.",
                        c2 = 2 * FASHION_CHANNELS
                    );
                    archs.push((Arch::Fashion, fashion, FASHION_STEPS, FASHION_EVAL));
                }
                Err(e) => {
                    fashion_note = format!("\n\nFashion-MNIST was not used: {e}.");
                }
            }
        }
        let mut all = Vec::new();
        for (arch, data, steps, eval_every) in &archs {
            let init = ctx.seed_for(&format!("convergence/{}/init", arch.slug()));
            let order = ctx.seed_for(&format!("convergence/{}/order", arch.slug()));
            let mut runs = Vec::new();
            let mut switch = Vec::new();
            for kind in KINDS {
                let schedule = Schedule {
                    name: format!("convergence {}/{}", arch.slug(), kind.slug()),
                    steps: *steps,
                    batch,
                    optim,
                    eval_every: *eval_every,
                    seed: order,
                };
                let run = train_arch_probed(*arch, kind, data, &schedule, init, &device);
                let run = run.map(|(curve, importances)| {
                    if kind == NormKind::Switch {
                        switch = importances;
                    }
                    curve
                });
                runs.push((kind, run));
            }
            all.push(ArchRuns {
                arch: *arch,
                runs,
                switch,
                steps: *steps,
                eval_every: *eval_every,
            });
        }

        let mut section = Section::new(self.id(), self.title())
            .claim(CLAIM)
            .setup(format!(
                "MNIST-1D ({} training, {} test sequences of 40 samples, 10 classes), \
                 generated from seed {seed}. CNN: MNIST-1D's baseline (three 1-D \
                 convolutions of {CNN_CHANNELS} channels, kernel 5 then 3, stride 2, and a \
                 linear head); MLP: two hidden layers of 100 ReLU units. Each normalization \
                 sits after every convolution or hidden linear layer, before the ReLU \
                 (WeightNorm instead reparameterizes every layer's weight; LN and RMSNorm \
                 normalize over channels × positions; GN uses 5 groups of 5 channels on the \
                 CNN and 25 groups of 4 units on the MLP; IN does not apply to MLP units; \
                 SwitchNorm mixes IN, LN and BN statistics with learned softmax weights, \
                 starting equal, and on MLP units its IN part is each value itself). \
                 {}, batch {batch}, {steps} steps, test accuracy every {eval_every} steps \
                 (inference mode: BN with running statistics). All runs of one architecture \
                 start from the same initialization stream and see the same batches \
                 (seed streams convergence/<arch>/init and convergence/<arch>/order of \
                 seed {seed}).\n\nThe target accuracy is the unnormalized network's best \
                 test accuracy, as the BN paper timed its runs to its baseline's best. \
                 Wall time per step is measured on this machine and varies between runs. \
                 {}{fashion_note}",
                split.train.len(),
                split.test.len(),
                optim.describe(),
                fused.sentence(),
                seed = ctx.seed(),
            ));

        for runs in &all {
            let mut acc = Plot::line(
                format!("{}: test accuracy", runs.arch.label()),
                "step",
                "test accuracy",
            );
            let mut loss = Plot::line(
                format!("{}: training loss", runs.arch.label()),
                "step",
                "training loss (mean since last point)",
            )
            .log_y();
            for (kind, r) in &runs.runs {
                if let Ok(c) = r {
                    acc = acc.series(kind.label(), c.accuracy_points());
                    loss = loss.series(kind.label(), c.train_loss_points());
                }
            }
            section = section.plot(acc).plot(loss);
        }
        let labels: Vec<&str> = KINDS.iter().map(|k| k.label()).collect();
        let mut time_plot = Plot::bars(
            "Wall time per training step",
            "normalization",
            "ms per step",
            labels,
        );
        for runs in &all {
            let ms: Vec<f64> = KINDS
                .iter()
                .map(|&k| runs.curve(k).map_or(f64::NAN, Curve::ms_per_step))
                .collect();
            time_plot = time_plot.bar_series(runs.arch.label(), &ms);
        }
        section = section.plot(time_plot);

        // What Switchable Normalization learned to use, layer by layer.
        let mut importance_table = Table::new(
            "SwitchNorm: learned importance of each statistic after training \
             (softmax of the mean and variance logits; IN / LN / BN)",
            [
                "model",
                "layer",
                "mean: IN / LN / BN",
                "variance: IN / LN / BN",
            ],
        );
        for runs in &all {
            if runs.switch.is_empty() {
                continue;
            }
            let layers: Vec<String> = (1..=runs.switch.len())
                .map(|l| format!("layer {l}"))
                .collect();
            let mut bars = Plot::bars(
                format!("{}: SwitchNorm importances per layer", runs.arch.label()),
                "layer",
                "softmax weight",
                layers,
            );
            for (f, family) in ["IN", "LN", "BN"].iter().enumerate() {
                let mean: Vec<f64> = runs.switch.iter().map(|(m, _)| m[f] as f64).collect();
                let var: Vec<f64> = runs.switch.iter().map(|(_, v)| v[f] as f64).collect();
                bars = bars
                    .bar_series(format!("mean {family}"), &mean)
                    .bar_series(format!("var {family}"), &var);
            }
            section = section.plot(bars);
            for (l, (m, v)) in runs.switch.iter().enumerate() {
                let show = |w: &[f32; 3]| format!("{:.2} / {:.2} / {:.2}", w[0], w[1], w[2]);
                importance_table = importance_table.row([
                    runs.arch.label().to_string(),
                    (l + 1).to_string(),
                    show(m),
                    show(v),
                ]);
                for (f, family) in ["in", "ln", "bn"].iter().enumerate() {
                    let key = format!("{}/sn/layer{}", runs.arch.slug(), l + 1);
                    section = section
                        .metric(format!("{key}/mean_{family}"), m[f] as f64)
                        .metric(format!("{key}/var_{family}"), v[f] as f64);
                }
            }
        }
        section = section.table(importance_table);

        for runs in &all {
            let target = runs.target();
            let mut table = Table::new(
                format!(
                    "{}: target = the unnormalized network's best test accuracy, {}",
                    runs.arch.label(),
                    pct(target)
                ),
                [
                    "normalization",
                    "steps to target",
                    "final test accuracy",
                    "best test accuracy",
                    "final test loss",
                    "ms per step",
                ],
            );
            for (kind, r) in &runs.runs {
                let key = format!("{}/{}", runs.arch.slug(), kind.slug());
                match r {
                    Ok(c) => {
                        let reached = steps_to(c, target);
                        let best = c
                            .test_accuracy
                            .iter()
                            .copied()
                            .fold(f64::NEG_INFINITY, f64::max);
                        table = table.row([
                            kind.label().to_string(),
                            reached.map_or_else(
                                || {
                                    if c.diverged {
                                        "diverged".into()
                                    } else {
                                        "not reached".into()
                                    }
                                },
                                |s| s.to_string(),
                            ),
                            pct(c.final_accuracy()),
                            pct(best),
                            num(c.final_test_loss()),
                            num(c.ms_per_step()),
                        ]);
                        section = section
                            .metric(format!("{key}/final_accuracy"), c.final_accuracy())
                            .metric(
                                format!("{key}/steps_to_target"),
                                reached.map_or(f64::NAN, |s| s as f64),
                            )
                            .metric(format!("{TIME_PREFIX}{key}/ms_per_step"), c.ms_per_step());
                    }
                    Err(e) => {
                        table = table.row([
                            kind.label().to_string(),
                            "n/a".into(),
                            "n/a".into(),
                            "n/a".into(),
                            "n/a".into(),
                            format!("not applicable: {}", e.why),
                        ]);
                    }
                }
            }
            section = section.table(table);
        }

        // The generator's sanity check against the published baselines.
        let none_acc = |arch: Arch| {
            all.iter()
                .find(|r| r.arch == arch)
                .and_then(|r| r.curve(NormKind::None))
                .map_or(f64::NAN, Curve::final_accuracy)
        };
        let (mlp, cnn) = (none_acc(Arch::Mlp), none_acc(Arch::Cnn));
        section = section
            .metric("sanity/mlp_none_accuracy", mlp)
            .metric("sanity/cnn_none_accuracy", cnn)
            .table(
                Table::new(
                    format!(
                        "MNIST-1D sanity check (unnormalized baselines; published after \
                         6000 steps, this run {steps})"
                    ),
                    ["model", "published test accuracy", "this run"],
                )
                .row(["MLP".to_string(), pct(PUBLISHED_MLP), pct(mlp)])
                .row(["CNN".to_string(), pct(PUBLISHED_CNN), pct(cnn)]),
            );

        let mut parts = Vec::new();
        for runs in &all {
            parts.push(judge_speedup(
                runs,
                NormKind::Batch,
                runs.steps,
                runs.eval_every,
            ));
        }
        Ok(section.judged(all_of(&parts)))
    }
}
