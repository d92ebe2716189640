//! [`NormOp`] with the element type and the saved state chosen at run
//! time, for adapters that learn the dtype from a tensor (candle's storage,
//! burn's and PyTorch's dtypes) and keep ops behind one pointer type.

use std::any::Any;
use std::sync::Arc;

use half::{bf16, f16};

use super::{NormOp, OpGrads, Signature};
use crate::error::{NormError, Result};
use crate::layout::RunningStats;

/// An input slice of any element type the kernels take.
#[derive(Debug, Clone, Copy)]
pub enum ElemSlice<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

/// An output slice of any element type the kernels take.
#[derive(Debug)]
pub enum ElemSliceMut<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

impl ElemSlice<'_> {
    /// The element type's name, as in messages.
    pub fn dtype(&self) -> &'static str {
        match self {
            ElemSlice::F32(_) => "f32",
            ElemSlice::Bf16(_) => "bf16",
            ElemSlice::F16(_) => "f16",
        }
    }
}

impl ElemSliceMut<'_> {
    /// The element type's name, as in messages.
    pub fn dtype(&self) -> &'static str {
        match self {
            ElemSliceMut::F32(_) => "f32",
            ElemSliceMut::Bf16(_) => "bf16",
            ElemSliceMut::F16(_) => "f16",
        }
    }
}

/// What a forward pass saved, for the backward pass of the same op.
pub type ErasedSaved = Arc<dyn Any + Send + Sync>;

/// [`NormOp`] for any element type, chosen per call; implemented for every
/// `NormOp`.
pub trait ErasedOp: Send + Sync {
    /// [`NormOp::name`].
    fn name_erased(&self) -> &'static str;

    /// [`NormOp::signature`].
    fn signature_erased(&self, shape: &[usize]) -> Result<Signature>;

    /// [`NormOp::forward`]; `y` and `x` must have the same element type.
    fn forward_erased(
        &self,
        y: ElemSliceMut<'_>,
        x: ElemSlice<'_>,
        shape: &[usize],
        params: &[f32],
        running: Option<RunningStats<'_>>,
    ) -> Result<ErasedSaved>;

    /// [`NormOp::backward`]; `dx`, `dy` and `x` must have the same element
    /// type, and `saved` must come from this op's forward.
    #[allow(clippy::too_many_arguments)]
    fn backward_erased(
        &self,
        dx: ElemSliceMut<'_>,
        dparams: Option<&mut [f32]>,
        dy: ElemSlice<'_>,
        x: ElemSlice<'_>,
        shape: &[usize],
        params: &[f32],
        saved: &ErasedSaved,
    ) -> Result<()>;
}

fn mixed(
    op: &'static str,
    name: &'static str,
    expected: &'static str,
    got: &'static str,
) -> NormError {
    NormError::DType {
        op,
        name,
        expected,
        got,
    }
}

impl<O: NormOp> ErasedOp for O {
    fn name_erased(&self) -> &'static str {
        self.name()
    }

    fn signature_erased(&self, shape: &[usize]) -> Result<Signature> {
        self.signature(shape)
    }

    fn forward_erased(
        &self,
        y: ElemSliceMut<'_>,
        x: ElemSlice<'_>,
        shape: &[usize],
        params: &[f32],
        running: Option<RunningStats<'_>>,
    ) -> Result<ErasedSaved> {
        let saved = match (y, x) {
            (ElemSliceMut::F32(y), ElemSlice::F32(x)) => self.forward(y, x, shape, params, running),
            (ElemSliceMut::Bf16(y), ElemSlice::Bf16(x)) => {
                self.forward(y, x, shape, params, running)
            }
            (ElemSliceMut::F16(y), ElemSlice::F16(x)) => self.forward(y, x, shape, params, running),
            (y, x) => Err(self.refuse(false, mixed(self.name(), "y", x.dtype(), y.dtype()))),
        }?;
        Ok(Arc::new(saved))
    }

    fn backward_erased(
        &self,
        dx: ElemSliceMut<'_>,
        dparams: Option<&mut [f32]>,
        dy: ElemSlice<'_>,
        x: ElemSlice<'_>,
        shape: &[usize],
        params: &[f32],
        saved: &ErasedSaved,
    ) -> Result<()> {
        let op = self.name();
        let Some(saved) = saved.downcast_ref::<O::Saved>() else {
            return Err(self.refuse(true, NormError::Saved { op }));
        };
        match (dx, dy, x) {
            (ElemSliceMut::F32(dx), ElemSlice::F32(dy), ElemSlice::F32(x)) => {
                self.backward(OpGrads { dx, dparams }, dy, x, shape, params, saved)
            }
            (ElemSliceMut::Bf16(dx), ElemSlice::Bf16(dy), ElemSlice::Bf16(x)) => {
                self.backward(OpGrads { dx, dparams }, dy, x, shape, params, saved)
            }
            (ElemSliceMut::F16(dx), ElemSlice::F16(dy), ElemSlice::F16(x)) => {
                self.backward(OpGrads { dx, dparams }, dy, x, shape, params, saved)
            }
            (_, dy, x) if dy.dtype() != x.dtype() => {
                Err(self.refuse(true, mixed(op, "dy", x.dtype(), dy.dtype())))
            }
            (dx, _, x) => Err(self.refuse(true, mixed(op, "dx", x.dtype(), dx.dtype()))),
        }
    }
}
