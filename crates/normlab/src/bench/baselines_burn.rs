//! burn 0.22's own `nn` modules on its pure-Rust `flex` backend, called
//! the way a burn user calls them, in `f32`.
//!
//! - `forward_train`: the module's forward. BatchNorm takes its training
//!   path only on an autodiff device, so it runs there, recording the tape
//!   as a training step does; the other ops compute the same thing in both
//!   modes and run on the plain device, with no tape.
//! - `forward_eval` (BatchNorm): the module on the plain device, which
//!   normalizes with the running statistics.
//! - `forward_backward`: on the autodiff device, forward, the loss
//!   `sum(y · dy)` that seeds the upstream gradient `dy`, and `backward()`,
//!   which also computes the parameter gradients. burn cannot run a
//!   backward on its own: the tape is consumed by each backward.
//!
//! What burn lacks is composed from its tensor ops and says so in the
//! note: DyT, Derf; the residual-add norms (`x + residual`, then the
//! module, both outputs kept); BatchNorm on channels-last input (reshaped to `[N·H·W, C]`);
//! GroupNorm and InstanceNorm on channels-last input (permuted to channels
//! first and back).
//!
//! Every iteration ends with `Device::sync`; outputs are dropped after the
//! clock stops. A panic inside burn is caught and reported as a skip.

use super::inputs::Inputs;
use super::shapes::{Case, Layout, Op, Pass};
use super::timing::{measure, timed, Budget};
use super::Timed;
use burn::nn;
use burn::tensor::{Device, Tensor, TensorData};
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};

const EPS: f64 = 1e-5;

/// How this workspace builds burn, for the report's notes.
pub const BUILD: &str =
    "burn 0.22.1 on flex with burn-flex's `simd` and `rayon` features, as a default burn \
     build has them; burn sizes its own thread pool, whatever --threads says";

/// Times burn on `passes` (those it has; see the module documentation).
pub fn run_burn(case: &Case, inputs: &Inputs, passes: &[Pass], budget: &Budget) -> Vec<Timed> {
    passes
        .iter()
        .filter(|&&p| p != Pass::Backward)
        .map(|&pass| {
            if pass == Pass::ForwardEval && case.op == Op::InstanceNorm {
                return Timed::skipped(
                    pass,
                    "burn's InstanceNorm has no running statistics, so no evaluation mode",
                );
            }
            let run = AssertUnwindSafe(|| match case.layout {
                Layout::Rows => time_pass::<2>(case, inputs, pass, budget),
                Layout::Nchw | Layout::Nhwc => time_pass::<4>(case, inputs, pass, budget),
            });
            let note = note(case, pass);
            match catch_unwind(run) {
                Ok(sample) => Timed::measured(pass, sample, note),
                Err(panic) => Timed::skipped(
                    pass,
                    &format!("burn panicked: {}", super::panic_message(&panic)),
                ),
            }
        })
        .collect()
}

fn note(case: &Case, pass: Pass) -> String {
    let mut parts: Vec<String> = vec![match case.op {
        Op::BatchNorm => "nn::BatchNorm".into(),
        Op::LayerNorm => "nn::LayerNorm".into(),
        Op::RmsNorm => "nn::RmsNorm".into(),
        Op::GroupNorm => "nn::GroupNorm".into(),
        Op::InstanceNorm => "nn::InstanceNorm".into(),
        Op::Dyt => "composed (burn has no DyT): tanh(alpha·x)·weight + bias".into(),
        Op::Derf => "composed (burn has no Derf): erf(alpha·x + shift)·weight + bias".into(),
        Op::AddLayerNorm => "composed: sum = x + residual, then nn::LayerNorm".into(),
        Op::AddRmsNorm => "composed: sum = x + residual, then nn::RmsNorm".into(),
    }];
    match (case.op, case.layout) {
        (Op::BatchNorm, Layout::Nhwc) => {
            parts.push("channels last: input reshaped to [N·H·W, C] (BatchNorm takes channels at dim 1)".into())
        }
        (Op::GroupNorm | Op::InstanceNorm, Layout::Nhwc) => parts.push(
            "channels last: permuted to NCHW, module, permuted back (the module takes channels at dim 1)".into(),
        ),
        _ => {}
    }
    parts.push(match (pass, case.op) {
        (Pass::ForwardTrain, Op::BatchNorm) => {
            "autodiff device, tape recorded (burn's training path needs it)".into()
        }
        (Pass::ForwardTrain, _) => "plain device, no tape (same result in training)".into(),
        (Pass::ForwardEval, _) => "plain device: running statistics".into(),
        _ if case.op.is_residual() => "autodiff device; includes the loss sum(y·dy) + \
            sum(sum·dsum) seeding both gradients and the parameter gradients"
            .into(),
        _ => "autodiff device; includes the loss sum(y·dy) seeding dy and the parameter gradients"
            .into(),
    });
    parts.join("; ")
}

