//! Fuzz cases through `normkit::op`: a random op of every family, its
//! signature, forward and backward with the element type chosen at run
//! time (now and then mismatched) and the saved state of the forward (now
//! and then another op's).

use std::sync::Arc;

use normkit::op::*;
use normkit::*;

use super::gen::{fresh, kept, numel, out, Call, Case, Gen, Out};
use super::Tally;

/// A buffer of some element type.
enum Data {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Data {
    /// Random values (`output`: sentinels) of dtype `k`.
    fn new(g: &mut Gen, k: usize, len: usize, output: bool) -> Data {
        match (k, output) {
            (0, false) => Data::F32(g.values(len)),
            (1, false) => Data::Bf16(g.values(len)),
            (_, false) => Data::F16(g.values(len)),
            (0, true) => Data::F32(fresh(len)),
            (1, true) => Data::Bf16(fresh(len)),
            (_, true) => Data::F16(fresh(len)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::Bf16(v) => v.len(),
            Data::F16(v) => v.len(),
        }
    }

    fn get(&self) -> ElemSlice<'_> {
        match self {
            Data::F32(v) => ElemSlice::F32(v),
            Data::Bf16(v) => ElemSlice::Bf16(v),
            Data::F16(v) => ElemSlice::F16(v),
        }
    }

    fn get_mut(&mut self) -> ElemSliceMut<'_> {
        match self {
            Data::F32(v) => ElemSliceMut::F32(v),
            Data::Bf16(v) => ElemSliceMut::Bf16(v),
            Data::F16(v) => ElemSliceMut::F16(v),
        }
    }

    fn out(&self, name: &'static str) -> Out {
        match self {
            Data::F32(v) => out(name, v),
            Data::Bf16(v) => out(name, v),
            Data::F16(v) => out(name, v),
        }
    }
}

