//! # normkit-py
//!
//! The extension module `normkit._normkit`: normkit's kernels for Python
//! through one generic entry point per pass. [`forward`] and [`backward`]
//! take an op description ([`spec`]), the arrays as DLPack exports (torch
//! tensors, NumPy arrays, or their capsules; read and written in place,
//! never copied), the parameters packed in `f32` in the order the op's
//! `normkit::op::Signature::params` lists, and the thread count. They run
//! `normkit::op::ErasedOp` with the GIL released, on a rayon pool of that
//! many threads.
//!
//! Every argument is checked before a kernel runs: device, dtype, layout,
//! alignment, aliasing here; shapes, lengths and hyperparameters by
//! normkit. A failed check raises `ValueError` (`TypeError` for a dtype)
//! naming the op and the shapes, and nothing is written.

mod dlpack;
mod pool;
mod saved;
mod spec;

use std::sync::Arc;

use normkit::op::{ElemSlice, ElemSliceMut, ErasedOp};
use normkit::{NormError, RunningStats};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use dlpack::{check_disjoint, Dtype, Export, Layout, View};
use saved::{Entry, Saved};

/// The op's name in messages before it is built: the spec's first field.
fn label(spec: &str) -> &str {
    spec.split(';').next().unwrap_or(spec)
}

/// normkit's error as a Python exception; shapes in it are in memory
/// order, which the message says for channels-last inputs.
fn raise(e: NormError, layout: Layout) -> PyErr {
    let note = match layout {
        Layout::Contiguous => "",
        Layout::ChannelsLast => " (channels-last input: shapes in memory order, channels last)",
    };
    let msg = format!("normkit.{e}{note}");
    match e {
        NormError::DType { .. } => PyTypeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

fn elem<'a>(op: &str, v: &'a View<'_>) -> PyResult<ElemSlice<'a>> {
    Ok(match v.dtype {
        Dtype::F32 => ElemSlice::F32(v.slice()),
        Dtype::Bf16 => ElemSlice::Bf16(v.slice()),
        Dtype::F16 => ElemSlice::F16(v.slice()),
        Dtype::I64 => return Err(not_float(op, v)),
    })
}

fn elem_mut<'a>(op: &str, v: &'a mut View<'_>) -> PyResult<ElemSliceMut<'a>> {
    Ok(match v.dtype {
        Dtype::F32 => ElemSliceMut::F32(v.slice_mut()),
        Dtype::Bf16 => ElemSliceMut::Bf16(v.slice_mut()),
        Dtype::F16 => ElemSliceMut::F16(v.slice_mut()),
        Dtype::I64 => return Err(not_float(op, v)),
    })
}

fn not_float(op: &str, v: &View<'_>) -> PyErr {
    PyTypeError::new_err(format!(
        "normkit.{op}: `{}` of shape {:?} is {}; expected float32, bfloat16 or float16",
        v.name,
        v.shape,
        v.dtype.name()
    ))
}

/// `other` must have `x`'s shape and dtype.
fn like_x(op: &str, x: &View<'_>, other: &View<'_>) -> PyResult<()> {
    if other.shape != x.shape {
        return Err(PyValueError::new_err(format!(
            "normkit.{op}: `{}` has shape {:?}, expected {:?} like `{}`",
            other.name, other.shape, x.shape, x.name
        )));
    }
    if other.dtype != x.dtype {
        return Err(PyTypeError::new_err(format!(
            "normkit.{op}: `{}` is {}, expected {} like `{}` (shape {:?})",
            other.name,
            other.dtype.name(),
            x.dtype.name(),
            x.name,
            x.shape
        )));
    }
    Ok(())
}

/// A `float32` array (parameters, their gradients, running statistics).
fn f32_view<'a>(
    op: &str,
    e: &'a Export<'_>,
    name: &'static str,
    write: bool,
) -> PyResult<View<'a>> {
    let v = e.view(op, name, Layout::Contiguous, write)?;
    if v.dtype != Dtype::F32 {
        return Err(PyTypeError::new_err(format!(
            "normkit.{op}: `{name}` of shape {:?} is {}; expected float32",
            v.shape,
            v.dtype.name()
        )));
    }
    Ok(v)
}

