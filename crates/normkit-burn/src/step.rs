//! A layer's training step as burn's own layers take it: training on an
//! autodiff device with the layer's flag on; running statistics read
//! before the step and replaced by its updated values.

use burn::module::{Flag, Param, RunningState};
use burn::tensor::{Device, Tensor};

use crate::functional::Running;

/// Whether a layer takes its training path on `device`.
pub(crate) fn training(device: &Device, flag: &Param<Flag>) -> bool {
    device.is_autodiff() && flag.is_enabled()
}

/// The running statistics a step reads: synchronized in training, where
/// the step replaces them.
pub(crate) fn read(
    mean: &RunningState<Tensor<1>>,
    var: &RunningState<Tensor<1>>,
    training: bool,
) -> Running {
    if training {
        (mean.value_sync(), var.value_sync())
    } else {
        (mean.value(), var.value())
    }
}

/// Replaces the running statistics by a step's updated values, detached.
pub(crate) fn write(mean: &RunningState<Tensor<1>>, var: &RunningState<Tensor<1>>, new: Running) {
    mean.update(new.0.detach());
    var.update(new.1.detach());
}