/// A random op of a random family, the label it is counted under (its
/// name, or the wrapper's where the op wraps a norm), and the extra shapes
/// its errors may print.
fn random_op(g: &mut Gen, shape: &[usize]) -> (Box<dyn ErasedOp>, &'static str, Vec<Vec<usize>>) {
    let eps = g.eps();
    let axis = g.axis();
    let (weight, bias, training) = (g.rng.chance(0.6), g.rng.chance(0.6), g.rng.chance(0.6));
    let normalized = g.trailing(shape);
    let momentum = g.momentum();
    let op: Box<dyn ErasedOp> = match g.rng.between(0, 14) {
        0 => Box::new(LayerNormOp {
            normalized_shape: normalized.clone(),
            eps,
            weight,
            bias,
        }),
        1 => Box::new(RmsNormOp {
            normalized_shape: normalized.clone(),
            eps,
            weight,
        }),
        2 => Box::new(BatchNormOp {
            cfg: BatchNormConfig {
                eps,
                momentum,
                channel_axis: axis,
            },
            training,
            weight,
            bias,
        }),
        3 => Box::new(GroupNormOp {
            cfg: GroupNormConfig {
                num_groups: g.count(),
                eps,
                channel_axis: axis,
            },
            weight,
            bias,
        }),
        4 => Box::new(InstanceNormOp {
            cfg: InstanceNormConfig {
                eps,
                momentum,
                channel_axis: axis,
            },
            training,
            weight,
            bias,
        }),
        5 => Box::new(DytOp {
            channel_axis: axis,
            weight,
            bias,
        }),
        6 => Box::new(WeightNormOp {
            dim: g.rng.chance(0.8).then(|| g.rng.between(0, 8) as isize - 4),
        }),
        7 => {
            let mut style_shape = shape.to_vec();
            if let Some(last) = style_shape.last_mut() {
                *last = g.rng.between(0, 6);
            }
            let op = AdaInOp {
                cfg: AdaInConfig {
                    eps,
                    unbiased: g.rng.chance(0.5),
                    channel_axis: axis,
                },
                style_shape: style_shape.clone(),
            };
            return (Box::new(op), "adain", vec![style_shape, normalized]);
        }
        8 => Box::new(AdaNormOp {
            normalized_shape: normalized.clone(),
            eps,
            rms: g.rng.chance(0.4),
            weight,
            bias,
        }),
        9 => Box::new(SwitchNormOp {
            cfg: SwitchNormConfig {
                eps,
                momentum,
                channel_axis: axis,
            },
            training,
            weight,
            bias,
        }),
        10 => Box::new(DerfOp {
            channel_axis: axis,
            weight,
            bias,
        }),
        11 => {
            // Mostly the input's own heads and head_dim, so that the shape
            // fits; now and then any.
            let (heads, head_dim) = match shape {
                [.., h, d] if g.rng.chance(0.8) => (*h, *d),
                _ => (g.extent(), g.extent()),
            };
            let scope = g.rng.pick(&[QkScope::Head, QkScope::Projection]);
            let ns = scope.normalized_shape(heads, head_dim);
            let op: Box<dyn ErasedOp> = if g.rng.chance(0.5) {
                Box::new(RmsNormOp::qk(scope, heads, head_dim, eps))
            } else {
                Box::new(LayerNormOp::qk(scope, heads, head_dim, eps))
            };
            return (op, "qk_norm", vec![ns, normalized]);
        }
        12 => {
            let norm = RmsNormOp {
                normalized_shape: normalized.clone(),
                eps,
                weight,
            };
            let op = UnitOffsetRmsNorm { norm };
            return (Box::new(op), "unit_offset_rms_norm", vec![normalized]);
        }
        13 => {
            let layer = g.rng.pick(&[1, 1, 2, 12, 0, usize::MAX]);
            let op: Box<dyn ErasedOp> = if g.rng.chance(0.5) {
                let norm = RmsNormOp {
                    normalized_shape: normalized.clone(),
                    eps,
                    weight,
                };
                Box::new(LayerNormScaling { norm, layer })
            } else {
                let norm = LayerNormOp {
                    normalized_shape: normalized.clone(),
                    eps,
                    weight,
                    bias,
                };
                Box::new(LayerNormScaling { norm, layer })
            };
            return (op, "layer_norm_scaling", vec![normalized]);
        }
        _ => Box::new(BatchRenormOp {
            cfg: BatchRenormConfig {
                eps,
                momentum,
                channel_axis: axis,
                r_max: g.rng.pick(&[3.0, 1.0, 0.5]),
                d_max: g.rng.pick(&[5.0, 0.0, -1.0]),
            },
            training,
            weight,
            bias,
        }),
    };
    let label = op.name_erased();
    (op, label, vec![normalized])
}

/// The element type of a second buffer: usually the first's.
fn dtype_like(g: &mut Gen, k: usize) -> usize {
    if g.rng.chance(0.95) {
        k
    } else {
        g.rng.between(0, 2)
    }
}

/// A buffer for a slice of `n` values, of the type [`dtype_like`] `k`.
fn like(g: &mut Gen, k: usize, n: Option<usize>, output: bool) -> Data {
    let (k, len) = (dtype_like(g, k), g.len(n));
    Data::new(g, k, len, output)
}

