// A small GPT written against candle-nn, in the shape of the GPT models of
// candle-transformers: each block keeps its own `LayerNorm` fields, built
// with `layer_norm(size, config, vb)`, and a tracing-style helper forwards
// any `impl Into<candle_nn::LayerNormConfig>`. The file names no LayerNorm
// crate: whoever includes it brings `layer_norm` and `LayerNorm` into scope
// with one `use` line (candle-nn's or normkit-candle's).
//
// Tensor names follow GPT-2's checkpoints: `wte`, `wpe`, `h.{i}.ln_1`,
// `h.{i}.attn.c_attn`, `h.{i}.attn.c_proj`, `h.{i}.ln_2`, `h.{i}.mlp.c_fc`,
// `h.{i}.mlp.c_proj`, `ln_f`, `lm_head`.

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{embedding, linear, linear_no_bias, Embedding, Linear, VarBuilder};

/// The model's sizes.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub layer_norm_epsilon: f64,
}

impl Config {
    /// Two blocks of 64 features over bytes, 64 positions.
    pub fn small() -> Self {
        Config {
            vocab_size: 256,
            n_positions: 64,
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            layer_norm_epsilon: 1e-5,
        }
    }
}

/// The LayerNorm constructor behind every norm of the model, taking a
/// config the way candle-transformers' `with_tracing::layer_norm` does.
pub fn traced_layer_norm<C: Into<candle_nn::LayerNormConfig>>(
    size: usize,
    config: C,
    vb: VarBuilder,
) -> Result<LayerNorm> {
    layer_norm(size, config, vb)
}

struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Attention {
            c_attn: linear(cfg.n_embd, 3 * cfg.n_embd, vb.pp("c_attn"))?,
            c_proj: linear(cfg.n_embd, cfg.n_embd, vb.pp("c_proj"))?,
            n_head: cfg.n_head,
        })
    }

    /// Causal multi-head self-attention over `[batch, tokens, n_embd]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let hd = c / self.n_head;
        let qkv = self.c_attn.forward(x)?;
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * c, c)?
                .reshape((b, t, self.n_head, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), x.device())?;
        let att = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        self.c_proj.forward(&y)
    }
}

struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Mlp {
            c_fc: linear(cfg.n_embd, 4 * cfg.n_embd, vb.pp("c_fc"))?,
            c_proj: linear(4 * cfg.n_embd, cfg.n_embd, vb.pp("c_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&self.c_fc.forward(x)?.gelu()?)
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Block {
            ln_1: layer_norm(cfg.n_embd, eps, vb.pp("ln_1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            ln_2: traced_layer_norm(cfg.n_embd, eps, vb.pp("ln_2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    /// Pre-norm residual block.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }
}

/// Token and position embeddings, the blocks, a final LayerNorm and the
/// language-model head.
pub struct Gpt {
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
}

impl Gpt {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = (0..cfg.n_layer)
            .map(|i| Block::new(cfg, vb.pp(format!("h.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let ln_f_config = candle_nn::LayerNormConfig {
            eps: cfg.layer_norm_epsilon,
            ..Default::default()
        };
        Ok(Gpt {
            wte: embedding(cfg.vocab_size, cfg.n_embd, vb.pp("wte"))?,
            wpe: embedding(cfg.n_positions, cfg.n_embd, vb.pp("wpe"))?,
            h,
            ln_f: traced_layer_norm(cfg.n_embd, ln_f_config, vb.pp("ln_f"))?,
            lm_head: linear_no_bias(cfg.n_embd, cfg.vocab_size, vb.pp("lm_head"))?,
        })
    }

    /// Logits `[batch, tokens, vocab_size]` for token ids `[batch, tokens]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, ids.device())?;
        let mut x = self
            .wte
            .forward(ids)?
            .broadcast_add(&self.wpe.forward(&positions)?)?;
        for block in &self.h {
            x = block.forward(&x)?;
        }
        self.lm_head.forward(&self.ln_f.forward(&x)?)
    }

    /// Mean cross-entropy of predicting each next token of `ids`.
    pub fn loss(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let logits = self.forward(&ids.narrow(1, 0, t - 1)?)?;
        let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
        candle_nn::loss::cross_entropy(&logits.reshape((b * (t - 1), ()))?, &targets)
    }
}

/// Token ids `[batch, tokens]` cut from `text`'s bytes at `batch` evenly
/// spaced offsets starting at `at`.
pub fn byte_batch(text: &[u8], batch: usize, tokens: usize, at: usize) -> Result<Tensor> {
    let stride = (text.len().saturating_sub(tokens) / batch.max(1)).max(1);
    let ids: Vec<u32> = (0..batch)
        .flat_map(|i| {
            let start = (at + i * stride) % text.len().saturating_sub(tokens).max(1);
            text[start..start + tokens].iter().map(|&b| u32::from(b))
        })
        .collect();
    Tensor::from_vec(ids, (batch, tokens), &Device::Cpu)
}
