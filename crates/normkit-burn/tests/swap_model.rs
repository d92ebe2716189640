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
    pub gn: GroupNorm,
    pub inorm: InstanceNorm,
    pub fc2: Linear,
    pub ln: LayerNorm,
    pub rms: RmsNorm,
}

impl Model {
    pub fn new(device: &Device) -> Self {
        Model {
            fc1: LinearConfig::new(6, 16).init(device),
            bn: BatchNormConfig::new(16).with_momentum(0.2).init(device),
            gn: GroupNormConfig::new(2, 4).with_epsilon(1e-4).init(device),
            inorm: InstanceNormConfig::new(4).init(device),
            fc2: LinearConfig::new(16, 5).init(device),
            ln: LayerNormConfig::new(5).with_epsilon(1e-6).init(device),
            rms: RmsNormConfig::new(5).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = relu(self.bn.forward(self.fc1.forward(x)));
        // Four channels of four positions each; InstanceNorm first, since
        // after GroupNorm it would cancel GroupNorm's per-channel beta.
        let [n, d] = h.dims();
        let h = self.gn.forward(self.inorm.forward(h.reshape([n, 4, d / 4])));
        let h = self.fc2.forward(h.reshape([n, d]));
        self.rms.forward(self.ln.forward(h))
    }
}
