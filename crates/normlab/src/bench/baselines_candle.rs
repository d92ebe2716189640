//! candle-nn 0.11's own ops and modules on candle's CPU device, called
//! the way a candle user calls them, in `f32`.
//!
//! - `forward_train`: LayerNorm and RMSNorm use candle-nn's fused
//!   `ops::layer_norm` / `ops::rms_norm` (what `candle_nn::LayerNorm` and
//!   `RmsNorm` dispatch to on contiguous input); BatchNorm its module in
//!   training mode (which also updates the running statistics); GroupNorm
//!   its module; no tape is recorded, since no input is a `Var`.
//! - `forward_eval` (BatchNorm): the module in evaluation mode.
//! - `forward_backward`: inputs and parameters are `Var`s, the forward is
//!   the composed one (`ops::layer_norm_slow`, `ops::rms_norm_slow`, the
//!   modules' own composed code), then the loss `sum(y · dy)` that seeds
//!   the upstream gradient and `backward()`. candle's fused LayerNorm and
//!   RMSNorm have no backward (they are `no_bwd` ops: gradients stop
//!   there), so a candle user who trains has to use the composed ops.
//!
//! What candle lacks is composed from its tensor ops and says so in the
//! note: DyT, Derf; the residual-add norms (`x + residual`, then the op
//! above, both outputs kept); InstanceNorm (GroupNorm with one channel per group, no
//! running statistics); channels-last input (BatchNorm reshaped to
//! `[N·H·W, C]`, GroupNorm permuted to channels first and back).

use super::inputs::Inputs;
use super::shapes::{Case, Layout, Op, Pass};
use super::timing::{measure, timed, Budget, Sample};
use super::Timed;
use candle_core::{Device, Tensor, Var};
use candle_nn::{Module, ModuleT};
use std::hint::black_box;

const EPS: f64 = 1e-5;

/// Times candle on `passes` (those it has; see the module documentation).
pub fn run_candle(case: &Case, inputs: &Inputs, passes: &[Pass], budget: &Budget) -> Vec<Timed> {
    passes
        .iter()
        .filter(|&&p| p != Pass::Backward)
        .map(|&pass| {
            if pass == Pass::ForwardEval && case.op == Op::InstanceNorm {
                return Timed::skipped(
                    pass,
                    "candle-nn has no InstanceNorm with running statistics, so no evaluation mode",
                );
            }
            match time_pass(case, inputs, pass, budget) {
                Ok(sample) => Timed::measured(pass, sample, note(case, pass)),
                Err(e) => Timed::skipped(pass, &format!("candle error: {e}")),
            }
        })
        .collect()
}

fn note(case: &Case, pass: Pass) -> String {
    let fb = pass == Pass::ForwardBackward;
    let mut parts: Vec<String> = vec![match (case.op, fb) {
        (Op::LayerNorm, false) => "fused ops::layer_norm".into(),
        (Op::LayerNorm, true) => {
            "composed ops::layer_norm_slow (the fused op has no backward)".into()
        }
        (Op::RmsNorm, false) => "fused ops::rms_norm".into(),
        (Op::RmsNorm, true) => "composed ops::rms_norm_slow (the fused op has no backward)".into(),
        (Op::BatchNorm, _) => {
            "candle_nn::BatchNorm (composed ops; output is a transposed view)".into()
        }
        (Op::GroupNorm, _) => "candle_nn::GroupNorm (composed ops)".into(),
        (Op::InstanceNorm, _) => {
            "composed (candle has no InstanceNorm): GroupNorm with num_groups = C".into()
        }
        (Op::Dyt, _) => "composed (candle has no DyT): tanh(alpha·x)·weight + bias".into(),
        (Op::Derf, _) => "composed (candle has no Derf): erf(alpha·x + shift)·weight + bias".into(),
        (Op::AddLayerNorm, false) => "sum = x + residual, then fused ops::layer_norm".into(),
        (Op::AddLayerNorm, true) => "sum = x + residual, then composed ops::layer_norm_slow".into(),
        (Op::AddRmsNorm, false) => "sum = x + residual, then fused ops::rms_norm".into(),
        (Op::AddRmsNorm, true) => "sum = x + residual, then composed ops::rms_norm_slow".into(),
    }];
    match (case.op, case.layout) {
        (Op::BatchNorm, Layout::Nhwc) => {
            parts.push("channels last: input reshaped to [N·H·W, C] (BatchNorm takes channels at dim 1)".into())
        }
        (Op::GroupNorm | Op::InstanceNorm, Layout::Nhwc) => parts.push(
            "channels last: permuted to NCHW, module, permuted back (GroupNorm takes channels at dim 1)".into(),
        ),
        _ => {}
    }
    if fb && case.op.is_residual() {
        parts.push(
            "Vars and autograd; includes the loss sum(y·dy) + sum(sum·dsum) seeding both \
             gradients and the parameter gradients"
                .into(),
        );
    } else if fb {
        parts.push(
            "Vars and autograd; includes the loss sum(y·dy) seeding dy and the parameter gradients"
                .into(),
        );
    } else if pass == Pass::ForwardEval {
        parts.push("evaluation mode: running statistics".into());
    }
    parts.join("; ")
}