fn memory_shape(layout: Layout, shape: &[usize]) -> Vec<usize> {
    layout
        .memory_order(shape.len())
        .iter()
        .map(|&d| shape[d])
        .collect()
}

/// The forward pass of the op `spec` describes: writes `y` from `x` and the
/// packed `params`, updates (training) or reads (evaluation) the running
/// statistics, and returns what the backward needs.
///
/// `layout` is `"contiguous"` or `"channels_last"` (dimension 1 stored
/// last); `x` and `y` must be dense in it. `threads = 0` runs on rayon's
/// global pool. `num_batches_tracked` is the count before this step, for a
/// cumulative-average momentum (`momentum=none`).
#[pyfunction]
#[pyo3(signature = (spec, layout, threads, y, x, params, running_mean=None, running_var=None, num_batches_tracked=0))]
#[allow(clippy::too_many_arguments)]
fn forward(
    py: Python<'_>,
    spec: &str,
    layout: &str,
    threads: usize,
    y: &Bound<'_, PyAny>,
    x: &Bound<'_, PyAny>,
    params: &Bound<'_, PyAny>,
    running_mean: Option<&Bound<'_, PyAny>>,
    running_var: Option<&Bound<'_, PyAny>>,
    num_batches_tracked: u64,
) -> PyResult<Saved> {
    let op_label = label(spec);
    let layout = Layout::parse(layout)?;
    let (ex, ey, ep) = (Export::of(x)?, Export::of(y)?, Export::of(params)?);
    let xv = ex.view(op_label, "x", layout, false)?;
    let mut yv = ey.view(op_label, "y", layout, true)?;
    let pv = f32_view(op_label, &ep, "params", false)?;
    like_x(op_label, &xv, &yv)?;
    let running = match (running_mean, running_var) {
        (Some(m), Some(v)) => Some((Export::of(m)?, Export::of(v)?)),
        (None, None) => None,
        _ => {
            return Err(PyValueError::new_err(format!(
                "normkit.{op_label}: running_mean and running_var come together"
            )))
        }
    };
    let mut rv = match &running {
        Some((m, v)) => Some((
            f32_view(op_label, m, "running_mean", true)?,
            f32_view(op_label, v, "running_var", true)?,
        )),
        None => None,
    };
    let mut all = vec![&xv, &yv, &pv];
    if let Some((m, v)) = &rv {
        all.extend([m, v]);
    }
    check_disjoint(op_label, &all)?;

    let ctx = spec::Context {
        dtype: xv.dtype,
        layout,
        num_batches_tracked,
    };
    let op = spec::build(spec, ctx)?;
    let shape = memory_shape(layout, &xv.shape);
    let xs = elem(op_label, &xv)?;
    let ys = elem_mut(op_label, &mut yv)?;
    let ps = pv.slice::<f32>();
    let running = rv.as_mut().map(|(m, v)| RunningStats {
        mean: m.slice_mut(),
        var: v.slice_mut(),
    });
    let op_ref: &dyn ErasedOp = op.as_ref();
    let saved = py
        .detach(|| {
            pool::run(threads, || {
                op_ref.forward_erased(ys, xs, &shape, ps, running)
            })
        })?
        .map_err(|e| raise(e, layout))?;
    Ok(Saved {
        entry: Entry::new(op.name_erased(), saved),
    })
}

/// The state a backward is handed: a [`Saved`] or an exported handle.
fn saved_entry(op: &str, saved: &Bound<'_, PyAny>) -> PyResult<Arc<Entry>> {
    if let Ok(s) = saved.cast::<Saved>() {
        return Ok(s.get().entry.clone());
    }
    let e = Export::of(saved)?;
    let v = e.view(op, "saved", Layout::Contiguous, false)?;
    if v.dtype != Dtype::I64 || v.len() != 1 {
        return Err(PyTypeError::new_err(format!(
            "normkit.{op}: `saved` must be a normkit Saved or its one-element int64 handle, got {} of shape {:?}",
            v.dtype.name(),
            v.shape
        )));
    }
    Entry::find(v.slice::<i64>()[0])
}

