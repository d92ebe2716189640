//! Zero-copy access to arrays through DLPack: torch tensors and NumPy
//! arrays hand over a capsule describing their memory, which this module
//! checks (device, dtype, layout, alignment, writability) before any slice
//! is built over it.
//!
//! The capsule is borrowed, never consumed: its producer's destructor frees
//! the exported tensor when the capsule object dies, and the caller keeps
//! the capsule alive for as long as the slices live ([`View`] borrows it).

use std::ffi::{c_void, CStr};
use std::ptr::NonNull;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyDict};

/// `DLDevice`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DlDevice {
    pub device_type: i32,
    pub device_id: i32,
}

/// `DLDataType`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DlDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

/// `DLTensor`.
#[repr(C)]
#[derive(Debug)]
pub struct DlTensor {
    pub data: *mut c_void,
    pub device: DlDevice,
    pub ndim: i32,
    pub dtype: DlDataType,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}

/// `DLManagedTensor` (the unversioned capsule, named `dltensor`).
#[repr(C)]
pub struct DlManagedTensor {
    pub dl_tensor: DlTensor,
    pub manager_ctx: *mut c_void,
    pub deleter: Option<unsafe extern "C" fn(*mut DlManagedTensor)>,
}

/// `DLPackVersion`.
#[repr(C)]
struct DlPackVersion {
    major: u32,
    minor: u32,
}

/// `DLManagedTensorVersioned` (DLPack 1.x, named `dltensor_versioned`).
#[repr(C)]
struct DlManagedTensorVersioned {
    version: DlPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DlManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DlTensor,
}

const CPU: i32 = 1;
const FLAG_READ_ONLY: u64 = 1;
pub const CODE_INT: u8 = 0;
const CODE_FLOAT: u8 = 2;
const CODE_BFLOAT: u8 = 4;

/// The element types the kernels take, plus the 64-bit integer of handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
    I64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
            Dtype::F16 => "float16",
            Dtype::I64 => "int64",
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::I64 => 8,
        }
    }

    fn of(t: DlDataType) -> Option<Dtype> {
        match (t.code, t.bits, t.lanes) {
            (CODE_FLOAT, 32, 1) => Some(Dtype::F32),
            (CODE_BFLOAT, 16, 1) => Some(Dtype::Bf16),
            (CODE_FLOAT, 16, 1) => Some(Dtype::F16),
            (CODE_INT, 64, 1) => Some(Dtype::I64),
            _ => None,
        }
    }
}

/// A DLPack dtype as NumPy and PyTorch name it.
fn dtype_name(t: DlDataType) -> String {
    let kind = match t.code {
        CODE_INT => "int",
        1 => "uint",
        CODE_FLOAT => "float",
        CODE_BFLOAT => "bfloat",
        5 => "complex",
        6 => "bool",
        _ => return format!("DLPack dtype code {} ({} bits)", t.code, t.bits),
    };
    let lanes = if t.lanes == 1 {
        String::new()
    } else {
        format!(" x{}", t.lanes)
    };
    format!("{kind}{}{lanes}", t.bits)
}

/// `DLDeviceType` as the frameworks name it.
fn device_name(d: DlDevice) -> String {
    let kind = match d.device_type {
        1 => "cpu",
        2 => "cuda",
        3 => "cuda (pinned host)",
        4 => "opencl",
        7 => "vulkan",
        8 => "mps (metal)",
        9 => "vpi",
        10 => "rocm",
        11 => "rocm (pinned host)",
        12 => "ext_dev",
        13 => "cuda (managed)",
        14 => "xpu (oneapi)",
        15 => "webgpu",
        16 => "hexagon",
        17 => "maia",
        _ => "unknown",
    };
    format!(
        "{kind}:{} (DLPack device type {})",
        d.device_id, d.device_type
    )
}

/// Where the channel dimension of an input sits in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Row-major in the logical order (`[N, C, *]` stays `[N, C, *]`).
    Contiguous,
    /// Dimension 1 stored last (`[N, C, *]` stored as `[N, *, C]`):
    /// PyTorch's channels_last and channels_last_3d, or any `[N, C, L]`
    /// view of a contiguous `[N, L, C]`.
    ChannelsLast,
}

