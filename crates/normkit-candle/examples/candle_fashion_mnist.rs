//! A small CNN trained on Fashion-MNIST with a normkit normalization layer.
//!
//! ```text
//! cargo run --release -p normkit-candle --example candle_fashion_mnist -- [--norm batch|group|instance|dyt] [--epochs N] [--data DIR]
//! ```
//!
//! Reads the IDX files (gzipped or not, with `normkit_data::idx`) from
//! `--data`, by default `/usr/share/datasets/fashion-mnist` (Debian's
//! `dataset-fashion-mnist` package). Without them it trains on generated images: ten classes of
//! oriented bars with noise.
//!
//! The network downsamples with stride-2 convolutions rather than max
//! pooling: candle 0.11's `max_pool2d` backward scales the gradient by
//! 1/k² and misplaces it for odd sizes.
//!
//! With `--norm batch` the trained BatchNorms are then folded into their
//! convolutions and the folded network is checked against the original.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor, D};
use candle_nn::{
    conv2d_no_bias, linear, loss, AdamW, Conv2d, Conv2dConfig, Linear, Optimizer, ParamsAdamW,
    VarBuilder, VarMap,
};
use normkit_candle::{
    batch_norm, dyt, fold_batch_norm_conv2d, group_norm, instance_norm, BatchNorm, BatchNormConfig,
    ChannelAxis, Dyt, DytConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
};

const SIDE: usize = 28;
const CLASSES: usize = 10;
const BATCH: usize = 64;

/// Images as `[N, 1, 28, 28]` f32 in [0, 1], labels as `[N]` u32.
struct Split {
    images: Tensor,
    labels: Tensor,
}

struct Dataset {
    train: Split,
    test: Split,
    source: String,
}

/// Images as `[N, 1, 28, 28]` in [0, 1] and their labels.
fn split(images: &normkit_data::idx::Images) -> Result<Split> {
    let pixels: Vec<f32> = images.pixels.iter().map(|&p| p as f32 / 255.0).collect();
    let labels: Vec<u32> = images.labels.iter().map(|&l| l as u32).collect();
    let (n, dev) = (images.count, Device::Cpu);
    Ok(Split {
        images: Tensor::from_vec(pixels, (n, 1, images.rows, images.cols), &dev)?,
        labels: Tensor::from_vec(labels, n, &dev)?,
    })
}

/// Ten classes of bars at angles k·18°, at random offsets, with noise.
fn generated(n: usize, seed: u64) -> Result<Split> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut pixels = Vec::with_capacity(n * SIDE * SIDE);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % CLASSES;
        let angle = class as f32 * std::f32::consts::PI / CLASSES as f32;
        let (s, c) = angle.sin_cos();
        let offset = (next() - 0.5) * 8.0;
        for r in 0..SIDE {
            for col in 0..SIDE {
                let (y, x) = (r as f32 - 13.5, col as f32 - 13.5);
                let dist = (x * s - y * c - offset).abs();
                let bar = if dist < 2.0 { 0.8 } else { 0.0 };
                pixels.push((bar + 0.3 * next()).min(1.0));
            }
        }
        labels.push(class as u32);
    }
    let dev = Device::Cpu;
    Ok(Split {
        images: Tensor::from_vec(pixels, (n, 1, SIDE, SIDE), &dev)?,
        labels: Tensor::from_vec(labels, n, &dev)?,
    })
}

fn dataset(dir: &Path) -> Result<Dataset> {
    match normkit_data::idx::fashion_mnist(Some(dir), None) {
        Ok([train, test]) if (train.rows, train.cols) == (SIDE, SIDE) => Ok(Dataset {
            train: split(&train)?,
            test: split(&test)?,
            source: format!("Fashion-MNIST from {}", dir.display()),
        }),
        other => {
            let why = match other {
                Err(e) => e.to_string(),
                Ok(_) => format!("images are not {SIDE}×{SIDE}"),
            };
            Ok(Dataset {
                train: generated(6000, 1)?,
                test: generated(1000, 2)?,
                source: format!("generated bars ({} unavailable: {why})", dir.display()),
            })
        }
    }
}

/// The normalization after each convolution.
#[derive(Clone)]
enum Norm {
    Batch(BatchNorm),
    Group(GroupNorm),
    Instance(InstanceNorm),
    Dyt(Dyt),
}

impl Norm {
    fn new(kind: &str, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            "batch" => Norm::Batch(batch_norm(channels, BatchNormConfig::default(), vb)?),
            "group" => Norm::Group(group_norm(4, channels, GroupNormConfig::default(), vb)?),
            "instance" => {
                let cfg = InstanceNormConfig {
                    affine: true,
                    ..Default::default()
                };
                Norm::Instance(instance_norm(channels, cfg, vb)?)
            }
            "dyt" => {
                let cfg = DytConfig {
                    channel_axis: ChannelAxis::First,
                    ..Default::default()
                };
                Norm::Dyt(dyt(channels, cfg, vb)?)
            }
            other => candle_core::bail!("unknown --norm {other}: batch, group, instance or dyt"),
        })
    }
}

