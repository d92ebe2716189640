//! The study's models, each with a pluggable normalization: an MLP, a 1-D
//! CNN (MNIST-1D's), a 2-D CNN (Fashion-MNIST) and a small decoder-only
//! transformer. Every normalization is a normkit-burn layer, so on the
//! flex backend each runs normkit's fused forward and backward kernels.
//!
//! Parameters are drawn from [`SplitMix64`] rather than burn's generator:
//! burn seeds one process-wide generator, which concurrent work (other
//! tests, other threads) would advance, while a stream of our own makes a
//! model a pure function of its seed.

use crate::study::data::SplitMix64;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{Embedding, Linear, PaddingConfig1d, PaddingConfig2d};
use burn::tensor::activation::{gelu, relu, sigmoid, softmax, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};
use normkit_burn::{
    BatchNorm, BatchNormConfig, BatchRenorm, BatchRenormConfig, ChannelAxis, Dyt, DytConfig,
    GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, LayerNorm, LayerNormConfig,
    RenormScheduleConfig, RmsNorm, RmsNormConfig, SwitchNorm, SwitchNormConfig, WeightNormConfig,
};

/// The normalizations the study compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NormKind {
    None,
    Batch,
    Layer,
    Group,
    Instance,
    Rms,
    Weight,
    Dyt,
    /// Batch Renormalization.
    Renorm,
    /// Switchable Normalization.
    Switch,
}

impl NormKind {
    /// The name the report prints.
    pub fn label(self) -> &'static str {
        match self {
            NormKind::None => "none",
            NormKind::Batch => "BN",
            NormKind::Layer => "LN",
            NormKind::Group => "GN",
            NormKind::Instance => "IN",
            NormKind::Rms => "RMSNorm",
            NormKind::Weight => "WeightNorm",
            NormKind::Dyt => "DyT",
            NormKind::Renorm => "BatchRenorm",
            NormKind::Switch => "SwitchNorm",
        }
    }

    /// A short lowercase name for metric keys and seed streams.
    pub fn slug(self) -> &'static str {
        match self {
            NormKind::None => "none",
            NormKind::Batch => "bn",
            NormKind::Layer => "ln",
            NormKind::Group => "gn",
            NormKind::Instance => "in",
            NormKind::Rms => "rms",
            NormKind::Weight => "wn",
            NormKind::Dyt => "dyt",
            NormKind::Renorm => "brn",
            NormKind::Switch => "sn",
        }
    }
}

/// The shape a normalization layer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// `[N, C]`: hidden units of an MLP.
    Flat(usize),
    /// `[N, C, *spatial]`, channels first; `spatial` holds up to two
    /// sizes, a 0 marking an absent one.
    Conv {
        channels: usize,
        spatial: [usize; 2],
    },
    /// `[N, T, C]`: tokens, channels last.
    Tokens(usize),
}

/// GroupNorm's group count: the GN paper's 32 where the channels allow,
/// otherwise the largest divisor of the channels up to a quarter of them
/// (so every group holds at least four channels when it can).
pub fn group_count(channels: usize) -> usize {
    if channels % 32 == 0 && channels >= 128 {
        return 32;
    }
    let target = (channels / 4).max(1);
    (1..=target).rev().find(|g| channels % g == 0).unwrap_or(1)
}

/// One normalization layer of any kind. `WeightNorm` reparameterizes the
/// preceding layer's weight instead and has no layer here; nor has `None`.
#[derive(Module, Debug)]
pub enum Norm {
    Batch(BatchNorm),
    Layer(LayerNorm),
    Group(GroupNorm),
    Instance(InstanceNorm),
    Rms(RmsNorm),
    Dyt(Dyt),
    Renorm(BatchRenorm),
    Switch(SwitchNorm),
}

/// Batch Renormalization's schedule in the study: the paper relaxes
/// `r_max` from 1 to 3 and `d_max` from 0 to 5 over tens of thousands of
/// steps; the study's runs are a few hundred to a few thousand steps, so
/// the same shape is compressed: BatchNorm for 100 steps, `d_max = 5` at
/// step 600, `r_max = 3` at step 1000.
pub fn renorm_schedule() -> RenormScheduleConfig {
    RenormScheduleConfig::new()
        .with_warmup(100)
        .with_r_max_at(1000)
        .with_d_max_at(600)
}

