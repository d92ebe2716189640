//! Trains a small CNN built from normkit layers on Fashion-MNIST, read from
//! `/usr/share/datasets/fashion-mnist/` (or the directory in
//! `FASHION_MNIST_DIR`) when its four `*-ubyte.gz` files are there, and on
//! generated 28×28 images of ten patterns otherwise.
//!
//! ```text
//! cargo run --release -p normkit-burn --example burn_fashion_mnist -- [epochs] [train_images]
//! ```
//!
//! The network: Conv → BatchNorm → ReLU → pool, weight-normalized Conv →
//! GroupNorm → ReLU → pool, Linear → LayerNorm → ReLU → Linear. After
//! training, the BatchNorm is folded into the first convolution and the
//! folded network is evaluated again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use normkit_burn::{
    fold_batch_norm_conv2d, fused_calls, weight_norm_conv2d, BatchNorm, BatchNormConfig, GroupNorm,
    GroupNormConfig, LayerNorm, LayerNormConfig,
};
use normkit_data::idx::{self, IdxError, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR};

#[derive(Module, Debug)]
struct Cnn {
    conv1: Conv2d,
    /// `None` once folded into `conv1`.
    bn1: Option<BatchNorm>,
    conv2: Conv2d,
    gn2: GroupNorm,
    pool: MaxPool2d,
    fc1: Linear,
    ln1: LayerNorm,
    fc2: Linear,
}

