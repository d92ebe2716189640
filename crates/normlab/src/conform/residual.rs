//! The fused residual norms' cases: `add_layer_norm`, `add_rms_norm`
//! (tests/golden/FORMAT.md, "Residual add and Derf").

use super::{backward, default_eps, row_norm_args, Args, Failure, Outputs};
use crate::golden::Tensor;
use normkit::Stats;

/// The values of `t` when it is shaped like `x`, else a refusal naming
/// both shapes: the fused sum is elementwise, and so are the gradients of
/// its outputs.
fn like_x(op: &str, name: &str, t: &Tensor, x: &Tensor) -> Result<Vec<f32>, Failure> {
    if t.shape != x.shape {
        return Err(Failure::Refused(format!(
            "{op}: `{name}` has shape {:?}, expected {:?} like x",
            t.shape, x.shape
        )));
    }
    Ok(t.to_f32())
}

pub(super) fn add_norm(args: &Args, centered: bool) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let op = if centered {
        "add_layer_norm"
    } else {
        "add_rms_norm"
    };
    let residual = like_x(op, "residual", args.input("residual")?, x)?;
    let (ns, eps, p) = row_norm_args(args, op, centered, default_eps(centered))?;
    let optional = |name| {
        args.tensor(name)
            .map(|t| like_x(op, name, t, x))
            .transpose()
    };
    let (dy, dsum) = (optional("dy")?, optional("dsum")?);
    let xs = x.to_f32();
    let (mut y, mut sum) = (vec![0.0f32; xs.len()], vec![0.0f32; xs.len()]);
    let stats: Stats = if centered {
        let affine = p.affine();
        normkit::add_layer_norm_forward(
            &mut y, &mut sum, &xs, &residual, &x.shape, &ns, affine, eps,
        )?
    } else {
        let w = p.weight.as_deref();
        normkit::add_rms_norm_forward(&mut y, &mut sum, &xs, &residual, &x.shape, &ns, w, eps)?
    };
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    out.insert("sum".into(), Tensor::from_f32(&x.shape, &sum));
    // Either gradient alone is a backward: the other is zero.
    if dy.is_some() || dsum.is_some() {
        let dy = dy.unwrap_or_else(|| vec![0.0; xs.len()]);
        let dsum = dsum.as_deref();
        backward(&mut out, x, Some(&ns), &p, |grads| {
            let w = p.weight.as_deref();
            if centered {
                normkit::add_layer_norm_backward(grads, &dy, dsum, &sum, &x.shape, &ns, w, &stats)?;
            } else {
                normkit::add_rms_norm_backward(grads, &dy, dsum, &sum, &x.shape, &ns, w, &stats)?;
            }
            Ok(())
        })?;
        // One gradient for both inputs of the sum.
        let dx = out["dx"].clone();
        out.insert("dresidual".into(), dx);
    }
    Ok(out)
}
