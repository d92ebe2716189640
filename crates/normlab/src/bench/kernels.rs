//! normkit's kernels and their `f64` reference twins, called through the
//! public API exactly as a user calls them.
//!
//! Every buffer (input, output, gradient, parameters, running statistics)
//! is allocated and filled before timing; `backward` is timed from
//! statistics saved by an untimed forward; `forward_backward` times a fresh
//! forward and the backward on its statistics.
//!
//! For the residual-add norms, [`Route::Unfused`] times what a user of
//! normkit would write without them: an add, then the norm; the norm's
//! backward, then an add of `dsum`. The adds are plain loops over rayon
//! chunks in the same pool, so threads serve both alike.

use super::copy::{CopyKind, Interleave};
use super::inputs::Inputs;
use super::shapes::{Case, Dtype, Op, Pass};
use super::timing::{measure, timed, Budget, Sample};
use normkit::reference::{self, Dims};
use normkit::{
    bf16, f16, Affine, BatchNormConfig, ChannelAxis, Elem, Grads, GroupNormConfig,
    InstanceNormConfig, NormError, RunningStats, Stats,
};
use std::time::Duration;

/// PyTorch's default for every op here.
const EPS: f32 = 1e-5;

/// How normkit computes a residual-add norm: its fused op, or the add and
/// the norm apart (see the module documentation). Other ops have one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Fused,
    Unfused,
}

/// Times normkit on every pass in `passes`, at `dtype`.
pub fn run_normkit(
    case: &Case,
    inputs: &Inputs,
    dtype: Dtype,
    passes: &[Pass],
    budget: &Budget,
    copies: &mut Interleave,
    route: Route,
) -> Result<Vec<(Pass, Sample)>, NormError> {
    let unfused = route == Route::Unfused && case.op.is_residual();
    match dtype {
        Dtype::F32 => run_typed::<f32>(case, inputs, passes, budget, copies, unfused),
        Dtype::Bf16 => run_typed::<bf16>(case, inputs, passes, budget, copies, unfused),
        Dtype::F16 => run_typed::<f16>(case, inputs, passes, budget, copies, unfused),
    }
}

fn run_typed<T: Elem>(
    case: &Case,
    inputs: &Inputs,
    passes: &[Pass],
    budget: &Budget,
    copies: &mut Interleave,
    unfused: bool,
) -> Result<Vec<(Pass, Sample)>, NormError> {
    let mut st = State::<T>::new(inputs);
    st.unfused = unfused;
    let mut out = Vec::new();
    for &pass in passes {
        // A failing call fails on its first run (the arguments never
        // change), so the first error is the only one.
        let mut error = None;
        let mut keep = |r: Result<(), NormError>| {
            if let Err(e) = r {
                error.get_or_insert(e);
            }
        };
        let kinds = CopyKind::for_pass(pass);
        let sample = match pass {
            Pass::ForwardTrain => measure(budget, || {
                let (t, r) = timed(|| st.forward_train(case));
                keep(r.map(drop));
                copies.tick(kinds);
                t
            }),
            Pass::ForwardEval => measure(budget, || {
                let (t, r) = timed(|| st.forward_eval(case));
                keep(r.map(drop));
                copies.tick(kinds);
                t
            }),
            Pass::Backward => {
                let stats = st.forward_train(case)?;
                measure(budget, || {
                    let (t, r) = timed(|| st.backward(case, &stats));
                    keep(r);
                    copies.tick(kinds);
                    t
                })
            }
            Pass::ForwardBackward => measure(budget, || {
                let (t, r) = timed(|| {
                    let stats = st.forward_train(case)?;
                    st.backward(case, &stats)
                });
                keep(r);
                copies.tick(kinds);
                t
            }),
        };
        if let Some(e) = error {
            return Err(e);
        }
        out.push((pass, sample));
    }
    Ok(out)
}

/// normkit's buffers for one case.
struct State<T> {
    x: Vec<T>,
    dy: Vec<T>,
    y: Vec<T>,
    dx: Vec<T>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    dweight: Vec<f32>,
    dbias: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    alpha: f32,
    shift: f32,
    /// The residual-add norms' extra tensors (empty for other ops).
    residual: Vec<T>,
    dsum: Vec<T>,
    sum: Vec<T>,
    /// The unfused path's gradient of the norm's input, before `dsum`.
    dnorm: Vec<T>,
    /// Run the residual-add norms as add + norm ([`Route::Unfused`]).
    unfused: bool,
}