/// The layer under test, built on one device.
enum Layer {
    Bn(nn::BatchNorm),
    Ln(nn::LayerNorm),
    Rms(nn::RmsNorm),
    Gn(nn::GroupNorm),
    In(nn::InstanceNorm),
    /// DyT and Derf (Derf's shift is `Some`).
    Pointwise(Box<Pointwise>),
}

/// DyT's and Derf's learnable parameters (boxed: burn tensors are large
/// handles).
struct Pointwise {
    alpha: Tensor<1>,
    shift: Option<Tensor<1>>,
    weight: Tensor<1>,
    bias: Tensor<1>,
}

impl Layer {
    fn new(case: &Case, inputs: &Inputs, device: &Device, tracked: bool) -> Layer {
        let c = case.extents().c;
        match case.op {
            Op::BatchNorm => Layer::Bn(nn::BatchNormConfig::new(c).with_epsilon(EPS).init(device)),
            Op::LayerNorm | Op::AddLayerNorm => {
                Layer::Ln(nn::LayerNormConfig::new(c).with_epsilon(EPS).init(device))
            }
            Op::RmsNorm | Op::AddRmsNorm => {
                Layer::Rms(nn::RmsNormConfig::new(c).with_epsilon(EPS).init(device))
            }
            Op::GroupNorm => Layer::Gn(
                nn::GroupNormConfig::new(case.groups().unwrap_or(1), c)
                    .with_epsilon(EPS)
                    .init(device),
            ),
            Op::InstanceNorm => Layer::In(
                nn::InstanceNormConfig::new(c)
                    .with_epsilon(EPS)
                    .init(device),
            ),
            Op::Dyt | Op::Derf => {
                let param = |v: Vec<f32>| {
                    let len = v.len();
                    let t = Tensor::<1>::from_data(TensorData::new(v, [len]), device);
                    if tracked {
                        t.require_grad()
                    } else {
                        t
                    }
                };
                Layer::Pointwise(Box::new(Pointwise {
                    alpha: param(vec![inputs.alpha]),
                    shift: (case.op == Op::Derf).then(|| param(vec![inputs.shift])),
                    weight: param(inputs.weight.clone()),
                    bias: param(inputs.bias.clone()),
                }))
            }
        }
    }

