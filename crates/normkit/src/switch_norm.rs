//! Switchable Normalization: a learned mixture of InstanceNorm, LayerNorm
//! and BatchNorm statistics.

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::instances::{apply_per_instance, sums_per_instance, InstanceCoef};
use crate::layout::{
    check_eps, check_len, check_opt_len, Affine, ChannelAxis, Geometry, Grads, Momentum,
    RunningStats,
};
use crate::moments::Moments;
use crate::normalize::{update_running, Plan, Scope};
use crate::op::{
    affine_grads, affine_of, affine_params, checked_signature, NormOp, OpGrads, Param, Running,
    Signature,
};

const OP: &str = "switch_norm";

/// Switchable Normalization (Luo, Ren, Peng, Zhang & Li, 2019,
/// "Differentiable Learning-to-Normalize via Switchable Normalization").
///
/// ```text
/// y = (x - μ) / sqrt(σ² + eps) · weight + bias
/// μ  = Σ_k softmax(mean_weight)_k · μ_k
/// σ² = Σ_k softmax(var_weight)_k · σ²_k,     k ∈ {IN, LN, BN}
/// ```
///
/// where
/// - `μ_IN`, `σ²_IN` are per (sample, channel) over the spatial positions
///   (InstanceNorm's), `μ_LN`, `σ²_LN` per sample over channels and
///   positions (LayerNorm's over `[C, *]`), `μ_BN`, `σ²_BN` per channel over
///   the batch and positions (BatchNorm's); all variances biased, so each
///   is exactly the statistic of its own normalization (the paper's code
///   starts from the unbiased instance variance, which makes its LN and BN
///   variances slightly off);
/// - `mean_weight`, `var_weight` are 3 logits each, in the order IN, LN,
///   BN (the paper initializes them equal: ones);
/// - in training the BN statistics are the batch's and the running ones
///   follow them as BatchNorm's do (momentum, unbiased variance); in
///   evaluation `μ_BN`, `σ²_BN` are the running statistics, while the IN
///   and LN statistics still come from the input;
/// - `weight`, `bias` are optional and per channel.
///
/// The three families come from one pass: the instance moments, merged
/// exactly (Chan et al.) into the layer and batch ones.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
/// - `mean_weight`, `var_weight`: `[3]`;
/// - saved [`SwitchStats`]: per (sample, channel), per sample, per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwitchNormConfig {
    /// `1e-5`.
    pub eps: f32,
    /// Running-statistics update (BatchNorm's convention: `0.1`).
    pub momentum: Momentum,
    /// Position of the channel axis.
    pub channel_axis: ChannelAxis,
}

impl Default for SwitchNormConfig {
    fn default() -> Self {
        SwitchNormConfig {
            eps: 1e-5,
            momentum: Momentum::default(),
            channel_axis: ChannelAxis::First,
        }
    }
}

/// The importance logits of the three statistics, IN, LN, BN.
#[derive(Debug, Clone, Copy)]
pub struct SwitchWeights<'a> {
    /// `[3]`: logits of the means' mixture.
    pub mean_weight: &'a [f32],
    /// `[3]`: logits of the variances' mixture.
    pub var_weight: &'a [f32],
}

/// Gradients of the importance logits, written when present.
#[derive(Debug, Default)]
pub struct SwitchGrads<'a> {
    pub dmean_weight: Option<&'a mut [f32]>,
    pub dvar_weight: Option<&'a mut [f32]>,
}

/// Statistics a forward pass saves for the backward pass. Means and
/// variances are kept in `f64`: the backward subtracts them from the input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SwitchStats {
    /// The statistics carried gradient (training) or the BN part was the
    /// running statistics (evaluation).
    pub training: bool,
    /// Mixed mean `μ`, per (sample, channel).
    pub mean: Vec<f64>,
    /// `1 / sqrt(σ² + eps)`, per (sample, channel).
    pub rstd: Vec<f32>,
    /// InstanceNorm's mean and variance, per (sample, channel).
    pub in_mean: Vec<f64>,
    pub in_var: Vec<f64>,
    /// LayerNorm's, per sample.
    pub ln_mean: Vec<f64>,
    pub ln_var: Vec<f64>,
    /// BatchNorm's (or the running ones in evaluation), per channel.
    pub bn_mean: Vec<f64>,
    pub bn_var: Vec<f64>,
}

