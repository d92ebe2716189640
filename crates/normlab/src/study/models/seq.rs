//! A 1-D convolutional classifier for padded batches of sequences of
//! varying length, with a pluggable normalization over channels.

use super::init::{conv1d, linear};
use super::norm::{norm_forward, Features, Norm, NormKind};
use super::{Classifier, HasNorms, Unsupported};
use crate::study::data::SplitMix64;
use burn::module::Module;
use burn::nn::conv::Conv1d;
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

/// An example is `max_len` values, the sequence first and zeros after it,
/// then its length as one more value.
#[derive(Module, Debug)]
pub struct SeqNet {
    pub input: Conv1d,
    pub convs: Vec<Conv1d>,
    /// One normalization before each ReLU: after the input convolution and
    /// after each of `convs`.
    pub norms: Vec<Option<Norm>>,
    pub head: Linear,
    #[module(skip)]
    pub max_len: usize,
}

impl SeqNet {
    pub fn new(
        max_len: usize,
        channels: usize,
        classes: usize,
        kind: NormKind,
        seed: u64,
        device: &Device,
    ) -> Result<Self, Unsupported> {
        let mut rng = SplitMix64::new(seed);
        let input = conv1d(&mut rng, (1, channels, 5, 1, 2), false, device);
        let convs = (0..2)
            .map(|_| conv1d(&mut rng, (channels, channels, 3, 1, 1), false, device))
            .collect();
        let norms = (0..3)
            .map(|_| Norm::new(kind, Features::Tokens(channels), device))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            input,
            convs,
            norms,
            head: linear(&mut rng, channels, classes, false, device),
            max_len,
        })
    }

    /// Normalization over channels at every position: the maps go
    /// channels-last (`[N, T, C]`) and back.
    fn norm_relu(norm: &Option<Norm>, h: Tensor<3>) -> Tensor<3> {
        relu(norm_forward(norm, h.swap_dims(1, 2)).swap_dims(1, 2))
    }
}

impl Classifier for SeqNet {
    /// The batch is cut to its longest sequence; shorter ones keep their
    /// zero padding, which a batch-wide normalization counts in its
    /// statistics and which the mean over positions leaves out.
    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, _] = x.dims();
        let device = x.device();
        let lengths: Vec<usize> = x
            .clone()
            .narrow(1, self.max_len, 1)
            .into_data()
            .iter::<f32>()
            .map(|v| (v.round().max(1.0) as usize).min(self.max_len))
            .collect();
        let t = lengths.iter().copied().max().unwrap_or(1);
        let mask: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..t).map(move |i| if i < l { 1.0 } else { 0.0 }))
            .collect();
        let mask: Tensor<3> = Tensor::from_data(TensorData::new(mask, [n, 1, t]), &device);
        let counts: Vec<f32> = lengths.iter().map(|&l| l as f32).collect();
        let counts: Tensor<2> = Tensor::from_data(TensorData::new(counts, [n, 1]), &device);
        // Padded positions are zeroed after every layer, so the next
        // convolution sees them as its own zero padding.
        let mut h = self.input.forward(x.narrow(1, 0, t).reshape([n, 1, t]));
        h = Self::norm_relu(&self.norms[0], h) * mask.clone();
        for (conv, norm) in self.convs.iter().zip(&self.norms[1..]) {
            h = Self::norm_relu(norm, conv.forward(h)) * mask.clone();
        }
        let [_, c, _] = h.dims();
        let pooled = (h * mask).sum_dim(2).reshape([n, c]) / counts;
        self.head.forward(pooled)
    }
}

impl HasNorms for SeqNet {
    fn norms(&self) -> Vec<&Option<Norm>> {
        self.norms.iter().collect()
    }

    fn norms_mut(&mut self) -> Vec<&mut Option<Norm>> {
        self.norms.iter_mut().collect()
    }
}