/// Why a normalization cannot go where it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} cannot normalize {features:?}: {why}")]
pub struct Unsupported {
    pub kind: &'static str,
    pub features: Features,
    pub why: &'static str,
}

impl Norm {
    /// The layer of `kind` for `features`; `Ok(None)` for `None` and
    /// `WeightNorm`. InstanceNorm needs more than one position per channel
    /// and so does not apply to MLP units. DyT starts at the paper's
    /// `alpha0 = 0.5`; InstanceNorm gets affine parameters like the others.
    pub fn new(
        kind: NormKind,
        features: Features,
        device: &Device,
    ) -> Result<Option<Norm>, Unsupported> {
        let (channels, axis, trailing): (usize, ChannelAxis, Vec<usize>) = match features {
            Features::Flat(c) => (c, ChannelAxis::First, vec![c]),
            Features::Conv { channels, spatial } => {
                let mut t = vec![channels];
                t.extend(spatial.iter().copied().filter(|&s| s > 0));
                (channels, ChannelAxis::First, t)
            }
            Features::Tokens(c) => (c, ChannelAxis::Last, vec![c]),
        };
        let norm = match kind {
            NormKind::None | NormKind::Weight => return Ok(None),
            NormKind::Batch => Norm::Batch(
                BatchNormConfig::new(channels)
                    .with_channel_axis(axis)
                    .init(device),
            ),
            NormKind::Layer => Norm::Layer(LayerNormConfig::new(trailing).init(device)),
            NormKind::Rms => Norm::Rms(RmsNormConfig::new(trailing).init(device)),
            NormKind::Group => Norm::Group(
                GroupNormConfig::new(group_count(channels), channels)
                    .with_channel_axis(axis)
                    .init(device),
            ),
            NormKind::Instance => {
                if matches!(features, Features::Flat(_)) {
                    return Err(Unsupported {
                        kind: kind.label(),
                        features,
                        why: "an MLP unit has one value per example, so there are no \
                              instance statistics to take",
                    });
                }
                Norm::Instance(
                    InstanceNormConfig::new(channels)
                        .with_affine(true)
                        .with_channel_axis(axis)
                        .init(device),
                )
            }
            NormKind::Renorm => Norm::Renorm(
                BatchRenormConfig::new(channels)
                    .with_channel_axis(axis)
                    .with_schedule(Some(renorm_schedule()))
                    .init(device),
            ),
            NormKind::Switch => Norm::Switch(
                SwitchNormConfig::new(channels)
                    .with_channel_axis(axis)
                    .init(device),
            ),
            NormKind::Dyt => {
                // DyT's channel axis is where the channels are: last for
                // [N, C] and tokens, first for feature maps.
                let axis = match features {
                    Features::Conv { .. } => ChannelAxis::First,
                    _ => ChannelAxis::Last,
                };
                Norm::Dyt(
                    DytConfig::new(channels)
                        .with_channel_axis(axis)
                        .init(device),
                )
            }
        };
        Ok(Some(norm))
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Norm::Batch(n) => n.forward(x),
            Norm::Layer(n) => n.forward(x),
            Norm::Group(n) => n.forward(x),
            Norm::Instance(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
            Norm::Dyt(n) => n.forward(x),
            Norm::Renorm(n) => n.forward(x),
            Norm::Switch(n) => n.forward(x),
        }
    }
}

/// Softmaxed importances of a Switchable Normalization layer's mean and
/// variance mixtures, each in the order IN, LN, BN.
pub type Importances = ([f32; 3], [f32; 3]);

/// The importances of every SwitchNorm layer among `norms`, in order.
pub fn switch_importances<'a>(norms: impl Iterator<Item = &'a Option<Norm>>) -> Vec<Importances> {
    norms
        .filter_map(|n| match n {
            Some(Norm::Switch(s)) => Some(s.importances()),
            _ => None,
        })
        .collect()
}

/// A model whose SwitchNorm layers can be read.
pub trait HasNorms {
    /// The importances of each SwitchNorm layer, first layer first.
    fn switch_importances(&self) -> Vec<Importances>;
}

impl HasNorms for Mlp {
    fn switch_importances(&self) -> Vec<Importances> {
        switch_importances(self.blocks.iter().map(|b| &b.norm))
    }
}

