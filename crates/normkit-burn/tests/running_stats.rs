//! Running statistics over several training steps, against a plain f64
//! oracle of PyTorch's rules: the running mean follows the batch mean, the
//! running variance the *unbiased* batch variance, with momentum `m`
//! (`running = (1 - m) · running + m · batch`) or, without one, the
//! cumulative average `m = 1 / (num_batches_tracked + 1)`.

use burn::module::Module;
use burn::tensor::Device;
use normkit_burn::*;

use crate::common::*;

/// Per-channel mean and unbiased variance of `x` (`shape`, channel `axis`).
fn channel_stats(x: &[f32], shape: &[usize], axis: ChannelAxis) -> (Vec<f64>, Vec<f64>) {
    let (c, inner) = match axis {
        ChannelAxis::First => (shape[1], shape[2..].iter().product::<usize>()),
        ChannelAxis::Last => (shape[shape.len() - 1], 1),
    };
    let channel = |i: usize| match axis {
        ChannelAxis::First => (i / inner) % c,
        ChannelAxis::Last => i % c,
    };
    let mut sum = vec![0.0f64; c];
    let mut count = vec![0usize; c];
    for (i, &v) in x.iter().enumerate() {
        sum[channel(i)] += v as f64;
        count[channel(i)] += 1;
    }
    let mean: Vec<f64> = sum.iter().zip(&count).map(|(s, &n)| s / n as f64).collect();
    let mut ss = vec![0.0f64; c];
    for (i, &v) in x.iter().enumerate() {
        let d = v as f64 - mean[channel(i)];
        ss[channel(i)] += d * d;
    }
    let var = ss
        .iter()
        .zip(&count)
        .map(|(s, &n)| s / (n as f64 - 1.0))
        .collect();
    (mean, var)
}

fn follow(running: &mut [f64], batch: &[f64], m: f64) {
    for (r, b) in running.iter_mut().zip(batch) {
        *r = (1.0 - m) * *r + m * b;
    }
}

fn running_of(bn: &BatchNorm) -> (Vec<f64>, Vec<f64>, f64) {
    (
        read(bn.running_mean.as_ref().unwrap().value_sync()),
        read(bn.running_var.as_ref().unwrap().value_sync()),
        read(bn.num_batches_tracked.as_ref().unwrap().value_sync())[0],
    )
}

/// Trains a BatchNorm on batches of varying size and checks its running
/// statistics and step count after every step.
fn batch_norm_steps(route: Route, momentum: Option<f64>, axis: ChannelAxis) {
    let c = 3;
    let device = ad();
    let bn = BatchNormConfig::new(c)
        .with_momentum(momentum)
        .with_channel_axis(axis)
        .init(&device);
    let mut mean = vec![0.0f64; c];
    let mut var = vec![1.0f64; c];
    for (step, n) in [4usize, 7, 2, 5, 3, 6].into_iter().enumerate() {
        let shape = match axis {
            ChannelAxis::First => [n, c, 5],
            ChannelAxis::Last => [n, 5, c],
        };
        let x = values(n * c * 5, 100 + step as u64, 2.0, 1.5 + step as f32);
        let (bm, bv) = channel_stats(&x, &shape, axis);
        let m = momentum.unwrap_or(1.0 / (step as f64 + 1.0));
        follow(&mut mean, &bm, m);
        follow(&mut var, &bv, m);
        with_route(route, || bn.forward(from_vec(x, shape, &device)));
        let (got_mean, got_var, count) = running_of(&bn);
        let what = format!("{route:?} {momentum:?} {axis:?} step {step}");
        assert_close(
            &format!("{what} running_mean"),
            &got_mean,
            &mean,
            1e-6,
            1e-6,
        );
        assert_close(&format!("{what} running_var"), &got_var, &var, 1e-6, 1e-6);
        assert_eq!(count, step as f64 + 1.0, "{what}: num_batches_tracked");
    }
}

#[test]
fn batch_norm_exponential_momentum_over_steps() {
    for route in [Route::Auto, Route::Composed] {
        batch_norm_steps(route, Some(0.1), ChannelAxis::First);
        batch_norm_steps(route, Some(0.3), ChannelAxis::Last);
    }
}

#[test]
fn batch_norm_cumulative_average_over_steps() {
    // momentum=None: after k steps the running statistics are the plain
    // average of the k batch statistics (the initial values drop out).
    for route in [Route::Auto, Route::Composed] {
        batch_norm_steps(route, None, ChannelAxis::First);
        batch_norm_steps(route, None, ChannelAxis::Last);
    }
}

