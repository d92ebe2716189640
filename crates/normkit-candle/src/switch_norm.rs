//! Switchable Normalization as a candle layer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::{
    ChannelAxis, Elem, Momentum, NormError, RunningStats, SwitchGrads, SwitchStats, SwitchWeights,
};

use crate::fused::{self, Kernel, Slots};
use crate::running::Running;
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

    fn kernel_config(&self, momentum: Momentum) -> normkit::SwitchNormConfig {
        normkit::SwitchNormConfig {
            eps: self.config.eps as f32,
            momentum,
            channel_axis: self.config.channel_axis,
        }
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
        const OP: &str = "switch_norm";
        crate::check_channels(OP, x, self.config.channel_axis, self.num_features)?;
        let slots = Slots::of(self.weight.as_ref(), self.bias.as_ref());
        let params: Vec<&Tensor> = self
            .weight
            .iter()
            .chain(self.bias.iter())
            .chain([&self.mean_weight, &self.var_weight])
            .collect();
        let r = &self.running;
        if !train {
            let (mean, var) = r.values()?;
            let kernel = SwitchNormKernel {
                cfg: self.kernel_config(Momentum::default()),
                slots,
                mode: Mode::Eval { mean, var },
            };
            return fused::apply(Arc::new(kernel), x, &params);
        }
        let momentum = match self.config.momentum {
            Some(m) => Momentum::Exponential(m as f32),
            None => Momentum::CumulativeAverage {
                num_batches_tracked: r.count()?,
            },
        };
        let kernel = Arc::new(SwitchNormKernel {
            cfg: self.kernel_config(momentum),
            slots,
            mode: Mode::Train(Mutex::new(r.values()?)),
        });
        let y = fused::apply(kernel.clone(), x, &params)?;
        if let Mode::Train(values) = &kernel.mode {
            let (mean, var) =
                std::mem::take(&mut *values.lock().unwrap_or_else(|e| e.into_inner()));
            r.store(mean, var)?;
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

/// Where the BN statistics come from.
enum Mode {
    /// The batch's; the running statistics, held here, follow them.
    Train(Mutex<(Vec<f32>, Vec<f32>)>),
    /// The running statistics, as constants.
    Eval { mean: Vec<f32>, var: Vec<f32> },
}

/// The fused op: the packed parameters are `weight`, `bias` (those
/// present), then `mean_weight` and `var_weight`.
struct SwitchNormKernel {
    cfg: normkit::SwitchNormConfig,
    slots: Slots,
    mode: Mode,
}

impl SwitchNormKernel {
    fn affine_len(&self) -> usize {
        self.slots.weight.unwrap_or(0) + self.slots.bias.unwrap_or(0)
    }

    /// Checks the packed length, then splits it into the affine part and
    /// the two logit vectors.
    fn split<'a>(
        &self,
        params: &'a [f32],
        shape: &[usize],
    ) -> normkit::Result<(&'a [f32], SwitchWeights<'a>)> {
        let k = self.affine_len();
        if params.len() != k + 6 {
            return Err(NormError::Length {
                op: Self::NAME,
                name: "weight, bias, mean_weight and var_weight",
                expected: k + 6,
                got: params.len(),
                shape: shape.to_vec(),
            });
        }
        let (affine, logits) = params.split_at(k);
        let (mean_weight, var_weight) = logits.split_at(3);
        Ok((
            affine,
            SwitchWeights {
                mean_weight,
                var_weight,
            },
        ))
    }
}

impl Kernel for SwitchNormKernel {
    type Saved = SwitchStats;
    const NAME: &'static str = "switch_norm";
    const BACKWARD_NAME: &'static str = "switch_norm_backward";

    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> normkit::Result<SwitchStats> {
        let (affine, weights) = self.split(params, shape)?;
        let affine = self.slots.affine(affine);
        match &self.mode {
            Mode::Train(running) => {
                let mut guard = running.lock().unwrap_or_else(|e| e.into_inner());
                let (mean, var) = &mut *guard;
                let running = RunningStats { mean, var };
                normkit::switch_norm_forward_train(
                    y,
                    x,
                    shape,
                    affine,
                    weights,
                    Some(running),
                    &self.cfg,
                )
            }
            Mode::Eval { mean, var } => normkit::switch_norm_forward_eval(
                y, x, shape, affine, weights, mean, var, &self.cfg,
            ),
        }
    }

    fn backward<T: Elem>(
        &self,
        dx: &mut [T],
        dparams: &mut [f32],
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &SwitchStats,
    ) -> normkit::Result<()> {
        let (affine, weights) = self.split(params, shape)?;
        let k = self.affine_len();
        if dparams.len() != params.len() {
            return Err(NormError::Length {
                op: Self::BACKWARD_NAME,
                name: "parameter gradients",
                expected: params.len(),
                got: dparams.len(),
                shape: shape.to_vec(),
            });
        }
        let (daffine, dlogits) = dparams.split_at_mut(k);
        let (dmean_weight, dvar_weight) = dlogits.split_at_mut(3);
        let weight = self.slots.affine(affine).weight;
        normkit::switch_norm_backward(
            self.slots.grads(dx, daffine),
            SwitchGrads {
                dmean_weight: Some(dmean_weight),
                dvar_weight: Some(dvar_weight),
            },
            dy,
            x,
            shape,
            weight,
            weights,
            saved,
            &self.cfg,
        )
    }
}
