//! The study's data: MNIST-1D generated from its templates, Fashion-MNIST
//! read from IDX files, and characters for a language model, all held as
//! one in-memory [`Dataset`] type with a deterministic mini-batch iterator.
//!
//! Everything random here draws from [`SplitMix64`], so the same seed gives
//! the same bytes on every machine and every run.

use std::f64::consts::PI;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why data could not be loaded or built. Errors about a file name it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not found (looked for {name} and {name}.gz)", dir.join(name).display())]
    Missing { dir: PathBuf, name: String },
    #[error("{}: corrupt gzip data: {source}", path.display())]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: wrong magic number {found:#010x}, expected {expected:#010x} (IDX, unsigned bytes, {} dimensions)", path.display(), expected & 0xff)]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{}: truncated: {expected} bytes expected from its header, found {found}", path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{}: {found} bytes where its header implies {expected}: trailing data", path.display())]
    TrailingData {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{} has {images} images but {} has {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        labels_path: PathBuf,
        images: usize,
        labels: usize,
    },
    #[error("{}: label {label} at index {index} is not one of the {classes} classes", path.display())]
    BadLabel {
        path: PathBuf,
        index: usize,
        label: usize,
        classes: usize,
    },
    #[error("{}: not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{what}: {found} tokens, at least {needed} needed")]
    TooShort {
        what: String,
        needed: usize,
        found: usize,
    },
    #[error("character {ch:?} is not in the vocabulary")]
    UnknownChar { ch: char },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

fn invalid(what: &'static str, reason: impl Into<String>) -> DataError {
    DataError::Invalid {
        what,
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea & Flood 2014): a 64-bit counter passed through a
/// bijective mixer. Small, fast, and identical everywhere, which is all the
/// study asks of a generator. Normal deviates use Box–Muller.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
    /// Box–Muller makes deviates in pairs; the second waits here.
    spare_normal: Option<f64>,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for an independent stream (an epoch, a repeat, a model) derived
/// from a base seed, so nearby streams do not share sequences.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    mix64(seed ^ mix64(stream.wrapping_add(GOLDEN_GAMMA)))
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare_normal: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` without modulo bias (Lemire 2019); 0 when
    /// `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Standard normal deviate (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * PI * u2).sin_cos();
        self.spare_normal = Some(r * s);
        r * c
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A uniformly random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}

// ---------------------------------------------------------------------------
// Dataset and mini-batches
// ---------------------------------------------------------------------------

/// Labelled examples held in memory.
///
/// # Shapes
/// - `features`: `[len, example_shape...]`, row-major `f32`
/// - `labels`: `[len]`, each in `0..num_classes`
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: Vec<f32>,
    labels: Vec<usize>,
    example_shape: Vec<usize>,
    num_classes: usize,
}

