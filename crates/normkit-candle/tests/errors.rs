//! Wrong shapes, dtypes and settings come back as candle errors naming the
//! op and the shapes; nothing panics and nothing is updated.

use candle_core::{DType, Module, ModuleT, Tensor};
use candle_nn::VarBuilder;
use normkit_candle::*;

use crate::common::*;

fn zeros_vb() -> VarBuilder<'static> {
    VarBuilder::zeros(DType::F32, &CPU)
}

#[track_caller]
fn assert_err_mentions<T: std::fmt::Debug>(r: candle_core::Result<T>, parts: &[&str]) {
    let e = r.expect_err("accepted invalid input").to_string();
    for p in parts {
        assert!(e.contains(p), "error {e:?} does not mention {p:?}");
    }
}

#[test]
fn unsupported_dtypes() {
    let ln = layer_norm(4, LayerNormConfig::default(), zeros_vb()).unwrap();
    let x = Tensor::ones((2, 4), DType::F64, &CPU).unwrap();
    assert_err_mentions(ln.forward(&x), &["layer_norm", "F64", "f32, bf16 or f16"]);
    let x = Tensor::ones((2, 4), DType::U32, &CPU).unwrap();
    assert_err_mentions(ln.forward(&x), &["layer_norm", "U32"]);
    let wrong = Tensor::ones(4, DType::U8, &CPU).unwrap();
    let x = Tensor::ones((2, 4), DType::F32, &CPU).unwrap();
    assert_err_mentions(layer_norm_op(&x, &[4], Some(&wrong), None, 1e-5), &["U8"]);
}

#[test]
fn wrong_channel_counts() {
    let bn = batch_norm(3, BatchNormConfig::default(), zeros_vb()).unwrap();
    let x = Tensor::ones((2, 4, 5), DType::F32, &CPU).unwrap();
    assert_err_mentions(
        bn.forward_t(&x, true),
        &["batch_norm", "[2, 4, 5]", "expected 3"],
    );
    assert_eq!(bn.num_batches_tracked().unwrap(), Some(0));
    let gn = group_norm(2, 4, GroupNormConfig::default(), zeros_vb()).unwrap();
    assert_err_mentions(
        gn.forward(&Tensor::ones((2, 6), DType::F32, &CPU).unwrap()),
        &["group_norm", "expected 4"],
    );
    let inorm = instance_norm(2, InstanceNormConfig::default(), zeros_vb()).unwrap();
    assert_err_mentions(inorm.forward_t(&x, true), &["instance_norm"]);
    let d = dyt(4, DytConfig::default(), zeros_vb()).unwrap();
    assert_err_mentions(d.forward(&x), &["dyt", "expected 4"]);
}

#[test]
fn wrong_ranks_and_normalized_shapes() {
    let bn = batch_norm(4, BatchNormConfig::default(), zeros_vb()).unwrap();
    let x = Tensor::ones(4, DType::F32, &CPU).unwrap();
    assert_err_mentions(bn.forward_t(&x, true), &["batch_norm", "rank"]);
    let ln = layer_norm((2, 3), LayerNormConfig::default(), zeros_vb()).unwrap();
    let x = Tensor::ones((3, 3, 2), DType::F32, &CPU).unwrap();
    assert_err_mentions(ln.forward(&x), &["layer_norm", "[3, 3, 2]", "[2, 3]"]);
    let rms = rms_norm(5, RmsNormConfig::new(), zeros_vb()).unwrap();
    assert_err_mentions(rms.forward(&x), &["rms_norm"]);
}

#[test]
fn one_value_per_channel_in_training() {
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let bn = batch_norm(4, BatchNormConfig::default(), vb).unwrap();
    let x = Tensor::ones((1, 4), DType::F32, &CPU).unwrap();
    assert_err_mentions(bn.forward_t(&x, true), &["batch_norm", "more than 1 value"]);
    // Nothing moved.
    assert_eq!(bn.num_batches_tracked().unwrap(), Some(0));
    assert_eq!(flat(bn.running_var().unwrap()), [1.0; 4]);
    // Evaluation of the same input is fine.
    assert!(bn.forward_t(&x, false).is_ok());
}

#[test]
fn bad_settings() {
    assert_err_mentions(
        group_norm(4, 6, GroupNormConfig::default(), zeros_vb()),
        &["group_norm", "num_groups = 4", "6 channels"],
    );
    let ln = layer_norm(3, f64::NAN, zeros_vb()).unwrap();
    let x = Tensor::ones((2, 3), DType::F32, &CPU).unwrap();
    assert_err_mentions(ln.forward(&x), &["layer_norm", "eps"]);
    let w = Tensor::ones(3, DType::F32, &CPU).unwrap();
    let b = Tensor::ones(4, DType::F32, &CPU).unwrap();
    // candle-nn's constructor signature: a misshapen bias is an error of
    // the forward.
    let ln = LayerNorm::new(w.clone(), b, 1e-5);
    assert_err_mentions(
        ln.forward(&x),
        &["layer_norm", "`bias`", "4 values, expected 3"],
    );
    let alpha = Tensor::ones(2, DType::F32, &CPU).unwrap();
    assert_err_mentions(
        dyt_op(&x, &alpha, Some(&w), None, ChannelAxis::Last),
        &["dyt", "alpha"],
    );
    let v = Tensor::ones((2, 3), DType::F32, &CPU).unwrap();
    let g = Tensor::ones(2, DType::F32, &CPU).unwrap();
    assert_err_mentions(weight_norm_op(&v, &g, Some(2)), &["weight_norm", "dim 2"]);
    assert_err_mentions(weight_norm_op(&v, &g, Some(1)), &["weight_norm", "`g`"]);
}

#[test]
fn missing_tensors_in_a_state_dict() {
    let vb = VarBuilder::from_tensors(Default::default(), DType::F32, &CPU);
    assert!(batch_norm(3, BatchNormConfig::default(), vb.clone()).is_err());
    assert!(weight_norm_linear(3, 2, WeightNormConfig::default(), vb).is_err());
}