    fn forward<const D: usize>(&self, x: Tensor<D>, layout: Layout) -> Tensor<D> {
        match (self, layout) {
            (Layer::Bn(m), Layout::Nhwc) => {
                let dims = x.dims();
                let c = dims[D - 1];
                let flat: Tensor<2> = x.reshape([dims.iter().product::<usize>() / c, c]);
                m.forward(flat).reshape(dims)
            }
            (Layer::Bn(m), _) => m.forward(x),
            (Layer::Ln(m), _) => m.forward(x),
            (Layer::Rms(m), _) => m.forward(x),
            (Layer::Gn(m), Layout::Nhwc) => to_nhwc(m.forward(to_nchw(x))),
            (Layer::Gn(m), _) => m.forward(x),
            (Layer::In(m), Layout::Nhwc) => to_nhwc(m.forward(to_nchw(x))),
            (Layer::In(m), _) => m.forward(x),
            (Layer::Pointwise(p), _) => {
                let Pointwise {
                    alpha,
                    shift,
                    weight,
                    bias,
                } = p.as_ref();
                // Parameters broadcast along the last (feature) axis.
                let c = weight.dims()[0];
                let per_channel: [usize; D] =
                    std::array::from_fn(|i| if i == D - 1 { c } else { 1 });
                let a: Tensor<D> = alpha.clone().reshape([1; D]);
                let w: Tensor<D> = weight.clone().reshape(per_channel);
                let b: Tensor<D> = bias.clone().reshape(per_channel);
                match shift {
                    Some(shift) => {
                        let s: Tensor<D> = shift.clone().reshape([1; D]);
                        x.mul(a).add(s).erf().mul(w).add(b)
                    }
                    None => x.mul(a).tanh().mul(w).add(b),
                }
            }
        }
    }
}

fn to_nchw<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.permute(std::array::from_fn::<usize, D, _>(|i| [0, 3, 1, 2][i]))
}

fn to_nhwc<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.permute(std::array::from_fn::<usize, D, _>(|i| [0, 2, 3, 1][i]))
}

fn tensor<const D: usize>(values: &[f32], shape: &[usize], device: &Device) -> Tensor<D> {
    let dims: [usize; D] = std::array::from_fn(|i| shape[i]);
    Tensor::from_data(TensorData::new(values.to_vec(), dims), device)
}

fn time_pass<const D: usize>(
    case: &Case,
    inputs: &Inputs,
    pass: Pass,
    budget: &Budget,
) -> super::timing::Sample {
    let plain = Device::flex();
    let autodiff = Device::flex().autodiff();
    let on_tape =
        pass == Pass::ForwardBackward || (pass == Pass::ForwardTrain && case.op == Op::BatchNorm);
    let device = if on_tape { &autodiff } else { &plain };
    let layer = Layer::new(case, inputs, device, on_tape);
    let input = |values: &[f32]| -> Tensor<D> {
        let t = tensor(values, &case.shape, device);
        if on_tape {
            t.require_grad()
        } else {
            t
        }
    };
    let x = input(&inputs.x);
    // The residual-add norms: `sum = x + residual` goes on as an output.
    let residual = case.op.is_residual().then(|| input(&inputs.residual));
    let forward = || -> (Tensor<D>, Option<Tensor<D>>) {
        match &residual {
            Some(r) => {
                let sum = x.clone().add(r.clone());
                (layer.forward(sum.clone(), case.layout), Some(sum))
            }
            None => (layer.forward(x.clone(), case.layout), None),
        }
    };
    match pass {
        Pass::ForwardBackward => {
            let dy: Tensor<D> = tensor(&inputs.dy, &case.shape, device);
            let dsum: Option<Tensor<D>> = residual
                .is_some()
                .then(|| tensor(&inputs.dsum, &case.shape, device));
            measure(budget, || {
                let (t, grads) = timed(|| {
                    let (y, sum) = forward();
                    let loss = match (sum, &dsum) {
                        (Some(sum), Some(dsum)) => {
                            y.mul(dy.clone()).sum().add(sum.mul(dsum.clone()).sum())
                        }
                        _ => y.mul(dy.clone()).sum(),
                    };
                    let grads = loss.backward();
                    black_box(x.grad(&grads));
                    if let Some(r) = &residual {
                        black_box(r.grad(&grads));
                    }
                    let _ = device.sync();
                    grads
                });
                drop(grads);
                t
            })
        }
        _ => measure(budget, || {
            let (t, y) = timed(|| {
                let y = forward();
                let _ = device.sync();
                y
            });
            drop(y);
            t
        }),
    }
}
