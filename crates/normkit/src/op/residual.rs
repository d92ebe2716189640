//! The residual family: ops of two inputs and two outputs, as a pre-norm
//! transformer's residual stream uses them.
//!
//! ```text
//! forward:  (x, residual) -> (y, sum)          sum = x + residual, y = norm(sum)
//! backward: (dy, dsum?)   -> (dx, dparams)     dx = dresidual
//! ```
//!
//! The same shape as [`NormOp`](super::NormOp): a value holding the
//! hyperparameters, a [`Signature`] packing the parameters, `run_` methods
//! that the provided `forward` and `backward` call once the packing is
//! checked; and [`ErasedResidualOp`], the element type chosen at run time.
//! The backward takes `sum` (the forward's second output, which the caller
//! keeps as the residual stream) where a [`NormOp`](super::NormOp) takes
//! `x`; its `dx` is the gradient of both `x` and `residual`.

use half::{bf16, f16};
use std::sync::Arc;

use super::{ElemSlice, ElemSliceMut, ErasedSaved, OpGrads, Signature};
use crate::elem::Elem;
use crate::error::{NormError, Result};

/// A residual op over contiguous slices, every argument checked before
/// anything is written.
pub trait ResidualNormOp: Send + Sync {
    /// What the forward pass hands to the backward pass.
    type Saved: Send + Sync + 'static;

    /// The op's name, as in its errors.
    fn name(&self) -> &'static str;

    /// Validates `shape` against the op's hyperparameters and says how its
    /// parameters are packed.
    fn signature(&self, shape: &[usize]) -> Result<Signature>;

    /// The forward pass, once `params` matches `sig`.
    #[allow(clippy::too_many_arguments)]
    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        sum: &mut [T],
        x: &[T],
        residual: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> Result<Self::Saved>;

    /// The backward pass, once `params` and `grads.dparams` match `sig`.
    #[allow(clippy::too_many_arguments)]
    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        dsum: Option<&[T]>,
        sum: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Self::Saved,
    ) -> Result<()>;

    /// Writes `sum = x + residual` and `y = norm(sum)` (all shaped
    /// `shape`) from the packed `params`.
    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        sum: &mut [T],
        x: &[T],
        residual: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> Result<Self::Saved> {
        let sig = self.signature(shape)?;
        sig.check_packed(self.name(), "params", params.len(), shape)?;
        self.run_forward(&sig, y, sum, x, residual, shape, params)
    }

    /// Gradients of `sum(y · dy) + sum(sum · dsum)` (`dsum` absent: zero)
    /// with respect to `x` (equal to that of `residual`) and the packed
    /// parameters.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: Elem>(
        &self,
        grads: OpGrads<'_, T>,
        dy: &[T],
        dsum: Option<&[T]>,
        sum: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Self::Saved,
    ) -> Result<()> {
        let sig = self.signature(shape)?;
        sig.check_packed(self.name(), "params", params.len(), shape)?;
        if let Some(d) = &grads.dparams {
            sig.check_packed(self.name(), "dparams", d.len(), shape)?;
        }
        self.run_backward(&sig, grads, dy, dsum, sum, shape, params, saved)
    }
}

/// [`ResidualNormOp`] for any element type, chosen per call; implemented
/// for every `ResidualNormOp`. Every slice must have the input's type.
pub trait ErasedResidualOp: Send + Sync {
    /// [`ResidualNormOp::name`].
    fn name_erased(&self) -> &'static str;

    /// [`ResidualNormOp::signature`].
    fn signature_erased(&self, shape: &[usize]) -> Result<Signature>;

    /// [`ResidualNormOp::forward`].
    fn forward_erased(
        &self,
        y: ElemSliceMut<'_>,
        sum: ElemSliceMut<'_>,
        x: ElemSlice<'_>,
        residual: ElemSlice<'_>,
        shape: &[usize],
        params: &[f32],
    ) -> Result<ErasedSaved>;

    /// [`ResidualNormOp::backward`]; `saved` must come from this op's
    /// forward.
    #[allow(clippy::too_many_arguments)]
    fn backward_erased(
        &self,
        dx: ElemSliceMut<'_>,
        dparams: Option<&mut [f32]>,
        dy: ElemSlice<'_>,
        dsum: Option<ElemSlice<'_>>,
        sum: ElemSlice<'_>,
        shape: &[usize],
        params: &[f32],
        saved: &ErasedSaved,
    ) -> Result<()>;
}

