//! A few optimizer steps of a small model with each layer: the loss goes
//! down and every parameter, before and after the normalization, moves.
//! The same model with `candle_nn::LayerNorm` gets no gradient below the
//! normalization.

use candle_core::{DType, Module, ModuleT, Result, Tensor, D};
use candle_nn::{linear, AdamW, Conv2dConfig, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use normkit_candle::*;

use crate::common::*;

const BATCH: usize = 32;
const WIDTH: usize = 16;
const STEPS: usize = 25;

/// A regression task: `target = sin(x · a)` for a fixed `a`.
fn data() -> (Tensor, Tensor) {
    let mut rng = Rng::new(99);
    let x = rng.tensor(&[BATCH, 8], -2.0, 2.0);
    let a = rng.tensor(&[8, 1], -1.0, 1.0);
    let target = x.matmul(&a).unwrap().sin().unwrap();
    (x, target)
}

type Norm = Box<dyn ModuleT>;

/// What a run leaves behind.
struct Run {
    losses: Vec<f32>,
    /// Whether the first linear layer (below the normalization) received a
    /// gradient on the first step.
    first_layer_has_grad: bool,
    /// How far the first layer's weight moved over the run.
    first_layer_moved: f64,
}

/// `linear(8 → 16) → norm → relu → linear(16 → 1)`, trained with AdamW on
/// the mean squared error.
fn train(make_norm: impl FnOnce(VarBuilder) -> Result<Norm>) -> Run {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let fc1 = linear(8, WIDTH, vb.pp("fc1")).unwrap();
    let norm = make_norm(vb.pp("norm")).unwrap();
    let fc2 = linear(WIDTH, 1, vb.pp("fc2")).unwrap();
    let (x, target) = data();
    let w0 = fc1.weight().copy().unwrap();
    let params = ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params).unwrap();
    let mut losses = Vec::new();
    let mut first_layer_has_grad = false;
    for step in 0..STEPS {
        let h = norm.forward_t(&fc1.forward(&x).unwrap(), true).unwrap();
        let y = fc2.forward(&h.relu().unwrap()).unwrap();
        let loss = (y - &target).unwrap().sqr().unwrap().mean_all().unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        if step == 0 {
            first_layer_has_grad = grads.get(fc1.weight()).is_some();
        }
        opt.step(&grads).unwrap();
    }
    let moved = (fc1.weight() - w0).unwrap().abs().unwrap();
    Run {
        losses,
        first_layer_has_grad,
        first_layer_moved: moved.max_all().unwrap().to_scalar::<f32>().unwrap() as f64,
    }
}

#[track_caller]
fn assert_learns(name: &str, run: &Run) {
    let (first, last) = (run.losses[0], *run.losses.last().unwrap());
    assert!(last.is_finite(), "{name}: loss {last}");
    assert!(
        last < 0.7 * first,
        "{name}: loss went from {first} to {last}: {:?}",
        run.losses
    );
    assert!(
        run.first_layer_has_grad,
        "{name}: no gradient below the norm"
    );
    assert!(
        run.first_layer_moved > 1e-3,
        "{name}: first layer did not move"
    );
}

#[test]
fn batch_norm_learns() {
    let run = train(|vb| Ok(Box::new(batch_norm(WIDTH, BatchNormConfig::default(), vb)?)));
    assert_learns("batch_norm", &run);
}

#[test]
fn layer_norm_learns() {
    let run = train(|vb| Ok(Box::new(layer_norm(WIDTH, LayerNormConfig::default(), vb)?)));
    assert_learns("layer_norm", &run);
}

#[test]
fn rms_norm_learns() {
    let run = train(|vb| Ok(Box::new(rms_norm(WIDTH, RmsNormConfig::new(), vb)?)));
    assert_learns("rms_norm", &run);
}

#[test]
fn group_norm_learns() {
    let run = train(|vb| {
        Ok(Box::new(group_norm(
            4,
            WIDTH,
            GroupNormConfig::default(),
            vb,
        )?))
    });
    assert_learns("group_norm", &run);
}

#[test]
fn instance_norm_learns() {
    // The 16 features as 4 channels of 4 positions each.
    let run = train(|vb| {
        let cfg = InstanceNormConfig {
            affine: true,
            track_running_stats: true,
            ..Default::default()
        };
        let inorm = instance_norm(4, cfg, vb)?;
        Ok(Box::new(candle_nn::func_t(move |x, train| {
            let h = inorm.forward_t(&x.reshape((BATCH, 4, 4))?, train)?;
            h.reshape((BATCH, WIDTH))
        })))
    });
    assert_learns("instance_norm", &run);
}

#[test]
fn dyt_learns() {
    let run = train(|vb| Ok(Box::new(dyt(WIDTH, DytConfig::default(), vb)?)));
    assert_learns("dyt", &run);
}

