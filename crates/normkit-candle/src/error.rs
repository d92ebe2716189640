//! Errors raised by the layers before any kernel runs.
//!
//! Every failure reaches the caller as a [`candle_core::Error`]: kernel
//! errors ([`normkit::NormError`]) and the errors below are wrapped with
//! [`candle_core::Error::wrap`], so their message names the op and shapes.

use candle_core::DType;

/// Why a layer refused its input or its parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayerError {
    /// The input's dtype has no kernel (only f32, bf16 and f16 do).
    #[error("{op}: unsupported dtype {dtype:?} for `{name}`, expected f32, bf16 or f16")]
    DType {
        op: &'static str,
        name: &'static str,
        dtype: DType,
    },
    /// Two tensors of one op have different dtypes.
    #[error("{op}: `{name}` has dtype {got:?}, expected {expected:?}")]
    DTypeMismatch {
        op: &'static str,
        name: &'static str,
        expected: DType,
        got: DType,
    },
    /// The input's channel count is not the layer's.
    #[error("{op}: input shape {shape:?} has {got} channels on axis {axis}, expected {expected}")]
    Channels {
        op: &'static str,
        shape: Vec<usize>,
        axis: isize,
        expected: usize,
        got: usize,
    },
    /// A parameter tensor does not have the shape the layer needs.
    #[error("{op}: `{name}` has shape {got:?}, expected {expected:?}")]
    ParamShape {
        op: &'static str,
        name: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A convolution's settings or sizes that candle's convolution cannot
    /// compute (it divides by them, or subtracts the kernel from the input,
    /// unchecked).
    #[error("{op}: input shape {input:?}, weight shape {weight:?}: {reason}")]
    Conv {
        op: &'static str,
        input: Vec<usize>,
        weight: Vec<usize>,
        reason: &'static str,
    },
    /// An operation needs something the layer does not have.
    #[error("{op}: {reason}")]
    Unsupported {
        op: &'static str,
        reason: &'static str,
    },
}

/// Wraps a kernel error into candle's error type.
pub(crate) fn kernel(e: normkit::NormError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// Wraps a layer error into candle's error type.
pub(crate) fn layer(e: LayerError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}
