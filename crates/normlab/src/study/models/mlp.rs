//! A multilayer perceptron with a pluggable normalization, optional
//! dropout and optional noise injected after each normalization.

use super::init::{linear, linear_scaled};
use super::norm::{norm_forward, Features, Norm, NormKind};
use super::{Classifier, HasNorms, Unsupported};
use crate::study::data::SplitMix64;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{gelu, relu, sigmoid, tanh};
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::{Arc, Mutex};

/// The MLP's nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    Gelu,
}

impl Activation {
    pub fn label(self) -> &'static str {
        match self {
            Activation::Relu => "ReLU",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Gelu => "GELU",
        }
    }

    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Relu => relu(x),
            Activation::Tanh => tanh(x),
            Activation::Sigmoid => sigmoid(x),
            Activation::Gelu => gelu(x),
        }
    }
}

/// How the MLP's linear layers start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// PyTorch's default: `U(±1/√fan_in)` for weight and bias.
    Pytorch,
    /// Weights `N(0, gain² / fan_in)`, zero bias.
    Scaled { gain: f64 },
}

/// The MLP's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlpSpec {
    pub inputs: usize,
    pub width: usize,
    pub depth: usize,
    pub classes: usize,
    pub activation: Activation,
    pub init: Init,
    /// Inverted dropout after each hidden nonlinearity, in training only.
    pub dropout: f64,
}

impl MlpSpec {
    /// PyTorch's initialization, no dropout.
    pub fn new(
        inputs: usize,
        width: usize,
        depth: usize,
        classes: usize,
        activation: Activation,
    ) -> Self {
        Self {
            inputs,
            width,
            depth,
            classes,
            activation,
            init: Init::Pytorch,
            dropout: 0.0,
        }
    }
}

/// Noise injected after each normalization in training (Santurkar et al.
/// 2018's "noisy BatchNorm"): every step draws, per unit, a scale
/// `U(0.5, 1.5)` and a shift `U(−1, 1)`, so each layer's input
/// distribution moves at every step; both average to the identity, so
/// inference (without noise) sees the distribution training saw on
/// average.
#[derive(Debug, Clone)]
pub struct StepNoise(Arc<Mutex<SplitMix64>>);

impl StepNoise {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(SplitMix64::new(seed))))
    }

    fn draw(&self, n: usize, f: impl Fn(&mut SplitMix64) -> f32) -> Vec<f32> {
        let mut rng = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (0..n).map(|_| f(&mut rng)).collect()
    }

    /// `y · scale + shift`, a new scale and shift per unit.
    fn apply(&self, y: Tensor<2>) -> Tensor<2> {
        let [_, c] = y.dims();
        let device = y.device();
        let scale = self.draw(c, |r| (0.5 + r.next_f64()) as f32);
        let shift = self.draw(c, |r| (2.0 * r.next_f64() - 1.0) as f32);
        let row = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, c]), &device);
        y * row(scale) + row(shift)
    }

    /// An inverted-dropout mask of `shape`, `p` dropped.
    fn mask(&self, shape: [usize; 2], p: f64, device: &Device) -> Tensor<2> {
        let keep = (1.0 / (1.0 - p)) as f32;
        let v = self.draw(shape[0] * shape[1], |r| {
            if r.next_f64() < p {
                0.0
            } else {
                keep
            }
        });
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

/// Linear, then the normalization, then the nonlinearity.
#[derive(Module, Debug)]
pub struct DenseBlock {
    pub linear: Linear,
    pub norm: Option<Norm>,
}

/// A multilayer perceptron: `depth` hidden [`DenseBlock`]s of `width`
/// units and a linear head.
#[derive(Module, Debug)]
pub struct Mlp {
    pub blocks: Vec<DenseBlock>,
    pub head: Linear,
    #[module(skip)]
    pub activation: Activation,
    #[module(skip)]
    pub dropout: f64,
    /// Draws dropout masks (and, when `noise` is set, the injected noise);
    /// shared by the model's clones.
    #[module(skip)]
    pub rng: StepNoise,
    #[module(skip)]
    pub noise: bool,
}

/// One hidden layer's values in a traced forward pass.
pub struct Traced {
    /// The linear layer's output: the normalization's input.
    pub pre: Tensor<2>,
    /// The nonlinearity's input (after the normalization and any noise).
    pub post: Tensor<2>,
}

impl Mlp {
    pub fn new(
        spec: MlpSpec,
        kind: NormKind,
        seed: u64,
        device: &Device,
    ) -> Result<Self, Unsupported> {
        Self::with_norms(spec, kind == NormKind::Weight, seed, device, |f| {
            Norm::new(kind, f, device)
        })
    }

    /// An MLP whose normalization layers `norm` makes, with weight
    /// normalization on every linear layer when `weight_norm`.
    pub fn with_norms(
        spec: MlpSpec,
        weight_norm: bool,
        seed: u64,
        device: &Device,
        norm: impl Fn(Features) -> Result<Option<Norm>, Unsupported>,
    ) -> Result<Self, Unsupported> {
        let mut rng = SplitMix64::new(seed);
        let layer = |rng: &mut SplitMix64, d_in: usize, d_out: usize| match spec.init {
            Init::Pytorch => linear(rng, d_in, d_out, weight_norm, device),
            Init::Scaled { gain } => linear_scaled(rng, d_in, d_out, gain, device),
        };
        let mut blocks = Vec::with_capacity(spec.depth);
        for i in 0..spec.depth {
            let d_in = if i == 0 { spec.inputs } else { spec.width };
            blocks.push(DenseBlock {
                linear: layer(&mut rng, d_in, spec.width),
                norm: norm(Features::Flat(spec.width))?,
            });
        }
        let d_last = if spec.depth == 0 {
            spec.inputs
        } else {
            spec.width
        };
        // The head keeps PyTorch's initialization whatever the body uses.
        let head = linear(&mut rng, d_last, spec.classes, weight_norm, device);
        Ok(Self {
            blocks,
            head,
            activation: spec.activation,
            dropout: spec.dropout,
            rng: StepNoise::new(rng.next_u64()),
            noise: false,
        })
    }

    /// Injects [`StepNoise`] after every normalization in training.
    pub fn with_noise(mut self) -> Self {
        self.noise = true;
        self
    }

    /// Logits and, per hidden block, the normalization's input and the
    /// nonlinearity's input.
    pub fn logits_traced(&self, x: Tensor<2>) -> (Tensor<2>, Vec<Traced>) {
        let training = x.device().is_autodiff();
        let mut h = x;
        let mut trace = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let pre = b.linear.forward(h);
            let mut post = norm_forward(&b.norm, pre.clone());
            if training && self.noise {
                post = self.rng.apply(post);
            }
            trace.push(Traced {
                pre,
                post: post.clone(),
            });
            h = self.activation.apply(post);
            if training && self.dropout > 0.0 {
                let mask = self.rng.mask(h.dims(), self.dropout, &h.device());
                h = h * mask;
            }
        }
        (self.head.forward(h), trace)
    }
}

impl Classifier for Mlp {
    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        self.logits_traced(x).0
    }
}

impl HasNorms for Mlp {
    fn norms(&self) -> Vec<&Option<Norm>> {
        self.blocks.iter().map(|b| &b.norm).collect()
    }

    fn norms_mut(&mut self) -> Vec<&mut Option<Norm>> {
        self.blocks.iter_mut().map(|b| &mut b.norm).collect()
    }
}
