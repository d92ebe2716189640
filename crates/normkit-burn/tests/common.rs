//! Shared helpers: deterministic data, tensor reads and tolerant compares.

use burn::tensor::{Device, Tensor, TensorData};

/// The flex device with autodiff: the fused path, training behavior.
pub fn ad() -> Device {
    Device::flex().autodiff()
}

/// Deterministic values in [-1, 1) (a 64-bit LCG), `scale`d and shifted.
pub fn values(n: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * scale + shift
        })
        .collect()
}

/// A tensor of `shape` filled by [`values`].
pub fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed, 1.0, 0.0), shape), device)
}

/// A tensor of `shape` holding `v`.
pub fn from_vec<const D: usize>(v: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The values of a tensor as `f64`.
pub fn read<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Asserts `|a - b| <= atol + rtol·|b|` elementwise, naming the first miss.
pub fn assert_close(what: &str, a: &[f64], b: &[f64], atol: f64, rtol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: {x} vs {y} (diff {})",
            (x - y).abs()
        );
    }
}
