//! The one error type of the crate.
//!
//! Every public function validates all of its arguments before it writes
//! anything, so an `Err` means no output slice was touched.

/// Why an operation refused its input. Each variant names the op and the
/// shapes involved, so the message alone says what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormError {
    /// A slice does not hold as many values as the shape implies.
    #[error("{op}: `{name}` has {got} values, expected {expected} (input shape {shape:?})")]
    Length {
        op: &'static str,
        name: &'static str,
        expected: usize,
        got: usize,
        shape: Vec<usize>,
    },
    /// The input has too few dimensions for the op.
    #[error("{op}: input shape {shape:?} has rank {}, expected at least {min_rank}", shape.len())]
    Rank {
        op: &'static str,
        shape: Vec<usize>,
        min_rank: usize,
    },
    /// The trailing dimensions of the input are not `normalized_shape`.
    #[error("{op}: input shape {shape:?} does not end with normalized_shape {normalized_shape:?}")]
    NormalizedShape {
        op: &'static str,
        shape: Vec<usize>,
        normalized_shape: Vec<usize>,
    },
    /// `num_groups` is zero or does not divide the channel count.
    #[error("{op}: num_groups = {num_groups} must be positive and divide the {channels} channels (input shape {shape:?})")]
    Groups {
        op: &'static str,
        num_groups: usize,
        channels: usize,
        shape: Vec<usize>,
    },
    /// eps is negative, NaN or infinite.
    #[error("{op}: eps must be finite and non-negative, got {eps}")]
    Eps { op: &'static str, eps: f32 },
    /// A hyperparameter other than eps is out of its domain.
    #[error("{op}: {name} must be {domain}, got {value}")]
    Param {
        op: &'static str,
        name: &'static str,
        domain: &'static str,
        value: f64,
    },
    /// Batch statistics need at least two values per channel (the unbiased
    /// running variance divides by n - 1).
    #[error(
        "{op}: expected more than 1 value per channel when training, got input shape {shape:?}"
    )]
    TooFewValues { op: &'static str, shape: Vec<usize> },
    /// The reduced set of a statistic is empty: a mean over nothing.
    #[error("{op}: nothing to normalize over in input shape {shape:?}")]
    Empty { op: &'static str, shape: Vec<usize> },
    /// weight_norm's `dim` is not a dimension of `v`.
    #[error("{op}: dim {dim} is out of range for shape {shape:?}")]
    Dim {
        op: &'static str,
        dim: isize,
        shape: Vec<usize>,
    },
    /// A gradient was asked for a parameter the op does not have.
    #[error("{op}: has no parameter behind `{name}`; pass None")]
    NoSuchParameter {
        op: &'static str,
        name: &'static str,
    },
    /// A required input was not given (running statistics an evaluation
    /// normalizes with, for example).
    #[error("{op}: `{name}` is required")]
    Missing {
        op: &'static str,
        name: &'static str,
    },
    /// Slices that must share an element type do not.
    #[error("{op}: `{name}` is {got}, expected {expected} like the input")]
    DType {
        op: &'static str,
        name: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    /// The state handed to a backward pass was saved by another op.
    #[error("{op}: the saved state was not made by this op's forward pass")]
    Saved { op: &'static str },
    /// The number of elements overflows `usize`.
    #[error("{op}: shape {shape:?} has more elements than fit in memory")]
    TooLarge { op: &'static str, shape: Vec<usize> },
    /// The ranks of a distributed op (SyncBatchNorm) could not run it
    /// together. Every rank that took part gets this same error.
    #[error("{op}: {error}")]
    Distributed {
        op: &'static str,
        error: crate::comm::DistributedError,
    },
}

impl NormError {
    /// The op the error names.
    pub fn op(&self) -> &'static str {
        match self {
            NormError::Length { op, .. }
            | NormError::Rank { op, .. }
            | NormError::NormalizedShape { op, .. }
            | NormError::Groups { op, .. }
            | NormError::Eps { op, .. }
            | NormError::Param { op, .. }
            | NormError::TooFewValues { op, .. }
            | NormError::Empty { op, .. }
            | NormError::Dim { op, .. }
            | NormError::NoSuchParameter { op, .. }
            | NormError::Missing { op, .. }
            | NormError::DType { op, .. }
            | NormError::Saved { op }
            | NormError::TooLarge { op, .. }
            | NormError::Distributed { op, .. } => op,
        }
    }

    /// The same error, naming `op` instead: for an op that delegates to
    /// another's kernels.
    pub fn with_op(mut self, name: &'static str) -> Self {
        match &mut self {
            NormError::Length { op, .. }
            | NormError::Rank { op, .. }
            | NormError::NormalizedShape { op, .. }
            | NormError::Groups { op, .. }
            | NormError::Eps { op, .. }
            | NormError::Param { op, .. }
            | NormError::TooFewValues { op, .. }
            | NormError::Empty { op, .. }
            | NormError::Dim { op, .. }
            | NormError::NoSuchParameter { op, .. }
            | NormError::Missing { op, .. }
            | NormError::DType { op, .. }
            | NormError::Saved { op }
            | NormError::TooLarge { op, .. }
            | NormError::Distributed { op, .. } => *op = name,
        }
        self
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = NormError> = std::result::Result<T, E>;