/// The size of the pool candle's elementwise kernels use.
pub fn candle_threads() -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(candle_core::utils::get_num_threads)
}

/// The parameters, as plain tensors or as `Var`s' tensors.
struct Params {
    weight: Tensor,
    bias: Tensor,
    alpha: Tensor,
    /// Derf's.
    shift: Tensor,
    vars: Vec<Var>,
}

impl Params {
    fn new(inputs: &Inputs, dev: &Device, tracked: bool) -> candle_core::Result<Params> {
        let c = inputs.weight.len();
        let weight = Tensor::from_slice(&inputs.weight, c, dev)?;
        let bias = Tensor::from_slice(&inputs.bias, c, dev)?;
        let alpha = Tensor::from_slice(&[inputs.alpha], 1, dev)?;
        let shift = Tensor::from_slice(&[inputs.shift], 1, dev)?;
        if !tracked {
            return Ok(Params {
                weight,
                bias,
                alpha,
                shift,
                vars: vec![],
            });
        }
        let vars = vec![
            Var::from_tensor(&weight)?,
            Var::from_tensor(&bias)?,
            Var::from_tensor(&alpha)?,
            Var::from_tensor(&shift)?,
        ];
        Ok(Params {
            weight: vars[0].as_tensor().clone(),
            bias: vars[1].as_tensor().clone(),
            alpha: vars[2].as_tensor().clone(),
            shift: vars[3].as_tensor().clone(),
            vars,
        })
    }
}

/// The layer under test; modules are built once, outside timing.
enum Layer {
    Bn(candle_nn::BatchNorm),
    Gn(candle_nn::GroupNorm),
    Rows,
}

impl Layer {
    fn new(case: &Case, inputs: &Inputs, p: &Params, dev: &Device) -> candle_core::Result<Layer> {
        let c = case.extents().c;
        Ok(match case.op {
            Op::BatchNorm => Layer::Bn(candle_nn::BatchNorm::new(
                c,
                Tensor::from_slice(&inputs.running_mean, c, dev)?,
                Tensor::from_slice(&inputs.running_var, c, dev)?,
                p.weight.clone(),
                p.bias.clone(),
                EPS,
            )?),
            Op::GroupNorm | Op::InstanceNorm => {
                let groups = case.groups().unwrap_or(c);
                Layer::Gn(candle_nn::GroupNorm::new(
                    p.weight.clone(),
                    p.bias.clone(),
                    c,
                    groups,
                    EPS,
                )?)
            }
            _ => Layer::Rows,
        })
    }
}

