//! Experiment 1: per-layer gradient norms through a deep MLP, with and
//! without normalization, at initialization and after some training.

use super::models::{Activation, Mlp, MlpSpec, NormKind};
use super::train::{device, train_classifier, values, OptimSpec, Schedule};
use super::{num, pct, sized, FusedCounter};
use crate::study::report::{Plot, Section, Table};
use crate::study::verdict::{all_of, close_to, Judgement};
use crate::study::{Experiment, ExperimentError, StudyContext};
use burn::tensor::Gradients;

pub struct GradientFlow;

const CLAIM: &str = "Normalization keeps gradients flowing through deep networks. \
Without it, the gradient reaching each layer is multiplied by every layer above, \
so in a deep plain network per-layer gradient norms shrink (vanish) or grow \
(explode) geometrically with depth, worst with saturating nonlinearities (Glorot & \
Bengio 2010); normalizing each layer's pre-activations keeps them in a narrow band \
(Ioffe & Szegedy 2015; Ba et al. 2016; Zhang & Sennrich 2019). Batch \
Normalization itself is known to explode gradients at initialization in deep \
networks (Yang et al. 2019).";

const KINDS: [NormKind; 5] = [
    NormKind::None,
    NormKind::Batch,
    NormKind::Layer,
    NormKind::Rms,
    NormKind::Dyt,
];

/// The normalizations the verdict judges; DyT was proposed for
/// transformers, not as a cure for depth, and is shown for comparison.
const JUDGED: [NormKind; 3] = [NormKind::Batch, NormKind::Layer, NormKind::Rms];

const ACTIVATIONS: [Activation; 3] = [Activation::Sigmoid, Activation::Tanh, Activation::Relu];

/// Steps averaged for the "after training" profile.
const LATE_WINDOW: usize = 5;

/// Frobenius norm of each hidden layer's weight gradient, first layer
/// first.
fn layer_grad_norms(model: &Mlp, grads: &Gradients) -> Vec<f64> {
    model
        .blocks
        .iter()
        .map(|b| {
            b.linear
                .weight
                .grad(grads)
                .map(|g| {
                    values(g)
                        .iter()
                        .map(|&v| f64::from(v) * f64::from(v))
                        .sum::<f64>()
                        .sqrt()
                })
                .unwrap_or(f64::NAN)
        })
        .collect()
}

/// log10 of the first hidden layer's gradient norm over the last's:
/// negative when gradients vanish on their way down, positive when they
/// explode. Zero gradients give −inf, non-finite ones NaN.
fn decades(profile: &[f64]) -> f64 {
    match (profile.first(), profile.last()) {
        (Some(&first), Some(&last)) => (first / last).log10(),
        _ => f64::NAN,
    }
}

/// How many decades a gradient-norm profile spans: log10(max / min) over
/// the layers. Zero gradients give +inf, non-finite ones NaN.
fn band(profile: &[f64]) -> f64 {
    if profile.is_empty() || profile.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let hi = profile.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo = profile.iter().copied().fold(f64::INFINITY, f64::min);
    (hi / lo).log10()
}

/// What one (activation, normalization) network measured.
struct Run {
    activation: Activation,
    kind: NormKind,
    at_init: Vec<f64>,
    trained: Vec<f64>,
    accuracy: f64,
    diverged: bool,
}

impl Experiment for GradientFlow {
    fn id(&self) -> &str {
        "gradient-flow"
    }

    fn title(&self) -> &str {
        "Gradient flow through a deep MLP"
    }

    fn claim(&self) -> &str {
        CLAIM
    }

