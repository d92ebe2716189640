//! Times the normalization ops on medium shapes as a model calls them:
//! from the program's own thread, on rayon's global pool (size it with
//! `RAYON_NUM_THREADS`), kernels alone and through the candle layers with
//! autograd.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p normkit-candle --example threads
//! RAYON_NUM_THREADS=2 cargo run --release -p normkit-candle --example threads
//! ```
//!
//! Prints one line per op and shape: the median and the minimum over the
//! repetitions of the kernels' forward, their backward, and the layer's
//! forward and backward through candle (`y.backward()`, which seeds `dy`
//! with ones: candle's own ops on a loss, slow on large tensors, are left
//! out), in milliseconds. `--reps N` sets the repetitions (default 200);
//! `--sweep` times LayerNorm and BatchNorm kernels over growing sizes
//! instead, to find where a second thread starts to pay; `--pool N` runs
//! everything inside a rayon pool of `N` threads (the caller is one of
//! them, as in `normlab bench`).

use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use normkit::op::{BatchNormOp, GroupNormOp, LayerNormOp, NormOp, RmsNormOp};
use normkit::{ChannelAxis, Momentum, RunningStats};
use normkit_candle::{
    batch_norm, group_norm, layer_norm, rms_norm, BatchNormConfig, GroupNormConfig,
    LayerNormConfig, RmsNormConfig,
};

/// Median and minimum of `reps` timings of `f`, in milliseconds, after a
/// few untimed calls.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..reps.div_ceil(10) {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

/// Forward and backward of `op` on `shape`, from slices.
fn kernels<O: NormOp>(op: &O, shape: &[usize], reps: usize) -> [(f64, f64); 2] {
    let n: usize = shape.iter().product();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let dy: Vec<f32> = (0..n)
        .map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0)
        .collect();
    let sig = op.signature(shape).unwrap();
    let params = vec![1.0f32; sig.packed_len()];
    let channels = sig.running.channels().unwrap_or(0);
    let (mut mean, mut var) = (vec![0.0f32; channels], vec![1.0f32; channels]);
    let (mut y, mut dx, mut dparams) = (vec![0.0f32; n], vec![0.0f32; n], params.clone());
    let mut forward = |y: &mut [f32]| {
        let running = (channels > 0).then(|| RunningStats {
            mean: &mut mean,
            var: &mut var,
        });
        op.forward(y, &x, shape, &params, running).unwrap()
    };
    let fwd = time(reps, || {
        forward(&mut y);
    });
    let saved = forward(&mut y);
    let bwd = time(reps, || {
        let grads = normkit::op::OpGrads {
            dx: &mut dx,
            dparams: Some(&mut dparams),
        };
        op.backward(grads, &dy, &x, shape, &params, &saved).unwrap();
    });
    [fwd, bwd]
}

