//! # normkit-burn
//!
//! normkit's normalization layers for [burn](https://burn.dev): BatchNorm,
//! InstanceNorm, GroupNorm, LayerNorm, RMSNorm, Dynamic Tanh and Weight
//! Normalization, with PyTorch's semantics and defaults, and the adaptive
//! family: AdaIN, adaLN (modulated LayerNorm/RMSNorm with adaLN-Zero; FiLM
//! through [`functional`]), Switchable Normalization and Batch
//! Renormalization.
//!
//! Each layer follows burn's idiom: a `#[derive(Config)]` configuration
//! whose fields document PyTorch's defaults, `config.init(&device)`, a
//! `#[derive(Module)]` struct, and `forward`. On the `flex` backend (with
//! or without autodiff) a layer's forward is one fused normkit kernel and
//! its backward another, attached to burn's autodiff graph as a custom
//! node that carries the forward's saved mean and rstd. On every other
//! backend, and for `f64` tensors, the same layer runs composed tensor
//! operations; models stay backend-agnostic.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use normkit_burn::{BatchNormConfig, LayerNormConfig};
//!
//! let device = Device::flex().autodiff();
//! let bn = BatchNormConfig::new(3).init(&device);
//! let x = Tensor::<4>::random([8, 3, 5, 5], burn::tensor::Distribution::Default, &device)
//!     .require_grad();
//! let y = bn.forward(x.clone()); // training step: batch statistics
//! let grads = y.sum().backward();
//! assert!(x.grad(&grads).is_some());
//!
//! let ln = LayerNormConfig::new(vec![5]).init(&device);
//! let z = ln.forward(Tensor::<3>::ones([2, 4, 5], &device));
//! assert_eq!(z.dims(), [2, 4, 5]);
//! ```
//!
//! Training behavior is burn's: a layer trains (batch statistics, running
//! updates) when its input lives on an autodiff device and its `training`
//! flag is on; [`burn::module::Module::valid`] switches to inference.
//! Running statistics are [`burn::module::RunningState`]s and are saved in
//! records. [`LoadPytorch`] reads PyTorch-named safetensors checkpoints.
//!
//! Every `forward` has a `try_forward` returning [`Error`] for input the op
//! cannot take; every `init` a `try_init` for configurations out of range.

mod ada_norm;
mod adain;
mod batch_norm;
mod batch_renorm;
mod composed;
mod derf;
mod dyt;
mod error;
mod fold;
pub mod functional;
mod fused;
mod group_norm;
mod instance_norm;
mod layer_norm;
pub mod nn;
mod pytorch;
mod qk_norm;
mod route;
mod step;
mod switch_norm;
mod weight_norm;

use burn::config::Config;

pub use ada_norm::{AdaLayerNorm, AdaLayerNormConfig, AdaLayerNormOutput};
pub use adain::{AdaIn, AdaInConfig};
pub use batch_norm::{BatchNorm, BatchNormConfig};
pub use batch_renorm::{BatchRenorm, BatchRenormConfig, RenormScheduleConfig};
pub use derf::{Derf, DerfConfig};
pub use dyt::{Dyt, DytConfig};
pub use error::{Error, Result};
pub use fold::{fold_batch_norm_conv2d, fold_batch_norm_linear};
pub use group_norm::{GroupNorm, GroupNormConfig};
pub use instance_norm::{InstanceNorm, InstanceNormConfig};
pub use layer_norm::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
pub use pytorch::{LoadPytorch, PytorchCheckpoint};
pub use qk_norm::{QkNorm, QkNormConfig, QkNormKind, QkNormParams, QkScope};
pub use route::{current_route, fused_calls, is_flex, with_route, FusedCalls, Route};
pub use switch_norm::{SwitchNorm, SwitchNormConfig};
pub use weight_norm::{
    weight_norm_conv2d, weight_norm_conv2d_data_init, weight_norm_linear,
    weight_norm_linear_data_init, WeightNorm, WeightNormConfig, WeightNormDim,
};

/// Where the channel dimension sits in a layer's input.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ChannelAxis {
    /// `[N, C, *]`: PyTorch's layout (NCHW).
    First,
    /// `[N, *, C]`: channels last (NHWC), as in tokens × features.
    Last,
}

impl From<ChannelAxis> for normkit::ChannelAxis {
    fn from(axis: ChannelAxis) -> Self {
        match axis {
            ChannelAxis::First => normkit::ChannelAxis::First,
            ChannelAxis::Last => normkit::ChannelAxis::Last,
        }
    }
}
