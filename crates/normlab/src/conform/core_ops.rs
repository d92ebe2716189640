//! The core ops' cases (001–036 and their hidden kin): BatchNorm,
//! LayerNorm, RMSNorm, GroupNorm, InstanceNorm, WeightNorm, DyT
//! (tests/golden/FORMAT.md).

use super::args::{check_param_shape, scalar, Args};
use super::{Failure, Outputs};
use crate::golden::Tensor;
use normkit::{
    Affine, BatchNormConfig, ChannelAxis, Grads, GroupNormConfig, InstanceNormConfig, Momentum,
    RunningStats, Stats,
};

/// Per-channel parameters and the running statistics of a case.
pub(super) struct Params {
    pub(super) weight: Option<Vec<f32>>,
    pub(super) bias: Option<Vec<f32>>,
    pub(super) running_mean: Option<Vec<f32>>,
    pub(super) running_var: Option<Vec<f32>>,
}

impl Params {
    pub(super) fn read(args: &Args) -> Self {
        Params {
            weight: args.vec("weight"),
            bias: args.vec("bias"),
            running_mean: args.vec("running_mean"),
            running_var: args.vec("running_var"),
        }
    }

    pub(super) fn affine(&self) -> Affine<'_> {
        Affine {
            weight: self.weight.as_deref(),
            bias: self.bias.as_deref(),
        }
    }

    pub(super) fn running(&self) -> Option<(&[f32], &[f32])> {
        Some((self.running_mean.as_deref()?, self.running_var.as_deref()?))
    }
}

