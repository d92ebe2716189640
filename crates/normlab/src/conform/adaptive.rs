//! The adaptive ops' cases: AdaIN, modulated LayerNorm/RMSNorm, Switchable
//! Normalization, Batch Renormalization (tests/golden/FORMAT.md, "Adaptive
//! ops").

use super::{backward, row_norm_args, Args, Failure, Outputs, Params};
use crate::golden::Tensor;
use normkit::{
    AdaInConfig, Affine, BatchRenormConfig, ChannelAxis, Grads, Modulation, ModulationGrads,
    Momentum, RunningStats, SwitchGrads, SwitchNormConfig, SwitchWeights,
};

fn momentum(args: &Args) -> Result<Momentum, Failure> {
    match args.momentum()? {
        Some(m) => Ok(Momentum::Exponential(m)),
        None => Ok(Momentum::CumulativeAverage {
            num_batches_tracked: args.parse("num_batches_tracked", Some(0))?,
        }),
    }
}

fn running_outputs(out: &mut Outputs, mean: &[f32], var: &[f32]) {
    out.insert(
        "running_mean_out".into(),
        Tensor::from_f32(&[mean.len()], mean),
    );
    out.insert(
        "running_var_out".into(),
        Tensor::from_f32(&[var.len()], var),
    );
}

pub(super) fn adain(args: &Args) -> Result<Outputs, Failure> {
    let (x, style) = (args.input("x")?, args.input("style")?);
    let cfg = AdaInConfig {
        eps: args.eps(1e-5)?,
        unbiased: args.flag("unbiased", true)?,
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
    };
    let (xs, ss) = (x.to_f32(), style.to_f32());
    let mut y = vec![0.0f32; xs.len()];
    let stats = normkit::adain_forward(&mut y, &xs, &x.shape, &ss, &style.shape, &cfg)?;
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        let (mut dx, mut ds) = (vec![0.0f32; xs.len()], vec![0.0f32; ss.len()]);
        normkit::adain_backward(
            &mut dx,
            Some(&mut ds),
            &dy,
            &xs,
            &x.shape,
            &ss,
            &style.shape,
            &stats,
            &cfg,
        )?;
        out.insert("dx".into(), Tensor::from_f32(&x.shape, &dx));
        out.insert("dstyle".into(), Tensor::from_f32(&style.shape, &ds));
    }
    Ok(out)
}

pub(super) fn ada_norm(args: &Args, centered: bool) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let op = if centered {
        "ada_layer_norm"
    } else {
        "ada_rms_norm"
    };
    let (ns, eps, p) = row_norm_args(args, op, centered, 1e-5)?;
    let (scale_t, shift_t) = (args.input("scale")?, args.input("shift")?);
    let (scale, shift) = (scale_t.to_f32(), shift_t.to_f32());
    let m = Modulation {
        scale: &scale,
        shift: &shift,
    };
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let stats = if centered {
        normkit::ada_layer_norm_forward(&mut y, &xs, &x.shape, &ns, p.affine(), m, eps)?
    } else {
        let w = p.weight.as_deref();
        normkit::ada_rms_norm_forward(&mut y, &xs, &x.shape, &ns, w, m, eps)?
    };
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        let (mut dscale, mut dshift) = (vec![0.0f32; scale.len()], vec![0.0f32; shift.len()]);
        backward(&mut out, x, Some(&ns), &p, |grads: Grads<'_, f32>| {
            let dm = ModulationGrads {
                dscale: Some(&mut dscale),
                dshift: Some(&mut dshift),
            };
            if centered {
                let affine = p.affine();
                normkit::ada_layer_norm_backward(
                    grads, dm, &dy, &xs, &x.shape, &ns, affine, m, &stats,
                )?;
            } else {
                let w = p.weight.as_deref();
                normkit::ada_rms_norm_backward(grads, dm, &dy, &xs, &x.shape, &ns, w, m, &stats)?;
            }
            Ok(())
        })?;
        out.insert("dscale".into(), Tensor::from_f32(&scale_t.shape, &dscale));
        out.insert("dshift".into(), Tensor::from_f32(&shift_t.shape, &dshift));
    }
    Ok(out)
}

