//! A small decoder-only transformer with a pluggable normalization.

use super::init::{linear, normal};
use super::norm::{norm_forward, Features, Norm, NormKind};
use crate::study::data::SplitMix64;
use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

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
/// normalizations are identities; with DyT they are `Dyt` layers, as in "Transformers without Normalization".
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
    /// default; DyT layers start at `alpha0`.
    pub fn new(spec: GptSpec, kind: NormKind, alpha0: f64, seed: u64, device: &Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        let d = spec.d_model;
        let norm = |device: &Device| {
            Norm::with_alpha(kind, Features::Tokens(d), alpha0, device)
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
