//! The bridge between candle's custom ops and normkit's op interface.
//!
//! Every layer's forward is one [`Forward`] custom op over a
//! [`normkit::op::ErasedOp`]: candle hands it the input's CPU storage and
//! the layer's parameters packed into one f32 vector (in the order the op's
//! [`Signature`] lists them); it runs the op's forward and keeps what the
//! op saves. Its backward is one [`Backward`] op that hands the saved state,
//! the upstream gradient and the input to the op's backward, which writes
//! the input gradient and every parameter gradient at once.
//!
//! Packing is how more than three tensors reach one op: the parameters are
//! flattened, converted to f32 and concatenated in the graph, so candle's
//! autograd splits the packed gradient back into each parameter (and its
//! dtype) on its own. Running statistics travel beside the op, as f32
//! vectors, and are written back to the layer's buffers when the op says a
//! training step updates them.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use normkit::op::{ElemSlice, ElemSliceMut, ErasedOp, ErasedSaved, Running, Signature};
use normkit::{bf16, f16, NormError, RunningStats};

use crate::error::{self, LayerError};

/// Applies `op` to `x` with `params` (the tensors the op's signature lists,
/// in its order) as one custom op whose backward reaches `x` and every
/// parameter.
pub(crate) fn apply(op: impl ErasedOp + 'static, x: &Tensor, params: &[&Tensor]) -> Result<Tensor> {
    apply_running(op, x, params, None)
}

/// [`apply`] for an op with running statistics: `running` is read and
/// handed to the op, and written back when the op updates it (a training
/// step). `None` normalizes without them, where the op allows it.
pub(crate) fn apply_running(
    op: impl ErasedOp + 'static,
    x: &Tensor,
    params: &[&Tensor],
    running: Option<&crate::running::Running>,
) -> Result<Tensor> {
    let name = op.name_erased();
    let sig = op.signature_erased(x.dims()).map_err(error::kernel)?;
    check_params(name, &sig, x.dims(), params)?;
    let values = running
        .map(|r| r.values().map(|v| Arc::new(Mutex::new(v))))
        .transpose()?;
    let op = Forward {
        op: Arc::new(op),
        running: values.clone(),
        saved: Mutex::new(None),
    };
    let y = match pack(name, params)? {
        None => x.apply_op1(op)?,
        Some(p) => x.apply_op2(&p, op)?,
    };
    let updates = matches!(
        sig.running,
        Running::Updates { .. } | Running::Requires { .. }
    );
    if let (true, Some(r), Some(values)) = (updates, running, values) {
        let (mean, var) = std::mem::take(&mut *lock(&values));
        r.store(mean, var)?;
    }
    Ok(y)
}

/// Each parameter tensor holds as many values as the op's signature says
/// (checked per parameter, so the error names it).
fn check_params(
    op: &'static str,
    sig: &Signature,
    shape: &[usize],
    params: &[&Tensor],
) -> Result<()> {
    let length = |name, expected, got| {
        error::kernel(NormError::Length {
            op,
            name,
            expected,
            got,
            shape: shape.to_vec(),
        })
    };
    if params.len() != sig.params.len() {
        return Err(length("parameters", sig.params.len(), params.len()));
    }
    for (p, t) in sig.params.iter().zip(params) {
        if t.elem_count() != p.len {
            return Err(length(p.name, p.len, t.elem_count()));
        }
    }
    Ok(())
}

/// Flattens the parameters to f32 and concatenates them, in order; `None`
/// when there are none. Every step is a differentiable candle op.
fn pack(op: &'static str, params: &[&Tensor]) -> Result<Option<Tensor>> {
    let mut flat = Vec::with_capacity(params.len());
    for p in params {
        if !p.dtype().is_float() {
            return Err(error::layer(LayerError::DType {
                op,
                name: "parameter",
                dtype: p.dtype(),
            }));
        }
        if p.elem_count() == 0 {
            // candle's concatenation copies an empty view from its start
            // offset, which may lie past its empty storage (a narrow of a
            // tensor with a zero extent), and panics there. An empty
            // parameter has no values to pack and no gradient to receive.
            flat.push(Tensor::zeros(0, DType::F32, p.device())?);
            continue;
        }
        flat.push(p.flatten_all()?.to_dtype(DType::F32)?);
    }
    match flat.len() {
        0 => Ok(None),
        1 => Ok(flat.pop()),
        _ => Ok(Some(Tensor::cat(&flat, 0)?)),
    }
}

