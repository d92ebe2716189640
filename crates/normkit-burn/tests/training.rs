//! A small model trains with each layer: Adam on a regression task, loss
//! at the end well below the loss at the start.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Tensor;
use normkit_burn::*;

use crate::common::*;

/// A layer applied to `[batch, tokens, features]` activations.
trait Norm3: Module + burn::module::ModuleDisplay {
    fn apply(&self, x: Tensor<3>) -> Tensor<3>;
}

impl Norm3 for BatchNorm {
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x)
    }
}
impl Norm3 for InstanceNorm {
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x)
    }
}
impl Norm3 for GroupNorm {
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x)
    }
}
impl Norm3 for LayerNorm {
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x)
    }
}
impl Norm3 for RmsNorm {
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x)
    }
}
impl Norm3 for Dyt {
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x)
    }
}

#[derive(Module, Debug)]
struct Net<N: Norm3> {
    inp: Linear,
    norm: N,
    out: Linear,
}

impl<N: Norm3> Net<N> {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.norm.apply(self.inp.forward(x));
        self.out.forward(burn::tensor::activation::relu(h))
    }
}

const HIDDEN: usize = 8;

/// Trains `Net` with `norm` for 80 steps; returns the first and last loss.
fn train<N: Norm3>(norm: N, weight_normalized: bool) -> (f64, f64) {
    let device = ad();
    let mut inp = LinearConfig::new(6, HIDDEN).init(&device);
    if weight_normalized {
        inp = weight_norm_linear(inp);
    }
    let mut net = Net {
        inp,
        norm,
        out: LinearConfig::new(HIDDEN, 1).init(&device),
    };
    // A fixed nonlinear target of the inputs.
    let x = tensor([16, 4, 6], 71, &device).mul_scalar(2.0);
    let teacher = tensor([6, 1], 72, &device);
    let target = x
        .clone()
        .tanh()
        .matmul(teacher.unsqueeze::<3>())
        .mul_scalar(2.0);
    let mut optim = AdamConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..80 {
        let d = net.forward(x.clone()) - target.clone();
        let loss = (d.clone() * d).mean();
        losses.push(read(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(2e-2, net, grads);
    }
    (losses[0], *losses.last().unwrap())
}

fn assert_trains(name: &str, (first, last): (f64, f64)) {
    assert!(
        first.is_finite() && last.is_finite(),
        "{name}: {first} -> {last}"
    );
    assert!(last < 0.5 * first, "{name}: loss {first} -> {last}");
}

#[test]
fn trains_with_batch_norm() {
    let norm = BatchNormConfig::new(HIDDEN)
        .with_channel_axis(ChannelAxis::Last)
        .init(&ad());
    assert_trains("BatchNorm", train(norm, false));
}

#[test]
fn trains_with_instance_norm() {
    let norm = InstanceNormConfig::new(HIDDEN)
        .with_affine(true)
        .with_channel_axis(ChannelAxis::Last)
        .init(&ad());
    assert_trains("InstanceNorm", train(norm, false));
}

#[test]
fn trains_with_group_norm() {
    let norm = GroupNormConfig::new(2, HIDDEN)
        .with_channel_axis(ChannelAxis::Last)
        .init(&ad());
    assert_trains("GroupNorm", train(norm, false));
}

#[test]
fn trains_with_layer_norm() {
    assert_trains(
        "LayerNorm",
        train(LayerNormConfig::new(vec![HIDDEN]).init(&ad()), false),
    );
}

#[test]
fn trains_with_rms_norm() {
    assert_trains(
        "RmsNorm",
        train(RmsNormConfig::new(vec![HIDDEN]).init(&ad()), false),
    );
}

#[test]
fn trains_with_dyt() {
    assert_trains("Dyt", train(DytConfig::new(HIDDEN).init(&ad()), false));
}

#[test]
fn trains_with_weight_norm() {
    assert_trains(
        "WeightNorm",
        train(LayerNormConfig::new(vec![HIDDEN]).init(&ad()), true),
    );
}