impl Dataset {
    /// Checks that `features` holds one example of `example_shape` per
    /// label and that every label is below `num_classes`.
    pub fn new(
        features: Vec<f32>,
        labels: Vec<usize>,
        example_shape: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let example_len = example_shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                invalid(
                    "dataset",
                    format!("example shape {example_shape:?} must be non-empty"),
                )
            })?;
        if labels.len().checked_mul(example_len) != Some(features.len()) {
            return Err(invalid(
                "dataset",
                format!(
                    "{} features do not hold {} examples of shape {example_shape:?}",
                    features.len(),
                    labels.len()
                ),
            ));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
            return Err(invalid(
                "dataset",
                format!("label {l} at index {i} is not below num_classes = {num_classes}"),
            ));
        }
        Ok(Self {
            features,
            labels,
            example_shape,
            num_classes,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn features(&self) -> &[f32] {
        &self.features
    }

    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    pub fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }

    /// Number of `f32` values per example.
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// `[len, example_shape...]`.
    pub fn shape(&self) -> Vec<usize> {
        let mut s = vec![self.len()];
        s.extend_from_slice(&self.example_shape);
        s
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Features of example `i`, if there is one.
    pub fn example(&self, i: usize) -> Option<&[f32]> {
        let n = self.example_len();
        let start = i.checked_mul(n)?;
        self.features.get(start..start.checked_add(n)?)
    }

    /// How many examples each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// The examples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let n = self.example_len();
        let mut features = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let x = self.example(i).ok_or_else(|| {
                invalid(
                    "subset",
                    format!("index {i} is out of range for {} examples", self.len()),
                )
            })?;
            features.extend_from_slice(x);
            labels.push(self.labels[i]);
        }
        Ok(Dataset {
            features,
            labels,
            example_shape: self.example_shape.clone(),
            num_classes: self.num_classes,
        })
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            features: self.features[..n * self.example_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            example_shape: self.example_shape.clone(),
            num_classes: self.num_classes,
        }
    }

    /// Mean and population standard deviation over every feature value.
    pub fn feature_mean_std(&self) -> (f64, f64) {
        mean_std(self.features.iter().map(|&v| f64::from(v)))
    }

    /// `x ← (x − mean) / std` for every feature value.
    pub fn standardize(&mut self, mean: f64, std: f64) -> Result<(), DataError> {
        if !(mean.is_finite() && std.is_finite() && std > 0.0) {
            return Err(invalid(
                "standardize",
                format!("needs a finite mean and a positive std, got {mean} and {std}"),
            ));
        }
        for v in &mut self.features {
            *v = ((f64::from(*v) - mean) / std) as f32;
        }
        Ok(())
    }

    /// Mini-batches over the whole dataset: in order, or shuffled by a
    /// seed (use [`derive_seed`]`(seed, epoch)` for a new order each
    /// epoch). With `drop_last`, a final short batch is left out, which
    /// keeps batch statistics comparable across batches.
    pub fn batches(
        &self,
        batch_size: usize,
        order: Order,
        drop_last: bool,
    ) -> Result<Batches<'_>, DataError> {
        if batch_size == 0 {
            return Err(invalid("batches", "batch_size must be positive"));
        }
        let indices = match order {
            Order::Sequential => (0..self.len()).collect(),
            Order::Shuffled(seed) => SplitMix64::new(seed).permutation(self.len()),
        };
        let len = if drop_last {
            self.len() / batch_size * batch_size
        } else {
            self.len()
        };
        Ok(Batches {
            dataset: self,
            indices,
            len,
            batch_size,
            pos: 0,
        })
    }
}

fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let (n, sum) = values
        .clone()
        .fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / n as f64;
    let ss: f64 = values.map(|v| (v - mean) * (v - mean)).sum();
    (mean, (ss / n as f64).sqrt())
}

/// The order in which [`Dataset::batches`] visits examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Sequential,
    /// A permutation drawn from this seed.
    Shuffled(u64),
}

/// One mini-batch, copied out of its dataset.
///
/// # Shapes
/// - `features`: `shape` = `[batch, example_shape...]`, row-major
/// - `labels`: `[batch]`
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub features: Vec<f32>,
    pub labels: Vec<usize>,
    pub shape: Vec<usize>,
}

/// Iterator over mini-batches; see [`Dataset::batches`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    dataset: &'a Dataset,
    indices: Vec<usize>,
    /// Examples visited: all, or all but a short last batch.
    len: usize,
    batch_size: usize,
    pos: usize,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.pos >= self.len {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.len);
        let n = self.dataset.example_len();
        let mut features = Vec::with_capacity((end - self.pos) * n);
        let mut labels = Vec::with_capacity(end - self.pos);
        for &i in &self.indices[self.pos..end] {
            features.extend_from_slice(&self.dataset.features[i * n..(i + 1) * n]);
            labels.push(self.dataset.labels[i]);
        }
        self.pos = end;
        let mut shape = vec![labels.len()];
        shape.extend_from_slice(&self.dataset.example_shape);
        Some(Batch {
            features,
            labels,
            shape,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.len - self.pos).div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}