/// The element types an erased slice may hold, taken back out of it.
trait Typed: Elem {
    fn of(s: ElemSlice<'_>) -> Option<&[Self]>;
    fn of_mut(s: ElemSliceMut<'_>) -> Option<&mut [Self]>;
}

macro_rules! typed {
    ($t:ty, $variant:ident) => {
        impl Typed for $t {
            fn of(s: ElemSlice<'_>) -> Option<&[Self]> {
                match s {
                    ElemSlice::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn of_mut(s: ElemSliceMut<'_>) -> Option<&mut [Self]> {
                match s {
                    ElemSliceMut::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

typed!(f32, F32);
typed!(bf16, Bf16);
typed!(f16, F16);

/// `s` as `&[T]`, or the error naming it and both types.
fn slice<'a, T: Typed>(op: &'static str, name: &'static str, s: ElemSlice<'a>) -> Result<&'a [T]> {
    let got = s.dtype();
    T::of(s).ok_or(NormError::DType {
        op,
        name,
        expected: T::NAME,
        got,
    })
}

/// `s` as `&mut [T]`, or the error naming it and both types.
fn slice_mut<'a, T: Typed>(
    op: &'static str,
    name: &'static str,
    s: ElemSliceMut<'a>,
) -> Result<&'a mut [T]> {
    let got = s.dtype();
    T::of_mut(s).ok_or(NormError::DType {
        op,
        name,
        expected: T::NAME,
        got,
    })
}

/// The forward pass once `x` is known to hold `T`.
fn forward_typed<O: ResidualNormOp, T: Typed>(
    o: &O,
    (y, sum, x, residual): (ElemSliceMut<'_>, ElemSliceMut<'_>, &[T], ElemSlice<'_>),
    shape: &[usize],
    params: &[f32],
) -> Result<ErasedSaved> {
    let op = o.name();
    let residual = slice::<T>(op, "residual", residual)?;
    let y = slice_mut::<T>(op, "y", y)?;
    let sum = slice_mut::<T>(op, "sum", sum)?;
    Ok(Arc::new(o.forward(y, sum, x, residual, shape, params)?))
}

/// The backward pass once `sum` is known to hold `T`.
#[allow(clippy::too_many_arguments)]
fn backward_typed<O: ResidualNormOp, T: Typed>(
    o: &O,
    dx: ElemSliceMut<'_>,
    dparams: Option<&mut [f32]>,
    (dy, dsum, sum): (ElemSlice<'_>, Option<ElemSlice<'_>>, &[T]),
    shape: &[usize],
    params: &[f32],
    saved: &O::Saved,
) -> Result<()> {
    let op = o.name();
    let dy = slice::<T>(op, "dy", dy)?;
    let dsum = dsum.map(|d| slice::<T>(op, "dsum", d)).transpose()?;
    let dx = slice_mut::<T>(op, "dx", dx)?;
    let grads = OpGrads { dx, dparams };
    o.backward(grads, dy, dsum, sum, shape, params, saved)
}

impl<O: ResidualNormOp> ErasedResidualOp for O {
    fn name_erased(&self) -> &'static str {
        self.name()
    }

    fn signature_erased(&self, shape: &[usize]) -> Result<Signature> {
        self.signature(shape)
    }

    fn forward_erased(
        &self,
        y: ElemSliceMut<'_>,
        sum: ElemSliceMut<'_>,
        x: ElemSlice<'_>,
        residual: ElemSlice<'_>,
        shape: &[usize],
        params: &[f32],
    ) -> Result<ErasedSaved> {
        match x {
            ElemSlice::F32(x) => forward_typed(self, (y, sum, x, residual), shape, params),
            ElemSlice::Bf16(x) => forward_typed(self, (y, sum, x, residual), shape, params),
            ElemSlice::F16(x) => forward_typed(self, (y, sum, x, residual), shape, params),
        }
    }

    fn backward_erased(
        &self,
        dx: ElemSliceMut<'_>,
        dparams: Option<&mut [f32]>,
        dy: ElemSlice<'_>,
        dsum: Option<ElemSlice<'_>>,
        sum: ElemSlice<'_>,
        shape: &[usize],
        params: &[f32],
        saved: &ErasedSaved,
    ) -> Result<()> {
        let op = self.name();
        let saved = saved
            .downcast_ref::<O::Saved>()
            .ok_or(NormError::Saved { op })?;
        match sum {
            ElemSlice::F32(sum) => {
                backward_typed(self, dx, dparams, (dy, dsum, sum), shape, params, saved)
            }
            ElemSlice::Bf16(sum) => {
                backward_typed(self, dx, dparams, (dy, dsum, sum), shape, params, saved)
            }
            ElemSlice::F16(sum) => {
                backward_typed(self, dx, dparams, (dy, dsum, sum), shape, params, saved)
            }
        }
    }
}
