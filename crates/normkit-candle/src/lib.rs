//! # normkit-candle
//!
//! normkit's normalization layers for [candle](https://github.com/huggingface/candle):
//! BatchNorm, LayerNorm, RMSNorm, GroupNorm, InstanceNorm, Dynamic Tanh and
//! Weight Normalization of `Linear` and `Conv2d`, with PyTorch's defaults
//! and parameter names, and the adaptive family: AdaIN ([`adain`]),
//! LayerNorm/RMSNorm modulated by a condition (adaLN, adaLN-Zero, FiLM:
//! [`AdaLayerNorm`], [`ada_layer_norm_op`]), Switchable Normalization
//! ([`SwitchNorm`]) and Batch Renormalization ([`BatchRenorm`]).
//!
//! Each layer builds its [`normkit::op`] value and hands it, with its
//! parameters, to one generic pair of candle custom ops: the forward runs
//! the op's forward, the backward its backward, so gradients reach the
//! input and every parameter, whatever the input's layout. Shapes and
//! hyperparameters are validated by the op itself. Inputs may be `f32`, `bf16` or `f16` on the CPU (the
//! statistics are accumulated in f32 lanes either way); parameters may be any
//! float dtype and are used as f32. Wrong shapes or dtypes come back as a
//! [`candle_core::Error`] naming the op and the shapes.
//!
//! Layers are built like candle-nn's, from a [`candle_nn::VarBuilder`],
//! and implement [`candle_core::Module`] (or [`candle_core::ModuleT`] when
//! training and evaluation differ: [`BatchNorm`], [`InstanceNorm`],
//! [`SwitchNorm`], [`BatchRenorm`]); [`AdaIn`] and [`AdaLayerNorm`] take a
//! second input (the style, the condition). A PyTorch `state_dict` saved as
//! safetensors loads as is.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{DType, Device, ModuleT, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use normkit_candle::{batch_norm, BatchNormConfig};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let bn = batch_norm(3, BatchNormConfig::default(), vb.pp("bn"))?;
//! let x = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((2, 3, 4))?;
//! let y = bn.forward_t(&x, true)?;
//! assert_eq!(bn.num_batches_tracked()?, Some(1));
//! assert_eq!(y.dims(), &[2, 3, 4]);
//! # Ok(()) }
//! ```
//!
//! Backward passes are first-order: the gradient of a gradient through
//! these ops is not available.

mod ada_norm;
mod adain;
mod batch_norm;
mod batch_renorm;
mod derf;
mod dyt;
mod error;
mod fold;
mod fused;
mod group_norm;
mod layer_norm;
mod qk_norm;
mod running;
mod state;
mod switch_norm;
mod weight_norm;

pub use ada_norm::{
    ada_layer_norm, ada_layer_norm_op, ada_rms_norm_op, AdaLayerNorm, AdaLayerNormConfig,
    AdaLayerNormOutput,
};
pub use adain::{adain, AdaIn, AdaInConfig};
pub use batch_norm::{batch_norm, BatchNorm, BatchNormConfig, IntoBatchNormConfig};
pub use batch_renorm::{batch_renorm, BatchRenorm, BatchRenormConfig, BatchRenormSchedule};
pub use derf::{derf, derf_op, Derf, DerfConfig};
pub use dyt::{dyt, dyt_op, Dyt, DytConfig};
pub use error::LayerError;
pub use fold::{fold_batch_norm_conv2d, fold_batch_norm_linear};
pub use group_norm::{
    group_norm, instance_norm, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
};
pub use layer_norm::{
    layer_norm, layer_norm_no_bias, layer_norm_op, rms_norm, rms_norm_op, IntoLayerNormConfig,
    LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig,
};
pub use normkit::op::QkScope;
pub use normkit::ChannelAxis;
pub use qk_norm::{qk_norm, QkNorm, QkNormConfig, QkNormKind};
pub use state::StateDict;
pub use switch_norm::{switch_norm, SwitchNorm, SwitchNormConfig};
pub use weight_norm::{
    weight_norm_conv2d, weight_norm_linear, weight_norm_op, WeightNormConfig, WeightNormConv2d,
    WeightNormLinear, WeightNormNames,
};

use candle_core::{Result, Tensor};

/// Checks that `x` has `expected` channels on its channel axis. Inputs of
/// too low a rank pass through: the kernel names that error.
pub(crate) fn check_channels(
    op: &'static str,
    x: &Tensor,
    axis: ChannelAxis,
    expected: usize,
) -> Result<()> {
    let dims = x.dims();
    let at = match axis {
        ChannelAxis::First if dims.len() >= 2 => 1,
        ChannelAxis::Last if !dims.is_empty() => dims.len() - 1,
        _ => return Ok(()),
    };
    if dims[at] == expected {
        Ok(())
    } else {
        Err(error::layer(LayerError::Channels {
            op,
            shape: dims.to_vec(),
            axis: at as isize,
            expected,
            got: dims[at],
        }))
    }
}