impl Cnn {
    fn new(device: &Device) -> Self {
        let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
        Cnn {
            conv1: Conv2dConfig::new([1, 16], [3, 3])
                .with_padding(same.clone())
                .init(device),
            bn1: Some(BatchNormConfig::new(16).init(device)),
            conv2: weight_norm_conv2d(
                Conv2dConfig::new([16, 32], [3, 3])
                    .with_padding(same)
                    .init(device),
            ),
            gn2: GroupNormConfig::new(4, 32).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(32 * 7 * 7, 64).init(device),
            ln1: LayerNormConfig::new(vec![64]).init(device),
            fc2: LinearConfig::new(64, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.conv1.forward(x);
        let x = match &self.bn1 {
            Some(bn) => bn.forward(x),
            None => x,
        };
        let x = self.pool.forward(relu(x));
        let x = self
            .pool
            .forward(relu(self.gn2.forward(self.conv2.forward(x))));
        let x: Tensor<2> = x.flatten(1, 3);
        self.fc2
            .forward(relu(self.ln1.forward(self.fc1.forward(x))))
    }

    /// The same network with `bn1` folded into `conv1` (inference only).
    fn folded(self) -> Self {
        let bn = self.bn1.expect("not yet folded");
        Cnn {
            conv1: fold_batch_norm_conv2d(self.conv1, &bn).expect("foldable"),
            bn1: None,
            ..self
        }
    }
}

/// Images as `[n, 1, 28, 28]` floats in [0, 1] (standardized) and labels.
struct Split {
    images: Vec<f32>,
    labels: Vec<i64>,
}

impl Split {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn batch(&self, start: usize, end: usize, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = end - start;
        let x = TensorData::new(self.images[start * 784..end * 784].to_vec(), [n, 1, 28, 28]);
        let y = TensorData::new(self.labels[start..end].to_vec(), [n]);
        (Tensor::from_data(x, device), Tensor::from_data(y, device))
    }
}

/// Reads Fashion-MNIST's `prefix` (`train` or `t10k`) split from `dir`,
/// keeping at most `limit` images.
fn read_split(dir: &Path, prefix: &str, limit: usize) -> Result<Split, String> {
    let read = || -> Result<idx::Images, IdxError> {
        let images = idx::locate(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = idx::locate(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        idx::read_images(&images, &labels, FASHION_MNIST_CLASSES.len(), Some(limit))
    };
    let data = read().map_err(|e| e.to_string())?;
    if (data.rows, data.cols) != (28, 28) {
        return Err(format!(
            "{prefix} images are {}×{}, not 28×28",
            data.rows, data.cols
        ));
    }
    // Fashion-MNIST's pixel mean and standard deviation.
    let images = data
        .pixels
        .iter()
        .map(|&p| (p as f32 / 255.0 - 0.286) / 0.353)
        .collect();
    let labels = data.labels.iter().map(|&l| l as i64).collect();
    Ok(Split { images, labels })
}

/// Ten classes of generated 28×28 images: stripes at one of five angles,
/// with or without a central blob, plus noise.
fn generated(n: usize, seed: u64) -> Split {
    let mut s = seed;
    let mut rand = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let label = (rand() * 10.0) as usize % 10;
        let angle = (label % 5) as f32 * std::f32::consts::PI / 5.0;
        let (dx, dy) = (angle.cos(), angle.sin());
        let phase = rand() * std::f32::consts::TAU;
        for r in 0..28 {
            for c in 0..28 {
                let (x, y) = (c as f32 - 13.5, r as f32 - 13.5);
                let mut v = ((x * dx + y * dy) * 0.8 + phase).sin();
                if label >= 5 && x * x + y * y < 36.0 {
                    v += 1.5;
                }
                images.push(v + (rand() - 0.5));
            }
        }
        labels.push(label as i64);
    }
    Split { images, labels }
}

fn accuracy(model: &Cnn, data: &Split, device: &Device) -> f64 {
    let mut correct = 0usize;
    for start in (0..data.len()).step_by(500) {
        let end = (start + 500).min(data.len());
        let (x, y) = data.batch(start, end, device);
        let predicted = model.forward(x).argmax(1).reshape([end - start]);
        correct += predicted
            .equal(y)
            .int()
            .sum()
            .into_data()
            .iter::<i64>()
            .next()
            .unwrap_or(0) as usize;
    }
    correct as f64 / data.len() as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let epochs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let train_limit: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(12_000);

    let dir = std::env::var_os("FASHION_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR));
    let (train, test, source) = match (
        read_split(&dir, "train", train_limit),
        read_split(&dir, "t10k", 2_000),
    ) {
        (Ok(train), Ok(test)) => (train, test, format!("Fashion-MNIST from {}", dir.display())),
        (Err(e), _) | (_, Err(e)) => (
            generated(train_limit.min(6_000), 1),
            generated(1_000, 2),
            format!(
                "generated patterns (no Fashion-MNIST at {}: {e})",
                dir.display()
            ),
        ),
    };
    println!(
        "data: {source}; {} training and {} test images",
        train.len(),
        test.len()
    );

    let device = Device::flex().autodiff();
    let mut model = Cnn::new(&device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let batch = 64;
    for epoch in 0..epochs {
        let started = Instant::now();
        let (mut total, mut batches) = (0.0f64, 0usize);
        for start in (0..train.len() - batch + 1).step_by(batch) {
            let (x, y) = train.batch(start, start + batch, &device);
            let loss = loss_fn.forward(model.forward(x), y);
            total += loss
                .clone()
                .into_data()
                .iter::<f64>()
                .next()
                .unwrap_or(f64::NAN);
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
        }
        let eval = model.valid();
        println!(
            "epoch {}: mean loss {:.4}, test accuracy {:.2}% ({:.1} s)",
            epoch + 1,
            total / batches.max(1) as f64,
            100.0 * accuracy(&eval, &test, &Device::flex()),
            started.elapsed().as_secs_f64()
        );
    }

    let eval = model.valid();
    let plain = accuracy(&eval, &test, &Device::flex());
    let folded = eval.folded();
    let with_folding = accuracy(&folded, &test, &Device::flex());
    println!(
        "test accuracy {:.2}%, with BatchNorm folded into conv1 {:.2}%",
        100.0 * plain,
        100.0 * with_folding
    );
    let calls = fused_calls();
    println!(
        "fused normkit kernels: {} forward, {} backward calls",
        calls.forward, calls.backward
    );
}