/// The layer's forward and backward on `shape`, through candle's autograd.
fn step(layer: &dyn ModuleT, shape: &[usize], reps: usize) -> Result<(f64, f64)> {
    let n: usize = shape.iter().product();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x = Var::from_tensor(&Tensor::from_vec(x, shape, &Device::Cpu)?)?;
    let mut failed = None;
    let t = time(reps, || {
        let run = || layer.forward_t(x.as_tensor(), true)?.backward().map(drop);
        if let Err(e) = run() {
            failed = Some(e);
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(t),
    }
}

/// LayerNorm over rows of 1024 and BatchNorm over `[N, 64, 32, 32]`, from
/// 64 Ki to 4 Mi values.
fn sweep(reps: usize) {
    println!(
        "{:<13} {:<18} {:>17} {:>17}",
        "op", "shape", "forward", "backward"
    );
    let cell = |(m, lo): (f64, f64)| format!("{m:.3} ({lo:.3})");
    for rows in [64usize, 128, 256, 512, 1024, 2048, 4096] {
        let shape = [rows, 1024];
        let op = LayerNormOp {
            normalized_shape: vec![1024],
            eps: 1e-5,
            weight: true,
            bias: true,
        };
        let k = kernels(&op, &shape, reps);
        println!(
            "{:<13} {:<18} {:>17} {:>17}",
            "layer_norm",
            format!("{shape:?}"),
            cell(k[0]),
            cell(k[1])
        );
    }
    for n in [1usize, 2, 4, 8, 16, 32, 64] {
        let shape = [n, 64, 32, 32];
        let op = BatchNormOp {
            cfg: normkit::BatchNormConfig::default(),
            training: true,
            weight: true,
            bias: true,
        };
        let k = kernels(&op, &shape, reps);
        println!(
            "{:<13} {:<18} {:>17} {:>17}",
            "batch_norm",
            format!("{shape:?}"),
            cell(k[0]),
            cell(k[1])
        );
    }
}

fn main() -> Result<()> {
    let (mut reps, mut sweeping, mut pool) = (200, false, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || args.next().and_then(|n| n.parse().ok());
        match arg.as_str() {
            "--reps" => reps = number().unwrap_or(reps),
            "--sweep" => sweeping = true,
            "--pool" => pool = number(),
            _ => candle_core::bail!("usage: threads [--reps N] [--sweep] [--pool THREADS]"),
        }
    }
    match pool {
        // Everything inside a pool: the caller is one of its threads.
        Some(threads) => rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(candle_core::Error::wrap)?
            .install(|| run(reps, sweeping, "inside a pool of")),
        None => run(reps, sweeping, "from the main thread, global pool of"),
    }
}

fn run(reps: usize, sweeping: bool, how: &str) -> Result<()> {
    println!(
        "{how} {} rayon threads; medians (minima) in ms over {reps} repetitions",
        rayon::current_num_threads()
    );
    if sweeping {
        sweep(reps);
        return Ok(());
    }
    println!(
        "{:<13} {:<16} {:>17} {:>17} {:>17}",
        "op", "shape", "forward", "backward", "layer fwd+bwd"
    );
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let row = |name: &str, shape: &[usize], k: [(f64, f64); 2], s: (f64, f64)| {
        let cell = |(m, lo): (f64, f64)| format!("{m:.3} ({lo:.3})");
        println!(
            "{name:<13} {:<16} {:>17} {:>17} {:>17}",
            format!("{shape:?}"),
            cell(k[0]),
            cell(k[1]),
            cell(s)
        );
    };
    for shape in [[512usize, 256].as_slice(), &[8, 64, 256]] {
        let d = shape[shape.len() - 1];
        let op = LayerNormOp {
            normalized_shape: vec![d],
            eps: 1e-5,
            weight: true,
            bias: true,
        };
        let layer = layer_norm(d, LayerNormConfig::default(), vb.pp(format!("ln{d}")))?;
        row(
            "layer_norm",
            shape,
            kernels(&op, shape, reps),
            step(&layer, shape, reps)?,
        );
        let op = RmsNormOp {
            normalized_shape: vec![d],
            eps: 1e-6,
            weight: true,
        };
        let layer = rms_norm(d, RmsNormConfig::new(), vb.pp(format!("rms{d}")))?;
        row(
            "rms_norm",
            shape,
            kernels(&op, shape, reps),
            step(&layer, shape, reps)?,
        );
    }
    let shape = [4usize, 128, 28, 28];
    let cfg = normkit::BatchNormConfig {
        eps: 1e-5,
        momentum: Momentum::Exponential(0.1),
        channel_axis: ChannelAxis::First,
    };
    let op = BatchNormOp {
        cfg,
        training: true,
        weight: true,
        bias: true,
    };
    let layer = batch_norm(128, BatchNormConfig::default(), vb.pp("bn"))?;
    row(
        "batch_norm",
        &shape,
        kernels(&op, &shape, reps),
        step(&layer, &shape, reps)?,
    );
    let op = GroupNormOp {
        cfg: normkit::GroupNormConfig {
            num_groups: 32,
            eps: 1e-5,
            channel_axis: ChannelAxis::First,
        },
        weight: true,
        bias: true,
    };
    let layer = group_norm(32, 128, GroupNormConfig::default(), vb.pp("gn"))?;
    row(
        "group_norm",
        &shape,
        kernels(&op, &shape, reps),
        step(&layer, &shape, reps)?,
    );
    Ok(())
}