    fn run(&self, ctx: &StudyContext) -> Result<Section, ExperimentError> {
        let mode = ctx.mode();
        let split = ctx.mnist1d()?;
        let device = device();
        let fused = FusedCounter::start();
        let depth = sized(mode, 8, 16, 32);
        let width = sized(mode, 32, 64, 128);
        let steps = sized(mode, 10, 150, 600);
        let batch = 64;
        let optim = OptimSpec::Adam { lr: 1e-3 };
        let mut runs = Vec::new();
        for activation in ACTIVATIONS {
            let act = activation.label().to_lowercase();
            let init = ctx.seed_for(&format!("gradient-flow/{act}/init"));
            let order = ctx.seed_for(&format!("gradient-flow/{act}/order"));
            for kind in KINDS {
                let spec = MlpSpec {
                    inputs: split.train.example_len(),
                    width,
                    depth,
                    classes: split.train.num_classes(),
                    activation,
                };
                let model = Mlp::new(spec, kind, init, &device)?;
                let mut at_init = Vec::new();
                let mut late: Vec<Vec<f64>> = Vec::new();
                let mut hook = |step: usize, m: &Mlp, g: &Gradients| {
                    if step == 0 {
                        at_init = layer_grad_norms(m, g);
                    }
                    if step + LATE_WINDOW >= steps {
                        late.push(layer_grad_norms(m, g));
                    }
                };
                let schedule = Schedule {
                    name: format!("gradient-flow {act}/{}", kind.slug()),
                    steps,
                    batch,
                    optim,
                    eval_every: steps,
                    seed: order,
                };
                let (_, curve) = train_classifier(
                    model,
                    &split.train,
                    &split.test,
                    &schedule,
                    &device,
                    Some(&mut hook),
                );
                let trained = (0..depth)
                    .map(|l| late.iter().map(|p| p[l]).sum::<f64>() / late.len().max(1) as f64)
                    .map(|v| if late.is_empty() { f64::NAN } else { v })
                    .collect();
                runs.push(Run {
                    activation,
                    kind,
                    at_init,
                    trained,
                    accuracy: curve.final_accuracy(),
                    diverged: curve.diverged,
                });
            }
        }

        let mut section = Section::new(self.id(), self.title())
            .claim(CLAIM)
            .setup(format!(
                "MNIST-1D, an MLP of {depth} hidden layers of {width} units (linear, then the \
                 normalization, then the nonlinearity) and a linear head, PyTorch's default \
                 initialization (uniform, bound 1/√fan_in). For each nonlinearity (sigmoid, \
                 tanh, ReLU) and normalization (none, BN, LN, RMSNorm, DyT with alpha0 = 0.5) \
                 the same initialization and batches (seed streams gradient-flow/<activation>/init \
                 and /order of seed {seed}). The gradient norm of a layer is the Frobenius norm \
                 of its weight's gradient, at the first step (initialization) and averaged over \
                 steps {from}–{steps} of training with {} (batch {batch}). The gradient ratio is \
                 log10(‖∇W₁‖ / ‖∇W_{depth}‖), first hidden layer over last: negative means the \
                 gradient vanishes on its way to the input, positive that it explodes; a \
                 network's span is log10(max / min) of its layers' gradient norms. The verdict \
                 asks, for BN, LN and RMSNorm, that the widest span over their 6 networks (3 \
                 nonlinearities × 2 moments) stay within one decade (partly: two); DyT, \
                 proposed for transformers rather than depth, is shown for comparison. {}",
                optim.describe(),
                fused.sentence(),
                seed = ctx.seed(),
                from = steps.saturating_sub(LATE_WINDOW) + 1,
            ));

        let layer_points = |p: &[f64]| -> Vec<(f64, f64)> {
            p.iter()
                .enumerate()
                .map(|(i, &v)| ((i + 1) as f64, v))
                .collect()
        };
        for activation in ACTIVATIONS {
            for (when, late) in [("at initialization", false), ("after training", true)] {
                let mut plot = Plot::line(
                    format!("{}: gradient norm per layer, {when}", activation.label()),
                    "hidden layer (1 = next to the input)",
                    "‖∇W‖ (Frobenius)",
                )
                .log_y();
                for r in runs.iter().filter(|r| r.activation == activation) {
                    let p = if late { &r.trained } else { &r.at_init };
                    plot = plot.series(r.kind.label(), layer_points(p));
                }
                section = section.plot(plot);
            }
        }

        let mut table = Table::new(
            "Gradients per network, in decades: ratio log10(‖∇W₁‖ / ‖∇W_last‖) (below 0: \
             vanishing toward the input, above: exploding) and span log10(max / min) over \
             the layers; test accuracy after training",
            [
                "nonlinearity",
                "normalization",
                "ratio at init",
                "span at init",
                "ratio after training",
                "span after training",
                "test accuracy",
            ],
        );
        for r in &runs {
            let (d0, d1) = (decades(&r.at_init), decades(&r.trained));
            let key = format!("{}/{}", r.activation.label().to_lowercase(), r.kind.slug());
            section = section
                .metric(format!("{key}/decades_at_init"), d0)
                .metric(format!("{key}/decades_trained"), d1)
                .metric(format!("{key}/accuracy"), r.accuracy);
            let (b0, b1) = (band(&r.at_init), band(&r.trained));
            section = section
                .metric(format!("{key}/span_at_init"), b0)
                .metric(format!("{key}/span_trained"), b1);
            table = table.row([
                r.activation.label().to_string(),
                r.kind.label().to_string(),
                num(d0),
                num(b0),
                num(d1),
                num(b1),
                if r.diverged {
                    "diverged".into()
                } else {
                    pct(r.accuracy)
                },
            ]);
        }
        section = section.table(table);

        // The widest band any of a normalization's networks spans, at
        // either moment; a zero or non-finite gradient makes it infinite.
        let widest = |kind: NormKind| -> (f64, String) {
            runs.iter()
                .filter(|r| r.kind == kind)
                .flat_map(|r| {
                    [
                        (band(&r.at_init), r.activation, "at initialization"),
                        (band(&r.trained), r.activation, "after training"),
                    ]
                })
                .map(|(b, a, when)| (if b.is_nan() { f64::INFINITY } else { b }, a, when))
                .fold((f64::NEG_INFINITY, String::new()), |best, (b, a, when)| {
                    if b > best.0 {
                        (b, format!("{} {when}", a.label()))
                    } else {
                        best
                    }
                })
        };
        let parts: Vec<Judgement> = JUDGED
            .iter()
            .map(|&k| {
                let (b, at) = widest(k);
                close_to(b, 0.0, 1.0).prefixed(&format!(
                    "{}: widest span of per-layer gradient norms in decades ({at}; 0 = all layers equal)",
                    k.label()
                ))
            })
            .collect();
        Ok(section.judged(all_of(&parts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_spans_max_over_min() {
        assert!((band(&[1.0, 1e-3, 10.0]) - 4.0).abs() < 1e-12);
        assert_eq!(band(&[2.0]), 0.0);
        assert_eq!(band(&[0.0, 1.0]), f64::INFINITY);
        assert!(band(&[f64::NAN, 1.0]).is_nan());
        assert!(band(&[]).is_nan());
    }

    #[test]
    fn decades_sign_says_vanishing_or_exploding() {
        assert!((decades(&[1e-3, 1.0, 1.0]) + 3.0).abs() < 1e-12);
        assert!((decades(&[100.0, 1.0]) - 2.0).abs() < 1e-12);
        assert_eq!(decades(&[0.0, 1.0]), f64::NEG_INFINITY);
        assert!(decades(&[]).is_nan());
    }
}
