//! Weight Normalization.

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::RunningStats;
use crate::layout::{check_len, numel, Affine, ChannelAxis, Geometry, Stats};
use crate::normalize::{Plan, Scope};
use crate::op::{checked_signature, NormOp, OpGrads, Param, Running, Signature};

const OP: &str = "weight_norm";

/// Norms between these have an inverse that is a normal `f32` with room
/// to spare (`2⁻¹²⁰` and `2¹²⁰`).
const SMALL: f64 = 7.523_163_845_262_64e-37;
const LARGE: f64 = 1.329_227_995_784_916e36;

/// `‖v‖` of group `j` in `f64`, for a saved norm that `f32` could not hold
/// (overflowed to infinity, or subnormal and imprecise).
fn exact_norm<T: Elem>(p: &Plan, v: &[T], j: usize) -> f64 {
    p.runs(j)
        .flat_map(|r| v[r.range()].iter())
        .map(|x| x.to_f64() * x.to_f64())
        .sum::<f64>()
        .sqrt()
}

/// `v` as `[outer, kept, inner]` around the kept dimension, one norm per
/// index of it; or a single norm over everything when `dim` is `None`.
fn plan(shape: &[usize], dim: Option<isize>) -> Result<Plan> {
    let total = numel(OP, shape)?;
    if total == 0 {
        return Err(NormError::Empty {
            op: OP,
            shape: shape.to_vec(),
        });
    }
    let (n, c, s) = match dim {
        None => (1, 1, total),
        Some(d) => {
            let rank = shape.len() as isize;
            let k = if d < 0 { d + rank } else { d };
            if k < 0 || k >= rank {
                return Err(NormError::Dim {
                    op: OP,
                    dim: d,
                    shape: shape.to_vec(),
                });
            }
            let k = k as usize;
            (
                shape[..k].iter().product(),
                shape[k],
                shape[k + 1..].iter().product(),
            )
        }
    };
    Ok(Plan {
        geo: Geometry {
            n,
            c,
            s,
            axis: ChannelAxis::First,
        },
        scope: Scope::AcrossBatch,
        centered: false,
    })
}

/// Weight Normalization (Salimans & Kingma, 2016, "Weight Normalization: A
/// Simple Reparameterization to Accelerate Training of Deep Neural
/// Networks").
///
/// ```text
/// w = g · v / ‖v‖
/// ```
///
/// where
/// - `‖v‖` is the Euclidean norm over every dimension but `dim`, one per
///   index along `dim` (PyTorch's default `dim=0`: one per output unit), or
///   over the whole tensor when `dim` is `None`;
/// - `dim` may be negative, counting from the end.
///
/// # Shapes
/// - `v`, `w`: any shape with at least one element;
/// - `g`: one value per index along `dim` (PyTorch stores it as `v`'s shape
///   with ones elsewhere), or one value when `dim` is `None`;
/// - returns the norms, one per `g` value, which backward takes.
pub fn weight_norm_forward<T: Elem>(
    w: &mut [T],
    v: &[T],
    shape: &[usize],
    g: &[f32],
    dim: Option<isize>,
) -> Result<Vec<f32>> {
    let p = plan(shape, dim)?;
    check_len(OP, "v", v.len(), p.geo.len(), shape)?;
    check_len(OP, "w", w.len(), p.geo.len(), shape)?;
    check_len(OP, "g", g.len(), p.geo.c, shape)?;
    // The norms are the engine's uncentered statistics (mean squares).
    let norms: Vec<f64> = p
        .moments(v)
        .iter()
        .map(|m| (m.var * m.count as f64).sqrt())
        .collect();
    // w = v · (1 / ‖v‖) · g: normalization with an uncentered statistic.
    let stats = Stats {
        mean: Vec::new(),
        rstd: norms.iter().map(|&nrm| (1.0 / nrm) as f32).collect(),
    };
    p.forward_with_stats(
        w,
        v,
        Affine {
            weight: Some(g),
            bias: None,
        },
        &stats,
    );
    // A norm whose inverse `f32` cannot hold well (norms of values near
    // `f32::MAX`, or of subnormal ones): `w` again in `f64`.
    for (j, &nrm) in norms.iter().enumerate() {
        if !(SMALL..=LARGE).contains(&nrm) && nrm.is_finite() {
            let a = g[j] as f64 / nrm;
            for r in p.runs(j) {
                for (o, x) in w[r.range()].iter_mut().zip(&v[r.range()]) {
                    *o = T::from_f64(x.to_f64() * a);
                }
            }
        }
    }
    Ok(norms.into_iter().map(|n| n as f32).collect())
}

