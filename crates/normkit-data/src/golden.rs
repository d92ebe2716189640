//! Reading golden conformance cases: one safetensors file per case, its
//! `__metadata__` saying what to run (see `tests/golden/FORMAT.md`).

use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// A dense tensor widened to `f64` for comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Self {
        Tensor { shape, data }
    }

    /// Builds a tensor from `f32` results.
    pub fn from_f32(shape: &[usize], data: &[f32]) -> Self {
        Tensor::new(shape.to_vec(), data.iter().map(|&v| v as f64).collect())
    }

    /// The values rounded to `f32`, as the kernels take them (inputs are
    /// stored as `f32`, so this is exact for them).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// One golden case as read from disk.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub meta: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, Tensor>,
}

/// Why a case file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file: {message}")]
    Format { path: String, message: String },
    #[error("{path}: tensor `{name}` has dtype {dtype:?}; a case's tensors are floats (F32, F16, BF16 or F64)")]
    Dtype {
        path: String,
        name: String,
        dtype: Dtype,
    },
}

fn widen(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f64>> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        Dtype::F64 => chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F32 => chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F16 => chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::BF16 => chunks(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        _ => return None,
    })
}

/// The `*.safetensors` files in `dir`, sorted by name (cases are numbered).
pub fn case_paths(dir: &Path) -> Result<Vec<std::path::PathBuf>, ReadError> {
    let io = |source| ReadError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Reads one case file.
pub fn read_case(path: &Path) -> Result<Case, ReadError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: shown.clone(),
        source,
    })?;
    let format = |e: safetensors::SafeTensorError| ReadError::Format {
        path: shown.clone(),
        message: e.to_string(),
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(format)?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(format)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = widen(view.dtype(), view.data()).ok_or_else(|| ReadError::Dtype {
            path: shown.clone(),
            name: name.clone(),
            dtype: view.dtype(),
        })?;
        tensors.insert(name, Tensor::new(view.shape().to_vec(), data));
    }
    let name = path
        .file_stem()
        .map_or_else(|| shown.clone(), |s| s.to_string_lossy().into_owned());
    Ok(Case {
        name,
        meta,
        tensors,
    })
}