pub fn any_op(g: &mut Gen, t: &mut Tally) {
    let shape = g.shape(0, 5);
    let (op, label, extra) = random_op(g, &shape);
    let name = op.name_erased();
    let sig = op.signature_erased(&shape);
    let n = numel(&shape);
    let packed = sig.as_ref().ok().map(Signature::packed_len);
    let channels = sig.as_ref().ok().and_then(|s| s.running.channels());
    let k = g.rng.between(0, 2);
    let (kx, lx) = (g.len(n), dtype_like(g, k));
    let x = Data::new(g, k, kx, false);
    let ly = g.len(n);
    let mut y = Data::new(g, lx, ly, true);
    let params = g.params_for(packed);
    let with_running = match sig.as_ref().map(|s| s.running) {
        Ok(Running::Requires { .. } | Running::Reads { .. }) => g.rng.chance(0.95),
        Ok(Running::Updates { .. }) => g.rng.chance(0.6),
        _ => g.rng.chance(0.1),
    };
    let l = g.len(channels.or(Some(2)));
    let (mut rm, mut rv) = g.running(l);
    let (rm0, rv0) = (rm.clone(), rv.clone());
    let case = Case {
        desc: format!(
            "op {label} ({name}) shape {shape:?} extra shapes {extra:?} signature {sig:?}, lengths x {} y {} params {} running {with_running} ({} {}), dtypes {k} {}",
            x.len(),
            y.len(),
            params.len(),
            rm.len(),
            rv.len(),
            matches!((&x, &y), (Data::F32(_), Data::F32(_)) | (Data::Bf16(_), Data::Bf16(_)) | (Data::F16(_), Data::F16(_)))
        ),
    };
    let same_type = |a: &Data, b: &Data| std::mem::discriminant(a) == std::mem::discriminant(b);
    let run_ok = match sig.as_ref().map(|s| s.running) {
        Ok(Running::None) => !with_running,
        Ok(Running::Updates { .. }) => {
            !with_running || (Some(rm.len()) == channels && Some(rv.len()) == channels)
        }
        Ok(_) => with_running && Some(rm.len()) == channels && Some(rv.len()) == channels,
        Err(_) => false,
    };
    let fwd_fits = Some(x.len()) == n
        && Some(y.len()) == n
        && Some(params.len()) == packed
        && same_type(&x, &y);
    let mut shapes: Vec<&[usize]> = vec![&shape];
    shapes.extend(extra.iter().map(Vec::as_slice));
    let call = Call::new(&case, name, fwd_fits && run_ok, &shapes);
    let running = with_running.then_some(RunningStats {
        mean: &mut rm,
        var: &mut rv,
    });
    let r = op.forward_erased(y.get_mut(), x.get(), &shape, &params, running);
    let keep = [
        kept("running_mean", &rm0, &rm),
        kept("running_var", &rv0, &rv),
    ];
    let ok = call.verdict(&r, &[Some(y.out("y"))], &keep);
    t.add("op", &format!("{label} forward"), ok);

    // The saved state: the forward's, or one no op saves (refused).
    let (saved, saved_ok): (ErasedSaved, bool) = match r {
        Ok(s) if g.rng.chance(0.95) => (s, true),
        _ => (Arc::new(0u8), false),
    };
    let (ky, ly) = (dtype_like(g, k), g.len(n));
    let dy = Data::new(g, ky, ly, false);
    let (kd, ld) = (dtype_like(g, k), g.len(n));
    let mut dx = Data::new(g, kd, ld, true);
    let mut dparams: Option<Vec<f32>> = g.rng.chance(0.7).then(|| {
        let l = g.len(packed);
        fresh(l)
    });
    let lens_ok = saved_ok
        && Some(x.len()) == n
        && Some(dy.len()) == n
        && Some(dx.len()) == n
        && Some(params.len()) == packed
        && dparams.as_ref().is_none_or(|d| Some(d.len()) == packed)
        && same_type(&x, &dy)
        && same_type(&x, &dx);
    let call = Call::new(&case, name, lens_ok, &shapes);
    let r = op.backward_erased(
        dx.get_mut(),
        dparams.as_deref_mut(),
        dy.get(),
        x.get(),
        &shape,
        &params,
        &saved,
    );
    let outs = [
        Some(dx.out("dx")),
        dparams.as_ref().map(|d| out("dparams", d)),
    ];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("op", &format!("{label} backward"), ok);
}

