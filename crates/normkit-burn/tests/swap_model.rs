// A small model written against `burn::nn`'s norm layers, as a burn user
// writes one. `swap.rs` includes it twice: under `use burn::nn::{...}` and
// under `use normkit_burn::nn::{...}`, the one line that differs.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

#[derive(Module, Debug)]
pub struct Model {
    pub fc1: Linear,
    pub bn: BatchNorm,
    pub fc2: Linear,
    pub ln: LayerNorm,
}

impl Model {
    pub fn new(device: &Device) -> Self {
        Model {
            fc1: LinearConfig::new(6, 8).init(device),
            bn: BatchNormConfig::new(8).with_momentum(0.2).init(device),
            fc2: LinearConfig::new(8, 5).init(device),
            ln: LayerNormConfig::new(5).with_epsilon(1e-6).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = relu(self.bn.forward(self.fc1.forward(x)));
        self.ln.forward(self.fc2.forward(h))
    }
}