/// A train/test pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}

impl Split {
    /// Standardizes both parts with the training set's mean and std, so
    /// nothing about the test set leaks into the inputs.
    pub fn standardize(&mut self) -> Result<(), DataError> {
        let (mean, std) = self.train.feature_mean_std();
        self.train.standardize(mean, std)?;
        self.test.standardize(mean, std)
    }
}

// ---------------------------------------------------------------------------
// MNIST-1D
// ---------------------------------------------------------------------------

/// The ten MNIST-1D digit templates (Greydanus 2020, "Scaling down deep
/// learning"): 12-point 1-D strokes, one per digit, before whitening.
const MNIST1D_TEMPLATES: [[f64; 12]; 10] = [
    [5.0, 6.0, 6.5, 6.75, 7.0, 7.0, 7.0, 7.0, 6.75, 6.5, 6.0, 5.0],
    [5.0, 3.0, 3.0, 3.4, 3.8, 4.2, 4.6, 5.0, 5.4, 5.8, 5.0, 5.0],
    [5.0, 6.0, 6.5, 6.5, 6.0, 5.25, 4.75, 4.0, 3.5, 3.5, 4.0, 5.0],
    [5.0, 6.0, 6.5, 6.5, 6.0, 5.0, 5.0, 6.0, 6.5, 6.5, 6.0, 5.0],
    [5.0, 4.4, 3.8, 3.2, 2.6, 2.6, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
    [5.0, 3.0, 3.0, 3.0, 3.0, 5.0, 6.0, 6.5, 6.5, 6.0, 4.5, 5.0],
    [5.0, 4.0, 3.5, 3.25, 3.0, 3.0, 3.0, 3.0, 3.25, 3.5, 4.0, 5.0],
    [5.0, 7.0, 7.0, 6.6, 6.2, 5.8, 5.4, 5.0, 4.6, 4.2, 5.0, 5.0],
    [5.0, 4.0, 3.5, 3.5, 4.0, 5.0, 5.0, 4.0, 3.5, 3.5, 4.0, 5.0],
    [5.0, 4.0, 3.5, 3.5, 4.0, 5.0, 5.0, 5.0, 5.0, 4.7, 4.3, 5.0],
];

/// Points per template.
pub const MNIST1D_TEMPLATE_LEN: usize = 12;

/// MNIST-1D's generator settings; the defaults are the original's, which
/// give 4,000 training and 1,000 test sequences of 40 points.
///
/// Each example is its digit's template, whitened, then: padded with
/// `padding` zeros (a random count), stretched to `12 + padding.1` points,
/// scaled by `1 + scale_coeff·(u − ½)`, rotated right by up to
/// `max_translation − 1`, its padding replaced by Gaussian-smoothed noise
/// (σ = 2 samples) of scale `corr_noise_scale`, plus white noise of scale
/// `iid_noise_scale`, sheared by a line of slope `shear_scale·(u − ½)`, and
/// resampled to `final_seq_length` points. The whole set is then shuffled,
/// standardized with one mean and std, and split.
#[derive(Debug, Clone, PartialEq)]
pub struct Mnist1dConfig {
    pub num_samples: usize,
    pub train_split: f64,
    pub padding: (usize, usize),
    pub scale_coeff: f64,
    pub max_translation: usize,
    pub corr_noise_scale: f64,
    pub iid_noise_scale: f64,
    pub shear_scale: f64,
    pub final_seq_length: usize,
    pub seed: u64,
}

impl Default for Mnist1dConfig {
    fn default() -> Self {
        Self {
            num_samples: 5000,
            train_split: 0.8,
            padding: (36, 60),
            scale_coeff: 0.4,
            max_translation: 48,
            corr_noise_scale: 0.25,
            iid_noise_scale: 2e-2,
            shear_scale: 0.75,
            final_seq_length: 40,
            seed: 42,
        }
    }
}

impl Mnist1dConfig {
    fn check(&self) -> Result<(), DataError> {
        let bad = |reason: String| Err(invalid("MNIST-1D config", reason));
        if self.num_samples < 10 {
            return bad(format!(
                "num_samples = {} gives no example of some digit",
                self.num_samples
            ));
        }
        if !(self.train_split > 0.0 && self.train_split < 1.0) {
            return bad(format!(
                "train_split = {} must lie in (0, 1)",
                self.train_split
            ));
        }
        if self.padding.0 > self.padding.1 {
            return bad(format!("padding {:?} must be (low, high)", self.padding));
        }
        if self.max_translation == 0 || self.final_seq_length < 2 {
            return bad(format!(
                "max_translation = {} and final_seq_length = {} must be at least 1 and 2",
                self.max_translation, self.final_seq_length
            ));
        }
        for (name, v) in [
            ("scale_coeff", self.scale_coeff),
            ("corr_noise_scale", self.corr_noise_scale),
            ("iid_noise_scale", self.iid_noise_scale),
            ("shear_scale", self.shear_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} = {v} must be finite and non-negative"));
            }
        }
        Ok(())
    }
}

