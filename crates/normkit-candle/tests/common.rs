//! Helpers shared by the test modules: a seeded generator, tensors, a
//! finite-difference gradient check and comparisons.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

pub const CPU: Device = Device::Cpu;

/// SplitMix64: a small, seeded generator, so every run sees the same data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// An f32 tensor of `shape` with uniform values in `[lo, hi)`.
    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(self.vec(n, lo, hi), shape, &CPU).unwrap()
    }

    /// An f32 variable of `shape` with uniform values in `[-1, 1)`.
    pub fn var(&mut self, shape: &[usize]) -> Var {
        Var::from_tensor(&self.tensor(shape, -1.0, 1.0)).unwrap()
    }
}

/// Builds a layer on a fresh `VarMap` and fills its float tensors with
/// random values (running variances positive); returns the layer, the map
/// and its trainable variables (every float tensor but running statistics),
/// sorted by name.
pub fn build<L>(
    rng: &mut Rng,
    make: impl FnOnce(VarBuilder) -> Result<L>,
) -> (L, VarMap, Vec<(String, Var)>) {
    let varmap = VarMap::new();
    let layer = make(VarBuilder::from_varmap(&varmap, DType::F32, &CPU)).unwrap();
    let mut params = Vec::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if !var.dtype().is_float() {
            continue;
        }
        let (lo, hi) = if name.ends_with("running_var") {
            (0.5, 1.5)
        } else {
            (-1.0, 1.0)
        };
        var.set(&rng.tensor(var.dims(), lo, hi)).unwrap();
        if !name.contains("running_") {
            params.push((name.clone(), var.clone()));
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    (layer, varmap, params)
}

/// `Σ y · r` in f64.
pub fn dot(y: &Tensor, r: &Tensor) -> f64 {
    (y.to_dtype(DType::F64).unwrap() * r.to_dtype(DType::F64).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The gradients of `Σ forward() · r` with respect to `vars`, from
/// candle's autograd; `None` where no gradient arrived.
pub fn autograd(
    forward: &dyn Fn() -> Result<Tensor>,
    r: &Tensor,
    vars: &[(String, Var)],
) -> Vec<Option<Vec<f64>>> {
    let y = forward().unwrap();
    let r = r.to_dtype(y.dtype()).unwrap();
    let loss = (y * r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    vars.iter()
        .map(|(_, v)| grads.get(v.as_tensor()).map(flat))
        .collect()
}

/// Central finite differences of `Σ forward() · r` with respect to every
/// element of `var`, with step `h`.
pub fn finite_differences(
    forward: &dyn Fn() -> Result<Tensor>,
    r: &Tensor,
    var: &Var,
    h: f32,
) -> Vec<f64> {
    let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let set = |vals: &[f32]| {
        var.set(&Tensor::from_slice(vals, var.dims(), &CPU).unwrap())
            .unwrap()
    };
    let mut out = Vec::with_capacity(base.len());
    let mut vals = base.clone();
    for i in 0..base.len() {
        vals[i] = base[i] + h;
        set(&vals);
        let plus = dot(&forward().unwrap(), r);
        vals[i] = base[i] - h;
        set(&vals);
        let minus = dot(&forward().unwrap(), r);
        vals[i] = base[i];
        // Differences of the f32-rounded step, not of h.
        let step = (base[i] + h) as f64 - (base[i] - h) as f64;
        out.push((plus - minus) / step);
    }
    set(&base);
    out
}

/// The values of a tensor as f64, row-major.
pub fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

pub fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// Asserts `|a - b| ≤ tol · max(1, max|b|)` elementwise.
#[track_caller]
pub fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    let scale = max_abs(b).max(1.0);
    let d = max_diff(a, b);
    assert!(
        d <= tol * scale,
        "{what}: max difference {d:e} exceeds {:e} (scale {scale})",
        tol * scale
    );
}

/// A golden case of `tests/golden` (format in its FORMAT.md), read by
/// `normkit_data::golden`, with its tensors as candle tensors.
#[derive(Clone)]
pub struct GoldenCase {
    pub name: String,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
}

/// The golden cases whose `op` is one of `ops`, in file order. Expected
/// results (the tensors with a `tol_<name>`) are f64, inputs f32, as the
/// files store them.
pub fn golden_cases(ops: &[&str]) -> Vec<GoldenCase> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden");
    let paths = normkit_data::golden::case_paths(&dir).expect("tests/golden is readable");
    let mut cases = Vec::new();
    for path in paths {
        let case = normkit_data::golden::read_case(&path).unwrap();
        if !case
            .meta
            .get("op")
            .is_some_and(|op| ops.contains(&op.as_str()))
        {
            continue;
        }
        let tensors = case
            .tensors
            .into_iter()
            .map(|(name, t)| {
                let expected = case.meta.contains_key(&format!("tol_{name}"));
                let dtype = if expected { DType::F64 } else { DType::F32 };
                let t = Tensor::from_vec(t.data, t.shape, &CPU).unwrap();
                (name, t.to_dtype(dtype).unwrap())
            })
            .collect();
        cases.push(GoldenCase {
            name: case.name,
            meta: case.meta.into_iter().collect(),
            tensors,
        });
    }
    cases
}

/// A file under the system's temporary directory, removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// Writes `tensors` as a safetensors file named after `name`.
    pub fn safetensors(name: &str, tensors: &HashMap<String, Tensor>) -> Self {
        let path = std::env::temp_dir().join(format!(
            "normkit-candle-{}-{name}.safetensors",
            std::process::id()
        ));
        candle_core::safetensors::save(tensors, &path).unwrap();
        TempFile(path)
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