pub(super) fn switch_norm(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let training = args.flag("training", true)?;
    let cfg = SwitchNormConfig {
        eps: args.eps(1e-5)?,
        momentum: momentum(args)?,
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
    };
    let p = Params::read(args);
    let (mw, vw) = (
        args.input("mean_weight")?.to_f32(),
        args.input("var_weight")?.to_f32(),
    );
    let weights = SwitchWeights {
        mean_weight: &mw,
        var_weight: &vw,
    };
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let mut out = Outputs::new();
    let stats = if training {
        let (mut rm, mut rv) = (p.running_mean.clone(), p.running_var.clone());
        let running = match (rm.as_deref_mut(), rv.as_deref_mut()) {
            (Some(mean), Some(var)) => Some(RunningStats { mean, var }),
            _ => None,
        };
        let s = normkit::switch_norm_forward_train(
            &mut y,
            &xs,
            &x.shape,
            p.affine(),
            weights,
            running,
            &cfg,
        )?;
        if let (Some(rm), Some(rv)) = (rm, rv) {
            running_outputs(&mut out, &rm, &rv);
        }
        s
    } else {
        let (rm, rv) = p
            .running()
            .ok_or_else(|| Failure::Malformed("evaluation needs running statistics".into()))?;
        normkit::switch_norm_forward_eval(&mut y, &xs, &x.shape, p.affine(), weights, rm, rv, &cfg)?
    };
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        let (mut dmw, mut dvw) = (vec![0.0f32; 3], vec![0.0f32; 3]);
        backward(&mut out, x, None, &p, |grads| {
            let dweights = SwitchGrads {
                dmean_weight: Some(&mut dmw),
                dvar_weight: Some(&mut dvw),
            };
            let w = p.weight.as_deref();
            normkit::switch_norm_backward(
                grads, dweights, &dy, &xs, &x.shape, w, weights, &stats, &cfg,
            )?;
            Ok(())
        })?;
        out.insert("dmean_weight".into(), Tensor::from_f32(&[3], &dmw));
        out.insert("dvar_weight".into(), Tensor::from_f32(&[3], &dvw));
    }
    Ok(out)
}

pub(super) fn batch_renorm(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let training = args.flag("training", true)?;
    let cfg = BatchRenormConfig {
        eps: args.eps(1e-5)?,
        momentum: momentum(args)?,
        channel_axis: args.channel_axis(x.shape.len(), ChannelAxis::First)?,
        r_max: args.parse("r_max", Some(3.0))?,
        d_max: args.parse("d_max", Some(5.0))?,
    };
    let p = Params::read(args);
    let (rm, rv) = p
        .running()
        .ok_or_else(|| Failure::Malformed("batch_renorm needs running statistics".into()))?;
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    let mut out = Outputs::new();
    let affine: Affine<'_> = p.affine();
    if training {
        let (mut m, mut v) = (rm.to_vec(), rv.to_vec());
        let running = RunningStats {
            mean: &mut m,
            var: &mut v,
        };
        let stats =
            normkit::batch_renorm_forward_train(&mut y, &xs, &x.shape, affine, running, &cfg)?;
        running_outputs(&mut out, &m, &v);
        out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
        if let Some(dy) = args.tensor("dy") {
            let dy = dy.to_f32();
            backward(&mut out, x, None, &p, |grads| {
                let w = p.weight.as_deref();
                normkit::batch_renorm_backward_train(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
                Ok(())
            })?;
        }
    } else {
        let stats =
            normkit::batch_renorm_forward_eval(&mut y, &xs, &x.shape, affine, rm, rv, &cfg)?;
        out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
        if let Some(dy) = args.tensor("dy") {
            let dy = dy.to_f32();
            backward(&mut out, x, None, &p, |grads| {
                let w = p.weight.as_deref();
                normkit::batch_renorm_backward_eval(grads, &dy, &xs, &x.shape, w, &stats, &cfg)?;
                Ok(())
            })?;
        }
    }
    Ok(out)
}