/// The templates as the generator uses them: each whitened to zero mean
/// and unit (population) std, shifted to start at 0 (every template starts
/// and ends at the same level, so it also ends at 0), and divided by 6.
pub fn mnist1d_templates() -> [[f64; MNIST1D_TEMPLATE_LEN]; 10] {
    MNIST1D_TEMPLATES.map(|t| {
        let (mean, std) = mean_std(t.iter().copied());
        let w = t.map(|v| (v - mean) / std);
        w.map(|v| (v - w[0]) / 6.0)
    })
}

/// Builds MNIST-1D from its templates; deterministic in `config.seed`.
///
/// # Shapes
/// - `train`, `test`: examples of shape `[final_seq_length]`, 10 classes.
///   `num_samples / 10` examples per digit in all, split after shuffling.
pub fn mnist1d(config: &Mnist1dConfig) -> Result<Split, DataError> {
    config.check()?;
    let templates = mnist1d_templates();
    let per_class = config.num_samples / templates.len();
    let total = per_class * templates.len();
    let seq = config.final_seq_length;
    let mut rng = SplitMix64::new(config.seed);
    let mut xs = Vec::with_capacity(total * seq);
    let mut ys = Vec::with_capacity(total);
    for (label, template) in templates.iter().enumerate() {
        for _ in 0..per_class {
            xs.extend(mnist1d_example(template, config, &mut rng));
            ys.push(label);
        }
    }
    let order = rng.permutation(total);
    let (mean, std) = mean_std(xs.iter().copied());
    let std = if std > 0.0 { std } else { 1.0 };
    let mut features = Vec::with_capacity(total * seq);
    let mut labels = Vec::with_capacity(total);
    for &i in &order {
        features.extend(
            xs[i * seq..(i + 1) * seq]
                .iter()
                .map(|&v| ((v - mean) / std) as f32),
        );
        labels.push(ys[i]);
    }
    let n_train = ((total as f64 * config.train_split) as usize).clamp(1, total - 1);
    let test_features = features.split_off(n_train * seq);
    let test_labels = labels.split_off(n_train);
    Ok(Split {
        train: Dataset::new(features, labels, vec![seq], 10)?,
        test: Dataset::new(test_features, test_labels, vec![seq], 10)?,
    })
}

