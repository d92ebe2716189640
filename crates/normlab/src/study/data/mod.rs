//! The study's data, held as one in-memory [`Dataset`] type with a
//! deterministic mini-batch iterator:
//!
//! - [`rng`]: the seeded generator everything random draws from;
//! - [`mnist1d`]: MNIST-1D, generated from its templates;
//! - [`fashion`]: Fashion-MNIST, read through `normkit_data::idx`;
//! - [`chars`]: characters for a language model.

pub mod chars;
pub mod fashion;
pub mod mnist1d;
pub mod rng;

pub use chars::{CharCorpus, Part, TokenBatch};
pub use fashion::{fashion_mnist, FashionArm, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR};
pub use mnist1d::{mnist1d, mnist1d_templates, Mnist1dConfig, MNIST1D_TEMPLATE_LEN};
pub use rng::{derive_seed, SplitMix64};

use normkit_data::idx::IdxError;
use std::path::PathBuf;

/// Why data could not be loaded or built. Errors about a file name it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An IDX file (Fashion-MNIST) could not be read.
    #[error(transparent)]
    Idx(#[from] IdxError),
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

pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> DataError {
    DataError::Invalid {
        what,
        reason: reason.into(),
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

pub(crate) fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
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
