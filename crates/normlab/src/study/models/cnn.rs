//! Convolutional classifiers with a pluggable normalization: MNIST-1D's
//! 1-D CNN and a 2-D CNN for 28×28 images.

use super::init::{conv1d, conv2d, linear};
use super::norm::{norm_forward, Features, Norm, NormKind};
use super::{Classifier, HasNorms, Unsupported};
use crate::study::data::SplitMix64;
use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// Output length of a convolution.
pub fn conv_len(len: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (len + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// Convolution, then the normalization, then ReLU.
#[derive(Module, Debug)]
pub struct Conv1dBlock {
    pub conv: Conv1d,
    pub norm: Option<Norm>,
}

/// MNIST-1D's convolutional baseline (Greydanus 2020): three 1-D
/// convolutions of `channels` (kernel 5 stride 2, then kernel 3 stride 2
/// twice, padding 1) taking 40 samples to 19, 10 and 5 positions, and a
/// linear head on the flattened maps.
#[derive(Module, Debug)]
pub struct Cnn1d {
    pub blocks: Vec<Conv1dBlock>,
    pub head: Linear,
    #[module(skip)]
    pub length: usize,
}

/// MNIST-1D's baseline CNN width.
pub const CNN1D_CHANNELS: usize = 25;

impl Cnn1d {
    pub fn new(
        length: usize,
        channels: usize,
        classes: usize,
        kind: NormKind,
        seed: u64,
        device: &Device,
    ) -> Result<Self, Unsupported> {
        let mut rng = SplitMix64::new(seed);
        let wn = kind == NormKind::Weight;
        let mut blocks = Vec::new();
        let (mut c_in, mut len) = (1, length);
        for (kernel, stride, padding) in [(5, 2, 1), (3, 2, 1), (3, 2, 1)] {
            len = conv_len(len, kernel, stride, padding);
            let features = Features::Conv {
                channels,
                spatial: [len, 0],
            };
            blocks.push(Conv1dBlock {
                conv: conv1d(
                    &mut rng,
                    (c_in, channels, kernel, stride, padding),
                    wn,
                    device,
                ),
                norm: Norm::new(kind, features, device)?,
            });
            c_in = channels;
        }
        Ok(Self {
            blocks,
            head: linear(&mut rng, channels * len, classes, wn, device),
            length,
        })
    }

    /// The first `blocks` blocks' output (each conv, norm, ReLU).
    ///
    /// # Shapes
    /// - `x`: `[N, length]`; returns `[N, C, L]`.
    pub fn features(&self, x: Tensor<2>, blocks: usize) -> Tensor<3> {
        let [n, _] = x.dims();
        let mut h: Tensor<3> = x.reshape([n, 1, self.length]);
        for b in self.blocks.iter().take(blocks) {
            h = relu(norm_forward(&b.norm, b.conv.forward(h)));
        }
        h
    }

    /// The logits from [`Cnn1d::features`]`(x, from)`.
    pub fn logits_from(&self, h: Tensor<3>, from: usize) -> Tensor<2> {
        let mut h = h;
        for b in self.blocks.iter().skip(from) {
            h = relu(norm_forward(&b.norm, b.conv.forward(h)));
        }
        let [n, c, l] = h.dims();
        self.head.forward(h.reshape([n, c * l]))
    }
}

impl Classifier for Cnn1d {
    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.features(x, self.blocks.len());
        self.logits_from(h, self.blocks.len())
    }
}

impl HasNorms for Cnn1d {
    fn norms(&self) -> Vec<&Option<Norm>> {
        self.blocks.iter().map(|b| &b.norm).collect()
    }

    fn norms_mut(&mut self) -> Vec<&mut Option<Norm>> {
        self.blocks.iter_mut().map(|b| &mut b.norm).collect()
    }
}

/// Convolution, then the normalization, then ReLU.
#[derive(Module, Debug)]
pub struct Conv2dBlock {
    pub conv: Conv2d,
    pub norm: Option<Norm>,
}

/// A 2-D CNN for `side × side` images: three 3×3 convolutions of
/// `widths` channels, strides 1, 2, 2, padding 1, each followed by the
/// normalization and ReLU, then the spatial mean and a linear head. With
/// widths (32, 64, 64) and PyTorch's default initialization (biases on)
/// it is the batch-size experiment's Fashion-MNIST network.
#[derive(Module, Debug)]
pub struct Cnn2d {
    pub blocks: Vec<Conv2dBlock>,
    pub head: Linear,
    #[module(skip)]
    pub side: usize,
}

/// The Fashion-MNIST network's widths.
pub const FASHION_WIDTHS: [usize; 3] = [32, 64, 64];

impl Cnn2d {
    pub fn new(
        side: usize,
        widths: [usize; 3],
        classes: usize,
        kind: NormKind,
        seed: u64,
        device: &Device,
    ) -> Result<Self, Unsupported> {
        let mut rng = SplitMix64::new(seed);
        let wn = kind == NormKind::Weight;
        let mut blocks = Vec::new();
        let (mut c_in, mut s) = (1, side);
        for (c_out, stride) in widths.into_iter().zip([1, 2, 2]) {
            s = conv_len(s, 3, stride, 1);
            let features = Features::Conv {
                channels: c_out,
                spatial: [s, s],
            };
            blocks.push(Conv2dBlock {
                conv: conv2d(&mut rng, (c_in, c_out, 3, stride, 1), wn, device),
                norm: Norm::new(kind, features, device)?,
            });
            c_in = c_out;
        }
        Ok(Self {
            blocks,
            head: linear(&mut rng, c_in, classes, wn, device),
            side,
        })
    }
}

impl Classifier for Cnn2d {
    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, _] = x.dims();
        let mut h: Tensor<4> = x.reshape([n, 1, self.side, self.side]);
        for b in &self.blocks {
            h = relu(norm_forward(&b.norm, b.conv.forward(h)));
        }
        let [n, c, hh, ww] = h.dims();
        let pooled = h.reshape([n, c, hh * ww]).mean_dim(2).reshape([n, c]);
        self.head.forward(pooled)
    }
}

impl HasNorms for Cnn2d {
    fn norms(&self) -> Vec<&Option<Norm>> {
        self.blocks.iter().map(|b| &b.norm).collect()
    }

    fn norms_mut(&mut self) -> Vec<&mut Option<Norm>> {
        self.blocks.iter_mut().map(|b| &mut b.norm).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_lengths_match_the_papers_networks() {
        assert_eq!(conv_len(40, 5, 2, 1), 19);
        assert_eq!(conv_len(19, 3, 2, 1), 10);
        assert_eq!(conv_len(10, 3, 2, 1), 5);
        assert_eq!(conv_len(28, 3, 1, 1), 28);
        assert_eq!(conv_len(28, 3, 2, 1), 14);
        assert_eq!(conv_len(14, 3, 2, 1), 7);
    }
}