#[test]
fn inference_normalizes_with_running_statistics_and_leaves_them() {
    let device = ad();
    let bn = BatchNormConfig::new(2).init(&device);
    for step in 0..3 {
        bn.forward(tensor([8, 2, 3], 200 + step, &device).mul_scalar(3.0));
    }
    let (mean, var, count) = running_of(&bn);
    let inference = bn.valid();
    assert!(!inference.training.is_enabled());
    let x = tensor([4, 2, 3], 300, &Device::flex());
    let y = read(inference.forward(x.clone()));
    let xv = read(x);
    let want: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / 3) % 2;
            (v - mean[ch]) / (var[ch] + 1e-5).sqrt()
        })
        .collect();
    assert_close("inference output", &y, &want, 1e-6, 1e-6);
    let (mean2, var2, count2) = running_of(&inference);
    assert_eq!(
        (mean2, var2, count2),
        (mean, var, count),
        "inference changed state"
    );
}

#[test]
fn without_tracking_inference_uses_batch_statistics() {
    let bn = BatchNormConfig::new(2)
        .with_track_running_stats(false)
        .init(&Device::flex());
    assert!(bn.running_mean.is_none() && bn.num_batches_tracked.is_none());
    let y = read(bn.forward(tensor([6, 2, 4], 400, &Device::flex()).add_scalar(5.0)));
    // Batch-normalized: each channel of the output has mean 0.
    for ch in 0..2 {
        let s: f64 = y
            .iter()
            .enumerate()
            .filter(|(i, _)| (i / 4) % 2 == ch)
            .map(|(_, v)| v)
            .sum();
        assert!(s.abs() < 1e-4, "channel {ch} mean {s}");
    }
}

#[test]
fn instance_norm_running_statistics_over_steps() {
    // The batch average of the per-instance mean and unbiased variance.
    for route in [Route::Auto, Route::Composed] {
        let (c, s) = (2, 6);
        let device = ad();
        let inorm = InstanceNormConfig::new(c)
            .with_track_running_stats(true)
            .with_momentum(Some(0.25))
            .init(&device);
        let mut mean = vec![0.0f64; c];
        let mut var = vec![1.0f64; c];
        for (step, n) in [3usize, 5, 2].into_iter().enumerate() {
            let x = values(n * c * s, 500 + step as u64, 1.0, step as f32);
            let (mut bm, mut bv) = (vec![0.0; c], vec![0.0; c]);
            for i in 0..n {
                for ch in 0..c {
                    let start = (i * c + ch) * s;
                    let (m, v) =
                        channel_stats(&x[start..start + s], &[1, 1, s], ChannelAxis::First);
                    bm[ch] += m[0] / n as f64;
                    bv[ch] += v[0] / n as f64;
                }
            }
            follow(&mut mean, &bm, 0.25);
            follow(&mut var, &bv, 0.25);
            with_route(route, || inorm.forward(from_vec(x, [n, c, s], &device)));
            let got_mean = read(inorm.running_mean.as_ref().unwrap().value_sync());
            let got_var = read(inorm.running_var.as_ref().unwrap().value_sync());
            assert_close(
                &format!("{route:?} step {step} mean"),
                &got_mean,
                &mean,
                1e-6,
                1e-6,
            );
            assert_close(
                &format!("{route:?} step {step} var"),
                &got_var,
                &var,
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn instance_norm_momentum_none_keeps_running_statistics() {
    // PyTorch's InstanceNorm passes momentum=None on as 0.
    let device = ad();
    let inorm = InstanceNormConfig::new(2)
        .with_track_running_stats(true)
        .with_momentum(None)
        .init(&device);
    inorm.forward(tensor([3, 2, 5], 600, &device).add_scalar(4.0));
    let mean = read(inorm.running_mean.as_ref().unwrap().value_sync());
    let var = read(inorm.running_var.as_ref().unwrap().value_sync());
    assert_eq!((mean, var), (vec![0.0; 2], vec![1.0; 2]));
}

#[test]
fn records_carry_running_statistics_and_count() {
    let device = ad();
    let bn = BatchNormConfig::new(3).with_momentum(None).init(&device);
    for step in 0..4 {
        bn.forward(tensor([5, 3, 2], 700 + step, &device));
    }
    let (mean, var, count) = running_of(&bn);
    assert_eq!(count, 4.0);
    let fresh = BatchNormConfig::new(3).with_momentum(None).init(&device);
    let loaded = fresh.load_record(bn.clone().into_record());
    let (mean2, var2, count2) = running_of(&loaded);
    assert_close("mean", &mean2, &mean, 0.0, 0.0);
    assert_close("var", &var2, &var, 0.0, 0.0);
    assert_eq!(count2, 4.0);
    // The restored count keeps the cumulative average going: step 5 weighs
    // its batch by 1/5.
    let x = values(5 * 3 * 2, 800, 1.0, 2.0);
    let (bm, _) = channel_stats(&x, &[5, 3, 2], ChannelAxis::First);
    loaded.forward(from_vec(x, [5, 3, 2], &device));
    let mut want = mean.clone();
    follow(&mut want, &bm, 0.2);
    let (mean3, _, count3) = running_of(&loaded);
    assert_close("mean after restore", &mean3, &want, 1e-6, 1e-6);
    assert_eq!(count3, 5.0);
}
