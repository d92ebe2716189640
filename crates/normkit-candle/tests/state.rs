//! Running statistics: updated by training steps, left alone by
//! evaluation, and saved and loaded with the weights.

use std::collections::HashMap;

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use normkit_candle::*;

use crate::common::*;

fn values(t: &Tensor) -> Vec<f64> {
    flat(t)
}

#[test]
fn varmap_save_writes_the_updated_statistics() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let bn = batch_norm(3, BatchNormConfig::default(), vb.pp("bn")).unwrap();
    let mut rng = Rng::new(1);
    for _ in 0..2 {
        bn.forward_t(&rng.tensor(&[4, 3, 5], 1.0, 3.0), true)
            .unwrap();
    }
    assert_eq!(bn.num_batches_tracked().unwrap(), Some(2));
    let mean = values(bn.running_mean().unwrap());
    assert!(
        mean.iter().all(|&m| m > 0.3),
        "running mean {mean:?} did not move"
    );

    let file = TempFile::safetensors("varmap-save", &HashMap::new());
    varmap.save(&file.0).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(file.bytes(), DType::F32, &CPU).unwrap();
    let loaded = batch_norm(3, BatchNormConfig::default(), vb.pp("bn")).unwrap();
    assert_eq!(values(loaded.running_mean().unwrap()), mean);
    assert_eq!(
        values(loaded.running_var().unwrap()),
        values(bn.running_var().unwrap())
    );
    assert_eq!(loaded.num_batches_tracked().unwrap(), Some(2));
    let x = rng.tensor(&[2, 3, 5], -1.0, 1.0);
    assert_eq!(
        flat(&loaded.forward_t(&x, false).unwrap()),
        flat(&bn.forward_t(&x, false).unwrap())
    );
}

#[test]
fn state_dict_saves_a_file_loaded_layer_after_training() {
    let mut rng = Rng::new(2);
    let mut sd = HashMap::new();
    sd.insert("weight".to_string(), rng.tensor(&[4], 0.5, 1.5));
    sd.insert("bias".to_string(), rng.tensor(&[4], -0.5, 0.5));
    sd.insert("running_mean".to_string(), rng.tensor(&[4], -1.0, 1.0));
    sd.insert("running_var".to_string(), rng.tensor(&[4], 0.5, 1.5));
    sd.insert(
        "num_batches_tracked".to_string(),
        Tensor::new(7i64, &CPU).unwrap(),
    );
    let file = TempFile::safetensors("state-dict-in", &sd);
    let vb = VarBuilder::from_buffered_safetensors(file.bytes(), DType::F32, &CPU).unwrap();
    let bn = batch_norm(4, BatchNormConfig::default(), vb).unwrap();
    bn.forward_t(&rng.tensor(&[8, 4], -1.0, 1.0), true).unwrap();

    let mut out = HashMap::new();
    bn.state_dict("", &mut out);
    let mut keys: Vec<_> = out.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "bias",
            "num_batches_tracked",
            "running_mean",
            "running_var",
            "weight"
        ]
    );
    assert_eq!(out["num_batches_tracked"].to_scalar::<i64>().unwrap(), 8);
    assert_eq!(out["num_batches_tracked"].dims(), &[] as &[usize]);
    assert_ne!(values(&out["running_mean"]), values(&sd["running_mean"]));
    assert_eq!(values(&out["weight"]), values(&sd["weight"]));
}

/// `momentum: None` keeps the plain average of every batch's statistics.
#[test]
fn cumulative_moving_average_is_the_mean_of_batch_means() {
    let cfg = BatchNormConfig {
        momentum: None,
        ..Default::default()
    };
    let bn = batch_norm(2, cfg, VarBuilder::zeros(DType::F32, &CPU)).unwrap();
    let mut rng = Rng::new(3);
    let batches: Vec<Tensor> = (0..3)
        .map(|i| rng.tensor(&[5, 2], i as f32, i as f32 + 2.0))
        .collect();
    let mut sum = [0.0f64; 2];
    for b in &batches {
        bn.forward_t(b, true).unwrap();
        let m = flat(&b.mean(0).unwrap());
        sum[0] += m[0];
        sum[1] += m[1];
    }
    assert_eq!(bn.num_batches_tracked().unwrap(), Some(3));
    let got = values(bn.running_mean().unwrap());
    for c in 0..2 {
        assert!(
            (got[c] - sum[c] / 3.0).abs() < 1e-6,
            "{got:?} vs {sum:?} / 3"
        );
    }
}

#[test]
fn evaluation_leaves_running_statistics_alone() {
    let varmap = VarMap::new();
    let bn = batch_norm(3, 1e-5, VarBuilder::from_varmap(&varmap, DType::F32, &CPU)).unwrap();
    let before = values(bn.running_mean().unwrap());
    bn.forward_t(&Rng::new(4).tensor(&[4, 3], 5.0, 6.0), false)
        .unwrap();
    assert_eq!(values(bn.running_mean().unwrap()), before);
    assert_eq!(bn.num_batches_tracked().unwrap(), Some(0));
}

#[test]
fn a_state_dict_without_num_batches_tracked_loads() {
    let mut sd = HashMap::new();
    sd.insert(
        "running_mean".to_string(),
        Tensor::new(&[1f32, 2.0], &CPU).unwrap(),
    );
    sd.insert(
        "running_var".to_string(),
        Tensor::new(&[4f32, 9.0], &CPU).unwrap(),
    );
    let cfg = BatchNormConfig {
        affine: false,
        eps: 0.0,
        ..Default::default()
    };
    let vb = VarBuilder::from_tensors(sd, DType::F32, &CPU);
    let bn = batch_norm(2, cfg, vb).unwrap();
    assert_eq!(bn.num_batches_tracked().unwrap(), Some(0));
    let y = bn
        .forward_t(&Tensor::new(&[[3f32, 5.0]], &CPU).unwrap(), false)
        .unwrap();
    assert_eq!(flat(&y), [1.0, 1.0]);
}

/// PyTorch's InstanceNorm keeps `num_batches_tracked` but never counts.
#[test]
fn instance_norm_updates_statistics_but_not_the_count() {
    let cfg = InstanceNormConfig {
        track_running_stats: true,
        ..Default::default()
    };
    let varmap = VarMap::new();
    let inorm = instance_norm(2, cfg, VarBuilder::from_varmap(&varmap, DType::F32, &CPU)).unwrap();
    inorm
        .forward_t(&Rng::new(5).tensor(&[3, 2, 4], 2.0, 4.0), true)
        .unwrap();
    let mean = values(inorm.running_mean().unwrap());
    assert!(mean.iter().all(|&m| (0.2..0.4).contains(&m)), "{mean:?}");
    let mut out = HashMap::new();
    inorm.state_dict("in", &mut out);
    assert_eq!(out["in.num_batches_tracked"].to_scalar::<i64>().unwrap(), 0);
}