impl Layout {
    pub fn parse(s: &str) -> PyResult<Layout> {
        match s {
            "contiguous" => Ok(Layout::Contiguous),
            "channels_last" => Ok(Layout::ChannelsLast),
            _ => Err(PyValueError::new_err(format!(
                "normkit: unknown layout `{s}` (expected contiguous or channels_last)"
            ))),
        }
    }

    /// The logical dimensions in the order memory stores them.
    pub fn memory_order(self, rank: usize) -> Vec<usize> {
        match self {
            Layout::ChannelsLast if rank >= 3 => {
                let mut order = vec![0];
                order.extend(2..rank);
                order.push(1);
                order
            }
            _ => (0..rank).collect(),
        }
    }
}

/// One array's memory, checked: on the CPU, of a known dtype, dense in
/// the expected layout, aligned. Valid while the borrowed capsule lives.
#[derive(Debug)]
pub struct View<'a> {
    /// Name in messages (`x`, `running_mean`, ...).
    pub name: &'static str,
    /// Logical shape, as the framework reports it.
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    ptr: *mut u8,
    len: usize,
    writable: bool,
    _capsule: &'a Bound<'a, PyCapsule>,
}

/// A checked DLPack export of a Python object.
pub struct Export<'py> {
    capsule: Bound<'py, PyCapsule>,
}