#[test]
fn weight_norm_linear_learns() {
    let run = train(|vb| {
        let wn = weight_norm_linear(WIDTH, WIDTH, WeightNormConfig::default(), vb)?;
        Ok(Box::new(wn))
    });
    assert_learns("weight_norm_linear", &run);
}

#[test]
fn weight_norm_conv2d_learns() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let conv_cfg = Conv2dConfig {
        stride: 2,
        padding: 1,
        ..Default::default()
    };
    let conv = weight_norm_conv2d(
        1,
        4,
        3,
        conv_cfg,
        WeightNormConfig::default(),
        vb.pp("conv"),
    )
    .unwrap();
    let head = linear(4 * 3 * 3, 1, vb.pp("head")).unwrap();
    let mut rng = Rng::new(5);
    let x = rng.tensor(&[16, 1, 6, 6], -1.0, 1.0);
    // The target is the mean of the image's upper half.
    let target = x
        .narrow(2, 0, 3)
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .mean_keepdim(D::Minus1)
        .unwrap();
    let mut opt = AdamW::new_lr(varmap.all_vars(), 1e-2).unwrap();
    let mut losses = Vec::new();
    for _ in 0..STEPS {
        let h = conv
            .forward(&x)
            .unwrap()
            .relu()
            .unwrap()
            .flatten_from(1)
            .unwrap();
        let loss = (head.forward(&h).unwrap() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        assert!(grads.get(conv.g()).is_some() && grads.get(conv.v()).is_some());
        opt.step(&grads).unwrap();
    }
    assert!(losses[STEPS - 1] < 0.7 * losses[0], "{losses:?}");
}

/// candle-nn's LayerNorm takes its fused path for contiguous input, an op
/// without backward: the loss still trains the layer above, but nothing
/// reaches the layers below, nor the LayerNorm's own weight and bias.
#[test]
fn candle_nn_layer_norm_cuts_the_graph() {
    let theirs = train(|vb| Ok(Box::new(candle_nn::layer_norm(WIDTH, 1e-5, vb)?)));
    assert!(!theirs.first_layer_has_grad);
    assert_eq!(theirs.first_layer_moved, 0.0);

    let ours = train(|vb| Ok(Box::new(layer_norm(WIDTH, LayerNormConfig::default(), vb)?)));
    assert!(ours.first_layer_has_grad);
    assert!(ours.first_layer_moved > 1e-3);
    // With the whole network training, the loss ends lower.
    assert!(
        ours.losses[STEPS - 1] < theirs.losses[STEPS - 1],
        "normkit {:?} vs candle-nn {:?}",
        ours.losses,
        theirs.losses
    );
}

/// The same two LayerNorms on one batch: identical outputs, but only
/// normkit's passes a gradient to the input and its parameters.
#[test]
fn same_output_different_gradients() {
    let mut rng = Rng::new(7);
    let x = candle_core::Var::from_tensor(&rng.tensor(&[4, WIDTH], -1.0, 1.0)).unwrap();
    let w = candle_core::Var::from_tensor(&rng.tensor(&[WIDTH], 0.5, 1.5)).unwrap();
    let b = candle_core::Var::from_tensor(&rng.tensor(&[WIDTH], -0.5, 0.5)).unwrap();
    let theirs = candle_nn::LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
    let ours = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
    let y_theirs = theirs.forward(x.as_tensor()).unwrap();
    let y_ours = ours.forward(x.as_tensor()).unwrap();
    assert_close("outputs", &flat(&y_ours), &flat(&y_theirs), 1e-5);
    let g_theirs = y_theirs
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_ours = y_ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
        assert!(g_theirs.get(v.as_tensor()).is_none(), "candle-nn: d{name}");
        assert!(g_ours.get(v.as_tensor()).is_some(), "normkit: d{name}");
    }
}

/// candle-nn's RmsNorm has the same cut for contiguous input.
#[test]
fn candle_nn_rms_norm_cuts_the_graph_too() {
    let mut rng = Rng::new(8);
    let x = candle_core::Var::from_tensor(&rng.tensor(&[4, WIDTH], -1.0, 1.0)).unwrap();
    let w = candle_core::Var::from_tensor(&rng.tensor(&[WIDTH], 0.5, 1.5)).unwrap();
    let theirs = candle_nn::RmsNorm::new(w.as_tensor().clone(), 1e-6);
    let ours = RmsNorm::new(w.as_tensor().clone(), 1e-6);
    let y_theirs = theirs.forward(x.as_tensor()).unwrap();
    let y_ours = ours.forward(x.as_tensor()).unwrap();
    assert_close("outputs", &flat(&y_ours), &flat(&y_theirs), 1e-5);
    let g_theirs = y_theirs
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_ours = y_ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("x", &x), ("weight", &w)] {
        assert!(g_theirs.get(v.as_tensor()).is_none(), "candle-nn: d{name}");
        assert!(g_ours.get(v.as_tensor()).is_some(), "normkit: d{name}");
    }
}