impl ModuleT for Norm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Batch(n) => n.forward_t(x, train),
            Norm::Group(n) => n.forward(x),
            Norm::Instance(n) => n.forward_t(x, train),
            Norm::Dyt(n) => n.forward(x),
        }
    }
}

/// conv 3×3/2 → norm → relu → conv 3×3/2 → norm → relu → linear:
/// 28×28 → 14×14 → 7×7 → 10 classes.
struct Net {
    conv1: Conv2d,
    norm1: Norm,
    conv2: Conv2d,
    norm2: Norm,
    fc: Linear,
}

impl Net {
    fn new(kind: &str, vb: VarBuilder) -> Result<Self> {
        let down = Conv2dConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        Ok(Net {
            conv1: conv2d_no_bias(1, 16, 3, down, vb.pp("conv1"))?,
            norm1: Norm::new(kind, 16, vb.pp("norm1"))?,
            conv2: conv2d_no_bias(16, 32, 3, down, vb.pp("conv2"))?,
            norm2: Norm::new(kind, 32, vb.pp("norm2"))?,
            fc: linear(32 * 7 * 7, CLASSES, vb.pp("fc"))?,
        })
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self
            .norm1
            .forward_t(&self.conv1.forward(x)?, train)?
            .relu()?;
        let h = self
            .norm2
            .forward_t(&self.conv2.forward(&h)?, train)?
            .relu()?;
        self.fc.forward(&h.flatten_from(1)?)
    }
}

/// Accuracy of `forward` over `split`, in batches.
fn accuracy(forward: &dyn Fn(&Tensor) -> Result<Tensor>, split: &Split) -> Result<f64> {
    let n = split.labels.dim(0)?;
    let mut correct = 0u32;
    for start in (0..n).step_by(1000) {
        let len = 1000.min(n - start);
        let logits = forward(&split.images.narrow(0, start, len)?)?;
        let predicted = logits.argmax(D::Minus1)?;
        let hits = predicted.eq(&split.labels.narrow(0, start, len)?)?;
        correct += hits.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?;
    }
    Ok(correct as f64 / n as f64)
}

fn main() -> Result<()> {
    let mut norm = "batch".to_string();
    let mut epochs = 1usize;
    let mut dir = PathBuf::from(normkit_data::idx::FASHION_MNIST_DIR);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--norm" => norm = value(),
            "--epochs" => epochs = value().parse().unwrap_or(1),
            "--data" => dir = PathBuf::from(value()),
            other => candle_core::bail!("unknown argument {other}"),
        }
    }

    let data = dataset(&dir)?;
    println!("data: {}", data.source);
    let varmap = VarMap::new();
    let net = Net::new(
        &norm,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let params = ParamsAdamW {
        lr: 2e-3,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;

    let n = data.train.labels.dim(0)?;
    let batches = n / BATCH;
    for epoch in 0..epochs {
        // A fixed permutation per epoch: stride through the data by a
        // step coprime with the batch count.
        let step = (batches / 2 + 1..)
            .find(|s| gcd(*s, batches) == 1)
            .unwrap_or(1);
        let mut total = 0.0;
        for b in 0..batches {
            let at = ((b * step + epoch) % batches) * BATCH;
            let x = data.train.images.narrow(0, at, BATCH)?;
            let y = data.train.labels.narrow(0, at, BATCH)?;
            let logits = net.forward_t(&x, true)?;
            let l = loss::cross_entropy(&logits, &y)?;
            opt.backward_step(&l)?;
            total += l.to_scalar::<f32>()? as f64;
            if (b + 1) % 200 == 0 {
                println!(
                    "epoch {epoch} batch {:>4}: mean loss {:.4}",
                    b + 1,
                    total / (b + 1) as f64
                );
            }
        }
        let acc = accuracy(&|x| net.forward_t(x, false), &data.test)?;
        println!(
            "epoch {epoch}: train loss {:.4}, test accuracy {:.2}%",
            total / batches as f64,
            100.0 * acc
        );
    }

    if let (Norm::Batch(bn1), Norm::Batch(bn2)) = (&net.norm1, &net.norm2) {
        let conv1 = fold_batch_norm_conv2d(&net.conv1, bn1)?;
        let conv2 = fold_batch_norm_conv2d(&net.conv2, bn2)?;
        let folded = |x: &Tensor| -> Result<Tensor> {
            let h = conv1.forward(x)?.relu()?;
            let h = conv2.forward(&h)?.relu()?;
            net.fc.forward(&h.flatten_from(1)?)
        };
        let x = data.test.images.narrow(0, 0, 256)?;
        let diff = (folded(&x)? - net.forward_t(&x, false)?)?
            .abs()?
            .max_all()?;
        let acc = accuracy(&folded, &data.test)?;
        println!(
            "BatchNorm folded into the convolutions: test accuracy {:.2}%, largest logit difference {:.2e}",
            100.0 * acc,
            diff.to_scalar::<f32>()?
        );
    }
    Ok(())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
