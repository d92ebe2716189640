//! Modulated LayerNorm and RMSNorm (adaLN, FiLM): normalization whose
//! affine transform comes per sample from a conditioning signal.

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::RunningStats;
use crate::layout::{
    check_eps, check_len, numel, product, Affine, ChannelAxis, Geometry, Grads, Stats,
};
use crate::normalize::{Plan, Scope};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Param, Running,
    Signature,
};
use crate::parallel::{map_chunks, SharedMut};

/// Per-sample modulation `y = norm(x) · (1 + scale) + shift`.
#[derive(Debug, Clone, Copy)]
pub struct Modulation<'a> {
    /// `[N, D]`: one row per sample, `D` the normalized size.
    pub scale: &'a [f32],
    /// `[N, D]`.
    pub shift: &'a [f32],
}

/// Gradient outputs for the modulation, written when present.
#[derive(Debug, Default)]
pub struct ModulationGrads<'a> {
    pub dscale: Option<&'a mut [f32]>,
    pub dshift: Option<&'a mut [f32]>,
}

/// Modulated Layer Normalization: adaLN (Peebles & Xie, 2023, "Scalable
/// Diffusion Models with Transformers") and FiLM (Perez et al., 2018) on a
/// LayerNorm.
///
/// ```text
/// y = LN(x) · (1 + scale[n]) + shift[n]
/// LN(x) = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - `LN` is [`crate::layer_norm_forward`]'s LayerNorm over the trailing
///   `normalized_shape` dimensions (size `D`), with optional `weight`,
///   `bias` (DiT uses none);
/// - `n` is the sample (first dimension) the row belongs to: `scale` and
///   `shift` are per sample and per normalized element, typically a linear
///   map of a conditioning vector;
/// - the `1 +` makes a zero modulation the identity, so the layers can start
///   from adaLN-Zero's zero-initialized modulation.
///
/// DiT's gate multiplies a residual branch's output, not the norm's, and is
/// left to the layers.
///
/// Each sample is LayerNorm with the affine transform
/// `weight · (1 + scale[n])`, `bias · (1 + scale[n]) + shift[n]`; the kernels
/// run exactly that, forward and backward, one pass per sample.
///
/// # Shapes
/// - `x`, `y`: `[N, *, *normalized_shape]`, at least one dimension before
///   `normalized_shape`;
/// - `scale`, `shift`: `[N, D]`, `D` = the product of `normalized_shape`;
/// - `weight`, `bias`: `normalized_shape`;
/// - returned [`Stats`]: one mean and rstd per row, as LayerNorm's.
pub fn ada_layer_norm_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    affine: Affine<'_>,
    modulation: Modulation<'_>,
    eps: f32,
) -> Result<Stats> {
    const OP: &str = "ada_layer_norm";
    let p = Samples::new(OP, shape, normalized_shape, eps, true)?;
    p.check_forward(OP, y, x, affine, modulation, shape)?;
    Ok(p.forward(y, x, affine, modulation, eps))
}

/// Backward of [`ada_layer_norm_forward`]: gradients of `sum(y · dy)`.
#[allow(clippy::too_many_arguments)]
pub fn ada_layer_norm_backward<T: Elem>(
    grads: Grads<'_, T>,
    dmodulation: ModulationGrads<'_>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    affine: Affine<'_>,
    modulation: Modulation<'_>,
    stats: &Stats,
) -> Result<()> {
    const OP: &str = "ada_layer_norm";
    let p = Samples::new(OP, shape, normalized_shape, 0.0, true)?;
    p.check_backward(
        OP,
        &grads,
        &dmodulation,
        dy,
        x,
        affine,
        modulation,
        stats,
        shape,
    )?;
    p.backward(grads, dmodulation, dy, x, affine, modulation, stats);
    Ok(())
}

