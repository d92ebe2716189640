//! Derf's cases (tests/golden/FORMAT.md, "Residual add and Derf").

use super::{backward, scalar, Args, Failure, Outputs, Params};
use crate::golden::Tensor;
use normkit::ChannelAxis;

pub(super) fn derf(args: &Args) -> Result<Outputs, Failure> {
    let x = args.input("x")?;
    let alpha = scalar(args, "derf", "alpha")?;
    // The shift starts at zero in the paper; a case without one has none.
    let shift = match args.tensor("shift") {
        Some(_) => scalar(args, "derf", "shift")?,
        None => 0.0,
    };
    let axis = args.channel_axis(x.shape.len(), ChannelAxis::Last)?;
    let p = Params::read(args);
    let xs = x.to_f32();
    let mut y = vec![0.0f32; xs.len()];
    normkit::derf_forward(&mut y, &xs, &x.shape, alpha, shift, p.affine(), axis)?;
    let mut out = Outputs::new();
    out.insert("y".into(), Tensor::from_f32(&x.shape, &y));
    if let Some(dy) = args.tensor("dy") {
        let dy = dy.to_f32();
        let mut d = normkit::DerfScalarGrads::default();
        backward(&mut out, x, None, &p, |grads| {
            let w = p.weight.as_deref();
            d = normkit::derf_backward(grads, &dy, &xs, &x.shape, alpha, shift, w, axis)?;
            Ok(())
        })?;
        out.insert("dalpha".into(), Tensor::from_f32(&[1], &[d.dalpha]));
        out.insert("dshift".into(), Tensor::from_f32(&[1], &[d.dshift]));
    }
    Ok(out)
}
