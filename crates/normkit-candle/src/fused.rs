//! The bridge between candle's custom ops and normkit's kernels.
//!
//! A layer's forward is one [`Forward`] op: candle hands it the input's CPU
//! storage and the layer's parameters packed into one f32 vector, it calls
//! the normkit forward kernel and keeps the statistics the kernel returns.
//! Its backward is one [`Backward`] op that takes those statistics, the
//! upstream gradient and the input, and calls the normkit backward kernel,
//! which writes the input gradient and every parameter gradient at once.
//!
//! Packing is how more than three tensors reach one op: the parameters are
//! flattened, converted to f32 and concatenated in the graph, so candle's
//! autograd splits the packed gradient back into each parameter (and its
//! dtype) on its own.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use normkit::{bf16, f16, Affine, Elem, Grads};

use crate::error::{self, LayerError};

/// One op's forward and backward over contiguous slices.
pub(crate) trait Kernel: Send + Sync + 'static {
    /// What forward hands to backward (mean/rstd, norms, ...).
    type Saved: Send + Sync + 'static;
    /// The op's name, as in its errors.
    const NAME: &'static str;
    /// The backward op's name.
    const BACKWARD_NAME: &'static str;

    /// Writes `y` from `x` (shaped `shape`) and the packed parameters.
    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> normkit::Result<Self::Saved>;

    /// Writes `dx` and the packed parameter gradients `dparams` (laid out
    /// like `params`) from the upstream gradient `dy`.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: Elem>(
        &self,
        dx: &mut [T],
        dparams: &mut [f32],
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Self::Saved,
    ) -> normkit::Result<()>;
}

/// Where the optional weight and bias sit in the packed parameter vector:
/// weight first, then bias, each with its element count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Slots {
    pub weight: Option<usize>,
    pub bias: Option<usize>,
}

impl Slots {
    pub fn of(weight: Option<&Tensor>, bias: Option<&Tensor>) -> Self {
        Slots {
            weight: weight.map(Tensor::elem_count),
            bias: bias.map(Tensor::elem_count),
        }
    }

    fn len(&self) -> usize {
        self.weight.unwrap_or(0) + self.bias.unwrap_or(0)
    }

    /// Splits `params` into weight and bias. Packing guarantees the length;
    /// a mismatch leaves both out, and the kernel's own checks never see a
    /// wrong-sized slice.
    pub fn affine<'a>(&self, params: &'a [f32]) -> Affine<'a> {
        let (w, b) = params.split_at(self.weight.unwrap_or(0).min(params.len()));
        Affine {
            weight: self.weight.map(|_| w),
            bias: self.bias.map(|_| b),
        }
    }

    /// The gradient outputs: `dx` plus the weight and bias parts of
    /// `dparams`.
    pub fn grads<'a, T>(&self, dx: &'a mut [T], dparams: &'a mut [f32]) -> Grads<'a, T> {
        let at = self.weight.unwrap_or(0).min(dparams.len());
        let (dw, db) = dparams.split_at_mut(at);
        Grads {
            dx,
            dweight: self.weight.map(|_| dw),
            dbias: self.bias.map(|_| db),
        }
    }

    /// A length error when `params` does not hold exactly the slots.
    pub fn check(&self, op: &'static str, params: &[f32], shape: &[usize]) -> normkit::Result<()> {
        if params.len() == self.len() {
            Ok(())
        } else {
            Err(normkit::NormError::Length {
                op,
                name: "weight and bias",
                expected: self.len(),
                got: params.len(),
                shape: shape.to_vec(),
            })
        }
    }
}

/// The element types with kernels, and how candle stores them.
trait Storable: Elem + Copy {
    fn wrap(v: Vec<Self>) -> CpuStorage;
}

impl Storable for f32 {
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl Storable for bf16 {
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::BF16(v)
    }
}

impl Storable for f16 {
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F16(v)
    }
}

/// The values of a tensor in row-major order: borrowed when its layout is
/// contiguous, gathered through its strides otherwise.
fn gather<'a, T: Copy>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
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