/// The values of a tensor in row-major order: borrowed when its layout is
/// contiguous, gathered through its strides otherwise.
fn gather<'a, T: Copy>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    // An empty view may start past the end of its storage (a narrow of a
    // tensor with a zero extent elsewhere): there is nothing to read.
    if layout.shape().elem_count() == 0 {
        return Cow::Borrowed(&[]);
    }
    match layout.contiguous_offsets() {
        Some((start, end)) => Cow::Borrowed(&data[start..end]),
        None => Cow::Owned(strided(data, layout)),
    }
}

/// Copies a strided view into row-major order, walking the index like an
/// odometer (last dimension fastest).
fn strided<T: Copy>(data: &[T], layout: &Layout) -> Vec<T> {
    let (dims, stride) = (layout.dims(), layout.stride());
    let n = layout.shape().elem_count();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let mut index = vec![0usize; dims.len()];
    let mut offset = layout.start_offset();
    for _ in 0..n {
        out.push(data[offset]);
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            offset += stride[d];
            if index[d] < dims[d] {
                break;
            }
            offset -= stride[d] * dims[d];
            index[d] = 0;
        }
    }
    out
}

/// A tensor's values in one of the element types the kernels take.
enum Values<'a> {
    F32(Cow<'a, [f32]>),
    Bf16(Cow<'a, [bf16]>),
    F16(Cow<'a, [f16]>),
}

impl<'a> Values<'a> {
    fn of(op: &'static str, name: &'static str, s: &'a CpuStorage, l: &Layout) -> Result<Self> {
        Ok(match s {
            CpuStorage::F32(v) => Values::F32(gather(v, l)),
            CpuStorage::BF16(v) => Values::Bf16(gather(v, l)),
            CpuStorage::F16(v) => Values::F16(gather(v, l)),
            other => {
                return Err(error::layer(LayerError::DType {
                    op,
                    name,
                    dtype: other.dtype(),
                }))
            }
        })
    }

    fn elems(&self) -> ElemSlice<'_> {
        match self {
            Values::F32(v) => ElemSlice::F32(v),
            Values::Bf16(v) => ElemSlice::Bf16(v),
            Values::F16(v) => ElemSlice::F16(v),
        }
    }

    /// Zeros of the same type and length, for an output.
    fn zeros(&self) -> Output {
        match self {
            Values::F32(v) => Output::F32(vec![0.0; v.len()]),
            Values::Bf16(v) => Output::Bf16(vec![bf16::ZERO; v.len()]),
            Values::F16(v) => Output::F16(vec![f16::ZERO; v.len()]),
        }
    }
}

/// An output buffer, handed back to candle as storage.
enum Output {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Output {
    fn elems(&mut self) -> ElemSliceMut<'_> {
        match self {
            Output::F32(v) => ElemSliceMut::F32(v),
            Output::Bf16(v) => ElemSliceMut::Bf16(v),
            Output::F16(v) => ElemSliceMut::F16(v),
        }
    }

    fn into_storage(self) -> CpuStorage {
        match self {
            Output::F32(v) => CpuStorage::F32(v),
            Output::Bf16(v) => CpuStorage::BF16(v),
            Output::F16(v) => CpuStorage::F16(v),
        }
    }
}

fn f32_params<'a>(op: &'static str, s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [f32]>> {
    match s {
        CpuStorage::F32(v) => Ok(gather(v, l)),
        other => Err(error::layer(LayerError::DTypeMismatch {
            op,
            name: "params",
            expected: DType::F32,
            got: other.dtype(),
        })),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update; the
    // value is still plain data and safe to reuse.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Running mean and variance, shared between a layer and its forward op.
type SharedRunning = Arc<Mutex<(Vec<f32>, Vec<f32>)>>;

/// The forward op: runs the op, keeping what its backward needs and the
/// running statistics it updated.
struct Forward {
    op: Arc<dyn ErasedOp>,
    running: Option<SharedRunning>,
    saved: Mutex<Option<ErasedSaved>>,
}

impl Forward {
    fn run(&self, x: &CpuStorage, l: &Layout, params: &[f32]) -> Result<(CpuStorage, Shape)> {
        let x = Values::of(self.op.name_erased(), "x", x, l)?;
        let mut y = x.zeros();
        let mut running = self.running.as_deref().map(lock);
        let running = running
            .as_deref_mut()
            .map(|(mean, var)| RunningStats { mean, var });
        let saved = self
            .op
            .forward_erased(y.elems(), x.elems(), l.dims(), params, running)
            .map_err(error::kernel)?;
        *lock(&self.saved) = Some(saved);
        Ok((y.into_storage(), l.shape().clone()))
    }

    /// Runs the backward op on the saved state; returns `dx` and the packed
    /// parameter gradient.
    fn backward(
        &self,
        x: &Tensor,
        params: Option<&Tensor>,
        dy: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let saved = lock(&self.saved).clone().ok_or_else(|| {
            error::layer(LayerError::Unsupported {
                op: self.op.name_erased(),
                reason: "backward ran before forward",
            })
        })?;
        let op = Backward {
            op: self.op.clone(),
            saved,
            dparams: Mutex::new(None),
        };
        let dy = dy.to_dtype(x.dtype())?;
        let dx = match params {
            None => dy.apply_op2_no_bwd(x, &op)?,
            Some(p) => dy.apply_op3_no_bwd(x, p, &op)?,
        };
        let dparams = match params {
            None => None,
            Some(p) => {
                let d = lock(&op.dparams).take().unwrap_or_default();
                Some(Tensor::from_vec(d, p.shape(), p.device())?)
            }
        };
        Ok((dx, dparams))
    }
}

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        self.op.name_erased()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s, l, &[])
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backward(x, None, dy)?.0))
    }
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        self.op.name_erased()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let params = f32_params(self.op.name_erased(), s2, l2)?;
        self.run(s1, l1, &params)
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dparams) = self.backward(x, Some(params), dy)?;
        Ok((Some(dx), dparams))
    }
}