impl<T: Elem> State<T> {
    fn new(inputs: &Inputs) -> Self {
        let conv = |v: &[f32]| v.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>();
        let n = inputs.x.len();
        let c = inputs.weight.len();
        State {
            x: conv(&inputs.x),
            dy: conv(&inputs.dy),
            // Filled with a non-zero value so the pages are mapped now,
            // not on the first timed write.
            y: vec![T::from_f32(1.0); n],
            dx: vec![T::from_f32(1.0); n],
            weight: inputs.weight.clone(),
            bias: inputs.bias.clone(),
            dweight: vec![1.0; c],
            dbias: vec![1.0; c],
            running_mean: inputs.running_mean.clone(),
            running_var: inputs.running_var.clone(),
            alpha: inputs.alpha,
            shift: inputs.shift,
            residual: conv(&inputs.residual),
            dsum: conv(&inputs.dsum),
            sum: vec![T::from_f32(1.0); inputs.residual.len()],
            dnorm: vec![T::from_f32(1.0); inputs.residual.len()],
            unfused: false,
        }
    }

    fn forward_train(&mut self, case: &Case) -> Result<Stats, NormError> {
        let shape = &case.shape;
        let axis = case.layout.channel_axis();
        let affine = Affine::new(&self.weight, &self.bias);
        let c = case.extents().c;
        match case.op {
            Op::BatchNorm => normkit::batch_norm_forward_train(
                &mut self.y,
                &self.x,
                shape,
                affine,
                Some(RunningStats {
                    mean: &mut self.running_mean,
                    var: &mut self.running_var,
                }),
                &bn_config(axis),
            ),
            Op::LayerNorm => {
                normkit::layer_norm_forward(&mut self.y, &self.x, shape, &[c], affine, EPS)
            }
            Op::RmsNorm => normkit::rms_norm_forward(
                &mut self.y,
                &self.x,
                shape,
                &[c],
                Some(&self.weight),
                EPS,
            ),
            Op::GroupNorm => normkit::group_norm_forward(
                &mut self.y,
                &self.x,
                shape,
                affine,
                &gn_config(case, axis),
            ),
            // PyTorch's InstanceNorm defaults to no running statistics.
            Op::InstanceNorm => normkit::instance_norm_forward_train(
                &mut self.y,
                &self.x,
                shape,
                affine,
                None,
                &in_config(axis),
            ),
            Op::Dyt => normkit::dyt_forward(&mut self.y, &self.x, shape, self.alpha, affine, axis)
                .map(|()| Stats::default()),
            Op::Derf => normkit::derf_forward(
                &mut self.y,
                &self.x,
                shape,
                self.alpha,
                self.shift,
                affine,
                axis,
            )
            .map(|()| Stats::default()),
            Op::AddLayerNorm | Op::AddRmsNorm if self.unfused => {
                add(&mut self.sum, &self.x, &self.residual);
                if case.op == Op::AddLayerNorm {
                    normkit::layer_norm_forward(&mut self.y, &self.sum, shape, &[c], affine, EPS)
                } else {
                    let w = Some(self.weight.as_slice());
                    normkit::rms_norm_forward(&mut self.y, &self.sum, shape, &[c], w, EPS)
                }
            }
            Op::AddLayerNorm => normkit::add_layer_norm_forward(
                &mut self.y,
                &mut self.sum,
                &self.x,
                &self.residual,
                shape,
                &[c],
                affine,
                EPS,
            ),
            Op::AddRmsNorm => normkit::add_rms_norm_forward(
                &mut self.y,
                &mut self.sum,
                &self.x,
                &self.residual,
                shape,
                &[c],
                Some(&self.weight),
                EPS,
            ),
        }
    }

    /// Evaluation mode; the ops without one compute their training forward.
    fn forward_eval(&mut self, case: &Case) -> Result<Stats, NormError> {
        let axis = case.layout.channel_axis();
        let affine = Affine::new(&self.weight, &self.bias);
        let (rm, rv) = (&self.running_mean, &self.running_var);
        match case.op {
            Op::BatchNorm => normkit::batch_norm_forward_eval(
                &mut self.y,
                &self.x,
                &case.shape,
                affine,
                rm,
                rv,
                &bn_config(axis),
            ),
            Op::InstanceNorm => normkit::instance_norm_forward_eval(
                &mut self.y,
                &self.x,
                &case.shape,
                affine,
                rm,
                rv,
                &in_config(axis),
            ),
            _ => self.forward_train(case),
        }
    }