/// One transformed template; the random draws come in the original's order.
fn mnist1d_example(template: &[f64], c: &Mnist1dConfig, rng: &mut SplitMix64) -> Vec<f64> {
    // A tiny offset keeps the stroke nonzero everywhere, so after stretching
    // the exact zeros are the padding and nothing else.
    const EPS: f64 = 1e-8;
    let (low, high) = c.padding;
    let pad = low + (rng.next_f64() * (high - low + 1) as f64) as usize;
    let mut x: Vec<f64> = template.iter().map(|v| v + EPS).collect();
    x.resize(template.len() + pad, 0.0);
    let mut x = interpolate(&x, template.len() + high);
    let n = x.len();

    let scale = 1.0 + c.scale_coeff * (rng.next_f64() - 0.5);
    x.iter_mut().for_each(|v| *v *= scale);

    let shift = rng.below(c.max_translation as u64) as usize % n;
    x.rotate_right(shift);

    let noise: Vec<f64> = (0..n).map(|_| c.corr_noise_scale * rng.normal()).collect();
    let noise = gaussian_smooth(&noise, 2.0);
    for (v, z) in x.iter_mut().zip(noise) {
        if *v == 0.0 {
            *v = z;
        }
    }
    for v in x.iter_mut() {
        *v += c.iid_noise_scale * rng.normal();
    }

    let shear = c.shear_scale * (rng.next_f64() - 0.5);
    for (i, v) in x.iter_mut().enumerate() {
        *v -= shear * (i as f64 / (n - 1) as f64 - 0.5);
    }
    interpolate(&x, c.final_seq_length)
}

/// Linear resampling of `x` (taken as evenly spaced over [0, 1]) to `n`
/// evenly spaced points, endpoints included.
fn interpolate(x: &[f64], n: usize) -> Vec<f64> {
    match (x.len(), n) {
        (_, 0) => Vec::new(),
        (0, _) => vec![0.0; n],
        (1, _) | (_, 1) => vec![x[0]; n],
        (m, _) => (0..n)
            .map(|j| {
                let pos = j as f64 * (m - 1) as f64 / (n - 1) as f64;
                let i = (pos.floor() as usize).min(m - 2);
                let t = pos - i as f64;
                x[i] * (1.0 - t) + x[i + 1] * t
            })
            .collect(),
    }
}

/// Gaussian smoothing with standard deviation `sigma` samples, the kernel
/// cut at 4σ and normalized to sum 1, edges mirrored (`d c b a | a b c d |
/// d c b a`).
fn gaussian_smooth(x: &[f64], sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as isize;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|k| (-0.5 * (k as f64 / sigma).powi(2)).exp())
        .collect();
    let total: f64 = kernel.iter().sum();
    let n = x.len() as isize;
    let mirror = |mut i: isize| {
        // Reflection has period 2n; fold into one period, then mirror.
        i = i.rem_euclid(2 * n);
        if i >= n {
            2 * n - 1 - i
        } else {
            i
        }
    };
    (0..n)
        .map(|i| {
            kernel
                .iter()
                .zip(-radius..=radius)
                .map(|(w, k)| w * x[mirror(i + k) as usize])
                .sum::<f64>()
                / total
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Fashion-MNIST (IDX files)
// ---------------------------------------------------------------------------

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// An IDX array of unsigned bytes (the MNIST file format): a big-endian
/// magic number `0x0000_08NN` with `NN` dimensions, the dimensions as
/// big-endian `u32`, then the data, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes with `ndims` dimensions, gzipped or
/// not (told apart by the gzip magic bytes, not the name).
pub fn read_idx(path: &Path, ndims: u8) -> Result<Idx, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = fs::read(path).map_err(io)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        out
    } else {
        raw
    };
    let header = 4 + 4 * usize::from(ndims);
    let truncated = |expected: u64| DataError::Truncated {
        path: path.to_path_buf(),
        expected,
        found: bytes.len() as u64,
    };
    if bytes.len() < 4 {
        return Err(truncated(header as u64));
    }
    let expected_magic = 0x0800 | u32::from(ndims);
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: expected_magic,
        });
    }
    if bytes.len() < header {
        return Err(truncated(header as u64));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    // u128 cannot overflow: at most 255 factors below 2^32 would, but real
    // headers have 1 to 3; saturate to be safe with hostile ones.
    let data_len = dims
        .iter()
        .fold(1u128, |acc, &d| acc.saturating_mul(d as u128));
    let expected = (header as u128).saturating_add(data_len);
    let expected = u64::try_from(expected).unwrap_or(u64::MAX);
    match (bytes.len() as u64).cmp(&expected) {
        std::cmp::Ordering::Less => Err(truncated(expected)),
        std::cmp::Ordering::Greater => Err(DataError::TrailingData {
            path: path.to_path_buf(),
            expected,
            found: bytes.len() as u64,
        }),
        std::cmp::Ordering::Equal => Ok(Idx {
            dims,
            data: bytes[header..].to_vec(),
        }),
    }
}

