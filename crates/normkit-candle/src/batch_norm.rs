//! Batch Normalization as a candle layer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::{ChannelAxis, Elem, Momentum, RunningStats, Stats};

use crate::fused::{self, Kernel, Slots};
use crate::running::Running;
use crate::state::{insert, StateDict};

/// Settings of a [`BatchNorm`] layer; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance inside the square root. PyTorch: `1e-5`.
    pub eps: f64,
    /// Weight of the batch statistics in the running-statistics update;
    /// `None` is the cumulative moving average over `num_batches_tracked`.
    /// PyTorch: `Some(0.1)`.
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` and `bias`. PyTorch: `true`.
    pub affine: bool,
    /// Keep running statistics, update them in training and normalize with
    /// them in evaluation. Without them, evaluation uses the batch's own
    /// statistics. PyTorch: `true`.
    pub track_running_stats: bool,
    /// Position of the channel axis. PyTorch: channels first (`[N, C, *]`).
    pub channel_axis: ChannelAxis,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
            channel_axis: ChannelAxis::First,
        }
    }
}

impl From<f64> for BatchNormConfig {
    /// The defaults with this `eps`, as candle-nn's config converts.
    fn from(eps: f64) -> Self {
        BatchNormConfig {
            eps,
            ..Default::default()
        }
    }
}

/// Batch Normalization (Ioffe & Szegedy, 2015) over `[N, C, *]` input
/// (BatchNorm1d, 2d and 3d alike) or `[N, *, C]` with
/// [`ChannelAxis::Last`]:
///
/// ```text
/// y = (x - E[x]) / sqrt(Var[x] + eps) · weight + bias
/// ```
///
/// where
/// - `E[x]`, `Var[x]` are per channel over the batch and every spatial
///   position (`Var` biased), in training or without running statistics;
/// - otherwise (evaluation with running statistics) they are `running_mean`
///   and `running_var`;
/// - a training step moves the running statistics towards the batch's,
///   with the unbiased variance, and increments `num_batches_tracked`.
///
/// Train or evaluate through [`ModuleT::forward_t`]. Half-precision input
/// is normalized in f32 in both modes. Parameters and buffers carry
/// PyTorch's names: `weight`, `bias`, `running_mean`, `running_var`,
/// `num_batches_tracked`.
///
/// # Shapes
/// - `x`, `y`: `[N, C, *]` or `[N, *, C]`, rank ≥ 2;
/// - `weight`, `bias`, `running_mean`, `running_var`: `[C]`;
///   `num_batches_tracked`: `[]` (i64).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    num_features: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running: Option<Running>,
    config: BatchNormConfig,
}

/// Creates a [`BatchNorm`] over `num_features` channels, loading or
/// initializing (weight 1, bias 0, running mean 0, running variance 1) its
/// tensors through `vb`. Running statistics are f32 whatever `vb`'s dtype.
pub fn batch_norm<C: Into<BatchNormConfig>>(
    num_features: usize,
    config: C,
    vb: VarBuilder,
) -> Result<BatchNorm> {
    let config = config.into();
    let (weight, bias) = if config.affine {
        (
            Some(vb.get_with_hints(num_features, "weight", Init::Const(1.0))?),
            Some(vb.get_with_hints(num_features, "bias", Init::Const(0.0))?),
        )
    } else {
        (None, None)
    };
    let running = if config.track_running_stats {
        Some(Running::load(num_features, &vb)?)
    } else {
        None
    };
    Ok(BatchNorm {
        num_features,
        weight,
        bias,
        running,
        config,
    })
}

impl BatchNorm {
    pub fn config(&self) -> &BatchNormConfig {
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

    /// `running_mean`, when the layer tracks running statistics.
    pub fn running_mean(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| r.mean.as_tensor())
    }