fn forward(
    case: &Case,
    layer: &Layer,
    p: &Params,
    x: &Tensor,
    pass: Pass,
) -> candle_core::Result<Tensor> {
    let fused = pass != Pass::ForwardBackward;
    match (case.op, layer) {
        (Op::LayerNorm | Op::AddLayerNorm, _) if fused => {
            candle_nn::ops::layer_norm(x, &p.weight, &p.bias, EPS as f32)
        }
        (Op::LayerNorm | Op::AddLayerNorm, _) => {
            candle_nn::ops::layer_norm_slow(x, &p.weight, &p.bias, EPS as f32)
        }
        (Op::RmsNorm | Op::AddRmsNorm, _) if fused => {
            candle_nn::ops::rms_norm(x, &p.weight, EPS as f32)
        }
        (Op::RmsNorm | Op::AddRmsNorm, _) => {
            candle_nn::ops::rms_norm_slow(x, &p.weight, EPS as f32)
        }
        (Op::Derf, _) => x
            .broadcast_mul(&p.alpha)?
            .broadcast_add(&p.shift)?
            .erf()?
            .broadcast_mul(&p.weight)?
            .broadcast_add(&p.bias),
        (Op::Dyt, _) => x
            .broadcast_mul(&p.alpha)?
            .tanh()?
            .broadcast_mul(&p.weight)?
            .broadcast_add(&p.bias),
        (_, Layer::Bn(m)) => {
            let train = pass != Pass::ForwardEval;
            if case.layout == Layout::Nhwc {
                let dims = x.dims().to_vec();
                let c = dims[3];
                let flat = x.reshape((x.elem_count() / c, c))?;
                m.forward_t(&flat, train)?.reshape(dims)
            } else {
                m.forward_t(x, train)
            }
        }
        (_, Layer::Gn(m)) => {
            if case.layout == Layout::Nhwc {
                m.forward(&x.permute((0, 3, 1, 2))?)?.permute((0, 2, 3, 1))
            } else {
                m.forward(x)
            }
        }
        (_, Layer::Rows) => candle_core::bail!("no candle layer for {case}"),
    }
}

fn time_pass(
    case: &Case,
    inputs: &Inputs,
    pass: Pass,
    budget: &Budget,
) -> candle_core::Result<Sample> {
    let dev = Device::Cpu;
    let tracked = pass == Pass::ForwardBackward;
    let p = Params::new(inputs, &dev, tracked)?;
    let layer = Layer::new(case, inputs, &p, &dev)?;
    let shape = case.shape.as_slice();
    let x = Tensor::from_slice(&inputs.x, shape, &dev)?;
    // The residual-add norms: `sum = x + residual` goes on as an output.
    let residual = match case.op.is_residual() {
        true => Some(Tensor::from_slice(&inputs.residual, shape, &dev)?),
        false => None,
    };
    let with_residual =
        |x: &Tensor, r: Option<&Tensor>| -> candle_core::Result<(Tensor, Option<Tensor>)> {
            match r {
                Some(r) => {
                    let sum = (x + r)?;
                    Ok((forward(case, &layer, &p, &sum, pass)?, Some(sum)))
                }
                None => Ok((forward(case, &layer, &p, x, pass)?, None)),
            }
        };
    // The first call reports any error; the timed ones repeat it exactly.
    if !tracked {
        with_residual(&x, residual.as_ref())?;
        return Ok(measure(budget, || {
            let (t, y) = timed(|| with_residual(&x, residual.as_ref()));
            drop(y);
            t
        }));
    }
    let x = Var::from_tensor(&x)?;
    let residual = residual.map(|r| Var::from_tensor(&r)).transpose()?;
    let dy = Tensor::from_slice(&inputs.dy, shape, &dev)?;
    let dsum = match &residual {
        Some(_) => Some(Tensor::from_slice(&inputs.dsum, shape, &dev)?),
        None => None,
    };
    let step = || -> candle_core::Result<candle_core::backprop::GradStore> {
        let (y, sum) = with_residual(x.as_tensor(), residual.as_ref().map(Var::as_tensor))?;
        let mut loss = (y * &dy)?.sum_all()?;
        if let (Some(sum), Some(dsum)) = (sum, &dsum) {
            loss = (loss + (sum * dsum)?.sum_all()?)?;
        }
        let grads = loss.backward()?;
        black_box(grads.get(x.as_tensor()));
        if let Some(r) = &residual {
            black_box(grads.get(r.as_tensor()));
        }
        for v in &p.vars {
            black_box(grads.get(v.as_tensor()));
        }
        Ok(grads)
    };
    step()?;
    Ok(measure(budget, || {
        let (t, grads) = timed(step);
        drop(grads);
        t
    }))
}