/// `dir/name`, or `dir/name.gz` if only that exists.
fn locate(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    })
}

/// Reads one IDX image file and its label file into a dataset of
/// `[1, rows, cols]` examples, pixels scaled to `[0, 1]`, keeping at most
/// `limit` examples.
pub fn read_idx_pair(
    images_path: &Path,
    labels_path: &Path,
    num_classes: usize,
    limit: Option<usize>,
) -> Result<Dataset, DataError> {
    let images = read_idx(images_path, 3)?;
    let labels = read_idx(labels_path, 1)?;
    let (count, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    if count != labels.dims[0] {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            images: count,
            labels: labels.dims[0],
        });
    }
    if rows == 0 || cols == 0 {
        return Err(invalid(
            "IDX images",
            format!("{}: images are {rows}x{cols}", images_path.display()),
        ));
    }
    let keep = limit.map_or(count, |l| l.min(count));
    let label_values: Vec<usize> = labels.data[..keep].iter().map(|&l| l as usize).collect();
    if let Some((index, &label)) = label_values
        .iter()
        .enumerate()
        .find(|(_, &l)| l >= num_classes)
    {
        return Err(DataError::BadLabel {
            path: labels_path.to_path_buf(),
            index,
            label,
            classes: num_classes,
        });
    }
    let features = images.data[..keep * rows * cols]
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    Dataset::new(features, label_values, vec![1, rows, cols], num_classes)
}

/// Fashion-MNIST from `dir` (default [`FASHION_MNIST_DIR`]): the four IDX
/// files under their usual names, each plain or gzipped. Pixels are scaled
/// to `[0, 1]`; [`Split::standardize`] centres them. `limit` caps the
/// examples kept per split (the files are already shuffled).
///
/// # Shapes
/// - `train`: `[60000, 1, 28, 28]`, `test`: `[10000, 1, 28, 28]`, 10 classes
pub fn fashion_mnist(dir: Option<&Path>, limit: Option<usize>) -> Result<Split, DataError> {
    let dir = dir.unwrap_or(Path::new(FASHION_MNIST_DIR));
    let part = |images: &str, labels: &str| {
        read_idx_pair(
            &locate(dir, images)?,
            &locate(dir, labels)?,
            FASHION_MNIST_CLASSES.len(),
            limit,
        )
    };
    Ok(Split {
        train: part("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: part("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    })
}

// ---------------------------------------------------------------------------
// Characters for a language model
// ---------------------------------------------------------------------------

/// Which part of a corpus to sample from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Val,
}

/// Text as character ids: a sorted vocabulary of the characters that
/// occur, and the token sequence split into a leading training part and a
/// trailing validation part.
#[derive(Debug, Clone, PartialEq)]
pub struct CharCorpus {
    vocab: Vec<char>,
    train: Vec<usize>,
    val: Vec<usize>,
}

/// Windows of consecutive characters and the characters that follow them.
///
/// # Shapes
/// - `inputs`, `targets`: `[batch, context]`, row-major; `targets[b, t]` is
///   the character after `inputs[b, t]`, so `targets[b, context − 1]` is
///   the next character after the whole window.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub inputs: Vec<usize>,
    pub targets: Vec<usize>,
    pub batch: usize,
    pub context: usize,
}

