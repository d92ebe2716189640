//! The layers of burn's own `burn::nn` under the same names, configuration
//! fields, defaults, module fields and record names, computed by normkit's
//! kernels (fused on flex). Switching a burn model is one `use` line:
//!
//! ```text
//! use burn::nn::{BatchNorm, BatchNormConfig, LayerNorm, LayerNormConfig};
//! // becomes
//! use normkit_burn::nn::{BatchNorm, BatchNormConfig, LayerNorm, LayerNormConfig};
//! ```
//!
//! Records saved from the `burn::nn` layers load into these (the
//! parameters are `gamma` and `beta`, the running statistics
//! `running_mean` and `running_var`), and back.
//!
//! | layer | `Config::new` | defaults |
//! |---|---|---|
//! | [`BatchNorm`] | `(num_features)` | `epsilon 1e-5`, `momentum 0.1` |
//! | [`LayerNorm`] | `(d_model)` | `epsilon 1e-5`, `bias true` |
//! | [`RmsNorm`] | `(d_model)` | `epsilon 1e-5` |
//! | [`GroupNorm`] | `(num_groups, num_channels)` | `epsilon 1e-5`, `affine true` |
//! | [`InstanceNorm`] | `(num_channels)` | `epsilon 1e-5`, `affine true` |
//!
//! What differs from `burn::nn`:
//! - BatchNorm's running variance follows the *unbiased* batch variance,
//!   as PyTorch's does (`burn::nn` follows the biased one); outputs and
//!   gradients are the same.
//! - `forward` panics on an input the layer cannot take, as `burn::nn`'s
//!   does; every layer also has `try_forward` returning [`crate::Error`],
//!   and every config a `try_init`.
//! - The PyTorch-shaped layers at the crate root (`weight`/`bias`,
//!   channels last, `track_running_stats`, ...) are the fuller interface;
//!   these are for models written against `burn::nn`.

mod batch_norm;
mod group_norm;
mod layer_norm;

pub use batch_norm::{BatchNorm, BatchNormConfig};
pub use group_norm::{GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig};
pub use layer_norm::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};

use burn::module::Param;
use burn::tensor::{Device, Tensor};

/// A parameter of `len` values all `value`.
fn filled(len: usize, value: f32, device: &Device) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::full([len], value, device))
}

/// `(gamma, beta)` of ones and zeros when `affine`.
#[allow(clippy::type_complexity)]
fn affine(
    affine: bool,
    len: usize,
    device: &Device,
) -> (Option<Param<Tensor<1>>>, Option<Param<Tensor<1>>>) {
    if affine {
        (
            Some(filled(len, 1.0, device)),
            Some(filled(len, 0.0, device)),
        )
    } else {
        (None, None)
    }
}