    fn backward(&mut self, case: &Case, stats: &Stats) -> Result<(), NormError> {
        let shape = &case.shape;
        let axis = case.layout.channel_axis();
        let c = case.extents().c;
        let weight = Some(self.weight.as_slice());
        let unfused = self.unfused && case.op.is_residual();
        let grads = Grads {
            // Unfused, the norm's gradient goes to a buffer of its own and
            // the add of dsum writes dx.
            dx: if unfused {
                &mut self.dnorm
            } else {
                &mut self.dx
            },
            dweight: Some(&mut self.dweight),
            // RMSNorm has no bias.
            dbias: (!matches!(case.op, Op::RmsNorm | Op::AddRmsNorm)).then_some(&mut self.dbias),
        };
        let (dy, x) = (&self.dy, &self.x);
        if unfused {
            if case.op == Op::AddLayerNorm {
                normkit::layer_norm_backward(grads, dy, &self.sum, shape, &[c], weight, stats)?;
            } else {
                normkit::rms_norm_backward(grads, dy, &self.sum, shape, &[c], weight, stats)?;
            }
            add(&mut self.dx, &self.dnorm, &self.dsum);
            return Ok(());
        }
        match case.op {
            Op::BatchNorm => normkit::batch_norm_backward_train(
                grads,
                dy,
                x,
                shape,
                weight,
                stats,
                &bn_config(axis),
            ),
            Op::LayerNorm => normkit::layer_norm_backward(grads, dy, x, shape, &[c], weight, stats),
            Op::RmsNorm => normkit::rms_norm_backward(grads, dy, x, shape, &[c], weight, stats),
            Op::GroupNorm => normkit::group_norm_backward(
                grads,
                dy,
                x,
                shape,
                weight,
                stats,
                &gn_config(case, axis),
            ),
            Op::InstanceNorm => normkit::instance_norm_backward_train(
                grads,
                dy,
                x,
                shape,
                weight,
                stats,
                &in_config(axis),
            ),
            Op::Dyt => {
                normkit::dyt_backward(grads, dy, x, shape, self.alpha, weight, axis).map(|dalpha| {
                    std::hint::black_box(dalpha);
                })
            }
            Op::Derf => {
                let (alpha, shift) = (self.alpha, self.shift);
                normkit::derf_backward(grads, dy, x, shape, alpha, shift, weight, axis).map(|g| {
                    std::hint::black_box(g);
                })
            }
            Op::AddLayerNorm => {
                let (dsum, sum) = (Some(self.dsum.as_slice()), &self.sum);
                normkit::add_layer_norm_backward(grads, dy, dsum, sum, shape, &[c], weight, stats)
            }
            Op::AddRmsNorm => {
                let (dsum, sum) = (Some(self.dsum.as_slice()), &self.sum);
                normkit::add_rms_norm_backward(grads, dy, dsum, sum, shape, &[c], weight, stats)
            }
        }
    }
}

/// `out = a + b` elementwise, in `f32`, rounded once: the add a user
/// writes around a norm, over rayon chunks of the pool the bench runs in.
fn add<T: Elem>(out: &mut [T], a: &[T], b: &[T]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = T::from_f32(a.to_f32() + b.to_f32());
            }
        });
}

fn bn_config(channel_axis: ChannelAxis) -> BatchNormConfig {
    BatchNormConfig {
        eps: EPS,
        channel_axis,
        ..BatchNormConfig::default()
    }
}

fn in_config(channel_axis: ChannelAxis) -> InstanceNormConfig {
    InstanceNormConfig {
        eps: EPS,
        channel_axis,
        ..InstanceNormConfig::default()
    }
}

fn gn_config(case: &Case, channel_axis: ChannelAxis) -> GroupNormConfig {
    GroupNormConfig {
        channel_axis,
        ..GroupNormConfig::new(case.groups().unwrap_or(1))
    }
}

