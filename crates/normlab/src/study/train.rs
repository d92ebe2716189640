//! Training and evaluation: tensors from batches, the cross-entropy loss,
//! optimizers, a training loop with periodic evaluation, and wall-clock
//! timing.
//!
//! Everything runs on burn's `flex` backend with autodiff, where every
//! normkit-burn layer runs normkit's fused kernels. Batch order comes from
//! the study's seeds; parameters from [`super::models`]' own generator.
//!
//! BatchNorm (and Batch Renorm) can be evaluated three ways: with the
//! running statistics training left ([`evaluate`]), with population
//! statistics recomputed over the training set after training
//! ([`recompute_population_stats`]), or with each test batch's own
//! statistics ([`evaluate_batch_stats`]).

use super::models::{Classifier, HasNorms};
use crate::study::data::{derive_seed, Dataset, Order};
use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The device every model trains on: flex with autodiff.
pub fn device() -> Device {
    Device::flex().autodiff()
}

/// A `[rows, cols]` tensor of `values`.
pub fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// One-hot rows for `labels`.
pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0.0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l] = 1.0;
    }
    matrix(v, labels.len(), classes, device)
}

/// Mean cross-entropy of `logits` against one-hot `targets`:
/// `−(1/N) Σᵢ Σ_c targets[i, c] · log_softmax(logits)[i, c]`.
///
/// # Shapes
/// - `logits`, `targets`: `[N, C]`; returns `[1]`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let n = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * targets)
        .sum()
        .mul_scalar(-1.0 / n)
}

/// The first value of a tensor, as `f64`.
pub fn scalar<const D: usize>(t: Tensor<D>) -> f64 {
    t.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

/// All values of a tensor, as `f32`.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// An optimizer and its learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimSpec {
    /// Adam (β = 0.9, 0.999; ε = 1e-8, PyTorch's).
    Adam { lr: f64 },
    /// SGD with heavy-ball momentum (no dampening, PyTorch's).
    Sgd { lr: f64, momentum: f64 },
}

impl OptimSpec {
    pub fn lr(self) -> f64 {
        match self {
            OptimSpec::Adam { lr } | OptimSpec::Sgd { lr, .. } => lr,
        }
    }

    pub fn with_lr(self, lr: f64) -> Self {
        match self {
            OptimSpec::Adam { .. } => OptimSpec::Adam { lr },
            OptimSpec::Sgd { momentum, .. } => OptimSpec::Sgd { lr, momentum },
        }
    }

    pub fn describe(self) -> String {
        match self {
            OptimSpec::Adam { lr } => format!("Adam (lr {lr})"),
            OptimSpec::Sgd { lr, momentum } => format!("SGD (lr {lr}, momentum {momentum})"),
        }
    }
}

/// burn's optimizer for an [`OptimSpec`].
pub struct Optim {
    lr: f64,
    inner: ModuleOptimizer,
}

impl Optim {
    pub fn new(spec: OptimSpec) -> Self {
        let inner = match spec {
            OptimSpec::Adam { .. } => AdamConfig::new().with_epsilon(1e-8).init(),
            OptimSpec::Sgd { momentum: 0.0, .. } => SgdConfig::new().init(),
            OptimSpec::Sgd { momentum, .. } => SgdConfig::new()
                .with_momentum(Some(
                    MomentumConfig::new()
                        .with_momentum(momentum)
                        .with_dampening(0.0),
                ))
                .init(),
        };
        Self {
            lr: spec.lr(),
            inner,
        }
    }

    /// One update of `model` from the gradients of a backward pass.
    pub fn step<M: Module>(&mut self, model: M, grads: Gradients) -> M {
        let grads = GradientsParams::from_grads(grads, &model);
        self.inner.step(self.lr, model, grads)
    }
}

/// Loss and accuracy on a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    pub loss: f64,
    pub accuracy: f64,
}

/// Evaluates `model` on `data` in inference mode (no autodiff; BatchNorm
/// uses its running statistics), 1000 examples at a time. Loss and argmax
/// are taken on the host in `f64`; a non-finite logit row counts as wrong.
pub fn evaluate<M: Classifier>(model: &M, data: &Dataset, device: &Device) -> Eval {
    let plain = device.clone().without_autodiff();
    let model = model.valid();
    let classes = data.num_classes();
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let batches = data
        .batches(1000, Order::Sequential, false)
        .unwrap_or_else(|e| panic!("batch size 1000 is positive: {e}"));
    for batch in batches {
        let n = batch.labels.len();
        let x = matrix(batch.features, n, data.example_len(), &plain);
        let logits = values(model.logits(x));
        let (l, c) = score(&logits, &batch.labels, classes);
        loss += l;
        correct += c;
    }
    let n = data.len().max(1) as f64;
    Eval {
        loss: loss / n,
        accuracy: correct as f64 / n,
    }
}