/// The residual family through `normkit::op`: [`AddNormOp`] over
/// [`ErasedResidualOp`], two inputs and two outputs of a type chosen at
/// run time (now and then mismatched), the forward's saved state (now and
/// then a foreign one).
pub fn any_residual_op(g: &mut Gen, t: &mut Tally) {
    let shape = g.shape(0, 4);
    let normalized = g.trailing(&shape);
    let norm = g.rng.pick(&[AddNorm::LayerNorm, AddNorm::RmsNorm]);
    let op = AddNormOp {
        norm,
        normalized_shape: normalized.clone(),
        eps: g.eps(),
        weight: g.rng.chance(0.6),
        // A bias on RMSNorm, now and then: refused.
        bias: g.rng.chance(if norm == AddNorm::LayerNorm {
            0.6
        } else {
            0.05
        }),
    };
    let name = op.name_erased();
    let sig = op.signature_erased(&shape);
    let n = numel(&shape);
    let packed = sig.as_ref().ok().map(Signature::packed_len);
    let k = g.rng.between(0, 2);
    let x = {
        let l = g.len(n);
        Data::new(g, k, l, false)
    };
    let residual = like(g, k, n, false);
    let mut y = like(g, k, n, true);
    let mut sum = like(g, k, n, true);
    let params = g.params_for(packed);
    let case = Case {
        desc: format!(
            "residual op {op:?} shape {shape:?} signature {sig:?}, lengths x {} residual {} y {} sum {} params {}, dtype {k}",
            x.len(),
            residual.len(),
            y.len(),
            sum.len(),
            params.len()
        ),
    };
    let same_type = |a: &Data, b: &Data| std::mem::discriminant(a) == std::mem::discriminant(b);
    let fwd_fits = [&x, &residual, &y, &sum]
        .iter()
        .all(|d| Some(d.len()) == n && same_type(d, &x))
        && sig.is_ok()
        && Some(params.len()) == packed;
    let shapes: [&[usize]; 2] = [&shape, &normalized];
    let call = Call::new(&case, name, fwd_fits, &shapes);
    let r = op.forward_erased(
        y.get_mut(),
        sum.get_mut(),
        x.get(),
        residual.get(),
        &shape,
        &params,
    );
    let ok = call.verdict(&r, &[Some(y.out("y")), Some(sum.out("sum"))], &[]);
    t.add("op", &format!("{name} forward"), ok);

    // The backward reads the forward's `sum`, or values in its place.
    let sum = if ok && g.rng.chance(0.9) {
        sum
    } else {
        like(g, k, n, false)
    };
    let (saved, saved_ok): (ErasedSaved, bool) = match r {
        Ok(s) if g.rng.chance(0.95) => (s, true),
        _ => (Arc::new(0u8), false),
    };
    let dy = like(g, k, n, false);
    let dsum = g.rng.chance(0.6).then(|| like(g, k, n, false));
    let mut dx = like(g, k, n, true);
    let mut dparams: Option<Vec<f32>> = g.rng.chance(0.7).then(|| {
        let l = g.len(packed);
        fresh(l)
    });
    let lens_ok = saved_ok
        && [&sum, &dy, &dx]
            .iter()
            .all(|d| Some(d.len()) == n && same_type(d, &sum))
        && dsum
            .as_ref()
            .is_none_or(|d| Some(d.len()) == n && same_type(d, &sum))
        && Some(params.len()) == packed
        && dparams.as_ref().is_none_or(|d| Some(d.len()) == packed);
    let call = Call::new(&case, name, lens_ok, &shapes);
    let r = op.backward_erased(
        dx.get_mut(),
        dparams.as_deref_mut(),
        dy.get(),
        dsum.as_ref().map(Data::get),
        sum.get(),
        &shape,
        &params,
        &saved,
    );
    let outs = [
        Some(dx.out("dx")),
        dparams.as_ref().map(|d| out("dparams", d)),
    ];
    let ok = call.verdict(&r, &outs, &[]);
    t.add("op", &format!("{name} backward"), ok);
}
