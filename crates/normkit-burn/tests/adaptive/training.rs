//! A small model training with each adaptive layer.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Tensor;
use normkit_burn::*;

use crate::common::*;

// ---------------------------------------------------------------------------
// Training.

/// A tiny model around each layer: Adam on a fixed regression task.
trait Block: Module + burn::module::ModuleDisplay {
    /// `h`: `[batch, tokens, features]`; `cond`: `[batch, COND]`.
    fn apply(&self, h: Tensor<3>, cond: Tensor<2>) -> Tensor<3>;
}

const HIDDEN: usize = 8;
const COND: usize = 3;

impl Block for SwitchNorm {
    fn apply(&self, h: Tensor<3>, _: Tensor<2>) -> Tensor<3> {
        self.forward(h)
    }
}

impl Block for BatchRenorm {
    fn apply(&self, h: Tensor<3>, _: Tensor<2>) -> Tensor<3> {
        self.forward(h)
    }
}

impl Block for AdaLayerNorm {
    fn apply(&self, h: Tensor<3>, cond: Tensor<2>) -> Tensor<3> {
        let out = self.forward(h.clone(), cond);
        match out.gate {
            // A gated residual, as in DiT.
            Some(gate) => h + out.output * gate.unsqueeze_dim(1),
            None => out.output,
        }
    }
}

/// AdaIN of the features with a style computed from the condition.
#[derive(Module, Debug)]
struct StyleBlock {
    style: Linear,
    adain: AdaIn,
}

impl Block for StyleBlock {
    fn apply(&self, h: Tensor<3>, cond: Tensor<2>) -> Tensor<3> {
        // The style is [batch, 2 positions, HIDDEN] channels last.
        let [n, _] = cond.dims();
        let s = self.style.forward(cond).reshape([n, 2, HIDDEN]);
        self.adain.forward(h, s)
    }
}

#[derive(Module, Debug)]
struct Net<B: Block> {
    inp: Linear,
    block: B,
    out: Linear,
}

/// Trains `Net` with `block` for 80 steps; returns the first and last loss.
fn train<B: Block>(block: B) -> (f64, f64) {
    let device = ad();
    let mut net = Net {
        inp: LinearConfig::new(6, HIDDEN).init(&device),
        block,
        out: LinearConfig::new(HIDDEN, 1).init(&device),
    };
    let x = tensor([16, 4, 6], 71, &device).mul_scalar(2.0);
    let cond = tensor([16, COND], 73, &device);
    let teacher = tensor([6, 1], 72, &device);
    let target = x
        .clone()
        .tanh()
        .matmul(teacher.unsqueeze::<3>())
        .mul_scalar(2.0)
        + cond.clone().sum_dim(1).unsqueeze_dim::<3>(2);
    let mut optim = AdamConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..80 {
        let h = net.inp.forward(x.clone());
        let h = net.block.apply(h, cond.clone());
        let d = net.out.forward(burn::tensor::activation::relu(h)) - target.clone();
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
fn trains_with_switch_norm() {
    let sn = SwitchNormConfig::new(HIDDEN)
        .with_channel_axis(ChannelAxis::Last)
        .init(&ad());
    assert_trains("SwitchNorm", train(sn));
}

#[test]
fn trains_with_batch_renorm() {
    let brn = BatchRenormConfig::new(HIDDEN)
        .with_channel_axis(ChannelAxis::Last)
        .with_schedule(Some(
            RenormScheduleConfig::new()
                .with_warmup(10)
                .with_r_max_at(40)
                .with_d_max_at(30),
        ))
        .init(&ad());
    assert_trains("BatchRenorm", train(brn));
}

#[test]
fn trains_with_ada_layer_norm() {
    for rms in [false, true] {
        let ada = AdaLayerNormConfig::new(HIDDEN, COND)
            .with_rms(rms)
            .with_gate(true)
            .init(&ad());
        assert_trains(&format!("AdaLayerNorm rms={rms}"), train(ada));
    }
}

#[test]
fn trains_with_adain() {
    let block = StyleBlock {
        style: LinearConfig::new(COND, 2 * HIDDEN).init(&ad()),
        adain: AdaInConfig::new()
            .with_channel_axis(ChannelAxis::Last)
            .init(&ad()),
    };
    assert_trains("AdaIn", train(block));
}