/// Loss and accuracy of logits against labels, on the host.
fn score(logits: &[f32], labels: &[usize], classes: usize) -> (f64, usize) {
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (i, &label) in labels.iter().enumerate() {
        let (l, predicted) = row_loss(&logits[i * classes..(i + 1) * classes], label);
        loss += l;
        correct += usize::from(predicted == Some(label));
    }
    (loss, correct)
}

/// `model` with BatchNorm's and Batch Renorm's running statistics replaced
/// by population statistics over `data`: the layers restart as cumulative
/// averages and see every training example once, in sequential batches of
/// `batch` (drop-last), in training mode. No parameter changes.
pub fn recompute_population_stats<M: Classifier + HasNorms>(
    model: &M,
    data: &Dataset,
    batch: usize,
    device: &Device,
) -> M {
    let mut fresh = model.clone();
    for norm in fresh.norms_mut().into_iter().flatten() {
        norm.reset_running_stats();
    }
    let batches = data
        .batches(batch.max(2), Order::Sequential, true)
        .unwrap_or_else(|e| panic!("a batch of at least 2 is positive: {e}"));
    for b in batches {
        let n = b.labels.len();
        // Only the running statistics' update is wanted.
        let _ = fresh.logits(matrix(b.features, n, data.example_len(), device));
    }
    fresh
}

/// Evaluates `model` with every normalization in training mode, so that
/// BatchNorm normalizes each test batch of `batch` examples with that
/// batch's own statistics (sequential batches; a last batch of one example,
/// which has no batch statistics, is left out and not counted). Runs on a
/// copy: `model`'s running statistics do not move.
pub fn evaluate_batch_stats<M: Classifier>(
    model: &M,
    data: &Dataset,
    batch: usize,
    device: &Device,
) -> Eval {
    let copy = model.clone();
    let classes = data.num_classes();
    let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    let batches = data
        .batches(batch.max(2), Order::Sequential, false)
        .unwrap_or_else(|e| panic!("a batch of at least 2 is positive: {e}"));
    for b in batches.filter(|b| b.labels.len() > 1) {
        let n = b.labels.len();
        let logits = values(
            copy.logits(matrix(b.features, n, data.example_len(), device))
                .detach(),
        );
        let (l, c) = score(&logits, &b.labels, classes);
        loss += l;
        correct += c;
        seen += n;
    }
    let n = seen.max(1) as f64;
    Eval {
        loss: loss / n,
        accuracy: correct as f64 / n,
    }
}

/// Cross-entropy of one row of logits and its argmax (`None` if a logit
/// is not finite).
pub fn row_loss(row: &[f32], label: usize) -> (f64, Option<usize>) {
    if row.iter().any(|v| !v.is_finite()) {
        return (f64::NAN, None);
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let argmax = row
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0;
    (lse - row[label] as f64, Some(argmax))
}

/// A training run's schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Name for progress lines ("convergence cnn/bn").
    pub name: String,
    pub steps: usize,
    pub batch: usize,
    pub optim: OptimSpec,
    /// Evaluate every this many steps (and after the last).
    pub eval_every: usize,
    /// Seed of the batch order; epoch `e` is shuffled by
    /// `derive_seed(seed, e)`.
    pub seed: u64,
}

/// What a training run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curve {
    /// Steps at which the model was evaluated (0: before training).
    pub steps: Vec<usize>,
    /// Mean training loss over the steps since the previous evaluation
    /// (NaN at step 0).
    pub train_loss: Vec<f64>,
    pub test_loss: Vec<f64>,
    pub test_accuracy: Vec<f64>,
    /// The training loss went non-finite and training stopped.
    pub diverged: bool,
    /// Steps taken.
    pub steps_done: usize,
    /// Wall-clock time of the training steps (not the evaluations).
    pub train_time: Duration,
}

impl Curve {
    pub fn final_accuracy(&self) -> f64 {
        if self.diverged {
            return f64::NAN;
        }
        self.test_accuracy.last().copied().unwrap_or(f64::NAN)
    }