/// Modulated RMSNorm: [`ada_layer_norm_forward`] with RMSNorm as the norm.
///
/// ```text
/// y = x / sqrt(mean(x²) + eps) · weight · (1 + scale[n]) + shift[n]
/// ```
///
/// # Shapes
/// As [`ada_layer_norm_forward`]; `weight` is optional and there is no
/// bias. Returned [`Stats`]: `rstd` per row, `mean` empty.
pub fn ada_rms_norm_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    modulation: Modulation<'_>,
    eps: f32,
) -> Result<Stats> {
    const OP: &str = "ada_rms_norm";
    let p = Samples::new(OP, shape, normalized_shape, eps, false)?;
    let affine = Affine { weight, bias: None };
    p.check_forward(OP, y, x, affine, modulation, shape)?;
    Ok(p.forward(y, x, affine, modulation, eps))
}

/// Backward of [`ada_rms_norm_forward`]. `grads.dbias` must be `None`.
#[allow(clippy::too_many_arguments)]
pub fn ada_rms_norm_backward<T: Elem>(
    grads: Grads<'_, T>,
    dmodulation: ModulationGrads<'_>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    normalized_shape: &[usize],
    weight: Option<&[f32]>,
    modulation: Modulation<'_>,
    stats: &Stats,
) -> Result<()> {
    const OP: &str = "ada_rms_norm";
    let p = Samples::new(OP, shape, normalized_shape, 0.0, false)?;
    if grads.dbias.is_some() {
        return Err(NormError::NoSuchParameter {
            op: OP,
            name: "dbias",
        });
    }
    let affine = Affine { weight, bias: None };
    p.check_backward(
        OP,
        &grads,
        &dmodulation,
        dy,
        x,
        affine,
        modulation,
        stats,
        shape,
    )?;
    p.backward(grads, dmodulation, dy, x, affine, modulation, stats);
    Ok(())
}

/// `n` samples of `rows` rows of `d` values, each sample a LayerNorm (or
/// RMSNorm) plan of its own.
struct Samples {
    n: usize,
    rows: usize,
    d: usize,
    /// `n · d`, the length of `scale` and `shift` (checked).
    nd: usize,
    centered: bool,
}

impl Samples {
    fn new(
        op: &'static str,
        shape: &[usize],
        normalized_shape: &[usize],
        eps: f32,
        centered: bool,
    ) -> Result<Samples> {
        check_eps(op, eps)?;
        let total = numel(op, shape)?;
        if normalized_shape.is_empty()
            || normalized_shape.len() >= shape.len()
            || !shape.ends_with(normalized_shape)
        {
            // The modulation is per sample: a dimension must precede the
            // normalized ones.
            return Err(NormError::NormalizedShape {
                op,
                shape: shape.to_vec(),
                normalized_shape: normalized_shape.to_vec(),
            });
        }
        let d = numel(op, normalized_shape)?;
        if d == 0 {
            return Err(NormError::Empty {
                op,
                shape: shape.to_vec(),
            });
        }
        let n = shape[0];
        let rows = (total / d).checked_div(n).unwrap_or(0);
        // The modulation's length, even when `x` is empty.
        let nd = product(op, &[n, d], shape)?;
        Ok(Samples {
            n,
            rows,
            d,
            nd,
            centered,
        })
    }

    /// The LayerNorm plan of one sample.
    fn plan(&self) -> Plan {
        Plan {
            geo: Geometry {
                n: self.rows,
                c: self.d,
                s: 1,
                axis: ChannelAxis::Last,
            },
            scope: Scope::PerSample { groups: 1 },
            centered: self.centered,
        }
    }