/// The backward pass of the op `spec` describes (the same description as
/// its forward): writes `dx` and, when given, the packed parameter
/// gradients `dparams` (`float32`), from `dy`, `x`, `params` and the state
/// `saved` that the forward returned (or its exported handle).
#[pyfunction]
#[pyo3(signature = (spec, layout, threads, dx, dparams, dy, x, params, saved))]
#[allow(clippy::too_many_arguments)]
fn backward(
    py: Python<'_>,
    spec: &str,
    layout: &str,
    threads: usize,
    dx: &Bound<'_, PyAny>,
    dparams: Option<&Bound<'_, PyAny>>,
    dy: &Bound<'_, PyAny>,
    x: &Bound<'_, PyAny>,
    params: &Bound<'_, PyAny>,
    saved: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let op_label = label(spec);
    let layout = Layout::parse(layout)?;
    let entry = saved_entry(op_label, saved)?;
    let (ex, edx, edy, ep) = (
        Export::of(x)?,
        Export::of(dx)?,
        Export::of(dy)?,
        Export::of(params)?,
    );
    let edp = dparams.map(Export::of).transpose()?;
    let xv = ex.view(op_label, "x", layout, false)?;
    let mut dxv = edx.view(op_label, "dx", layout, true)?;
    let dyv = edy.view(op_label, "dy", layout, false)?;
    let pv = f32_view(op_label, &ep, "params", false)?;
    let mut dpv = edp
        .as_ref()
        .map(|e| f32_view(op_label, e, "dparams", true))
        .transpose()?;
    like_x(op_label, &xv, &dxv)?;
    like_x(op_label, &xv, &dyv)?;
    let mut all = vec![&xv, &dxv, &dyv, &pv];
    if let Some(d) = &dpv {
        all.push(d);
    }
    check_disjoint(op_label, &all)?;

    let ctx = spec::Context {
        dtype: xv.dtype,
        layout,
        num_batches_tracked: 0,
    };
    let op = spec::build(spec, ctx)?;
    if op.name_erased() != entry.op {
        return Err(PyValueError::new_err(format!(
            "normkit.{}: the saved state comes from a {} forward",
            op.name_erased(),
            entry.op
        )));
    }
    let shape = memory_shape(layout, &xv.shape);
    let (xs, dys) = (elem(op_label, &xv)?, elem(op_label, &dyv)?);
    let dxs = elem_mut(op_label, &mut dxv)?;
    let ps = pv.slice::<f32>();
    let dps = dpv.as_mut().map(|d| d.slice_mut::<f32>());
    let op_ref: &dyn ErasedOp = op.as_ref();
    let state = &entry.saved;
    py.detach(|| {
        pool::run(threads, || {
            op_ref.backward_erased(dxs, dps, dys, xs, &shape, ps, state)
        })
    })?
    .map_err(|e| raise(e, layout))
}

/// The packed parameters of the op `spec` describes for an input of
/// `shape` (logical, in `layout`): `(name, length)` in packing order.
#[pyfunction]
#[pyo3(signature = (spec, layout, shape, dtype="float32"))]
fn signature(
    spec: &str,
    layout: &str,
    shape: Vec<usize>,
    dtype: &str,
) -> PyResult<Vec<(&'static str, usize)>> {
    let layout = Layout::parse(layout)?;
    let dtype = match dtype {
        "float32" => Dtype::F32,
        "bfloat16" => Dtype::Bf16,
        "float16" => Dtype::F16,
        d => {
            return Err(PyTypeError::new_err(format!(
                "normkit.{}: dtype {d}; expected float32, bfloat16 or float16",
                label(spec)
            )))
        }
    };
    let ctx = spec::Context {
        dtype,
        layout,
        num_batches_tracked: 0,
    };
    let op = spec::build(spec, ctx)?;
    let sig = op
        .signature_erased(&memory_shape(layout, &shape))
        .map_err(|e| raise(e, layout))?;
    Ok(sig.params.iter().map(|p| (p.name, p.len)).collect())
}

/// The SIMD level normkit's kernels run at (`avx512`, `avx2`, `scalar`).
#[pyfunction]
fn simd_level() -> String {
    format!("{:?}", normkit::simd_level()).to_lowercase()
}

#[pymodule]
fn _normkit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(forward, m)?)?;
    m.add_function(wrap_pyfunction!(backward, m)?)?;
    m.add_function(wrap_pyfunction!(signature, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_class::<Saved>()?;
    Ok(())
}