    pub fn final_test_loss(&self) -> f64 {
        if self.diverged {
            return f64::NAN;
        }
        self.test_loss.last().copied().unwrap_or(f64::NAN)
    }

    /// The first evaluated step at which test accuracy reached `target`.
    pub fn steps_to(&self, target: f64) -> Option<usize> {
        self.steps
            .iter()
            .zip(&self.test_accuracy)
            .find(|(_, &a)| a >= target)
            .map(|(&s, _)| s)
    }

    /// Milliseconds per training step.
    pub fn ms_per_step(&self) -> f64 {
        if self.steps_done == 0 {
            return f64::NAN;
        }
        self.train_time.as_secs_f64() * 1e3 / self.steps_done as f64
    }

    /// Test accuracy after each evaluation, smoothed by a trailing mean
    /// over `window` evaluations (fewer at the start); NaN throughout for
    /// a diverged run.
    pub fn smoothed_accuracy(&self, window: usize) -> Vec<f64> {
        if self.diverged {
            return vec![f64::NAN; self.test_accuracy.len()];
        }
        smooth(&self.test_accuracy, window)
    }

    /// The mean test accuracy over the evaluations after step 0: the area
    /// under the accuracy curve per step when evaluations are evenly
    /// spaced. A diverged run scores `chance` from where it stopped.
    pub fn accuracy_auc(&self, planned_evals: usize, chance: f64) -> f64 {
        let got: Vec<f64> = self.test_accuracy.iter().skip(1).copied().collect();
        let missing = planned_evals.saturating_sub(got.len());
        let total: f64 = got.iter().sum::<f64>() + missing as f64 * chance;
        total / planned_evals.max(1) as f64
    }
}

/// Trailing mean over `window` values (fewer at the start).
pub fn smooth(values: &[f64], window: usize) -> Vec<f64> {
    let w = window.max(1);
    (0..values.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(w);
            let part = &values[from..=i];
            part.iter().sum::<f64>() / part.len() as f64
        })
        .collect()
}

/// The first step at which `smoothed` reaches `target`, or `None`.
pub fn first_step_at(steps: &[usize], smoothed: &[f64], target: f64) -> Option<usize> {
    steps
        .iter()
        .zip(smoothed)
        .find(|(_, &a)| a >= target)
        .map(|(&s, _)| s)
}

/// Where progress lines go; stderr unless [`set_progress_printer`] says
/// otherwise.
static PRINTER: OnceLock<Printer> = OnceLock::new();

type Printer = Box<dyn Fn(&str) + Send + Sync>;

/// Sends the experiments' progress lines (one per finished training run,
/// one every ten seconds of a long one) to `print` instead of stderr, for
/// a caller that draws its own progress display. Only the first call in a
/// process takes effect.
pub fn set_progress_printer(print: impl Fn(&str) + Send + Sync + 'static) {
    let _ = PRINTER.set(Box::new(print));
}

fn print_progress(line: &str) {
    match PRINTER.get() {
        Some(print) => print(line),
        None => eprintln!("{line}"),
    }
}

/// Reports a run's progress: a line when it ends, and one every ten
/// seconds of a long run.
pub struct Progress {
    start: Instant,
    last: Instant,
}