/// Runs a backward pass into fresh buffers and files dx/dweight/dbias.
pub(super) fn backward(
    out: &mut Outputs,
    x: &Tensor,
    weight_shape: Option<&[usize]>,
    params: &Params,
    run: impl FnOnce(Grads<'_, f32>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut dx = vec![0.0f32; x.numel()];
    let channels = params
        .weight
        .as_ref()
        .or(params.bias.as_ref())
        .map_or(0, Vec::len);
    let mut dweight = params.weight.as_ref().map(|_| vec![0.0f32; channels]);
    let mut dbias = params.bias.as_ref().map(|_| vec![0.0f32; channels]);
    run(Grads {
        dx: &mut dx,
        dweight: dweight.as_deref_mut(),
        dbias: dbias.as_deref_mut(),
    })?;
    let pshape = weight_shape.map_or_else(|| vec![channels], <[usize]>::to_vec);
    out.insert("dx".into(), Tensor::from_f32(&x.shape, &dx));
    if let Some(d) = dweight {
        out.insert("dweight".into(), Tensor::from_f32(&pshape, &d));
    }
    if let Some(d) = dbias {
        out.insert("dbias".into(), Tensor::from_f32(&pshape, &d));
    }
    Ok(())
}

pub(super) fn batch_norm(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let training = args.flag("training", true)?;
    let nbt: u64 = args.parse("num_batches_tracked", Some(0))?;
    let cfg = BatchNormConfig {
        eps: args.eps(1e-5)?,
        momentum: match args.momentum()? {
            Some(m) => Momentum::Exponential(m),
            None => Momentum::CumulativeAverage {
                num_batches_tracked: nbt,
            },
        },
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
    };
    let mut p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let mut out = Outputs::new();
    // Without running statistics PyTorch normalizes with the batch's own,
    // in evaluation mode too.
    let stats = match (training, p.running()) {
        (false, Some((rm, rv))) => {
            let s =
                normkit::batch_norm_forward_eval(&mut y, &xs, &x.shape, p.affine(), rm, rv, &cfg)?;
            Some(s)
        }
        _ => None,
    };
    let stats = match stats {
        Some(s) => s,
        None => {
            let (mut rm, mut rv) = (p.running_mean.clone(), p.running_var.clone());
            let running = match (training, rm.as_deref_mut(), rv.as_deref_mut()) {
                (true, Some(mean), Some(var)) => Some(RunningStats { mean, var }),
                _ => None,
            };
            let s = normkit::batch_norm_forward_train(
                &mut y,
                &xs,
                &x.shape,
                p.affine(),
                running,
                &cfg,
            )?;
            if training {
                if let (Some(rm), Some(rv)) = (rm, rv) {
                    out.insert(
                        "running_mean_out".into(),
                        Tensor::from_f32(&[rm.len()], &rm),
                    );
                    out.insert("running_var_out".into(), Tensor::from_f32(&[rv.len()], &rv));
                }
            }
            // Marks the statistics as the batch's own for backward.
            p.running_mean = None;
            s
        }
    };
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        let eval = !training && p.running().is_some();
        backward(&mut out, x, None, &p, |grads| {
            let w = p.weight.as_deref();
            if eval {
                normkit::batch_norm_backward_eval(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
            } else {
                normkit::batch_norm_backward_train(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// What every row norm reads: `normalized_shape`, `eps` (`default_eps`
/// when absent) and the parameters, shaped like `normalized_shape`; `op`
/// refuses a bias unless it centers.
pub(super) fn row_norm_args(
    args: &Args,
    op: &str,
    centered: bool,
    default_eps: f32,
) -> Result<(Vec<usize>, f32, Params), Failure> {
    let ns = args.int_list("normalized_shape")?;
    let eps = args.eps(default_eps)?;
    let p = Params::read(args);
    check_param_shape(args, "weight", &ns)?;
    check_param_shape(args, "bias", &ns)?;
    if !centered && p.bias.is_some() {
        return Err(Failure::Refused(format!("{op} has no bias")));
    }
    Ok((ns, eps, p))
}

/// PyTorch's default eps: `1e-5` for LayerNorm; RMSNorm's is the dtype's
/// machine epsilon.
pub(super) fn default_eps(centered: bool) -> f32 {
    if centered {
        1e-5
    } else {
        f32::EPSILON
    }
}

pub(super) fn layer_norm(args: &Args, centered: bool) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let op = if centered { "layer_norm" } else { "rms_norm" };
    let (ns, eps, p) = row_norm_args(args, op, centered, default_eps(centered))?;
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let stats: Stats = if centered {
        normkit::layer_norm_forward(&mut y, &xs, &x.shape, &ns, p.affine(), eps)?
    } else {
        normkit::rms_norm_forward(&mut y, &xs, &x.shape, &ns, p.weight.as_deref(), eps)?
    };
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        backward(&mut out, x, Some(&ns), &p, |grads| {
            let w = p.weight.as_deref();
            if centered {
                normkit::layer_norm_backward(grads, &dy, &xs, &x.shape, &ns, w, &stats)?;
            } else {
                normkit::rms_norm_backward(grads, &dy, &xs, &x.shape, &ns, w, &stats)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

pub(super) fn group_norm(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let cfg = GroupNormConfig {
        num_groups: args.parse("num_groups", None)?,
        eps: args.eps(1e-5)?,
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
    };
    let p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let stats = normkit::group_norm_forward(&mut y, &xs, &x.shape, p.affine(), &cfg)?;
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        backward(&mut out, x, None, &p, |grads| {
            normkit::group_norm_backward(
                grads,
                &dy,
                &xs,
                &x.shape,
                p.weight.as_deref(),
                &stats,
                &cfg,
            )?;
            Ok(())
        })?;
    }
    Ok(out)
}

pub(super) fn instance_norm(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let training = args.flag("training", true)?;
    let track = args.flag("track_running_stats", false)?;
    // PyTorch's InstanceNorm passes momentum=None on as 0.0: no update.
    let cfg = InstanceNormConfig {
        eps: args.eps(1e-5)?,
        momentum: Momentum::Exponential(args.momentum()?.unwrap_or(0.0)),
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
    };
    let p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let mut out = Outputs::new();
    let use_input_stats = training || !track;
    let stats = if use_input_stats {
        let (mut rm, mut rv) = (p.running_mean.clone(), p.running_var.clone());
        let running = match (training && track, rm.as_deref_mut(), rv.as_deref_mut()) {
            (true, Some(mean), Some(var)) => Some(RunningStats { mean, var }),
            _ => None,
        };
        let s =
            normkit::instance_norm_forward_train(&mut y, &xs, &x.shape, p.affine(), running, &cfg)?;
        if training && track {
            if let (Some(rm), Some(rv)) = (rm, rv) {
                out.insert(
                    "running_mean_out".into(),
                    Tensor::from_f32(&[rm.len()], &rm),
                );
                out.insert("running_var_out".into(), Tensor::from_f32(&[rv.len()], &rv));
            }
        }
        s
    } else {
        let (rm, rv) = p.running().ok_or_else(|| {
            Failure::Refused("evaluation with track_running_stats needs running stats".into())
        })?;
        normkit::instance_norm_forward_eval(&mut y, &xs, &x.shape, p.affine(), rm, rv, &cfg)?
    };
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        backward(&mut out, x, None, &p, |grads| {
            let w = p.weight.as_deref();
            if use_input_stats {
                normkit::instance_norm_backward_train(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
            } else {
                normkit::instance_norm_backward_eval(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

pub(super) fn weight_norm(args: &Args) -> Result<Outputs, Failure> {
    let v = args.input("v")?;
    let g = args.input("g")?;
    let dim: Option<isize> = match args.meta("dim").map(str::trim) {
        None => Some(0),
        Some(d) if d.eq_ignore_ascii_case("none") => None,
        Some(_) => Some(args.parse("dim", None)?),
    };
    let (vs, gs) = (v.to_f32(), g.to_f32());
    let mut w = vec![0.0f32; vs.len()];
    let norms = normkit::weight_norm_forward(&mut w, &vs, &v.shape, &gs, dim)?;
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&v.shape, &w));
    if let Some(dw) = args.tensor("dy") {
        let dw = dw.to_f32();
        let (mut dv, mut dg) = (vec![0.0f32; vs.len()], vec![0.0f32; gs.len()]);
        normkit::weight_norm_backward(&mut dv, &mut dg, &dw, &vs, &v.shape, &gs, dim, &norms)?;
        out.insert("dv".into(), Tensor::from_f32(&v.shape, &dv));
        out.insert("dg".into(), Tensor::from_f32(&g.shape, &dg));
    }
    Ok(out)
}

pub(super) fn dyt(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let alpha = scalar(args, "dyt", "alpha")?;
    let axis = args.channel_axis(x.shape.len(), ChannelAxis::Last)?;
    let p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    normkit::dyt_forward(&mut y, &xs, &x.shape, alpha, p.affine(), axis)?;
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        let mut dalpha = 0.0f32;
        backward(&mut out, x, None, &p, |grads| {
            dalpha =
                normkit::dyt_backward(grads, &dy, &xs, &x.shape, alpha, p.weight.as_deref(), axis)?;
            Ok(())
        })?;
        out.insert("dalpha".into(), Tensor::from_f32(&[1], &[dalpha]));
    }
    Ok(out)
}