/// The softmax of three logits, in `f64`.
pub(crate) fn softmax3(logits: &[f32]) -> [f64; 3] {
    let top = logits
        .iter()
        .fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let e = [0, 1, 2].map(|k| (logits[k] as f64 - top).exp());
    let sum: f64 = e.iter().sum();
    e.map(|v| v / sum)
}

fn geometry(shape: &[usize], cfg: &SwitchNormConfig) -> Result<Geometry> {
    check_eps(OP, cfg.eps)?;
    let geo = Geometry::channels(OP, shape, cfg.channel_axis)?;
    if geo.c == 0 || geo.s == 0 {
        return Err(NormError::Empty {
            op: OP,
            shape: shape.to_vec(),
        });
    }
    Ok(geo)
}

/// What a training step needs beyond the geometry: a usable momentum and
/// more than one value per channel for the batch statistics.
fn check_train(geo: &Geometry, cfg: &SwitchNormConfig, shape: &[usize]) -> Result<()> {
    cfg.momentum.validate(OP)?;
    if geo.n * geo.s <= 1 {
        return Err(NormError::TooFewValues {
            op: OP,
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

fn check_common<T>(
    geo: &Geometry,
    (out_name, y): (&'static str, &[T]),
    x: &[T],
    affine: Affine<'_>,
    weights: SwitchWeights<'_>,
    shape: &[usize],
) -> Result<()> {
    check_len(OP, "x", x.len(), geo.len(), shape)?;
    check_len(OP, out_name, y.len(), geo.len(), shape)?;
    crate::layout::check_affine(OP, affine, geo.c, shape)?;
    check_len(OP, "mean_weight", weights.mean_weight.len(), 3, shape)?;
    check_len(OP, "var_weight", weights.var_weight.len(), 3, shape)
}

/// The instance moments of `x`, per (sample, channel).
fn instance_moments<T: Elem>(geo: &Geometry, x: &[T]) -> Vec<Moments> {
    Plan {
        geo: *geo,
        scope: Scope::PerSample { groups: geo.c },
        centered: true,
    }
    .moments(x)
}

/// Mixes the statistics and normalizes.
fn finish<T: Elem>(
    y: &mut [T],
    x: &[T],
    geo: &Geometry,
    affine: Affine<'_>,
    weights: SwitchWeights<'_>,
    eps: f32,
    mut stats: SwitchStats,
) -> SwitchStats {
    let (wm, wv) = (softmax3(weights.mean_weight), softmax3(weights.var_weight));
    let c = geo.c;
    let mixed: Vec<Moments> = (0..geo.n * c)
        .map(|k| Moments {
            count: geo.s,
            mean: wm[0] * stats.in_mean[k]
                + wm[1] * stats.ln_mean[k / c]
                + wm[2] * stats.bn_mean[k % c],
            var: wv[0] * stats.in_var[k]
                + wv[1] * stats.ln_var[k / c]
                + wv[2] * stats.bn_var[k % c],
        })
        .collect();
    let plan = Plan {
        geo: *geo,
        scope: Scope::PerSample { groups: c },
        centered: true,
    };
    let s = plan.forward_with_moments(y, x, affine, &mixed, eps);
    stats.mean = mixed.iter().map(|m| m.mean).collect();
    stats.rstd = s.rstd;
    stats
}

fn unzip(m: &[Moments]) -> (Vec<f64>, Vec<f64>) {
    (
        m.iter().map(|m| m.mean).collect(),
        m.iter().map(|m| m.var).collect(),
    )
}

/// Training forward: batch statistics in the mixture; `running` (when
/// given) follows the BN statistics.
#[allow(clippy::too_many_arguments)]
pub fn switch_norm_forward_train<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    weights: SwitchWeights<'_>,
    running: Option<RunningStats<'_>>,
    cfg: &SwitchNormConfig,
) -> Result<SwitchStats> {
    let geo = geometry(shape, cfg)?;
    check_common(&geo, ("y", y), x, affine, weights, shape)?;
    if let Some(r) = &running {
        check_len(OP, "running_mean", r.mean.len(), geo.c, shape)?;
        check_len(OP, "running_var", r.var.len(), geo.c, shape)?;
    }
    check_train(&geo, cfg, shape)?;
    let c = geo.c;
    let inst = instance_moments(&geo, x);
    let merge = |it: &mut dyn Iterator<Item = Moments>| it.fold(Moments::EMPTY, Moments::merge);
    let ln: Vec<Moments> = inst
        .chunks(c)
        .map(|s| merge(&mut s.iter().copied()))
        .collect();
    let bn: Vec<Moments> = (0..c)
        .map(|ch| merge(&mut inst.iter().skip(ch).step_by(c).copied()))
        .collect();
    let (in_mean, in_var) = unzip(&inst);
    let (ln_mean, ln_var) = unzip(&ln);
    let (bn_mean, bn_var) = unzip(&bn);
    let stats = SwitchStats {
        training: true,
        in_mean,
        in_var,
        ln_mean,
        ln_var,
        bn_mean,
        bn_var,
        ..SwitchStats::default()
    };
    let stats = finish(y, x, &geo, affine, weights, cfg.eps, stats);
    if let Some(r) = running {
        update_running(r, &bn, cfg.momentum.factor());
    }
    Ok(stats)
}

/// Evaluation forward: the running statistics stand in for the BN ones.
#[allow(clippy::too_many_arguments)]
pub fn switch_norm_forward_eval<T: Elem>(
    y: &mut [T],
    x: &[T],
    shape: &[usize],
    affine: Affine<'_>,
    weights: SwitchWeights<'_>,
    running_mean: &[f32],
    running_var: &[f32],
    cfg: &SwitchNormConfig,
) -> Result<SwitchStats> {
    let geo = geometry(shape, cfg)?;
    check_common(&geo, ("y", y), x, affine, weights, shape)?;
    check_len(OP, "running_mean", running_mean.len(), geo.c, shape)?;
    check_len(OP, "running_var", running_var.len(), geo.c, shape)?;
    let inst = instance_moments(&geo, x);
    let ln: Vec<Moments> = inst
        .chunks(geo.c)
        .map(|s| s.iter().fold(Moments::EMPTY, |a, &b| a.merge(b)))
        .collect();
    let (in_mean, in_var) = unzip(&inst);
    let (ln_mean, ln_var) = unzip(&ln);
    let stats = SwitchStats {
        training: false,
        in_mean,
        in_var,
        ln_mean,
        ln_var,
        bn_mean: running_mean.iter().map(|&v| v as f64).collect(),
        bn_var: running_var.iter().map(|&v| v as f64).collect(),
        ..SwitchStats::default()
    };
    Ok(finish(y, x, &geo, affine, weights, cfg.eps, stats))
}

/// Backward of either forward: gradients of `sum(y · dy)` to the input,
/// the affine parameters and the importance logits. In evaluation the BN
/// statistics are constants; the IN and LN ones still depend on `x`.
///
/// With `g = dy · weight`, per (sample, channel) `dμ = -rstd · Σ g` and
/// `dσ² = -rstd² / 2 · Σ g · x̂`; each family's share flows back through
/// its own mean and variance (`∂μ_k/∂x = 1/n_k`,
/// `∂σ²_k/∂x = 2 (x - μ_k)/n_k`). The derivation is in
/// `docs/adaptive.md`.
#[allow(clippy::too_many_arguments)]
pub fn switch_norm_backward<T: Elem>(
    grads: Grads<'_, T>,
    dweights: SwitchGrads<'_>,
    dy: &[T],
    x: &[T],
    shape: &[usize],
    weight: Option<&[f32]>,
    weights: SwitchWeights<'_>,
    stats: &SwitchStats,
    cfg: &SwitchNormConfig,
) -> Result<()> {
    let geo = geometry(shape, cfg)?;
    check_common(
        &geo,
        ("dy", dy),
        x,
        Affine { weight, bias: None },
        weights,
        shape,
    )?;
    crate::layout::check_grads(OP, &grads, geo.len(), geo.c, shape)?;
    check_opt_len(
        OP,
        "dmean_weight",
        dweights.dmean_weight.as_deref(),
        3,
        shape,
    )?;
    check_opt_len(OP, "dvar_weight", dweights.dvar_weight.as_deref(), 3, shape)?;
    let (n, c, m) = (geo.n, geo.c, geo.s);
    let k = n * c;
    for (name, len, want) in [
        ("mean", stats.mean.len(), k),
        ("rstd", stats.rstd.len(), k),
        ("in_mean", stats.in_mean.len(), k),
        ("in_var", stats.in_var.len(), k),
        ("ln_mean", stats.ln_mean.len(), n),
        ("ln_var", stats.ln_var.len(), n),
        ("bn_mean", stats.bn_mean.len(), c),
        ("bn_var", stats.bn_var.len(), c),
    ] {
        check_len(OP, name, len, want, shape)?;
    }
    let gamma = |ch: usize| weight.map_or(1.0, |w| w[ch]) as f64;
    // Pass 1: Σ dy and Σ dy · x̂ per (sample, channel).
    let norm: Vec<InstanceCoef> = (0..k)
        .map(|i| InstanceCoef::new(stats.mean[i], 0.0, stats.rstd[i] as f64, 0.0))
        .collect();
    let sums = sums_per_instance(dy, x, &geo, &norm);
    let (wm, wv) = (softmax3(weights.mean_weight), softmax3(weights.var_weight));
    let mut dmean = vec![0.0f64; k];
    let mut dvar = vec![0.0f64; k];
    for i in 0..k {
        let r = stats.rstd[i] as f64;
        let g = gamma(i % c);
        dmean[i] = -r * g * sums[i][0];
        dvar[i] = -0.5 * r * r * g * sums[i][1];
    }
    // Each family's share of dμ and dσ², summed over its group.
    let (mut dmean_ln, mut dvar_ln) = (vec![0.0f64; n], vec![0.0f64; n]);
    let (mut dmean_bn, mut dvar_bn) = (vec![0.0f64; c], vec![0.0f64; c]);
    for i in 0..k {
        dmean_ln[i / c] += wm[1] * dmean[i];
        dvar_ln[i / c] += wv[1] * dvar[i];
        if stats.training {
            dmean_bn[i % c] += wm[2] * dmean[i];
            dvar_bn[i % c] += wv[2] * dvar[i];
        }
    }
    let (m_in, m_ln, m_bn) = (m as f64, (c * m) as f64, (n * m) as f64);
    let coefs: Vec<InstanceCoef> = (0..k)
        .map(|i| {
            let (s, ch) = (i / c, i % c);
            let mu_in = stats.in_mean[i];
            let b =
                2.0 * wv[0] * dvar[i] / m_in + 2.0 * dvar_ln[s] / m_ln + 2.0 * dvar_bn[ch] / m_bn;
            let a = wm[0] * dmean[i] / m_in
                + dmean_ln[s] / m_ln
                + dmean_bn[ch] / m_bn
                + 2.0 * dvar_ln[s] * (mu_in - stats.ln_mean[s]) / m_ln
                + 2.0 * dvar_bn[ch] * (mu_in - stats.bn_mean[ch]) / m_bn;
            InstanceCoef::new(mu_in, a, b, gamma(ch) * stats.rstd[i] as f64)
        })
        .collect();
    let Grads { dx, dweight, dbias } = grads;
    // Pass 2: dx = weight · rstd · dy + b · (x - μ_IN) + a.
    apply_per_instance(dx, x, Some(dy), &geo, &coefs);
    if let Some(dw) = dweight {
        for (ch, o) in dw.iter_mut().enumerate() {
            *o = (0..n).map(|s| sums[s * c + ch][1]).sum::<f64>() as f32;
        }
    }
    if let Some(db) = dbias {
        for (ch, o) in db.iter_mut().enumerate() {
            *o = (0..n).map(|s| sums[s * c + ch][0]).sum::<f64>() as f32;
        }
    }
    // Softmax backward: dlogit_j = w_j · (dw_j - Σ_k w_k · dw_k).
    let family = |i: usize, f: usize, own: &[f64], ln: &[f64], bn: &[f64]| match f {
        0 => own[i],
        1 => ln[i / c],
        _ => bn[i % c],
    };
    let logits = |w: [f64; 3], d: &[f64], own: &[f64], ln: &[f64], bn: &[f64]| {
        let dw = [0, 1, 2].map(|f| {
            (0..k)
                .map(|i| d[i] * family(i, f, own, ln, bn))
                .sum::<f64>()
        });
        let dot: f64 = (0..3).map(|f| w[f] * dw[f]).sum();
        [0, 1, 2].map(|f| (w[f] * (dw[f] - dot)) as f32)
    };
    if let Some(out) = dweights.dmean_weight {
        out.copy_from_slice(&logits(
            wm,
            &dmean,
            &stats.in_mean,
            &stats.ln_mean,
            &stats.bn_mean,
        ));
    }
    if let Some(out) = dweights.dvar_weight {
        out.copy_from_slice(&logits(
            wv,
            &dvar,
            &stats.in_var,
            &stats.ln_var,
            &stats.bn_var,
        ));
    }
    Ok(())
}

/// The Switchable Normalization entry points as a [`NormOp`]. The packed
/// parameters are `weight`?, `bias`?, then the importance logits
/// `mean_weight` and `var_weight` (3 each). `training` mixes in the batch
/// statistics (and updates running ones when given); otherwise the
/// running statistics take the BatchNorm part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwitchNormOp {
    pub cfg: SwitchNormConfig,
    pub training: bool,
    pub weight: bool,
    pub bias: bool,
}

/// The importance logits of packed parameters.
fn weights_of<'a>(sig: &Signature, packed: &'a [f32]) -> SwitchWeights<'a> {
    SwitchWeights {
        mean_weight: sig.get(packed, "mean_weight").unwrap_or_default(),
        var_weight: sig.get(packed, "var_weight").unwrap_or_default(),
    }
}

impl NormOp for SwitchNormOp {
    type Saved = SwitchStats;

    fn name(&self) -> &'static str {
        OP
    }

    fn signature(&self, shape: &[usize]) -> Result<Signature> {
        let geo = geometry(shape, &self.cfg)?;
        if self.training {
            check_train(&geo, &self.cfg, shape)?;
        }
        let channels = geo.c;
        let mut params = affine_params(self.weight, self.bias, channels);
        for name in ["mean_weight", "var_weight"] {
            params.push(Param { name, len: 3 });
        }
        checked_signature(
            self.name(),
            shape,
            params,
            Running::updates_or_reads(self.training, channels),
        )
    }

    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        running: Option<RunningStats<'_>>,
    ) -> Result<SwitchStats> {
        let (affine, weights) = (affine_of(sig, params), weights_of(sig, params));
        match (self.training, running) {
            (true, running) => {
                switch_norm_forward_train(y, x, shape, affine, weights, running, &self.cfg)
            }
            (false, Some(r)) => {
                switch_norm_forward_eval(y, x, shape, affine, weights, r.mean, r.var, &self.cfg)
            }
            (false, None) => Err(NormError::Missing {
                op: OP,
                name: "running_mean",
            }),
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
        saved: &SwitchStats,
    ) -> Result<()> {
        let (weight, weights) = (affine_of(sig, params).weight, weights_of(sig, params));
        let (grads, rest) = affine_grads(sig, grads);
        let mut dweights = SwitchGrads::default();
        for (name, slot) in rest {
            match name {
                "mean_weight" => dweights.dmean_weight = Some(slot),
                _ => dweights.dvar_weight = Some(slot),
            }
        }
        switch_norm_backward(
            grads, dweights, dy, x, shape, weight, weights, saved, &self.cfg,
        )
    }
}
