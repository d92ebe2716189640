//! Dynamic Tanh.

use crate::elem::Elem;
use crate::error::Result;
use crate::layout::{check_affine, check_grads, check_len, numel, Affine, ChannelAxis, Geometry, Grads};
use crate::normalize::{ParamAcc, Plan, Scope};

const OP: &str = "dyt";

/// Every row of channels (channels last) or every channel plane (channels
/// first) as one "sample" of a one-group plan, so its runs visit each value
/// once with its channel.
fn plan(shape: &[usize], axis: ChannelAxis) -> Result<Plan> {
    let geo = match (axis, shape.len()) {
        (ChannelAxis::Last, 1) => Geometry {
            n: 1,
            c: shape[0],
            s: 1,
            axis,
        },
        _ => Geometry::channels(OP, shape, axis)?,
    };
    numel(OP, shape)?;
    Ok(Plan {
        geo,
        scope: Scope::PerSample { groups: 1 },
        centered: false,
    })
}

/// Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025, "Transformers without
/// Normalization"): an elementwise replacement for LayerNorm.
///
/// ```text
/// y = weight · tanh(alpha · x) + bias
/// ```
///
/// where
/// - `alpha` is one learnable scalar (the paper initializes it to 0.5);
/// - `weight`, `bias` are optional and per channel (initialized to 1, 0).
///
/// # Shapes
/// - `x`, `y`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2);
/// - `weight`, `bias`: `[C]`.
pub fn dyt_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    alpha: f32,
    affine: Affine<'_>,
    channel_axis: ChannelAxis,
) -> Result<()> {
    let p = plan(shape, channel_axis)?;
    check_len(OP, "x", x.len(), p.geo.len(), shape)?;
    check_len(OP, "y", y.len(), p.geo.len(), shape)?;
    check_affine(OP, affine, p.geo.c, shape)?;
    let w = |c: usize| affine.weight.map_or(1.0, |w| w[c] as f64);
    let b = |c: usize| affine.bias.map_or(0.0, |b| b[c] as f64);
    for k in 0..p.num_groups() {
        for run in p.runs(k) {
            for (i, (yv, &xv)) in y[run.range()].iter_mut().zip(&x[run.range()]).enumerate() {
                let c = if run.per_element { run.channel + i } else { run.channel };
                let t = (alpha as f64 * xv.to_f64()).tanh();
                *yv = T::from_f64(w(c) * t + b(c));
            }
        }
    }
    Ok(())
}

/// Backward of [`dyt_forward`]; returns `dalpha`. With `t = tanh(alpha·x)`:
///
/// ```text
/// dx      = dy · weight · (1 - t²) · alpha
/// dalpha  = Σ dy · weight · (1 - t²) · x
/// dweight = Σ dy · t        dbias = Σ dy      (per channel)
/// ```
pub fn dyt_backward<T: Elem>(
    grads: Grads<'_, T>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    alpha: f32,
    weight: Option<&[f32]>,
    channel_axis: ChannelAxis,
) -> Result<f32> {
    let p = plan(shape, channel_axis)?;
    let (len, c) = (p.geo.len(), p.geo.c);
    check_len(OP, "x", x.len(), len, shape)?;
    check_len(OP, "dy", dy.len(), len, shape)?;
    check_grads(OP, &grads, len, c, shape)?;
    check_affine(
        OP,
        Affine {
            weight,
            bias: None,
        },
        c,
        shape,
    )?;
    let w = |c: usize| weight.map_or(1.0, |w| w[c] as f64);
    let a = alpha as f64;
    let mut acc = ParamAcc::new(c, &grads);
    let mut dalpha = 0.0f64;
    for k in 0..p.num_groups() {
        for run in p.runs(k) {
            let r = run.range();
            for (i, ((dxv, &dyv), &xv)) in grads.dx[r.clone()]
                .iter_mut()
                .zip(&dy[r.clone()])
                .zip(&x[r])
                .enumerate()
            {
                let c = if run.per_element { run.channel + i } else { run.channel };
                let (xv, dyv) = (xv.to_f64(), dyv.to_f64());
                let t = (a * xv).tanh();
                let dt = dyv * w(c) * (1.0 - t * t);
                *dxv = T::from_f64(dt * a);
                dalpha += dt * xv;
                acc.add(c, dyv as f32, t as f32);
            }
        }
    }
    acc.finish(grads);
    Ok(dalpha as f32)
}