impl HasNorms for Cnn1d {
    fn switch_importances(&self) -> Vec<Importances> {
        switch_importances(self.blocks.iter().map(|b| &b.norm))
    }
}

impl HasNorms for Cnn2d {
    fn switch_importances(&self) -> Vec<Importances> {
        switch_importances(self.blocks.iter().map(|b| &b.norm))
    }
}

fn norm_forward<const D: usize>(norm: &Option<Norm>, x: Tensor<D>) -> Tensor<D> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

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

// ---------------------------------------------------------------------------
// Initialization
// ---------------------------------------------------------------------------

/// `U(-bound, bound)` values of `shape` from `rng`.
fn uniform<const D: usize>(
    rng: &mut SplitMix64,
    shape: [usize; D],
    bound: f64,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `N(0, std²)` values of `shape` from `rng`.
fn normal<const D: usize>(
    rng: &mut SplitMix64,
    shape: [usize; D],
    std: f64,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A linear layer with PyTorch's default initialization: weight and bias
/// `U(-1/√fan_in, 1/√fan_in)` (Kaiming-uniform with `a = √5`), weight laid
/// out `[d_in, d_out]` as burn's is. With `weight_norm`, the weight is
/// reparameterized `w = g · v / ‖v‖` per output unit, `g` starting at
/// `‖v‖`, so the initial function is the same.
pub fn linear(
    rng: &mut SplitMix64,
    d_in: usize,
    d_out: usize,
    weight_norm: bool,
    device: &Device,
) -> Linear {
    let bound = 1.0 / (d_in as f64).sqrt();
    let layer = Linear {
        weight: Param::from_tensor(uniform(rng, [d_in, d_out], bound, device)),
        bias: Some(Param::from_tensor(uniform(rng, [d_out], bound, device))),
    };
    if weight_norm {
        with_weight_norm(layer)
    } else {
        layer
    }
}

fn with_weight_norm<M: Module>(module: M) -> M {
    WeightNormConfig::new()
        .apply(module)
        .unwrap_or_else(|e| panic!("weight norm on a layer with an output axis: {e}"))
}

/// A 1-D convolution with PyTorch's default initialization (bound
/// `1/√(in · kernel)`).
pub fn conv1d(
    rng: &mut SplitMix64,
    (c_in, c_out, kernel, stride, padding): (usize, usize, usize, usize, usize),
    weight_norm: bool,
    device: &Device,
) -> Conv1d {
    let bound = 1.0 / ((c_in * kernel) as f64).sqrt();
    let layer = Conv1d {
        weight: Param::from_tensor(uniform(rng, [c_out, c_in, kernel], bound, device)),
        bias: Some(Param::from_tensor(uniform(rng, [c_out], bound, device))),
        stride,
        kernel_size: kernel,
        dilation: 1,
        groups: 1,
        padding: PaddingConfig1d::Explicit(padding, padding),
    };
    if weight_norm {
        with_weight_norm(layer)
    } else {
        layer
    }
}

/// A 2-D convolution with PyTorch's default initialization.
pub fn conv2d(
    rng: &mut SplitMix64,
    (c_in, c_out, kernel, stride, padding): (usize, usize, usize, usize, usize),
    weight_norm: bool,
    device: &Device,
) -> Conv2d {
    let bound = 1.0 / ((c_in * kernel * kernel) as f64).sqrt();
    let layer = Conv2d {
        weight: Param::from_tensor(uniform(rng, [c_out, c_in, kernel, kernel], bound, device)),
        bias: Some(Param::from_tensor(uniform(rng, [c_out], bound, device))),
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(padding, padding, padding, padding),
    };
    if weight_norm {
        with_weight_norm(layer)
    } else {
        layer
    }
}

// ---------------------------------------------------------------------------
// Classifiers
// ---------------------------------------------------------------------------

/// A model that maps a batch of flattened examples to class logits.
pub trait Classifier: Module + Sized {
    /// # Shapes
    /// - `x`: `[N, example_len]`; returns `[N, classes]`.
    fn logits(&self, x: Tensor<2>) -> Tensor<2>;
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
}

/// The MLP's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpSpec {
    pub inputs: usize,
    pub width: usize,
    pub depth: usize,
    pub classes: usize,
    pub activation: Activation,
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
        let wn = weight_norm;
        let mut blocks = Vec::with_capacity(spec.depth);
        for i in 0..spec.depth {
            let d_in = if i == 0 { spec.inputs } else { spec.width };
            blocks.push(DenseBlock {
                linear: linear(&mut rng, d_in, spec.width, wn, device),
                norm: norm(Features::Flat(spec.width))?,
            });
        }
        let d_last = if spec.depth == 0 {
            spec.inputs
        } else {
            spec.width
        };
        Ok(Self {
            blocks,
            head: linear(&mut rng, d_last, spec.classes, wn, device),
            activation: spec.activation,
        })
    }

    /// Logits and, per hidden block, the nonlinearity's input (after the
    /// normalization): what the BN paper calls a layer's input
    /// distribution.
    pub fn logits_traced(&self, x: Tensor<2>) -> (Tensor<2>, Vec<Tensor<2>>) {
        let mut h = x;
        let mut trace = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let z = norm_forward(&b.norm, b.linear.forward(h));
            trace.push(z.clone());
            h = self.activation.apply(z);
        }
        (self.head.forward(h), trace)
    }
}