    fn check_forward<T>(
        &self,
        op: &'static str,
        y: &[T],
        x: &[T],
        affine: Affine<'_>,
        modulation: Modulation<'_>,
        shape: &[usize],
    ) -> Result<()> {
        let len = self.rows * self.nd;
        check_len(op, "x", x.len(), len, shape)?;
        check_len(op, "y", y.len(), len, shape)?;
        check_len(op, "scale", modulation.scale.len(), self.nd, shape)?;
        check_len(op, "shift", modulation.shift.len(), self.nd, shape)?;
        crate::layout::check_affine(op, affine, self.d, shape)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_backward<T>(
        &self,
        op: &'static str,
        grads: &Grads<'_, T>,
        dmodulation: &ModulationGrads<'_>,
        dy: &[T],
        x: &[T],
        affine: Affine<'_>,
        modulation: Modulation<'_>,
        stats: &Stats,
        shape: &[usize],
    ) -> Result<()> {
        self.check_forward(op, dy, x, affine, modulation, shape)?;
        crate::layout::check_grads(op, grads, x.len(), self.d, shape)?;
        let nd = self.nd;
        crate::layout::check_opt_len(op, "dscale", dmodulation.dscale.as_deref(), nd, shape)?;
        crate::layout::check_opt_len(op, "dshift", dmodulation.dshift.as_deref(), nd, shape)?;
        let rows = x.len() / self.d;
        if self.centered {
            check_len(op, "mean", stats.mean.len(), rows, shape)?;
        }
        check_len(op, "rstd", stats.rstd.len(), rows, shape)
    }

    /// Sample `k`'s affine transform: `weight · (1 + scale)` and
    /// `bias · (1 + scale) + shift`.
    fn affine_of(&self, k: usize, affine: Affine<'_>, m: Modulation<'_>) -> (Vec<f32>, Vec<f32>) {
        let at = k * self.d..(k + 1) * self.d;
        let (scale, shift) = (&m.scale[at.clone()], &m.shift[at]);
        let mut weight = Vec::with_capacity(self.d);
        let mut bias = Vec::with_capacity(self.d);
        for j in 0..self.d {
            let gain = 1.0 + scale[j];
            weight.push(affine.weight.map_or(1.0, |w| w[j]) * gain);
            bias.push(affine.bias.map_or(0.0, |b| b[j]) * gain + shift[j]);
        }
        (weight, bias)
    }

    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        affine: Affine<'_>,
        modulation: Modulation<'_>,
        eps: f32,
    ) -> Stats {
        if x.is_empty() {
            // No rows, however many samples: nothing to walk.
            return Stats::default();
        }
        let len = self.rows * self.d;
        let plan = self.plan();
        let y = SharedMut::new(y);
        // Samples are independent; each one's own chunking is fixed by its
        // shape, so the result does not depend on the thread count.
        let per_sample = map_chunks(self.n, self.n * len, |k| {
            let (weight, bias) = self.affine_of(k, affine, modulation);
            // SAFETY: sample k alone writes its range of y.
            let yk = unsafe { y.range(k * len..(k + 1) * len) };
            let xk = &x[k * len..(k + 1) * len];
            plan.forward_train(yk, xk, Affine::new(&weight, &bias), eps)
                .0
        });
        let mut stats = Stats::default();
        for s in per_sample {
            stats.mean.extend(s.mean);
            stats.rstd.extend(s.rstd);
        }
        stats
    }

    #[allow(clippy::too_many_arguments)]
    fn backward<T: Elem>(
        &self,
        grads: Grads<'_, T>,
        dmodulation: ModulationGrads<'_>,
        dy: &[T],
        x: &[T],
        affine: Affine<'_>,
        modulation: Modulation<'_>,
        stats: &Stats,
    ) {
        if x.is_empty() {
            // Every parameter gradient is an empty sum.
            let outs = [
                grads.dweight,
                grads.dbias,
                dmodulation.dscale,
                dmodulation.dshift,
            ];
            for out in outs.into_iter().flatten() {
                out.fill(0.0);
            }
            return;
        }
        let (len, d, rows) = (self.rows * self.d, self.d, self.rows);
        let plan = self.plan();
        let dx = SharedMut::new(grads.dx);
        // Per sample: the gradients of its effective weight and bias.
        let per_sample = map_chunks(self.n, self.n * len, |k| {
            let (weight, _) = self.affine_of(k, affine, modulation);
            let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
            // SAFETY: sample k alone writes its range of dx.
            let dxk = unsafe { dx.range(k * len..(k + 1) * len) };
            let inner = Grads {
                dx: dxk,
                dweight: Some(&mut dw),
                dbias: Some(&mut db),
            };
            let sample_stats = Stats {
                mean: if self.centered {
                    stats.mean[k * rows..(k + 1) * rows].to_vec()
                } else {
                    Vec::new()
                },
                rstd: stats.rstd[k * rows..(k + 1) * rows].to_vec(),
            };
            let range = k * len..(k + 1) * len;
            plan.backward_train(
                inner,
                &dy[range.clone()],
                &x[range],
                Some(&weight),
                &sample_stats,
            );
            (dw, db)
        });
        // The chain rule through weight · (1 + scale) and
        // bias · (1 + scale) + shift, summed over samples in order.
        let (mut dweight, mut dbias) = (vec![0.0f64; d], vec![0.0f64; d]);
        let ModulationGrads {
            mut dscale,
            mut dshift,
        } = dmodulation;
        for (k, (dw, db)) in per_sample.iter().enumerate() {
            let at = k * d;
            for j in 0..d {
                let gain = 1.0 + modulation.scale[at + j] as f64;
                dweight[j] += dw[j] as f64 * gain;
                dbias[j] += db[j] as f64 * gain;
                if let Some(ds) = dscale.as_deref_mut() {
                    let w = affine.weight.map_or(1.0, |w| w[j]) as f64;
                    let b = affine.bias.map_or(0.0, |b| b[j]) as f64;
                    ds[at + j] = (dw[j] as f64 * w + db[j] as f64 * b) as f32;
                }
                if let Some(dt) = dshift.as_deref_mut() {
                    dt[at + j] = db[j];
                }
            }
        }
        for (out, acc) in [(grads.dweight, dweight), (grads.dbias, dbias)] {
            if let Some(out) = out {
                for (o, a) in out.iter_mut().zip(acc) {
                    *o = a as f32;
                }
            }
        }
    }
}