/// Times normkit's `f64` reference twin (inputs converted to `f64` before
/// timing). Its backward recomputes the statistics from `x`, as the twin
/// takes none saved.
pub fn run_reference(
    case: &Case,
    inputs: &Inputs,
    passes: &[Pass],
    budget: &Budget,
) -> Vec<(Pass, Sample)> {
    let r = Reference::new(case, inputs);
    passes
        .iter()
        .map(|&pass| {
            let run = |f: &dyn Fn() -> Vec<f64>| -> Duration { timed(f).0 };
            let sample = match pass {
                Pass::ForwardTrain => measure(budget, || run(&|| r.forward_train())),
                Pass::ForwardEval => measure(budget, || run(&|| r.forward_eval())),
                Pass::Backward => measure(budget, || run(&|| r.backward())),
                Pass::ForwardBackward => measure(budget, || {
                    run(&|| {
                        std::hint::black_box(r.forward_train());
                        r.backward()
                    })
                }),
            };
            (pass, sample)
        })
        .collect()
}

struct Reference {
    op: Op,
    dims: Dims,
    groups: usize,
    x: Vec<f64>,
    dy: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
    alpha: f64,
    shift: f64,
    residual: Vec<f64>,
    dsum: Vec<f64>,
    /// `x + residual`, which the residual norms' backward takes.
    sum: Vec<f64>,
}

impl Reference {
    fn new(case: &Case, inputs: &Inputs) -> Self {
        let wide = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        Reference {
            op: case.op,
            dims: Dims::of(&case.shape, case.layout.channel_axis()),
            groups: case.groups().unwrap_or(1),
            x: wide(&inputs.x),
            dy: wide(&inputs.dy),
            weight: wide(&inputs.weight),
            bias: wide(&inputs.bias),
            running_mean: wide(&inputs.running_mean),
            running_var: wide(&inputs.running_var),
            alpha: inputs.alpha as f64,
            shift: inputs.shift as f64,
            residual: wide(&inputs.residual),
            dsum: wide(&inputs.dsum),
            sum: inputs
                .x
                .iter()
                .zip(&inputs.residual)
                .map(|(&x, &r)| x as f64 + r as f64)
                .collect(),
        }
    }

    fn forward_train(&self) -> Vec<f64> {
        let (x, d, eps) = (&self.x, self.dims, EPS as f64);
        let (w, b) = (Some(self.weight.as_slice()), Some(self.bias.as_slice()));
        // For the row ops, `Dims::of([rows, features], Last)` has the rows
        // as samples and the features as channels.
        let (rows, feats) = (d.n, d.c);
        match self.op {
            Op::BatchNorm => {
                let out = reference::batch_norm_train(x, d, w, b, eps);
                std::hint::black_box(reference::batch_norm_running_update(
                    x,
                    d,
                    &self.running_mean,
                    &self.running_var,
                    0.1,
                ));
                out.y
            }
            Op::LayerNorm => reference::layer_norm(x, rows, feats, w, b, eps).y,
            Op::RmsNorm => reference::rms_norm(x, rows, feats, w, eps).y,
            Op::GroupNorm => reference::group_norm(x, d, self.groups, w, b, eps).y,
            Op::InstanceNorm => reference::instance_norm(x, d, w, b, eps).y,
            Op::Dyt => reference::dyt(x, d, self.alpha, w, b),
            Op::Derf => reference::derf(x, d, self.alpha, self.shift, w, b),
            Op::AddLayerNorm => {
                reference::add_layer_norm(x, &self.residual, rows, feats, w, b, eps)
                    .norm
                    .y
            }
            Op::AddRmsNorm => {
                reference::add_rms_norm(x, &self.residual, rows, feats, w, eps)
                    .norm
                    .y
            }
        }
    }

    /// InstanceNorm's evaluation mode is BatchNorm's, by definition.
    fn forward_eval(&self) -> Vec<f64> {
        match self.op {
            Op::BatchNorm | Op::InstanceNorm => reference::batch_norm_eval(
                &self.x,
                self.dims,
                Some(&self.weight),
                Some(&self.bias),
                &self.running_mean,
                &self.running_var,
                EPS as f64,
            ),
            _ => self.forward_train(),
        }
    }