impl<'py> Export<'py> {
    /// A capsule as given, or the one `obj.__dlpack__()` returns (asking
    /// for DLPack 1.x, which can flag read-only arrays, and falling back
    /// to the unversioned protocol for producers that predate it).
    pub fn of(obj: &Bound<'py, PyAny>) -> PyResult<Export<'py>> {
        if let Ok(c) = obj.cast::<PyCapsule>() {
            return Ok(Export { capsule: c.clone() });
        }
        let py = obj.py();
        let not_array = |e: PyErr| {
            let ty = obj
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string());
            PyTypeError::new_err(format!(
                "normkit: expected an array with __dlpack__ (a torch tensor or NumPy array), got {ty}: {e}"
            ))
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item("max_version", (1, 0))?;
        let c = match obj.call_method("__dlpack__", (), Some(&kwargs)) {
            Ok(c) => c,
            Err(e) if e.is_instance_of::<PyTypeError>(py) => {
                obj.call_method0("__dlpack__").map_err(not_array)?
            }
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => {
                return Err(not_array(e))
            }
            Err(e) => return Err(e),
        };
        let capsule = c
            .cast_into::<PyCapsule>()
            .map_err(|_| PyTypeError::new_err("normkit: __dlpack__ did not return a capsule"))?;
        Ok(Export { capsule })
    }

    /// The array's memory, checked against `layout` (whose memory order is
    /// checked to be dense) and, when `write`, writable.
    pub fn view(
        &self,
        op: &str,
        name: &'static str,
        layout: Layout,
        write: bool,
    ) -> PyResult<View<'_>> {
        let (tensor, read_only) = self.tensor(op, name)?;
        let bad = |why: String| PyValueError::new_err(format!("normkit.{op}: `{name}` {why}"));
        if tensor.device.device_type != CPU {
            return Err(bad(format!(
                "is on device {}; normkit runs on the CPU: move it with .cpu()",
                device_name(tensor.device)
            )));
        }
        let dtype = Dtype::of(tensor.dtype).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "normkit.{op}: `{name}` is {}; expected float32, bfloat16 or float16",
                dtype_name(tensor.dtype)
            ))
        })?;
        let rank = usize::try_from(tensor.ndim).map_err(|_| bad("has a negative rank".into()))?;
        let read = |p: *mut i64| -> Vec<i64> {
            if p.is_null() || rank == 0 {
                Vec::new()
            } else {
                // SAFETY: DLPack guarantees `shape` (and `strides` when not
                // null) point to `ndim` int64 values owned by the managed
                // tensor, which the borrowed capsule keeps alive.
                unsafe { std::slice::from_raw_parts(p, rank) }.to_vec()
            }
        };
        let dims = read(tensor.shape);
        if dims.len() != rank || dims.iter().any(|&d| d < 0) {
            return Err(bad("has an invalid DLPack shape".into()));
        }
        let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        // A slice may span at most isize::MAX bytes.
        len.checked_mul(dtype.size())
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let strides = read(tensor.strides);
        if !strides.is_empty() && len > 0 && !dense(&shape, &strides, layout) {
            let what = match layout {
                Layout::Contiguous => "contiguous",
                Layout::ChannelsLast => "channels-last dense",
            };
            return Err(bad(format!(
                "of shape {shape:?} with strides {strides:?} is not {what}"
            )));
        }
        if strides.is_empty() && layout == Layout::ChannelsLast && !trivially_last(&shape) {
            return Err(bad(format!(
                "of shape {shape:?} is row-major, expected channels-last"
            )));
        }
        if write && read_only {
            return Err(bad("is read-only".into()));
        }
        let ptr = if len == 0 {
            NonNull::<u64>::dangling().as_ptr().cast::<u8>()
        } else {
            let offset = usize::try_from(tensor.byte_offset)
                .map_err(|_| bad("has an invalid byte offset".into()))?;
            let base = tensor.data.cast::<u8>();
            if base.is_null() {
                return Err(bad("has no data".into()));
            }
            let p = base.wrapping_add(offset);
            if (p as usize) % dtype.size() != 0 {
                return Err(bad(format!("data is not aligned to {}", dtype.size())));
            }
            p
        };
        Ok(View {
            name,
            shape,
            dtype,
            ptr,
            len,
            writable: write,
            _capsule: &self.capsule,
        })
    }

    /// The `DLTensor` of the capsule and whether it is flagged read-only.
    fn tensor(&self, op: &str, name: &str) -> PyResult<(&DlTensor, bool)> {
        let cap = &self.capsule;
        let versioned: &CStr = c"dltensor_versioned";
        if let Ok(p) = cap.pointer_checked(Some(versioned)) {
            // SAFETY: a capsule named `dltensor_versioned` holds a
            // `DLManagedTensorVersioned` (DLPack 1.x), alive until the
            // capsule's destructor runs; `self` holds the capsule.
            let m = unsafe { p.cast::<DlManagedTensorVersioned>().as_ref() };
            if m.version.major != 1 {
                return Err(PyValueError::new_err(format!(
                    "normkit.{op}: `{name}` uses DLPack {}.{}; expected 1.x",
                    m.version.major, m.version.minor
                )));
            }
            return Ok((&m.dl_tensor, m.flags & FLAG_READ_ONLY != 0));
        }
        let p = cap.pointer_checked(Some(c"dltensor")).map_err(|_| {
            PyValueError::new_err(format!(
                "normkit.{op}: `{name}` is not an unconsumed DLPack capsule"
            ))
        })?;
        // SAFETY: a capsule named `dltensor` holds a `DLManagedTensor`,
        // alive until the capsule's destructor runs; `self` holds it.
        let m = unsafe { p.cast::<DlManagedTensor>().as_ref() };
        Ok((&m.dl_tensor, false))
    }
}

/// Whether `strides` (in elements) describe a dense array stored in
/// `layout`'s memory order. Dimensions of extent 1 may have any stride.
fn dense(shape: &[usize], strides: &[i64], layout: Layout) -> bool {
    let mut expected: i64 = 1;
    for &d in layout.memory_order(shape.len()).iter().rev() {
        if shape[d] != 1 && strides[d] != expected {
            return false;
        }
        expected = expected.saturating_mul(shape[d] as i64);
    }
    true
}

/// A row-major shape that is channels-last too: dimension 1 is 1, or
/// every dimension after it is.
fn trivially_last(shape: &[usize]) -> bool {
    shape.len() < 3 || shape[1] == 1 || shape[2..].iter().all(|&d| d == 1)
}