impl CharCorpus {
    /// Splits `text` by characters: the last `val_fraction` is validation.
    pub fn from_text(text: &str, val_fraction: f64) -> Result<Self, DataError> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(invalid(
                "text corpus",
                format!("val_fraction = {val_fraction} must lie in (0, 1)"),
            ));
        }
        let chars: Vec<char> = text.chars().collect();
        if chars.len() < 4 {
            return Err(DataError::TooShort {
                what: "text corpus".into(),
                needed: 4,
                found: chars.len(),
            });
        }
        let mut vocab = chars.clone();
        vocab.sort_unstable();
        vocab.dedup();
        let ids: Vec<usize> = chars
            .iter()
            .map(|c| vocab.binary_search(c).unwrap_or_default())
            .collect();
        let n_val = ((chars.len() as f64 * val_fraction).round() as usize).clamp(2, ids.len() - 2);
        let mut train = ids;
        let val = train.split_off(train.len() - n_val);
        Ok(Self { vocab, train, val })
    }

    /// Reads a UTF-8 text file; see [`CharCorpus::from_text`].
    pub fn from_file(path: &Path, val_fraction: f64) -> Result<Self, DataError> {
        let bytes = fs::read(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| DataError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        Self::from_text(&text, val_fraction).map_err(|e| match e {
            DataError::TooShort { needed, found, .. } => DataError::TooShort {
                what: path.display().to_string(),
                needed,
                found,
            },
            e => e,
        })
    }

    /// MNIST-1D as text, for when no text file is given: each sequence
    /// becomes a line `"<digit>:<levels>\n"`, every value quantized to one
    /// of `levels` letters (`a` = lowest) over [−2.5, 2.5] standard
    /// deviations. Predicting the next letter means continuing a noisy
    /// stroke of a known digit. Training sequences make the training part,
    /// test sequences the validation part.
    pub fn from_mnist1d(split: &Split, levels: usize) -> Result<Self, DataError> {
        if !(2..=26).contains(&levels) {
            return Err(invalid(
                "MNIST-1D text",
                format!("levels = {levels} must lie in 2..=26"),
            ));
        }
        let render = |d: &Dataset| {
            let mut text = String::new();
            for i in 0..d.len() {
                text.push(char::from(b'0' + d.labels()[i] as u8 % 10));
                text.push(':');
                for &v in d.example(i).unwrap_or_default() {
                    let t = ((f64::from(v) + 2.5) / 5.0).clamp(0.0, 1.0);
                    let level = ((t * levels as f64) as usize).min(levels - 1);
                    text.push(char::from(b'a' + level as u8));
                }
                text.push('\n');
            }
            text
        };
        let (train_text, val_text) = (render(&split.train), render(&split.test));
        let mut vocab: Vec<char> = ('0'..='9')
            .chain([':', '\n'])
            .chain((0..levels as u8).map(|l| char::from(b'a' + l)))
            .collect();
        vocab.sort_unstable();
        let encode = |t: &str| -> Vec<usize> {
            t.chars()
                .map(|c| vocab.binary_search(&c).unwrap_or_default())
                .collect()
        };
        let (train, val) = (encode(&train_text), encode(&val_text));
        if train.len() < 2 || val.len() < 2 {
            return Err(DataError::TooShort {
                what: "MNIST-1D text".into(),
                needed: 2,
                found: train.len().min(val.len()),
            });
        }
        Ok(Self { vocab, train, val })
    }

    /// The characters, by id.
    pub fn vocab(&self) -> &[char] {
        &self.vocab
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn tokens(&self, part: Part) -> &[usize] {
        match part {
            Part::Train => &self.train,
            Part::Val => &self.val,
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<usize>, DataError> {
        text.chars()
            .map(|ch| {
                self.vocab
                    .binary_search(&ch)
                    .map_err(|_| DataError::UnknownChar { ch })
            })
            .collect()
    }

    /// Ids outside the vocabulary decode to U+FFFD.
    pub fn decode(&self, ids: &[usize]) -> String {
        ids.iter()
            .map(|&i| self.vocab.get(i).copied().unwrap_or('\u{fffd}'))
            .collect()
    }

    /// `batch` windows of `context` characters at uniformly random starts
    /// in `part`, with their next characters.
    pub fn sample(
        &self,
        part: Part,
        batch: usize,
        context: usize,
        rng: &mut SplitMix64,
    ) -> Result<TokenBatch, DataError> {
        let tokens = self.tokens(part);
        if batch == 0 || context == 0 {
            return Err(invalid(
                "token batch",
                format!("batch = {batch} and context = {context} must be positive"),
            ));
        }
        if tokens.len() <= context {
            return Err(DataError::TooShort {
                what: format!("{part:?} part of the corpus"),
                needed: context + 1,
                found: tokens.len(),
            });
        }
        let starts = (tokens.len() - context) as u64;
        let mut inputs = Vec::with_capacity(batch * context);
        let mut targets = Vec::with_capacity(batch * context);
        for _ in 0..batch {
            let s = rng.below(starts) as usize;
            inputs.extend_from_slice(&tokens[s..s + context]);
            targets.extend_from_slice(&tokens[s + 1..s + context + 1]);
        }
        Ok(TokenBatch {
            inputs,
            targets,
            batch,
            context,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_published_sequence() {
        // First outputs of the reference algorithm (Vigna's splitmix64.c)
        // from state 0, recomputed with a separate Python transcription.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(7);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut rng = SplitMix64::new(3);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let (mean, std) = mean_std(xs.iter().copied());
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((std - 1.0).abs() < 0.01, "std {std}");
        let tail = xs.iter().filter(|x| x.abs() > 1.96).count() as f64 / n as f64;
        assert!((tail - 0.05).abs() < 0.005, "two-sided 5% tail: {tail}");
    }

    #[test]
    fn interpolate_keeps_endpoints_and_lines() {
        let x = [0.0, 1.0, 2.0, 3.0];
        let y = interpolate(&x, 7);
        for (j, v) in y.iter().enumerate() {
            assert!((v - j as f64 * 0.5).abs() < 1e-12, "{y:?}");
        }
        assert_eq!(interpolate(&[0.0, 0.0, 0.0], 5), vec![0.0; 5]);
        assert_eq!(interpolate(&[4.0], 3), vec![4.0; 3]);
    }

    #[test]
    fn gaussian_smooth_preserves_constants_and_mass() {
        let c = gaussian_smooth(&[2.5; 30], 2.0);
        assert!(c.iter().all(|v| (v - 2.5).abs() < 1e-12));
        // A centred impulse spreads with std 2: weights at ±2 are e^-0.5
        // times the peak.
        let mut x = vec![0.0; 41];
        x[20] = 1.0;
        let y = gaussian_smooth(&x, 2.0);
        assert!((y.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((y[22] / y[20] - (-0.5f64).exp()).abs() < 1e-12);
        assert_eq!(y[11], 0.0, "cut at radius 8");
        // Mirrored edges: an impulse at the first sample reflects onto
        // index 0 itself, so the output there is twice the one-sided weight.
        let mut e = vec![0.0; 20];
        e[0] = 1.0;
        let z = gaussian_smooth(&e, 2.0);
        assert!((z[0] - (y[20] + y[21])).abs() < 1e-12);
    }

    #[test]
    fn templates_start_and_end_at_zero() {
        for t in mnist1d_templates() {
            assert!(t[0].abs() < 1e-12);
            assert!(t[11].abs() < 1e-12);
            let (_, std) = mean_std(t.iter().copied());
            assert!((std - 1.0 / 6.0).abs() < 1e-12);
        }
    }
}