    fn backward(&self) -> Vec<f64> {
        let (dy, x, d, eps) = (&self.dy, &self.x, self.dims, EPS as f64);
        let w = Some(self.weight.as_slice());
        let (rows, feats) = (d.n, d.c);
        match self.op {
            Op::BatchNorm => reference::batch_norm_backward_train(dy, x, d, w, eps).dx,
            Op::LayerNorm => reference::layer_norm_backward(dy, x, rows, feats, w, eps).dx,
            Op::RmsNorm => reference::rms_norm_backward(dy, x, rows, feats, w, eps).dx,
            Op::GroupNorm => reference::group_norm_backward(dy, x, d, self.groups, w, eps).dx,
            Op::InstanceNorm => reference::instance_norm_backward(dy, x, d, w, eps).dx,
            Op::Dyt => reference::dyt_backward(dy, x, d, self.alpha, w).dx,
            Op::Derf => reference::derf_backward(dy, x, d, self.alpha, self.shift, w).dx,
            Op::AddLayerNorm => {
                let (dsum, sum) = (Some(self.dsum.as_slice()), &self.sum);
                reference::add_layer_norm_backward(dy, dsum, sum, rows, feats, w, eps).dx
            }
            Op::AddRmsNorm => {
                let (dsum, sum) = (Some(self.dsum.as_slice()), &self.sum);
                reference::add_rms_norm_backward(dy, dsum, sum, rows, feats, w, eps).dx
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::shapes::{Layout, Mode};

    /// normkit and its twin agree on the bench's own inputs: the bench
    /// times the right calls.
    #[test]
    fn normkit_matches_reference_on_bench_inputs() {
        for case in Mode::Smoke.cases() {
            let inputs = Inputs::new(&case);
            let r = Reference::new(&case, &inputs);
            let mut st = State::<f32>::new(&inputs);
            let stats = st.forward_train(&case).unwrap();
            let want = r.forward_train();
            assert_close(&case, "y", &st.y, &want);
            st.backward(&case, &stats).unwrap();
            assert_close(&case, "dx", &st.dx, &r.backward());
            if case.op.passes().contains(&Pass::ForwardEval) {
                // Fresh running statistics: BatchNorm's training forward
                // above has updated them.
                let mut st = State::<f32>::new(&inputs);
                st.forward_eval(&case).unwrap();
                assert_close(&case, "eval y", &st.y, &r.forward_eval());
            }
        }
    }

    /// The unfused path computes what the fused op does: it times the
    /// same work.
    #[test]
    fn unfused_residual_norms_match_the_fused_ones() {
        for case in Mode::Smoke
            .cases()
            .into_iter()
            .filter(|c| c.op.is_residual())
        {
            let inputs = Inputs::new(&case);
            let r = Reference::new(&case, &inputs);
            let mut st = State::<f32>::new(&inputs);
            st.unfused = true;
            let stats = st.forward_train(&case).unwrap();
            assert_close(&case, "unfused y", &st.y, &r.forward_train());
            assert_close(&case, "unfused sum", &st.sum, &r.sum);
            st.backward(&case, &stats).unwrap();
            assert_close(&case, "unfused dx", &st.dx, &r.backward());
        }
    }

    fn assert_close(case: &Case, what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{case} {what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn every_dtype_runs() {
        let case = Case::new(Op::LayerNorm, &[3, 8], Layout::Rows);
        let inputs = Inputs::new(&case);
        for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
            let mut copies = Interleave::new(24, dtype.size(), &Budget::SMOKE);
            let passes = case.op.passes();
            let out = run_normkit(
                &case,
                &inputs,
                dtype,
                passes,
                &Budget::SMOKE,
                &mut copies,
                Route::Fused,
            )
            .unwrap();
            assert_eq!(out.len(), 3);
            // The copies ran between the kernel's iterations, for every
            // kind of pass.
            let copied = copies.samples();
            assert_eq!(copied.len(), 2);
            assert!(copied.iter().all(|(_, s)| s.iters >= Interleave::EVERY));
        }
    }

    #[test]
    fn a_bad_shape_is_an_error_not_a_panic() {
        // BatchNorm with one value per channel: normkit rejects it.
        let case = Case::new(Op::BatchNorm, &[1, 3, 1, 1], Layout::Nchw);
        let inputs = Inputs::new(&case);
        let err = run_normkit(
            &case,
            &inputs,
            Dtype::F32,
            &[Pass::ForwardTrain],
            &Budget::SMOKE,
            &mut Interleave::new(3, 4, &Budget::SMOKE),
            Route::Fused,
        );
        assert!(err.is_err());
    }
}