impl View<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    fn range(&self) -> (usize, usize) {
        let start = self.ptr as usize;
        (start, start + self.len * self.dtype.size())
    }

    /// Whether the memory of `self` and `other` overlaps.
    pub fn overlaps(&self, other: &View<'_>) -> bool {
        let (a, b) = (self.range(), other.range());
        self.len > 0 && other.len > 0 && a.0 < b.1 && b.0 < a.1
    }

    /// The values as `T`, which must be the view's dtype.
    pub fn slice<T: Pod>(&self) -> &[T] {
        assert_eq!(T::DTYPE, self.dtype, "slice of the wrong dtype");
        // SAFETY: `view` checked that `ptr` is non-null (or dangling for an
        // empty array) and aligned for `T`, and that the array is dense, so
        // its `len` values of `T`'s size lie in the producer's buffer, which
        // stays alive while the borrowed capsule does. `T: Pod` has no
        // invalid bit patterns.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<T>(), self.len) }
    }

    /// The values as `T`, mutably. The caller checked with
    /// [`check_disjoint`] that no other view handed to the same call
    /// overlaps this one.
    pub fn slice_mut<T: Pod>(&mut self) -> &mut [T] {
        assert!(self.writable, "mutable slice of an input");
        assert_eq!(T::DTYPE, self.dtype, "slice of the wrong dtype");
        // SAFETY: as in `slice`; besides, the view was made writable (the
        // producer did not flag it read-only), `check_disjoint` proved that
        // no other view of this call aliases it, and `&mut self` makes this
        // slice the only one of this view while it lives. Like PyTorch's
        // own kernels, this relies on no other thread resizing or writing
        // the array during the call.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<T>(), self.len) }
    }
}

/// Refuses a call whose writable views overlap any other view.
pub fn check_disjoint(op: &str, views: &[&View<'_>]) -> PyResult<()> {
    for (i, a) in views.iter().enumerate() {
        for b in &views[i + 1..] {
            if (a.writable || b.writable) && a.overlaps(b) {
                return Err(PyValueError::new_err(format!(
                    "normkit.{op}: `{}` and `{}` share memory; an output must not alias an input",
                    a.name, b.name
                )));
            }
        }
    }
    Ok(())
}

/// Plain numbers whose every bit pattern is a value.
///
/// # Safety
/// Implementors must be valid for any bit pattern and have the size and
/// alignment of their [`Dtype`].
pub unsafe trait Pod: Copy + 'static {
    const DTYPE: Dtype;
}

// SAFETY: IEEE binary32: every bit pattern is a value (NaNs included).
unsafe impl Pod for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
// SAFETY: `half::bf16` is a transparent u16; every bit pattern is a value.
unsafe impl Pod for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}
// SAFETY: `half::f16` is a transparent u16; every bit pattern is a value.
unsafe impl Pod for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
}
// SAFETY: every bit pattern of an i64 is a value.
unsafe impl Pod for i64 {
    const DTYPE: Dtype = Dtype::I64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_order_moves_dimension_one_to_the_end() {
        assert_eq!(Layout::ChannelsLast.memory_order(4), [0, 2, 3, 1]);
        assert_eq!(Layout::ChannelsLast.memory_order(3), [0, 2, 1]);
        assert_eq!(Layout::ChannelsLast.memory_order(2), [0, 1]);
        assert_eq!(Layout::Contiguous.memory_order(3), [0, 1, 2]);
    }

    #[test]
    fn density_follows_the_layout() {
        // [2, 3, 4, 5] channels-last: strides (60, 1, 15, 3).
        let shape = [2, 3, 4, 5];
        assert!(dense(&shape, &[60, 1, 15, 3], Layout::ChannelsLast));
        assert!(!dense(&shape, &[60, 1, 15, 3], Layout::Contiguous));
        assert!(dense(&shape, &[60, 20, 5, 1], Layout::Contiguous));
        // A sliced view is dense in neither.
        assert!(!dense(&shape, &[120, 40, 10, 2], Layout::Contiguous));
        // Extent-1 dimensions may carry any stride.
        assert!(dense(&[2, 1, 3], &[3, 99, 1], Layout::Contiguous));
    }

    #[test]
    fn trivial_channels_last() {
        assert!(trivially_last(&[2, 1, 4, 4]));
        assert!(trivially_last(&[2, 8, 1, 1]));
        assert!(!trivially_last(&[2, 8, 4, 4]));
    }
}
