//! Adaptive Instance Normalization: the content's per-channel statistics
//! replaced by the style's.

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::instances::{apply_per_instance, InstanceCoef};
use crate::layout::RunningStats;
use crate::layout::{check_eps, check_len, Affine, ChannelAxis, Geometry, Grads, Stats};
use crate::normalize::{Plan, Scope};
use crate::op::{checked_signature, NormOp, OpGrads, Param, Running, Signature};
use crate::parallel::{map_chunks, SharedMut};

const OP: &str = "adain";

/// Adaptive Instance Normalization (Huang & Belongie, 2017, "Arbitrary
/// Style Transfer in Real-time with Adaptive Instance Normalization").
///
/// ```text
/// y = σ(s) · (x - μ(x)) / σ(x) + μ(s)
/// ```
///
/// where
/// - `x` is the content and `s` the style, both `[N, C, *]` (or channels
///   last) with the same `N` and `C`; their spatial sizes `M`, `M'` may
///   differ;
/// - `μ`, `σ` are per (sample, channel), over the spatial positions:
///   `σ = sqrt(Var + eps)`;
/// - `Var` is the *unbiased* variance (divide by `M - 1`) by default, as
///   the paper's code computes it (`torch.var` + eps); `unbiased = false`
///   divides by `M`, as InstanceNorm does;
/// - gradients flow to both `x` and `s`.
///
/// The content side is InstanceNorm with the affine transform
/// `σ(s)`, `μ(s)` per (sample, channel). The unbiased convention is the
/// same computation with a rescaled eps:
/// `1 / sqrt(M/(M-1) · Var_biased + eps) = sqrt((M-1)/M) / sqrt(Var_biased + eps·(M-1)/M)`,
/// so the kernels run the engine's InstanceNorm with `eps' = eps·(M-1)/M`
/// and fold `sqrt((M-1)/M)` into the weight.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2; `style`: the same
///   with its own spatial extent;
/// - saved [`AdaInStats`]: per (sample, channel), sample-major.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaInConfig {
    /// Added to the variance inside the square root (the paper's code:
    /// `1e-5`).
    pub eps: f32,
    /// Divide the variance by `M - 1` (the paper's code) instead of `M`.
    pub unbiased: bool,
    /// Position of the channel axis.
    pub channel_axis: ChannelAxis,
}

impl Default for AdaInConfig {
    fn default() -> Self {
        AdaInConfig {
            eps: 1e-5,
            unbiased: true,
            channel_axis: ChannelAxis::First,
        }
    }
}

/// What [`adain_forward`] saves for [`adain_backward`], per (sample,
/// channel).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdaInStats {
    /// The content's mean, and `1 / sqrt(Var_biased + eps')`: the
    /// InstanceNorm statistics the kernel runs with (see [`AdaInConfig`]'s
    /// type-level docs; with `unbiased = false`, `eps' = eps` and this is
    /// `1 / σ(x)`).
    pub content: Stats,
    /// `μ(s)`.
    pub style_mean: Vec<f32>,
    /// `σ(s) = sqrt(Var(s) + eps)`.
    pub style_std: Vec<f32>,
}

/// The two operands' geometries, checked against each other.
struct Pair {
    x: Geometry,
    s: Geometry,
}

impl Pair {
    fn new(x_shape: &[usize], style_shape: &[usize], cfg: &AdaInConfig) -> Result<Pair> {
        check_eps(OP, cfg.eps)?;
        let x = Geometry::channels(OP, x_shape, cfg.channel_axis)?;
        let s = Geometry::channels(OP, style_shape, cfg.channel_axis)?;
        // The extents as given: their products may overflow.
        for (name, expected, got) in [("style batch", x.n, s.n), ("style channels", x.c, s.c)] {
            if expected != got {
                return Err(NormError::Length {
                    op: OP,
                    name,
                    expected,
                    got,
                    shape: style_shape.to_vec(),
                });
            }
        }
        let least = if cfg.unbiased { 2 } else { 1 };
        for (g, shape) in [(&x, x_shape), (&s, style_shape)] {
            if g.s < least {
                // A mean over nothing, or an unbiased variance of one value.
                return Err(if g.s == 0 {
                    NormError::Empty {
                        op: OP,
                        shape: shape.to_vec(),
                    }
                } else {
                    NormError::TooFewValues {
                        op: OP,
                        shape: shape.to_vec(),
                    }
                });
            }
        }
        Ok(Pair { x, s })
    }

