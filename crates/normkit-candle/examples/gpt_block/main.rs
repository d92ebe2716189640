//! A small GPT written for candle-nn (`model.rs`), switched to
//! normkit-candle's LayerNorm by one `use` line, trained for a few steps on
//! the bytes of a text.
//!
//! ```text
//! cargo run --release -p normkit-candle --example gpt_block -- [--steps N] [--text FILE] [--save FILE]
//! ```
//!
//! The text defaults to `/work/shared/data/tinyshakespeare.txt`, else a
//! generated one. Each step prints the loss and how many of the model's
//! parameters received a gradient: every one, the embeddings included
//! (candle-nn's own LayerNorm runs a fused forward without a backward on
//! contiguous input, so nothing below the last LayerNorm would). `--save`
//! writes the trained weights as safetensors under GPT-2's names, which
//! the candle-nn version of the same file loads as is.

use std::path::PathBuf;
use std::time::Instant;

// `model.rs` imports the rest.
use candle_core::DType;
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

// The one line that switches the model; with candle-nn it reads
// `use candle_nn::{layer_norm, LayerNorm};`.
use normkit_candle::{layer_norm, LayerNorm};

include!("model.rs");

fn main() -> Result<()> {
    let (mut steps, mut text, mut save) = (20usize, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--steps", Some(n)) => steps = n.parse().unwrap_or(steps),
            ("--text", Some(p)) => text = Some(PathBuf::from(p)),
            ("--save", Some(p)) => save = Some(PathBuf::from(p)),
            _ => candle_core::bail!("usage: gpt_block [--steps N] [--text FILE] [--save FILE]"),
        }
    }
    let path = text.unwrap_or_else(|| PathBuf::from("/work/shared/data/tinyshakespeare.txt"));
    let text = std::fs::read(&path).unwrap_or_else(|e| {
        println!("{}: {e}; training on generated text", path.display());
        (0..20_000u32)
            .map(|i| b"the quick brown fox jumps over the lazy dog. "[(i % 45) as usize])
            .collect()
    });

    let cfg = Config::small();
    let varmap = VarMap::new();
    let model = Gpt::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let params = ParamsAdamW {
        lr: 3e-3,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    let vars = varmap.all_vars();
    for step in 0..steps {
        let ids = byte_batch(&text, 8, cfg.n_positions, step * 977)?;
        let start = Instant::now();
        let loss = model.loss(&ids)?;
        let grads = loss.backward()?;
        let elapsed = start.elapsed();
        let reached = vars
            .iter()
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .count();
        opt.step(&grads)?;
        println!(
            "step {step:>3}: loss {:.4}, {reached}/{} parameters with a gradient, forward + backward {:.1} ms",
            loss.to_scalar::<f32>()?,
            vars.len(),
            elapsed.as_secs_f64() * 1e3
        );
    }
    if let Some(file) = save {
        varmap.save(&file)?;
        println!("saved {}", file.display());
    }
    Ok(())
}