/// The backward op: outputs `dx`, leaves the packed parameter gradient in
/// `dparams`.
struct Backward {
    op: Arc<dyn ErasedOp>,
    saved: ErasedSaved,
    dparams: Mutex<Option<Vec<f32>>>,
}

impl Backward {
    fn run(
        &self,
        dy: (&CpuStorage, &Layout),
        x: (&CpuStorage, &Layout),
        params: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.op.name_erased();
        let (dy, x_layout, x) = (
            Values::of(op, "dy", dy.0, dy.1)?,
            x.1,
            Values::of(op, "x", x.0, x.1)?,
        );
        let mut dx = x.zeros();
        let mut dparams = params.map(|p| vec![0.0f32; p.len()]);
        self.op
            .backward_erased(
                dx.elems(),
                dparams.as_deref_mut(),
                dy.elems(),
                x.elems(),
                x_layout.dims(),
                params.unwrap_or_default(),
                &self.saved,
            )
            .map_err(error::kernel)?;
        *lock(&self.dparams) = dparams;
        Ok((dx.into_storage(), x_layout.shape().clone()))
    }
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        self.op.name_erased()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        self.op.name_erased()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let params = f32_params(self.op.name_erased(), s3, l3)?;
        self.run((s1, l1), (s2, l2), Some(&params))
    }
}