    /// InstanceNorm over one sample of `g`'s layout.
    fn sample_plan(g: &Geometry) -> Plan {
        Plan {
            geo: Geometry { n: 1, ..*g },
            scope: Scope::PerSample { groups: g.c },
            centered: true,
        }
    }

    /// InstanceNorm over the whole of `g`.
    fn plan(g: &Geometry) -> Plan {
        Plan {
            geo: *g,
            scope: Scope::PerSample { groups: g.c },
            centered: true,
        }
    }

    /// Bessel's factor `M / (M - 1)`, or 1.
    fn bessel(m: usize, unbiased: bool) -> f64 {
        if unbiased {
            m as f64 / (m as f64 - 1.0)
        } else {
            1.0
        }
    }

    /// eps for the engine's biased variance, and the factor `sqrt((M-1)/M)`
    /// folded into the weight.
    fn content_eps(&self, cfg: &AdaInConfig) -> (f32, f64) {
        let b = Self::bessel(self.x.s, cfg.unbiased);
        ((cfg.eps as f64 / b) as f32, (1.0 / b).sqrt())
    }
}

/// AdaIN forward: `y` takes the style's per-channel mean and standard
/// deviation. Returns the statistics [`adain_backward`] takes.
pub fn adain_forward<T: Elem>(
    y: &mut [T],
    x: &[T],
    x_shape: &[usize],
    style: &[T],
    style_shape: &[usize],
    cfg: &AdaInConfig,
) -> Result<AdaInStats> {
    let p = Pair::new(x_shape, style_shape, cfg)?;
    check_len(OP, "x", x.len(), p.x.len(), x_shape)?;
    check_len(OP, "y", y.len(), p.x.len(), x_shape)?;
    check_len(OP, "style", style.len(), p.s.len(), style_shape)?;
    if x.is_empty() {
        // No samples or no channels, whatever the other extents.
        return Ok(AdaInStats::default());
    }
    let (c, len) = (p.x.c, p.x.c * p.x.s);
    let bessel = Pair::bessel(p.s.s, cfg.unbiased);
    let style_moments = Pair::plan(&p.s).moments(style);
    let style_mean: Vec<f32> = style_moments.iter().map(|m| m.mean as f32).collect();
    let style_std: Vec<f32> = style_moments
        .iter()
        .map(|m| (m.var * bessel + cfg.eps as f64).sqrt() as f32)
        .collect();
    let (eps, fold) = p.content_eps(cfg);
    let plan = Pair::sample_plan(&p.x);
    let y = SharedMut::new(y);
    let per_sample = map_chunks(p.x.n, p.x.len(), |k| {
        let at = k * c..(k + 1) * c;
        let weight: Vec<f32> = style_std[at.clone()]
            .iter()
            .map(|&s| (s as f64 * fold) as f32)
            .collect();
        // SAFETY: sample k alone writes its range of y.
        let yk = unsafe { y.range(k * len..(k + 1) * len) };
        let xk = &x[k * len..(k + 1) * len];
        plan.forward_train(yk, xk, Affine::new(&weight, &style_mean[at]), eps)
            .0
    });
    let mut content = Stats::default();
    for s in per_sample {
        content.mean.extend(s.mean);
        content.rstd.extend(s.rstd);
    }
    Ok(AdaInStats {
        content,
        style_mean,
        style_std,
    })
}

