//! What a forward pass saved, kept in Rust and named by a handle.
//!
//! A forward returns a [`Saved`] object. PyTorch's autograd (eager or
//! compiled through `torch.library`) can only carry tensors from a forward
//! to its backward, so [`Saved`] exports itself through DLPack as a
//! one-element int64 tensor holding its id. The exported tensor owns a
//! reference to the state, released by its DLPack deleter when the tensor
//! dies; the backward looks the id up in a registry of weak references.
//! A forged or stale id finds nothing (an error), never another op's
//! state: the backward also checks the op's name and the state's type.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use normkit::op::ErasedSaved;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::dlpack::{DlDataType, DlDevice, DlManagedTensor, DlTensor, CODE_INT};

/// One forward pass's state.
pub struct Entry {
    id: u64,
    /// The op that saved it, as [`normkit::op::ErasedOp::name_erased`].
    pub op: &'static str,
    pub saved: ErasedSaved,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

static REGISTRY: LazyLock<Mutex<HashMap<u64, Weak<Entry>>>> = LazyLock::new(Default::default);

fn registry() -> MutexGuard<'static, HashMap<u64, Weak<Entry>>> {
    // The map stays consistent even if a holder panicked: every operation
    // on it is a single insert, remove or lookup.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Entry {
    pub fn new(op: &'static str, saved: ErasedSaved) -> Arc<Entry> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry { id, op, saved });
        registry().insert(id, Arc::downgrade(&entry));
        entry
    }

    /// The live state with this id.
    pub fn find(id: i64) -> PyResult<Arc<Entry>> {
        let weak = u64::try_from(id)
            .ok()
            .and_then(|id| registry().get(&id).cloned());
        // Upgraded (and possibly dropped) outside the lock: `Drop` takes it.
        weak.and_then(|w| w.upgrade()).ok_or_else(|| {
            PyValueError::new_err(format!(
                "normkit: no saved forward state with id {id}: it was freed, or the handle was not made by a normkit forward"
            ))
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        registry().remove(&self.id);
    }
}

/// The state a forward pass saved for its backward. Export it to a tensor
/// with `torch.utils.dlpack.from_dlpack(saved)` or `numpy.from_dlpack`:
/// the tensor keeps the state alive and can stand in for it.
#[pyclass(frozen, module = "normkit._normkit")]
pub struct Saved {
    pub entry: Arc<Entry>,
}

#[pymethods]
impl Saved {
    /// The op whose forward saved this.
    #[getter]
    fn op(&self) -> &'static str {
        self.entry.op
    }

    /// The handle's id, the value of the exported tensor.
    #[getter]
    fn id(&self) -> u64 {
        self.entry.id
    }

    /// A DLPack capsule of a one-element int64 CPU tensor holding the id
    /// (DLPack 0.x layout, which every consumer accepts).
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<Bound<'py, PyAny>>,
        dl_device: Option<Bound<'py, PyAny>>,
        copy: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = (stream, max_version, dl_device, copy);
        export(py, self.entry.clone())
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (1, 0)
    }
}

/// The memory behind an exported handle: the managed tensor first, so a
/// pointer to it is a pointer to the whole.
#[repr(C)]
struct Handle {
    managed: DlManagedTensor,
    value: i64,
    shape: [i64; 1],
    strides: [i64; 1],
    _entry: Arc<Entry>,
}

/// The DLPack deleter: frees the handle and its reference to the state.
///
/// # Safety
/// `m` must come from [`export`] and be deleted once.
unsafe extern "C" fn delete_handle(m: *mut DlManagedTensor) {
    if !m.is_null() {
        // SAFETY: `export` made `m` from `Box::<Handle>::into_raw`, and
        // `managed` is `Handle`'s first field of a `repr(C)` struct; DLPack
        // calls the deleter once.
        drop(unsafe { Box::from_raw(m.cast::<Handle>()) });
    }
}

/// The capsule destructor: deletes the handle unless a consumer took it
/// (consumers rename the capsule `used_dltensor` and call the deleter
/// themselves).
///
/// # Safety
/// Called by Python with a capsule made by [`export`].
unsafe extern "C" fn drop_capsule(capsule: *mut ffi::PyObject) {
    // SAFETY: `capsule` is a live capsule object (Python calls destructors
    // before freeing it); `PyCapsule_IsValid` sets no error.
    if unsafe { ffi::PyCapsule_IsValid(capsule, c"dltensor".as_ptr()) } == 1 {
        // SAFETY: valid under this name, so the pointer is the handle
        // `export` stored and nobody consumed it.
        let m = unsafe { ffi::PyCapsule_GetPointer(capsule, c"dltensor".as_ptr()) };
        // SAFETY: as above; deleted exactly once, here.
        unsafe { delete_handle(m.cast()) };
    }
}

fn export(py: Python<'_>, entry: Arc<Entry>) -> PyResult<Bound<'_, PyCapsule>> {
    let value = entry.id as i64;
    let handle = Box::into_raw(Box::new(Handle {
        managed: DlManagedTensor {
            dl_tensor: DlTensor {
                data: std::ptr::null_mut(),
                device: DlDevice {
                    device_type: 1,
                    device_id: 0,
                },
                ndim: 1,
                dtype: DlDataType {
                    code: CODE_INT,
                    bits: 64,
                    lanes: 1,
                },
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(delete_handle),
        },
        value,
        shape: [1],
        strides: [1],
        _entry: entry,
    }));
    // SAFETY: `handle` comes from `Box::into_raw` just above, so it is
    // valid and uniquely ours until handed to the capsule; the pointers
    // stored point into the same allocation, which lives until the deleter.
    unsafe {
        let h = &mut *handle;
        h.managed.dl_tensor.data = (&raw mut h.value).cast::<c_void>();
        h.managed.dl_tensor.shape = h.shape.as_mut_ptr();
        h.managed.dl_tensor.strides = h.strides.as_mut_ptr();
        h.managed.manager_ctx = handle.cast::<c_void>();
    }
    let ptr = NonNull::new(handle.cast::<c_void>()).expect("Box is non-null");
    // SAFETY: `ptr` is a `DLManagedTensor` valid until its deleter runs;
    // `drop_capsule` runs the deleter unless a consumer took ownership, and
    // touches only Rust memory (safe from any thread).
    let capsule = unsafe {
        PyCapsule::new_with_pointer_and_destructor(py, ptr, c"dltensor", Some(drop_capsule))
    };
    if capsule.is_err() {
        // SAFETY: the capsule was not made, so the handle is still ours.
        unsafe { delete_handle(handle.cast()) };
    }
    capsule
}