impl Progress {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
        }
    }

    /// A line if ten seconds passed since the last.
    pub fn tick(&mut self, what: impl FnOnce() -> String) {
        if self.last.elapsed() >= Duration::from_secs(10) {
            self.last = Instant::now();
            print_progress(&format!(
                "    {} ({:.0} s)",
                what(),
                self.start.elapsed().as_secs_f64()
            ));
        }
    }

    pub fn done(&self, what: &str) {
        print_progress(&format!(
            "    {what} ({:.1} s)",
            self.start.elapsed().as_secs_f64()
        ));
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Called on every step with the step index (from 0), the model before
/// its update, and the step's gradients.
pub type StepHook<'a, M> = &'a mut dyn FnMut(usize, &M, &Gradients);

/// Trains a classifier with cross-entropy on `train`, evaluating on `test`
/// every `eval_every` steps, and stops early if the loss goes non-finite.
/// Epochs reshuffle; a final short batch is dropped so every step sees
/// `batch` examples.
pub fn train_classifier<M: Classifier>(
    mut model: M,
    train: &Dataset,
    test: &Dataset,
    schedule: &Schedule,
    device: &Device,
    mut hook: Option<StepHook<'_, M>>,
) -> (M, Curve) {
    let mut curve = Curve::default();
    let first = evaluate(&model, test, device);
    curve.steps.push(0);
    curve.train_loss.push(f64::NAN);
    curve.test_loss.push(first.loss);
    curve.test_accuracy.push(first.accuracy);
    let mut optim = Optim::new(schedule.optim);
    let classes = train.num_classes();
    let d = train.example_len();
    let mut progress = Progress::new();
    let (mut window_loss, mut window_steps) = (0.0f64, 0usize);
    let mut step = 0usize;
    let mut epoch = 0u64;
    'epochs: while step < schedule.steps {
        let batches = train
            .batches(
                schedule.batch,
                Order::Shuffled(derive_seed(schedule.seed, epoch)),
                true,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", schedule.name));
        if batches.len() == 0 {
            panic!(
                "{}: {} training examples make no batch of {}",
                schedule.name,
                train.len(),
                schedule.batch
            );
        }
        epoch += 1;
        for batch in batches {
            if step >= schedule.steps {
                break 'epochs;
            }
            let started = Instant::now();
            let n = batch.labels.len();
            let x = matrix(batch.features, n, d, device);
            let y = one_hot(&batch.labels, classes, device);
            let loss = cross_entropy(model.logits(x), y);
            let value = scalar(loss.clone());
            if !value.is_finite() {
                curve.diverged = true;
                curve.train_time += started.elapsed();
                break 'epochs;
            }
            let grads = loss.backward();
            if let Some(h) = hook.as_mut() {
                h(step, &model, &grads);
            }
            model = optim.step(model, grads);
            curve.train_time += started.elapsed();
            step += 1;
            window_loss += value;
            window_steps += 1;
            if step % schedule.eval_every.max(1) == 0 || step == schedule.steps {
                let e = evaluate(&model, test, device);
                curve.steps.push(step);
                curve.train_loss.push(window_loss / window_steps as f64);
                curve.test_loss.push(e.loss);
                curve.test_accuracy.push(e.accuracy);
                window_loss = 0.0;
                window_steps = 0;
                progress.tick(|| {
                    format!(
                        "{}: step {step}/{}, test accuracy {:.3}",
                        schedule.name, schedule.steps, e.accuracy
                    )
                });
            }
        }
    }
    curve.steps_done = step;
    (model, curve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_loss_is_log_sum_exp_minus_the_label_logit() {
        let (l, am) = row_loss(&[0.0, 0.0], 1);
        assert!((l - 2f64.ln()).abs() < 1e-12);
        assert_eq!(am, Some(0), "ties go to the first");
        let (l, am) = row_loss(&[1.0, 3.0, 2.0], 1);
        let want = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln() - 3.0;
        assert!((l - want).abs() < 1e-12);
        assert_eq!(am, Some(1));
        let (l, am) = row_loss(&[f32::NAN, 1.0], 0);
        assert!(l.is_nan());
        assert_eq!(am, None);
    }

    #[test]
    fn smoothing_and_area_under_the_curve() {
        assert_eq!(smooth(&[1.0, 3.0, 5.0, 7.0], 2), vec![1.0, 2.0, 4.0, 6.0]);
        assert_eq!(first_step_at(&[0, 10, 20], &[0.1, 0.5, 0.9], 0.5), Some(10));
        assert_eq!(first_step_at(&[0, 10], &[0.1, 0.2], 0.5), None);
        let c = Curve {
            steps: vec![0, 10, 20],
            test_accuracy: vec![0.1, 0.5, 0.7],
            ..Curve::default()
        };
        assert!((c.accuracy_auc(2, 0.1) - 0.6).abs() < 1e-12);
        // Two of four evaluations missing (diverged): counted at chance.
        assert!((c.accuracy_auc(4, 0.1) - 0.35).abs() < 1e-12);
    }

    #[test]
    fn steps_to_finds_the_first_evaluation_at_the_target() {
        let c = Curve {
            steps: vec![0, 10, 20, 30],
            test_accuracy: vec![0.1, 0.5, 0.8, 0.7],
            ..Curve::default()
        };
        assert_eq!(c.steps_to(0.5), Some(10));
        assert_eq!(c.steps_to(0.75), Some(20));
        assert_eq!(c.steps_to(0.9), None);
    }
}