/// Backward of [`weight_norm_forward`], with `v̂ = v / ‖v‖`:
///
/// ```text
/// dg = Σ dw · v̂
/// dv = g / ‖v‖ · (dw - v̂ · dg)
/// ```
#[allow(clippy::too_many_arguments)]
pub fn weight_norm_backward<T: Elem>(
    dv: &mut [T],
    dg: &mut [f32],
    dw: &[T],
    v: &[T],
    shape: &[usize],
    g: &[f32],
    dim: Option<isize>,
    norms: &[f32],
) -> Result<()> {
    let p = plan(shape, dim)?;
    let (len, k) = (p.geo.len(), p.geo.c);
    check_len(OP, "v", v.len(), len, shape)?;
    check_len(OP, "dw", dw.len(), len, shape)?;
    check_len(OP, "dv", dv.len(), len, shape)?;
    check_len(OP, "g", g.len(), k, shape)?;
    check_len(OP, "dg", dg.len(), k, shape)?;
    check_len(OP, "norms", norms.len(), k, shape)?;
    for (j, (dgj, (&gj, &nj))) in dg.iter_mut().zip(g.iter().zip(norms)).enumerate() {
        // A norm f32 could not hold is recomputed (NaN stays NaN).
        let nrm = if nj.is_normal() || nj.is_nan() {
            nj as f64
        } else {
            exact_norm(&p, v, j)
        };
        let inv = 1.0 / nrm;
        let sum: f64 = p
            .runs(j)
            .flat_map(|r| dw[r.range()].iter().zip(&v[r.range()]))
            .map(|(&d, &x)| d.to_f64() * x.to_f64() * inv)
            .sum();
        *dgj = sum as f32;
        // In f64 throughout: g / ‖v‖ and v / ‖v‖ may leave f32's range
        // where dv does not.
        let scale = gj as f64 * inv;
        for r in p.runs(j) {
            for ((o, &d), &x) in dv[r.range()]
                .iter_mut()
                .zip(&dw[r.range()])
                .zip(&v[r.range()])
            {
                *o = T::from_f64(scale * (d.to_f64() - x.to_f64() * inv * sum));
            }
        }
    }
    Ok(())
}

/// [`weight_norm_forward`] and [`weight_norm_backward`] as a [`NormOp`]
/// over `v` (the op's input) with the packed parameter `g`: PyTorch's
/// `weight_norm(module, name, dim)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightNormOp {
    /// The kept dimension (PyTorch's default `0`), or `None` for one norm.
    pub dim: Option<isize>,
}

impl NormOp for WeightNormOp {
    /// The norms `‖v‖`, one per `g` value.
    type Saved = Vec<f32>;

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = plan(shape, self.dim)?;
        checked_signature(
            self.name(),
            shape,
            vec![Param {
                name: "g",
                len: p.geo.c,
            }],
            Running::None,
        )
    }

    fn run_forward<T: Elem>(
        &self,
        _sig: &Signature,
        w: &mut [T],
        v: &[T],
        shape: &[usize],
        g: &[f32],
        _running: Option<RunningStats<'_>>,
    ) -> Result<Vec<f32>> {
        weight_norm_forward(w, v, shape, g, self.dim)
    }

    fn run_backward<T: Elem>(
        &self,
        _sig: &Signature,
        grads: OpGrads<'_, T>,
        dw: &[T],
        v: &[T],
        shape: &[usize],
        g: &[f32],
        norms: &Vec<f32>,
    ) -> Result<()> {
        let mut scratch = Vec::new();
        let dg = match grads.dparams {
            Some(dg) => dg,
            None => {
                scratch.resize(g.len(), 0.0);
                &mut scratch[..]
            }
        };
        weight_norm_backward(grads.dx, dg, dw, v, shape, g, self.dim, norms)
    }
}
