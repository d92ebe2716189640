//! Switchable Normalization as a candle layer.

use std::collections::HashMap;

use candle_core::{DType, ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::op::SwitchNormOp;
use normkit::{ChannelAxis, NormError};

use crate::fused;
use crate::running::{self, Running};
use crate::state::{insert, StateDict};

/// Settings of a [`SwitchNorm`] layer; the defaults are BatchNorm's and
/// the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwitchNormConfig {
    /// Added to the mixed variance inside the square root. Default: `1e-5`.
    pub eps: f64,
    /// Weight of the batch statistics in the running-statistics update;
    /// `None` is the cumulative moving average over `num_batches_tracked`.
    /// Default: `Some(0.1)`.
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` and `bias`. Default: `true`.
    pub affine: bool,
    /// Position of the channel axis. Default: channels first
    /// (`[N, C, *]`).
    pub channel_axis: ChannelAxis,
}

impl Default for SwitchNormConfig {
    fn default() -> Self {
        SwitchNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            channel_axis: ChannelAxis::First,
        }
    }
}

impl From<f64> for SwitchNormConfig {
    fn from(eps: f64) -> Self {
        SwitchNormConfig {
            eps,
            ..Default::default()
        }
    }
}

/// Switchable Normalization (Luo et al., 2019, "Differentiable
/// Learning-to-Normalize via Switchable Normalization"): a learned mixture
/// of InstanceNorm, LayerNorm and BatchNorm statistics.
///
/// ```text
/// y  = (x - μ) / sqrt(σ² + eps) · weight + bias
/// μ  = Σ_k softmax(mean_weight)_k · μ_k
/// σ² = Σ_k softmax(var_weight)_k · σ²_k,     k ∈ {IN, LN, BN}
/// ```
///
/// where
/// - `μ_IN`, `σ²_IN` are per (sample, channel) over the spatial positions,
///   `μ_LN`, `σ²_LN` per sample over channels and positions, `μ_BN`,
///   `σ²_BN` per channel over the batch and positions; all biased;
/// - in evaluation `μ_BN`, `σ²_BN` are `running_mean`, `running_var`
///   (constants); the IN and LN statistics still come from the input;
/// - a training step moves the running statistics towards the batch's, as
///   BatchNorm does (unbiased variance), and increments
///   `num_batches_tracked`;
/// - `mean_weight`, `var_weight` are the importance logits in the order
///   IN, LN, BN, initialized to ones (equal importances).
///
/// Train or evaluate through [`ModuleT::forward_t`]. Gradients reach the
/// input, `weight`, `bias` and both logit vectors.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
/// - `mean_weight`, `var_weight`: `[3]`; `num_batches_tracked`: `[]` (i64).
#[derive(Debug, Clone)]
pub struct SwitchNorm {
    num_features: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    mean_weight: Tensor,
    var_weight: Tensor,
    running: Running,
    config: SwitchNormConfig,
}

/// Creates a [`SwitchNorm`] over `num_features` channels, loading or
/// initializing (weight 1, bias 0, logits 1, running mean 0, running
/// variance 1) its tensors through `vb`.
pub fn switch_norm<C: Into<SwitchNormConfig>>(
    num_features: usize,
    config: C,
    vb: VarBuilder,
) -> Result<SwitchNorm> {
    let config = config.into();
    let (weight, bias) = if config.affine {
        (
            Some(vb.get_with_hints(num_features, "weight", Init::Const(1.0))?),
            Some(vb.get_with_hints(num_features, "bias", Init::Const(0.0))?),
        )
    } else {
        (None, None)
    };
    Ok(SwitchNorm {
        num_features,
        weight,
        bias,
        mean_weight: vb.get_with_hints(3, "mean_weight", Init::Const(1.0))?,
        var_weight: vb.get_with_hints(3, "var_weight", Init::Const(1.0))?,
        running: Running::load(num_features, &vb)?,
        config,
    })
}

impl SwitchNorm {
    pub fn config(&self) -> &SwitchNormConfig {
        &self.config
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The logits of the means' mixture, `[3]` (IN, LN, BN).
    pub fn mean_weight(&self) -> &Tensor {
        &self.mean_weight
    }

    /// The logits of the variances' mixture, `[3]` (IN, LN, BN).
    pub fn var_weight(&self) -> &Tensor {
        &self.var_weight
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running.mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running.var.as_tensor()
    }

    pub fn num_batches_tracked(&self) -> Result<u64> {
        self.running.count()
    }

    /// The importances `(softmax(mean_weight), softmax(var_weight))`, each
    /// in the order IN, LN, BN: how much each normalization's statistics
    /// weigh in the mixture.
    pub fn importances(&self) -> Result<([f32; 3], [f32; 3])> {
        let softmax = |t: &Tensor| -> Result<[f32; 3]> {
            let logits: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            let p = softmax3(&logits).ok_or_else(|| {
                crate::error::kernel(NormError::Length {
                    op: "switch_norm",
                    name: "mean_weight or var_weight",
                    expected: 3,
                    got: logits.len(),
                    shape: t.dims().to_vec(),
                })
            })?;
            Ok(p)
        };
        Ok((softmax(&self.mean_weight)?, softmax(&self.var_weight)?))
    }

    fn op(&self, train: bool) -> Result<SwitchNormOp> {
        let update = Some(&self.running).filter(|_| train);
        let momentum = running::momentum(self.config.momentum, update)?;
        Ok(SwitchNormOp {
            cfg: normkit::SwitchNormConfig {
                eps: self.config.eps as f32,
                momentum,
                channel_axis: self.config.channel_axis,
            },
            training: train,
            weight: self.weight.is_some(),
            bias: self.bias.is_some(),
        })
    }
}

/// The softmax of three logits (largest subtracted first), or `None` for
/// another count.
fn softmax3(logits: &[f32]) -> Option<[f32; 3]> {
    let l: [f32; 3] = logits.try_into().ok()?;
    let top = l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let e = l.map(|v| (v as f64 - top).exp());
    let sum: f64 = e.iter().sum();
    Some(e.map(|v| (v / sum) as f32))
}

impl ModuleT for SwitchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        crate::check_channels(
            "switch_norm",
            x,
            self.config.channel_axis,
            self.num_features,
        )?;
        let params: Vec<&Tensor> = self
            .weight
            .iter()
            .chain(&self.bias)
            .chain([&self.mean_weight, &self.var_weight])
            .collect();
        let r = &self.running;
        let y = fused::apply_running(self.op(train)?, x, &params, Some(r))?;
        if train {
            r.set_count(r.count()? + 1)?;
        }
        Ok(y)
    }
}

impl StateDict for SwitchNorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
        insert(out, prefix, "mean_weight", &self.mean_weight);
        insert(out, prefix, "var_weight", &self.var_weight);
        for (name, t) in self.running.named() {
            insert(out, prefix, name, &t);
        }
    }
}
