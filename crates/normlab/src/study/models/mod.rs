//! The study's models, each with a pluggable normalization. Every
//! normalization is a normkit-burn layer, so on the flex backend each runs
//! normkit's fused forward and backward kernels.
//!
//! - [`norm`]: the normalizations and the one layer type holding any;
//! - [`init`]: PyTorch's default initialization from the study's own
//!   generator;
//! - [`mlp`], [`cnn`], [`seq`], [`gpt`]: the networks.

pub mod cnn;
pub mod gpt;
pub mod init;
pub mod mlp;
pub mod norm;
pub mod seq;

pub use cnn::{Cnn1d, Cnn2d, CNN1D_CHANNELS, FASHION_WIDTHS};
pub use gpt::{Gpt, GptSpec};
pub use mlp::{Activation, Init, Mlp, MlpSpec};
pub use norm::{Features, Importances, Norm, NormKind, Unsupported};
pub use seq::SeqNet;

use burn::module::Module;
use burn::tensor::Tensor;

/// A model that maps a batch of flattened examples to class logits.
pub trait Classifier: Module + Sized {
    /// # Shapes
    /// - `x`: `[N, example_len]`; returns `[N, classes]`.
    fn logits(&self, x: Tensor<2>) -> Tensor<2>;
}

/// A model whose normalization layers can be reached, in order.
pub trait HasNorms {
    fn norms(&self) -> Vec<&Option<Norm>>;
    fn norms_mut(&mut self) -> Vec<&mut Option<Norm>>;

    /// The importances of each SwitchNorm layer, first layer first.
    fn switch_importances(&self) -> Vec<Importances> {
        norm::switch_importances(self.norms().into_iter())
    }
}
