//! Loading the layers from PyTorch checkpoints saved as safetensors, by
//! PyTorch's parameter and buffer names.

use std::path::Path;

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::weight_norm::{attach_with, WeightNorm, WeightNormDim};
use crate::{BatchNorm, Derf, Dyt, GroupNorm, InstanceNorm, LayerNorm, RmsNorm};

/// A safetensors file as PyTorch's `state_dict` writes it: tensors named
/// `<prefix>.weight`, `<prefix>.running_mean`, and so on.
#[derive(Debug, Clone)]
pub struct PytorchCheckpoint {
    bytes: Vec<u8>,
}

impl PytorchCheckpoint {
    /// Reads and checks a safetensors file.
    ///
    /// # Errors
    /// An unreadable file or a malformed safetensors header.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_bytes(std::fs::read(path)?)
    }

    /// Checks safetensors bytes.
    ///
    /// # Errors
    /// A malformed safetensors header.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        SafeTensors::deserialize(&bytes)?;
        Ok(PytorchCheckpoint { bytes })
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("checked when constructed")
    }

    /// The tensor names, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.view().names().into_iter().map(String::from).collect();
        keys.sort();
        keys
    }

    /// Whether the checkpoint holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.view().tensor(key).is_ok()
    }

    /// The shape and values of `key`, converted to `f32` from any float or
    /// integer storage.
    ///
    /// # Errors
    /// A missing key or a non-numeric element type.
    pub fn tensor(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let view = self.view();
        let t = view.tensor(key).map_err(|_| Error::MissingTensor {
            key: key.to_string(),
        })?;
        let bytes = t.data();
        fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
            b.chunks_exact(N)
                .map(|c| c.try_into().expect("exact chunk"))
        }
        let values: Vec<f32> = match t.dtype() {
            Dtype::F32 => chunks::<4>(bytes).map(f32::from_le_bytes).collect(),
            Dtype::F64 => chunks::<8>(bytes)
                .map(|c| f64::from_le_bytes(c) as f32)
                .collect(),
            Dtype::F16 => chunks::<2>(bytes)
                .map(|c| half::f16::from_le_bytes(c).to_f32())
                .collect(),
            Dtype::BF16 => chunks::<2>(bytes)
                .map(|c| half::bf16::from_le_bytes(c).to_f32())
                .collect(),
            Dtype::I64 => chunks::<8>(bytes)
                .map(|c| i64::from_le_bytes(c) as f32)
                .collect(),
            Dtype::I32 => chunks::<4>(bytes)
                .map(|c| i32::from_le_bytes(c) as f32)
                .collect(),
            other => {
                return Err(Error::TensorDType {
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok((t.shape().to_vec(), values))
    }

    /// `key` as a tensor of exactly `shape` (or, when `loose`, any shape
    /// with as many elements, as a flattened LayerNorm weight takes).
    fn load<const D: usize>(
        &self,
        key: &str,
        shape: [usize; D],
        loose: bool,
        device: &Device,
    ) -> Result<Tensor<D>> {
        let (got, values) = self.tensor(key)?;
        let matches = got == shape
            || (loose && got.iter().product::<usize>() == shape.iter().product::<usize>());
        if !matches {
            return Err(Error::TensorShape {
                key: key.to_string(),
                expected: shape.to_vec(),
                got,
            });
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// Layers that load from a [`PytorchCheckpoint`].
pub trait LoadPytorch: Sized {
    /// Replaces this layer's parameters and buffers with the checkpoint's
    /// tensors named `<prefix>.<name>` (plain `<name>` for an empty prefix),
    /// keeping parameter identities, devices and training state.
    ///
    /// # Errors
    /// A tensor the layer needs is missing or has the wrong shape.
    fn load_pytorch(self, checkpoint: &PytorchCheckpoint, prefix: &str) -> Result<Self>;
}

fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `param` holding `value`, with its id and gradient requirement.
fn replace<const D: usize>(param: Param<Tensor<D>>, value: Tensor<D>) -> Param<Tensor<D>> {
    let require_grad = param.val().is_require_grad();
    param.map(|_| value.set_require_grad(require_grad))
}

fn load_param(
    param: Option<Param<Tensor<1>>>,
    ck: &PytorchCheckpoint,
    prefix: &str,
    name: &str,
    loose: bool,
) -> Result<Option<Param<Tensor<1>>>> {
    match param {
        None => Ok(None),
        Some(p) => {
            let device = p.val().device();
            let c = p.val().dims()[0];
            let t = ck.load(&key(prefix, name), [c], loose, &device)?;
            Ok(Some(replace(p, t)))
        }
    }
}

fn load_state(
    state: &Option<RunningState<Tensor<1>>>,
    ck: &PytorchCheckpoint,
    k: &str,
) -> Result<()> {
    if let Some(s) = state {
        let old = s.value_sync();
        let t = ck.load(k, old.dims(), false, &old.device())?;
        s.update(t);
        let _ = s.value_sync();
    }
    Ok(())
}

/// BatchNorm and InstanceNorm share PyTorch's `_NormBase` names.
fn load_running(
    mean: &Option<RunningState<Tensor<1>>>,
    var: &Option<RunningState<Tensor<1>>>,
    ck: &PytorchCheckpoint,
    prefix: &str,
) -> Result<()> {
    load_state(mean, ck, &key(prefix, "running_mean"))?;
    load_state(var, ck, &key(prefix, "running_var"))
}

impl LoadPytorch for BatchNorm {
    fn load_pytorch(mut self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        self.weight = load_param(self.weight, ck, prefix, "weight", false)?;
        self.bias = load_param(self.bias, ck, prefix, "bias", false)?;
        load_running(&self.running_mean, &self.running_var, ck, prefix)?;
        // PyTorch writes `num_batches_tracked` as a 0-d int64; older
        // checkpoints lack it, which leaves the count at its value.
        let k = key(prefix, "num_batches_tracked");
        if let (Some(count), true) = (&self.num_batches_tracked, ck.contains(&k)) {
            let (_, values) = ck.tensor(&k)?;
            let old = count.value_sync();
            let n = values.first().copied().unwrap_or(0.0);
            count.update(Tensor::full([1], n, &old.device()));
            let _ = count.value_sync();
        }
        Ok(self)
    }
}

impl LoadPytorch for InstanceNorm {
    fn load_pytorch(mut self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        self.weight = load_param(self.weight, ck, prefix, "weight", false)?;
        self.bias = load_param(self.bias, ck, prefix, "bias", false)?;
        load_running(&self.running_mean, &self.running_var, ck, prefix)?;
        Ok(self)
    }
}

impl LoadPytorch for GroupNorm {
    fn load_pytorch(mut self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        self.weight = load_param(self.weight, ck, prefix, "weight", false)?;
        self.bias = load_param(self.bias, ck, prefix, "bias", false)?;
        Ok(self)
    }
}

impl LoadPytorch for LayerNorm {
    fn load_pytorch(mut self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        // PyTorch shapes these like `normalized_shape`; this layer keeps
        // them flattened.
        self.weight = load_param(self.weight, ck, prefix, "weight", true)?;
        self.bias = load_param(self.bias, ck, prefix, "bias", true)?;
        Ok(self)
    }
}

impl LoadPytorch for RmsNorm {
    fn load_pytorch(mut self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        self.weight = load_param(self.weight, ck, prefix, "weight", true)?;
        Ok(self)
    }
}

impl LoadPytorch for Dyt {
    fn load_pytorch(mut self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        self.alpha = load_param(Some(self.alpha), ck, prefix, "alpha", true)?
            .expect("alpha is always present");
        self.weight = load_param(self.weight, ck, prefix, "weight", false)?;
        self.bias = load_param(self.bias, ck, prefix, "bias", false)?;
        Ok(self)
    }
}

impl LoadPytorch for Derf {
    fn load_pytorch(mut self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        self.alpha = load_param(Some(self.alpha), ck, prefix, "alpha", true)?
            .expect("alpha is always present");
        self.shift = load_param(Some(self.shift), ck, prefix, "shift", true)?
            .expect("shift is always present");
        self.weight = load_param(self.weight, ck, prefix, "weight", false)?;
        self.bias = load_param(self.bias, ck, prefix, "bias", false)?;
        Ok(self)
    }
}

/// `Linear`: `weight` `[out, in]` (transposed into burn's `[in, out]`), or
/// `weight_g` `[out, 1]` and `weight_v` `[out, in]` of PyTorch's
/// `weight_norm`, which load as a [`WeightNorm`]-reparameterized weight;
/// and `bias` when the layer has one.
impl LoadPytorch for Linear {
    fn load_pytorch(self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        let base = match self.weight.reparameterization::<WeightNorm>() {
            Some(_) => self.weight.base(),
            None => self.weight.val(),
        };
        let [d_in, d_out] = base.dims();
        let device = base.device();
        let bias = load_param(self.bias, ck, prefix, "bias", false)?;
        let (g_key, v_key) = (key(prefix, "weight_g"), key(prefix, "weight_v"));
        if ck.contains(&g_key) && ck.contains(&v_key) {
            let v = ck.load::<2>(&v_key, [d_out, d_in], false, &device)?;
            let g = ck.load::<2>(&g_key, [d_out, 1], false, &device)?;
            let plain = Linear {
                weight: Param::from_tensor(v.transpose()),
                bias,
            };
            attach_with(plain, g.reshape([d_out]), WeightNormDim::Axis(1))
        } else {
            let w = ck.load::<2>(&key(prefix, "weight"), [d_out, d_in], false, &device)?;
            Ok(Linear {
                weight: Param::from_tensor(w.transpose()),
                bias,
            })
        }
    }
}

/// `Conv2d`: `weight` `[out, in / groups, kh, kw]`, or PyTorch's
/// `weight_norm` pair `weight_g` `[out, 1, 1, 1]` and `weight_v`; and
/// `bias` when the layer has one.
impl LoadPytorch for Conv2d {
    fn load_pytorch(self, ck: &PytorchCheckpoint, prefix: &str) -> Result<Self> {
        let base = match self.weight.reparameterization::<WeightNorm>() {
            Some(_) => self.weight.base(),
            None => self.weight.val(),
        };
        let dims = base.dims();
        let device = base.device();
        let bias = load_param(self.bias.clone(), ck, prefix, "bias", false)?;
        let (g_key, v_key) = (key(prefix, "weight_g"), key(prefix, "weight_v"));
        if ck.contains(&g_key) && ck.contains(&v_key) {
            let v = ck.load::<4>(&v_key, dims, false, &device)?;
            let g = ck.load::<4>(&g_key, [dims[0], 1, 1, 1], false, &device)?;
            let plain = Conv2d {
                weight: Param::from_tensor(v),
                bias,
                ..self
            };
            attach_with(plain, g.reshape([dims[0]]), WeightNormDim::Axis(0))
        } else {
            let w = ck.load::<4>(&key(prefix, "weight"), dims, false, &device)?;
            Ok(Conv2d {
                weight: Param::from_tensor(w),
                bias,
                ..self
            })
        }
    }
}