    /// `running_var`, when the layer tracks running statistics.
    pub fn running_var(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| r.var.as_tensor())
    }

    /// `num_batches_tracked`, when the layer tracks running statistics.
    pub fn num_batches_tracked(&self) -> Result<Option<u64>> {
        self.running.as_ref().map(Running::count).transpose()
    }

    fn kernel_config(&self, momentum: Momentum) -> normkit::BatchNormConfig {
        normkit::BatchNormConfig {
            eps: self.config.eps as f32,
            momentum,
            channel_axis: self.config.channel_axis,
        }
    }

    fn params(&self) -> Vec<&Tensor> {
        self.weight.iter().chain(self.bias.iter()).collect()
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        const OP: &str = "batch_norm";
        crate::check_channels(OP, x, self.config.channel_axis, self.num_features)?;
        let slots = Slots::of(self.weight.as_ref(), self.bias.as_ref());
        let params = self.params();
        match (&self.running, train) {
            (Some(r), false) => {
                let (mean, var) = r.values()?;
                let kernel = BatchNormEval {
                    cfg: self.kernel_config(Momentum::default()),
                    slots,
                    mean,
                    var,
                };
                fused::apply(Arc::new(kernel), x, &params)
            }
            (running, _) => {
                let update = running.as_ref().filter(|_| train);
                let momentum = match (self.config.momentum, update) {
                    (Some(m), _) => Momentum::Exponential(m as f32),
                    (None, Some(r)) => Momentum::CumulativeAverage {
                        num_batches_tracked: r.count()?,
                    },
                    (None, None) => Momentum::default(),
                };
                let kernel = Arc::new(BatchNormTrain {
                    cfg: self.kernel_config(momentum),
                    slots,
                    running: update.map(Running::values).transpose()?.map(Mutex::new),
                });
                let y = fused::apply(kernel.clone(), x, &params)?;
                if let (Some(r), Some(values)) = (update, &kernel.running) {
                    let (mean, var) =
                        std::mem::take(&mut *values.lock().unwrap_or_else(|e| e.into_inner()));
                    r.store(mean, var)?;
                    r.set_count(r.count()? + 1)?;
                }
                Ok(y)
            }
        }
    }
}

impl StateDict for BatchNorm {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
        for (name, t) in self.running.iter().flat_map(Running::named) {
            insert(out, prefix, name, &t);
        }
    }
}

/// Training forward (batch statistics), updating the running statistics it
/// holds.
struct BatchNormTrain {
    cfg: normkit::BatchNormConfig,
    slots: Slots,
    running: Option<Mutex<(Vec<f32>, Vec<f32>)>>,
}

impl Kernel for BatchNormTrain {
    type Saved = Stats;
    const NAME: &'static str = "batch_norm";
    const BACKWARD_NAME: &'static str = "batch_norm_backward";

    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> normkit::Result<Stats> {
        self.slots.check(Self::NAME, params, shape)?;
        let mut guard = self
            .running
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
        let running = guard
            .as_deref_mut()
            .map(|(mean, var)| RunningStats { mean, var });
        normkit::batch_norm_forward_train(
            y,
            x,
            shape,
            self.slots.affine(params),
            running,
            &self.cfg,
        )
    }

    fn backward<T: Elem>(
        &self,
        dx: &mut [T],
        dparams: &mut [f32],
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> normkit::Result<()> {
        let weight = self.slots.affine(params).weight;
        normkit::batch_norm_backward_train(
            self.slots.grads(dx, dparams),
            dy,
            x,
            shape,
            weight,
            saved,
            &self.cfg,
        )
    }
}

/// Evaluation forward with running statistics.
struct BatchNormEval {
    cfg: normkit::BatchNormConfig,
    slots: Slots,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl Kernel for BatchNormEval {
    type Saved = Stats;
    const NAME: &'static str = "batch_norm";
    const BACKWARD_NAME: &'static str = "batch_norm_backward";

    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> normkit::Result<Stats> {
        self.slots.check(Self::NAME, params, shape)?;
        normkit::batch_norm_forward_eval(
            y,
            x,
            shape,
            self.slots.affine(params),
            &self.mean,
            &self.var,
            &self.cfg,
        )
    }

    fn backward<T: Elem>(
        &self,
        dx: &mut [T],
        dparams: &mut [f32],
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Stats,
    ) -> normkit::Result<()> {
        let weight = self.slots.affine(params).weight;
        normkit::batch_norm_backward_eval(
            self.slots.grads(dx, dparams),
            dy,
            x,
            shape,
            weight,
            saved,
            &self.cfg,
        )
    }
}