/// The modulated LayerNorm (`rms: false`) and RMSNorm (`rms: true`) as a
/// [`NormOp`]. The packed parameters are the norm's own `weight`? and
/// `bias`? (LayerNorm only), then the per-sample `scale` and `shift`
/// (`[N, D]` each), so the modulation's gradients come back with theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaNormOp {
    pub normalized_shape: Vec<usize>,
    pub eps: f32,
    pub rms: bool,
    pub weight: bool,
    pub bias: bool,
}

impl NormOp for AdaNormOp {
    type Saved = Stats;

    fn name(&self) -> &'static str {
        if self.rms {
            "ada_rms_norm"
        } else {
            "ada_layer_norm"
        }
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let op = self.name();
        let s = Samples::new(op, shape, &self.normalized_shape, self.eps, !self.rms)?;
        let nd = s.n.checked_mul(s.d).ok_or_else(|| NormError::TooLarge {
            op,
            shape: shape.to_vec(),
        })?;
        let mut params = affine_params(self.weight, self.bias && !self.rms, s.d);
        params.push(Param {
            name: "scale",
            len: nd,
        });
        params.push(Param {
            name: "shift",
            len: nd,
        });
        checked_signature(self.name(), shape, params, Running::None)
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _running: Option<RunningStats<'_>>,
    ) -> Result<Stats> {
        let affine = affine_of(sig, params);
        let modulation = modulation_of(sig, params);
        let ns = &self.normalized_shape;
        if self.rms {
            ada_rms_norm_forward(y, x, shape, ns, affine.weight, modulation, self.eps)
        } else {
            ada_layer_norm_forward(y, x, shape, ns, affine, modulation, self.eps)
        }
    }

    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> Result<()> {
        let affine = affine_of(sig, params);
        let modulation = modulation_of(sig, params);
        let (grads, rest) = affine_grads(sig, grads);
        let mut dmod = ModulationGrads::default();
        for (name, slot) in rest {
            match name {
                "scale" => dmod.dscale = Some(slot),
                _ => dmod.dshift = Some(slot),
            }
        }
        let ns = &self.normalized_shape;
        if self.rms {
            let w = affine.weight;
            ada_rms_norm_backward(grads, dmod, dy, x, shape, ns, w, modulation, saved)
        } else {
            ada_layer_norm_backward(grads, dmod, dy, x, shape, ns, affine, modulation, saved)
        }
    }
}

/// The `scale` and `shift` slots of packed parameters.
fn modulation_of<'a>(sig: &Signature, packed: &'a [f32]) -> Modulation<'a> {
    Modulation {
        scale: sig.get(packed, "scale").unwrap_or_default(),
        shift: sig.get(packed, "shift").unwrap_or_default(),
    }
}