impl Classifier for Mlp {
    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for b in &self.blocks {
            h = self
                .activation
                .apply(norm_forward(&b.norm, b.linear.forward(h)));
        }
        self.head.forward(h)
    }
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

/// Output length of a convolution.
fn conv_len(len: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (len + 2 * padding).saturating_sub(kernel) / stride + 1
}

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
            blocks.push(Conv1dBlock {
                conv: conv1d(
                    &mut rng,
                    (c_in, channels, kernel, stride, padding),
                    wn,
                    device,
                ),
                norm: Norm::new(
                    kind,
                    Features::Conv {
                        channels,
                        spatial: [len, 0],
                    },
                    device,
                )?,
            });
            c_in = channels;
        }
        Ok(Self {
            blocks,
            head: linear(&mut rng, channels * len, classes, wn, device),
            length,
        })
    }
}

impl Classifier for Cnn1d {
    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, _] = x.dims();
        let mut h: Tensor<3> = x.reshape([n, 1, self.length]);
        for b in &self.blocks {
            h = relu(norm_forward(&b.norm, b.conv.forward(h)));
        }
        let [n, c, l] = h.dims();
        self.head.forward(h.reshape([n, c * l]))
    }
}

/// Convolution, then the normalization, then ReLU.
#[derive(Module, Debug)]
pub struct Conv2dBlock {
    pub conv: Conv2d,
    pub norm: Option<Norm>,
}

/// A small 2-D CNN for 28×28 images: three 3×3 convolutions of
/// `channels`, `2·channels`, `2·channels` (strides 1, 2, 2) taking 28×28 to
/// 28, 14 and 7, global average pooling and a linear head.
#[derive(Module, Debug)]
pub struct Cnn2d {
    pub blocks: Vec<Conv2dBlock>,
    pub head: Linear,
    #[module(skip)]
    pub side: usize,
}