fn unsupported(op: &'static str, name: &'static str, s: &CpuStorage) -> candle_core::Error {
    error::layer(LayerError::DType {
        op,
        name,
        dtype: s.dtype(),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update; the
    // value is still a plain Option and safe to reuse.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The forward op of kernel `K`, keeping what backward needs.
pub(crate) struct Forward<K: Kernel> {
    kernel: Arc<K>,
    saved: Mutex<Option<Arc<K::Saved>>>,
}

impl<K: Kernel> Forward<K> {
    fn new(kernel: Arc<K>) -> Self {
        Forward {
            kernel,
            saved: Mutex::new(None),
        }
    }

    fn run<T: Storable>(
        &self,
        x: &[T],
        layout: &Layout,
        params: &[f32],
    ) -> Result<(CpuStorage, Shape)> {
        let x = gather(x, layout);
        let mut y = vec![T::from_f32(0.0); x.len()];
        let saved = self
            .kernel
            .forward(&mut y, &x, layout.dims(), params)
            .map_err(error::kernel)?;
        *lock(&self.saved) = Some(Arc::new(saved));
        Ok((T::wrap(y), layout.shape().clone()))
    }

    fn dispatch(&self, x: &CpuStorage, l: &Layout, params: &[f32]) -> Result<(CpuStorage, Shape)> {
        match x {
            CpuStorage::F32(v) => self.run(v, l, params),
            CpuStorage::BF16(v) => self.run(v, l, params),
            CpuStorage::F16(v) => self.run(v, l, params),
            other => Err(unsupported(K::NAME, "x", other)),
        }
    }

    /// Runs the backward op on the saved statistics; returns `dx` and the
    /// packed parameter gradient.
    fn backward(
        &self,
        x: &Tensor,
        params: Option<&Tensor>,
        dy: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let saved = lock(&self.saved).clone().ok_or_else(|| {
            error::layer(LayerError::Unsupported {
                op: K::BACKWARD_NAME,
                reason: "backward ran before forward",
            })
        })?;
        let op = Backward {
            kernel: self.kernel.clone(),
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

impl<K: Kernel> CustomOp1 for Forward<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.dispatch(s, l, &[])
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backward(x, None, dy)?.0))
    }
}

impl<K: Kernel> CustomOp2 for Forward<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let params = f32_params(K::NAME, s2, l2)?;
        self.dispatch(s1, l1, &params)
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

/// The backward op of kernel `K`: outputs `dx`, leaves the packed parameter
/// gradient in `dparams`.
struct Backward<K: Kernel> {
    kernel: Arc<K>,
    saved: Arc<K::Saved>,
    dparams: Mutex<Option<Vec<f32>>>,
}

impl<K: Kernel> Backward<K> {
    fn run<T: Storable>(
        &self,
        dy: (&[T], &Layout),
        x: (&[T], &Layout),
        params: &[f32],
    ) -> Result<(CpuStorage, Shape)> {
        if dy.1.dims() != x.1.dims() {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: dy.1.shape().clone(),
                rhs: x.1.shape().clone(),
                op: K::BACKWARD_NAME,
            });
        }
        let (dy, x_layout, x) = (gather(dy.0, dy.1), x.1, gather(x.0, x.1));
        let mut dx = vec![T::from_f32(0.0); x.len()];
        let mut dparams = vec![0.0f32; params.len()];
        self.kernel
            .backward(
                &mut dx,
                &mut dparams,
                &dy,
                &x,
                x_layout.dims(),
                params,
                &self.saved,
            )
            .map_err(error::kernel)?;
        *lock(&self.dparams) = Some(dparams);
        Ok((T::wrap(dx), x_layout.shape().clone()))
    }

    fn dispatch(
        &self,
        dy: (&CpuStorage, &Layout),
        x: (&CpuStorage, &Layout),
        params: &[f32],
    ) -> Result<(CpuStorage, Shape)> {
        match (dy.0, x.0) {
            (CpuStorage::F32(d), CpuStorage::F32(v)) => self.run((d, dy.1), (v, x.1), params),
            (CpuStorage::BF16(d), CpuStorage::BF16(v)) => self.run((d, dy.1), (v, x.1), params),
            (CpuStorage::F16(d), CpuStorage::F16(v)) => self.run((d, dy.1), (v, x.1), params),
            (d, v) if d.dtype() == v.dtype() => Err(unsupported(K::BACKWARD_NAME, "x", v)),
            (d, v) => Err(error::layer(LayerError::DTypeMismatch {
                op: K::BACKWARD_NAME,
                name: "dy",
                expected: v.dtype(),
                got: d.dtype(),
            })),
        }
    }
}

impl<K: Kernel> CustomOp2 for Backward<K> {
    fn name(&self) -> &'static str {
        K::BACKWARD_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.dispatch((s1, l1), (s2, l2), &[])
    }
}

impl<K: Kernel> CustomOp3 for Backward<K> {
    fn name(&self) -> &'static str {
        K::BACKWARD_NAME
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
        let params = f32_params(K::BACKWARD_NAME, s3, l3)?;
        self.dispatch((s1, l1), (s2, l2), &params)
    }
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
        flat.push(p.flatten_all()?.to_dtype(DType::F32)?);
    }
    match flat.len() {
        0 => Ok(None),
        1 => Ok(flat.pop()),
        _ => Ok(Some(Tensor::cat(&flat, 0)?)),
    }
}

/// Applies kernel `K` to `x` with `params` as one custom op whose backward
/// reaches `x` and every parameter.
pub(crate) fn apply<K: Kernel>(kernel: Arc<K>, x: &Tensor, params: &[&Tensor]) -> Result<Tensor> {
    let op = Forward::new(kernel);
    match pack(K::NAME, params)? {
        None => x.apply_op1(op),
        Some(p) => x.apply_op2(&p, op),
    }
}