/// Backward of [`adain_forward`]: gradients of `sum(y · dy)` to the content
/// (`dx`) and, when asked, the style (`dstyle`).
///
/// For the style, with `g1 = Σ dy` and `g2 = Σ dy · x̂` per (sample,
/// channel) and `k` the variance's divisor (`M' - 1` or `M'`):
/// `ds = g1 / M' + g2 · (s - μ(s)) / (k · σ(s))`.
#[allow(clippy::too_many_arguments)]
pub fn adain_backward<T: Elem>(
    dx: &mut [T],
    dstyle: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    x_shape: &[usize],
    style: &[T],
    style_shape: &[usize],
    stats: &AdaInStats,
    cfg: &AdaInConfig,
) -> Result<()> {
    let p = Pair::new(x_shape, style_shape, cfg)?;
    check_len(OP, "x", x.len(), p.x.len(), x_shape)?;
    check_len(OP, "dy", dy.len(), p.x.len(), x_shape)?;
    check_len(OP, "dx", dx.len(), p.x.len(), x_shape)?;
    check_len(OP, "style", style.len(), p.s.len(), style_shape)?;
    if let Some(ds) = &dstyle {
        check_len(OP, "dstyle", ds.len(), p.s.len(), style_shape)?;
    }
    let instances = p.x.n * p.x.c;
    for (name, v) in [
        ("mean", &stats.content.mean),
        ("rstd", &stats.content.rstd),
        ("style_mean", &stats.style_mean),
        ("style_std", &stats.style_std),
    ] {
        check_len(OP, name, v.len(), instances, x_shape)?;
    }
    if x.is_empty() {
        return Ok(());
    }
    let (c, len) = (p.x.c, p.x.c * p.x.s);
    let (_, fold) = p.content_eps(cfg);
    let plan = Pair::sample_plan(&p.x);
    let dx = SharedMut::new(dx);
    // Content: InstanceNorm's backward with the style as the affine
    // transform; its parameter gradients are the style statistics'.
    let per_sample = map_chunks(p.x.n, p.x.len(), |k| {
        let at = k * c..(k + 1) * c;
        let weight: Vec<f32> = stats.style_std[at.clone()]
            .iter()
            .map(|&s| (s as f64 * fold) as f32)
            .collect();
        let (mut dw, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
        // SAFETY: sample k alone writes its range of dx.
        let dxk = unsafe { dx.range(k * len..(k + 1) * len) };
        let sample_stats = Stats {
            mean: stats.content.mean[at.clone()].to_vec(),
            rstd: stats.content.rstd[at].to_vec(),
        };
        let grads = Grads {
            dx: dxk,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        let range = k * len..(k + 1) * len;
        plan.backward_train(
            grads,
            &dy[range.clone()],
            &x[range],
            Some(&weight),
            &sample_stats,
        );
        (dw, db)
    });
    let Some(dstyle) = dstyle else {
        return Ok(());
    };
    // Style: recompute its exact means so that `s - μ(s)` keeps its digits
    // for a style with a large mean.
    let moments = Pair::plan(&p.s).moments(style);
    let m = p.s.s as f64;
    let divisor = if cfg.unbiased { m - 1.0 } else { m };
    let mut coefs = Vec::with_capacity(instances);
    for (k, mo) in moments.iter().enumerate() {
        let (dw, db) = &per_sample[k / c];
        let (g1, g2) = (db[k % c] as f64, dw[k % c] as f64 * fold);
        coefs.push(InstanceCoef::new(
            mo.mean,
            g1 / m,
            g2 / (divisor * stats.style_std[k] as f64),
            0.0,
        ));
    }
    apply_per_instance(dstyle, style, None, &p.s, &coefs);
    Ok(())
}

/// [`adain_forward`] and [`adain_backward`] as a [`NormOp`] over the
/// content; the style is the packed parameter (converted to `f32`, which
/// holds every `bf16` and `f16` value exactly), so its gradient comes back
/// as the parameter gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaInOp {
    pub cfg: AdaInConfig,
    pub style_shape: Vec<usize>,
}

impl AdaInOp {
    /// The packed style at the content's element type.
    fn style<T: Elem>(packed: &[f32]) -> Vec<T> {
        packed.iter().map(|&v| T::from_f32(v)).collect()
    }
}

impl NormOp for AdaInOp {
    type Saved = AdaInStats;

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let p = Pair::new(shape, &self.style_shape, &self.cfg)?;
        checked_signature(
            self.name(),
            shape,
            vec![Param {
                name: "style",
                len: p.s.len(),
            }],
            Running::None,
        )
    }

    fn run_forward<T: Elem>(
        &self,
        _sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _running: Option<RunningStats<'_>>,
    ) -> Result<AdaInStats> {
        let style = Self::style::<T>(params);
        adain_forward(y, x, shape, &style, &self.style_shape, &self.cfg)
    }

    fn run_backward<T: Elem>(
        &self,
        _sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &AdaInStats,
    ) -> Result<()> {
        let style = Self::style::<T>(params);
        let mut dstyle = grads.dparams.as_ref().map(|d| vec![T::default(); d.len()]);
        adain_backward(
            grads.dx,
            dstyle.as_deref_mut(),
            dy,
            x,
            shape,
            &style,
            &self.style_shape,
            saved,
            &self.cfg,
        )?;
        if let (Some(d), Some(out)) = (dstyle, grads.dparams) {
            T::load(&d, out);
        }
        Ok(())
    }
}