impl Cnn2d {
    pub fn new(
        side: usize,
        channels: usize,
        classes: usize,
        kind: NormKind,
        seed: u64,
        device: &Device,
    ) -> Result<Self, Unsupported> {
        let mut rng = SplitMix64::new(seed);
        let wn = kind == NormKind::Weight;
        let mut blocks = Vec::new();
        let (mut c_in, mut s) = (1, side);
        for (c_out, stride) in [(channels, 1), (2 * channels, 2), (2 * channels, 2)] {
            s = conv_len(s, 3, stride, 1);
            blocks.push(Conv2dBlock {
                conv: conv2d(&mut rng, (c_in, c_out, 3, stride, 1), wn, device),
                norm: Norm::new(
                    kind,
                    Features::Conv {
                        channels: c_out,
                        spatial: [s, s],
                    },
                    device,
                )?,
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

// ---------------------------------------------------------------------------
// Transformer
// ---------------------------------------------------------------------------

/// The transformer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptSpec {
    pub vocab: usize,
    pub context: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
}

/// A pre-norm transformer block: `x + attn(norm1(x))`, then
/// `x + mlp(norm2(x))` with a 4× GELU MLP.
#[derive(Module, Debug)]
pub struct GptBlock {
    pub norm1: Option<Norm>,
    pub qkv: Linear,
    pub proj: Linear,
    pub norm2: Option<Norm>,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// A decoder-only character model (GPT-2's layout at toy size): token and
/// learned position embeddings, pre-norm blocks with causal multi-head
/// attention, a final normalization and a linear head. With `None` the
/// normalizations are identities; with DyT they are `Dyt` layers
/// (`alpha0 = 0.5`), as in "Transformers without Normalization".
#[derive(Module, Debug)]
pub struct Gpt {
    pub token: Embedding,
    pub position: Param<Tensor<2>>,
    pub blocks: Vec<GptBlock>,
    pub norm_f: Option<Norm>,
    pub head: Linear,
    #[module(skip)]
    pub heads: usize,
}

impl Gpt {
    /// Embeddings `N(0, 0.02²)` as GPT-2's; linear layers PyTorch's
    /// default.
    pub fn new(spec: GptSpec, kind: NormKind, seed: u64, device: &Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        let d = spec.d_model;
        let norm = |device: &Device| {
            Norm::new(kind, Features::Tokens(d), device)
                .unwrap_or_else(|e| panic!("token features take every normalization: {e}"))
        };
        let token = Embedding {
            weight: Param::from_tensor(normal(&mut rng, [spec.vocab, d], 0.02, device)),
        };
        let position = Param::from_tensor(normal(&mut rng, [spec.context, d], 0.02, device));
        let blocks = (0..spec.layers)
            .map(|_| GptBlock {
                norm1: norm(device),
                qkv: linear(&mut rng, d, 3 * d, false, device),
                proj: linear(&mut rng, d, d, false, device),
                norm2: norm(device),
                fc1: linear(&mut rng, d, 4 * d, false, device),
                fc2: linear(&mut rng, 4 * d, d, false, device),
            })
            .collect();
        Self {
            token,
            position,
            blocks,
            norm_f: norm(device),
            head: linear(&mut rng, d, spec.vocab, false, device),
            heads: spec.heads,
        }
    }

    /// Normalization layers per forward pass.
    pub fn norm_layers(&self) -> usize {
        self.blocks.len() * 2 + 1
    }

    /// # Shapes
    /// - `tokens`: `[B, T]` with `T` at most the context; returns
    ///   `[B, T, vocab]` logits.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let d = self.position.dims()[1];
        let pos = self.position.val().narrow(0, 0, t).reshape([1, t, d]);
        let mut x = self.token.forward(tokens) + pos;
        // Additive causal mask: 0 on and below the diagonal, a large
        // negative number above it (finite, so a fully masked row cannot
        // make NaN).
        let mask: Vec<f32> = (0..t * t)
            .map(|i| if i % t > i / t { -1e9 } else { 0.0 })
            .collect();
        let mask: Tensor<4> = Tensor::from_data(TensorData::new(mask, [1, 1, t, t]), &device);
        let h = self.heads;
        let dh = d / h;
        let scale = 1.0 / (dh as f64).sqrt();
        for blk in &self.blocks {
            let a = norm_forward(&blk.norm1, x.clone());
            let qkv = blk.qkv.forward(a);
            let split = |i: usize| {
                qkv.clone()
                    .narrow(2, i * d, d)
                    .reshape([b, t, h, dh])
                    .swap_dims(1, 2)
            };
            let (q, k, v) = (split(0), split(1), split(2));
            let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + mask.clone();
            let att = softmax(scores, 3).matmul(v);
            let att = att.swap_dims(1, 2).reshape([b, t, d]);
            x = x + blk.proj.forward(att);
            let m = norm_forward(&blk.norm2, x.clone());
            x = x + blk.fc2.forward(gelu(blk.fc1.forward(m)));
        }
        self.head.forward(norm_forward(&self.norm_f, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_counts_divide_the_channels() {
        assert_eq!(group_count(25), 5);
        assert_eq!(group_count(100), 25);
        assert_eq!(group_count(256), 32);
        assert_eq!(group_count(16), 4);
        assert_eq!(group_count(3), 1);
        for c in 1..300 {
            assert_eq!(c % group_count(c), 0, "{c}");
        }
    }

    #[test]
    fn conv_lengths_match_mnist1d_cnn() {
        assert_eq!(conv_len(40, 5, 2, 1), 19);
        assert_eq!(conv_len(19, 3, 2, 1), 10);
        assert_eq!(conv_len(10, 3, 2, 1), 5);
        assert_eq!(conv_len(28, 3, 2, 1), 14);
        assert_eq!(conv_len(14, 3, 2, 1), 7);
    }
}
