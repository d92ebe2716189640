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

/// A random op of a random family, with the extra shapes its errors may
/// print.
fn random_op(g: &mut Gen, shape: &[usize]) -> (Box<dyn ErasedOp>, Vec<Vec<usize>>) {
    let eps = g.eps();
    let axis = g.axis();
    let (weight, bias, training) = (g.rng.chance(0.6), g.rng.chance(0.6), g.rng.chance(0.6));
    let normalized = g.trailing(shape);
    let momentum = g.momentum();
    let op: Box<dyn ErasedOp> = match g.rng.between(0, 10) {
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
            return (Box::new(op), vec![style_shape, normalized]);
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
    (op, vec![normalized])
}

/// The element type of a second buffer: usually the first's.
fn dtype_like(g: &mut Gen, k: usize) -> usize {
    if g.rng.chance(0.95) {
        k
    } else {
        g.rng.between(0, 2)
    }
}

pub fn any_op(g: &mut Gen, t: &mut Tally) {
    let shape = g.shape(0, 5);
    let (op, extra) = random_op(g, &shape);
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
            "op {name} shape {shape:?} extra shapes {extra:?} signature {sig:?}, lengths x {} y {} params {} running {with_running} ({} {}), dtypes {k} {}",
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
    t.add("op", &format!("{name} forward"), ok);

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
    t.add("op", &format!("{name} backward"), ok);
}
