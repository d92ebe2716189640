//! Saving a layer's tensors under PyTorch's names.

use std::collections::HashMap;

use candle_core::Tensor;

/// A layer's parameters and buffers, named as in a PyTorch `state_dict`.
///
/// Layers built from a `VarMap` are saved by `VarMap::save` already; this
/// is for layers loaded from a file (whose running statistics a training
/// step updates) or built from tensors.
///
/// ```no_run
/// # fn main() -> candle_core::Result<()> {
/// use std::collections::HashMap;
/// use candle_core::{DType, Device};
/// use candle_nn::VarBuilder;
/// use normkit_candle::{batch_norm, BatchNormConfig, StateDict};
///
/// let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let bn = batch_norm(8, BatchNormConfig::default(), vb.pp("bn"))?;
/// let mut tensors = HashMap::new();
/// bn.state_dict("bn", &mut tensors);
/// candle_core::safetensors::save(&tensors, "model.safetensors")?;
/// # Ok(()) }
/// ```
pub trait StateDict {
    /// Inserts every tensor as `prefix.name` (just `name` when `prefix` is
    /// empty).
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>);
}

pub(crate) fn insert(out: &mut HashMap<String, Tensor>, prefix: &str, name: &str, t: &Tensor) {
    let key = if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    };
    out.insert(key, t.clone());
}
