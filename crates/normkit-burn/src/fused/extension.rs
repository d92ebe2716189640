//! The backend extension of the fused path, and the `flex` side of it: one
//! operation, `normkit_op`, that runs any normkit op (an
//! [`ErasedOp`]) on flex's CPU buffers.
//!
//! Parameters arrive packed in one `f32` tensor in the order the op's
//! signature lists; running statistics packed as `[mean; var]`. The caller
//! checked them against the signature, so a refusal here is the kernel's
//! own last word, returned as [`Outcome::Refused`], never a panic.

use std::fmt;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, ExtensionType, Flex};
use burn::tensor::{DType, Shape, TensorData};
use half::{bf16, f16};
use normkit::op::{ElemSlice, ElemSliceMut, ErasedOp, ErasedSaved, Running};
use normkit::{NormError, RunningStats};

use crate::route;

/// A normkit op behind one pointer: what the fused node runs, whatever the
/// op.
#[derive(Clone)]
pub(crate) struct OpRef(pub Arc<dyn ErasedOp>);

impl fmt::Debug for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name_erased())
    }
}

/// An optional tensor of the extension (its frontend maps tensors held by
/// derived types, not `Option`s).
#[derive(ExtensionType)]
pub(crate) enum Maybe<B: Backend> {
    Present(FloatTensor<B>),
    Absent,
}

impl<B: Backend> Maybe<B> {
    pub fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            Maybe::Present(t) => Some(t),
            Maybe::Absent => None,
        }
    }

    pub fn from_option(t: Option<FloatTensor<B>>) -> Self {
        t.map_or(Maybe::Absent, Maybe::Present)
    }
}

/// What `normkit_op` returns.
#[derive(ExtensionType)]
pub(crate) enum Outcome<B: Backend> {
    /// The output and, for a training step given running statistics,
    /// their updated values packed as `[mean; var]` in `f32`.
    Done {
        y: FloatTensor<B>,
        #[extension_type]
        running: Maybe<B>,
    },
    /// The kernel refused its arguments; nothing was computed.
    Refused(NormError),
}

/// The backend extension. Only `flex` and `Autodiff<flex>` implement it;
/// callers check [`route::fused`] before dispatching here.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait NormBackend: Backend {
    /// Runs `op` forward on `x` with its packed `params` (`f32`) and
    /// `running` statistics (`[mean; var]`, `f32`).
    fn normkit_op(
        op: OpRef,
        x: FloatTensor<Self>,
        #[extension_type] params: Maybe<Self>,
        #[extension_type] running: Maybe<Self>,
    ) -> Outcome<Self>;
}

impl NormBackend for Flex {
    fn normkit_op(
        op: OpRef,
        x: FlexTensor,
        params: Maybe<Self>,
        running: Maybe<Self>,
    ) -> Outcome<Self> {
        let params = params.into_option().map(|p| values_f32(&p));
        match forward(
            &op,
            x,
            params.as_deref().unwrap_or(&[]),
            running.into_option(),
        ) {
            Ok(f) => Outcome::Done {
                y: f.y,
                running: Maybe::from_option(f.running),
            },
            Err(e) => Outcome::Refused(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Flex buffers.

/// The values of a tensor as `f32`, whatever its storage type.
pub(crate) fn values_f32(t: &FlexTensor) -> Vec<f32> {
    match (t.dtype(), t.as_slice::<f32>()) {
        (DType::F32, Some(v)) => v.to_vec(),
        _ => t
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default(),
    }
}

/// A rank-1 `f32` tensor holding `values`.
pub(crate) fn f32_tensor(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::from_data(TensorData::new(values, [n]))
}

/// `t` with a layout whose elements are one contiguous run.
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// `t` in `dtype`, contiguous.
pub(crate) fn contiguous_as(t: FlexTensor, dtype: DType) -> FlexTensor {
    if t.dtype() == dtype {
        contiguous(t)
    } else {
        FlexTensor::from_data(t.into_data().convert_dtype(dtype))
    }
}

pub(crate) fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

fn unsupported(op: &OpRef, dtype: DType) -> NormError {
    NormError::DType {
        op: op.0.name_erased(),
        name: "x",
        expected: "f32, bf16 or f16",
        got: match dtype {
            DType::F64 => "f64",
            _ => "a non-float type",
        },
    }
}

/// The elements of a contiguous tensor, typed.
pub(crate) fn elems<'a>(op: &OpRef, t: &'a FlexTensor) -> Result<ElemSlice<'a>, NormError> {
    let slice = match t.dtype() {
        DType::F32 => t.as_slice::<f32>().map(ElemSlice::F32),
        DType::BF16 => t.as_slice::<bf16>().map(ElemSlice::Bf16),
        DType::F16 => t.as_slice::<f16>().map(ElemSlice::F16),
        _ => None,
    };
    slice.ok_or_else(|| unsupported(op, t.dtype()))
}

/// A fresh contiguous tensor of `shape`, typed like `like`.
pub(crate) fn empty_like(shape: &[usize], like: &FlexTensor) -> FlexTensor {
    FlexTensor::empty(Shape::from(shape.to_vec()), like.dtype())
}

/// The elements of a fresh tensor from [`empty_like`], to write.
pub(crate) fn elems_mut<'a>(
    op: &OpRef,
    t: &'a mut FlexTensor,
) -> Result<ElemSliceMut<'a>, NormError> {
    Ok(match t.dtype() {
        DType::F32 => ElemSliceMut::F32(t.storage_mut::<f32>()),
        DType::BF16 => ElemSliceMut::Bf16(t.storage_mut::<bf16>()),
        DType::F16 => ElemSliceMut::F16(t.storage_mut::<f16>()),
        other => return Err(unsupported(op, other)),
    })
}

/// What a fused forward leaves behind.
pub(crate) struct Forward {
    pub y: FlexTensor,
    /// The input, contiguous, for the backward.
    pub x: FlexTensor,
    pub saved: ErasedSaved,
    /// Updated running statistics, `[mean; var]`, for a training step
    /// given them.
    pub running: Option<FlexTensor>,
}

/// Runs `op` forward on `x`.
pub(crate) fn forward(
    op: &OpRef,
    x: FlexTensor,
    params: &[f32],
    running: Option<FlexTensor>,
) -> Result<Forward, NormError> {
    route::count_forward();
    let x = contiguous(x);
    let shape = dims(&x);
    let updates = matches!(
        op.0.signature_erased(&shape)?.running,
        Running::Updates { .. } | Running::Requires { .. }
    );
    let mut running = running.map(|r| values_f32(&r));
    let stats = running.as_mut().map(|r| {
        let c = r.len() / 2;
        let (mean, var) = r.split_at_mut(c);
        RunningStats { mean, var }
    });
    let mut y = empty_like(&shape, &x);
    let saved = op.0.forward_erased(
        elems_mut(op, &mut y)?,
        elems(op, &x)?,
        &shape,
        params,
        stats,
    )?;
    Ok(Forward {
        y,
        x,
        saved,
        // Evaluation reads the running statistics without changing them.
        running: running.filter(|_| updates).map(f32_tensor),
    })
}
