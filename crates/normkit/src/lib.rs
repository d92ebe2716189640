//! # normkit
//!
//! Normalization layers for deep learning as plain functions over
//! contiguous slices: forward and backward of BatchNorm, LayerNorm,
//! RMSNorm, GroupNorm, InstanceNorm, WeightNorm, Dynamic Tanh and Dynamic
//! erf, of the residual add fused with LayerNorm or RMSNorm, of QK-norm
//! and Gemma's `(1 + weight)` RMSNorm ([`op::UnitOffsetRmsNorm`]), and of
//! the adaptive family (AdaIN, modulated LayerNorm/RMSNorm for adaLN and
//! FiLM, Switchable Normalization, Batch Renormalization), with PyTorch's
//! semantics, exact statistics and typed errors.
//!
//! Every op documents its formula and shapes at its entry point. Each
//! training forward returns the [`Stats`] its backward takes, so backward
//! never recomputes them. Inputs and outputs may be `f32`, `bf16` or `f16`
//! (see [`Elem`]); parameters are `f32`. Statistics are the corrected
//! formula — never `E[x²] − E[x]²` — taken in one sweep around a shift
//! from the data when the sums prove that safe, and otherwise by the
//! corrected two-pass algorithm with power-of-two scaling; `f32` lanes
//! with `f64` across blocks. They stay exact for inputs with a large mean
//! and finite for values up to `f32::MAX`.
//!
//! Kernels are explicit 16-lane SIMD code for AVX-512 or AVX2+FMA when the
//! CPU has them (chosen at run time, see [`simd_level`]; every level
//! computes the same bits) and use rayon's threads for large inputs; work
//! is split into chunks fixed by the shape, so results are bitwise
//! identical for any number of threads.
//!
//! ```
//! use normkit::{layer_norm_forward, layer_norm_backward, Affine, Grads};
//!
//! let shape = [2, 4];
//! let x = [1.0f32, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0];
//! let (weight, bias) = ([1.0f32; 4], [0.0f32; 4]);
//! let mut y = [0.0f32; 8];
//! let stats = layer_norm_forward(&mut y, &x, &shape, &[4], Affine::new(&weight, &bias), 1e-5)?;
//! assert!((y[0] + 1.3416).abs() < 1e-4);
//!
//! let dy = [1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
//! let (mut dx, mut dweight, mut dbias) = ([0.0f32; 8], [0.0f32; 4], [0.0f32; 4]);
//! let grads = Grads { dx: &mut dx, dweight: Some(&mut dweight), dbias: Some(&mut dbias) };
//! layer_norm_backward(grads, &dy, &x, &shape, &[4], Some(&weight), &stats)?;
//! assert_eq!(dbias, [1.0, 0.0, 0.0, 1.0]);
//! # Ok::<(), normkit::NormError>(())
//! ```
//!
//! Bad input never panics: every function checks all its arguments first
//! and returns a [`NormError`] naming the op and the shapes, having written
//! nothing.
//!
//! The [`reference`](mod@reference) module holds a plain `f64` twin of every op, used by
//! the tests as the yardstick.

// Every `unsafe` block states why it is sound, and every `unsafe fn` what
// its callers promise.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod ada_norm;
mod adain;
mod add_norm;
mod batch_norm;
mod batch_renorm;
pub mod comm;
mod derf;
mod dyt;
mod elem;
mod erf;
mod error;
mod exp;
mod fold;
mod group_norm;
mod instances;
mod lanes;
mod layer_norm;
mod layer_norm_scaling;
mod layout;
mod moments;
mod normalize;
pub mod op;
mod parallel;
mod pointwise;
mod qk_norm;
pub mod reference;
mod simd;
mod switch_norm;
mod sync_batch_norm;
mod tanh;
mod weight_norm;

pub use ada_norm::{
    ada_layer_norm_backward, ada_layer_norm_forward, ada_rms_norm_backward, ada_rms_norm_forward,
    Modulation, ModulationGrads,
};
pub use adain::{adain_backward, adain_forward, AdaInConfig, AdaInStats};
pub use add_norm::{
    add_layer_norm_backward, add_layer_norm_forward, add_rms_norm_backward, add_rms_norm_forward,
};
pub use batch_norm::{
    batch_norm_backward_eval, batch_norm_backward_train, batch_norm_forward_eval,
    batch_norm_forward_train, BatchNormConfig,
};
pub use batch_renorm::{
    batch_renorm_backward_eval, batch_renorm_backward_train, batch_renorm_forward_eval,
    batch_renorm_forward_train, BatchRenormConfig, RenormSchedule, RenormStats,
};
pub use derf::{derf_backward, derf_forward, DerfScalarGrads};
pub use dyt::{dyt_backward, dyt_forward};
pub use elem::Elem;
pub use error::{NormError, Result};
pub use fold::{fold_batch_norm, BatchNormEval};
pub use group_norm::{
    group_norm_backward, group_norm_forward, instance_norm_backward_eval,
    instance_norm_backward_train, instance_norm_forward_eval, instance_norm_forward_train,
    GroupNormConfig, InstanceNormConfig,
};
pub use half::{bf16, f16};
pub use layer_norm::{
    layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward,
};
pub use layout::{Affine, ChannelAxis, Grads, Momentum, RunningStats, Stats};
pub use parallel::set_parallel_min;
pub use simd::{set_simd_level, simd_level, SimdLevel};
pub use switch_norm::{
    switch_norm_backward, switch_norm_forward_eval, switch_norm_forward_train, SwitchGrads,
    SwitchNormConfig, SwitchStats, SwitchWeights,
};
pub use sync_batch_norm::{
    sync_batch_norm_backward_eval, sync_batch_norm_backward_train, sync_batch_norm_forward_eval,
    sync_batch_norm_forward_train,
};
pub use weight_norm::{weight_norm_backward, weight_norm_forward};

// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
