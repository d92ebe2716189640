//! One interface over every op: what the framework adapters (burn, candle,
//! Python, SyncBatchNorm) call.
//!
//! An op is a small value holding its hyperparameters (eps, groups, axis,
//! whether it is training) and which optional parameters it has. Given an
//! input shape, [`NormOp::signature`] validates the shape against the
//! hyperparameters and says how its parameters are packed into one `f32`
//! slice and whether it uses running statistics. [`NormOp::forward`] writes
//! the output and returns what [`NormOp::backward`] needs (the op's
//! `Saved`); the backward writes the input gradient and, packed the same
//! way as the parameters, the parameter gradients.
//!
//! Packing is what lets one generic adapter serve every op: a framework
//! flattens the parameters to `f32` and concatenates them in the order
//! [`Signature::params`] lists, and splits the packed gradient back.
//!
//! | op | packed parameters | running statistics |
//! |---|---|---|
//! | [`LayerNormOp`] | `weight`?, `bias`? | — |
//! | [`RmsNormOp`] | `weight`? | — |
//! | [`LayerNormScaling`] of either | as the norm it scales | — |
//! | [`UnitOffsetRmsNorm`] (Gemma) | `weight`? (applied as `1 + weight`) | — |
//! | [`BatchNormOp`] | `weight`?, `bias`? | updated (training, optional) or read (eval) |
//! | [`GroupNormOp`] | `weight`?, `bias`? | — |
//! | [`InstanceNormOp`] | `weight`?, `bias`? | as BatchNorm |
//! | [`DytOp`] | `alpha`, `weight`?, `bias`? | — |
//! | [`DerfOp`] | `alpha`, `shift`, `weight`?, `bias`? | — |
//! | [`WeightNormOp`] | `g` (the input is `v`) | — |
//! | [`AdaInOp`] | `style` | — |
//! | [`AdaNormOp`] | `weight`?, `bias`?, `scale`, `shift` | — |
//! | [`SwitchNormOp`] | `weight`?, `bias`?, `mean_weight`, `var_weight` | as BatchNorm |
//! | [`BatchRenormOp`] | `weight`?, `bias`? | updated (training, required) or read (eval) |
//! | [`SyncBatchNormOp`] | `weight`?, `bias`? | as BatchNorm, the same on every rank |
//!
//! [`ErasedOp`] is the same interface with the element type and the saved
//! state chosen at run time, for adapters that learn the dtype from a tensor.
//!
//! The residual family has two inputs and two outputs (`x`, `residual` in;
//! `y`, `sum = x + residual` out) and its own trait of the same shape,
//! [`ResidualNormOp`], with [`ErasedResidualOp`]:
//!
//! | op | packed parameters | running statistics |
//! |---|---|---|
//! | [`AddNormOp`] (LayerNorm) | `weight`?, `bias`? | — |
//! | [`AddNormOp`] (RMSNorm) | `weight`? | — |

mod erased;
mod precision;
mod residual;

pub use erased::{ElemSlice, ElemSliceMut, ErasedOp, ErasedSaved};
pub use precision::Precision;
pub use residual::{ErasedResidualOp, ResidualNormOp};

pub use crate::add_norm::{AddNorm, AddNormOp};

pub use crate::ada_norm::AdaNormOp;
pub use crate::adain::AdaInOp;
pub use crate::batch_norm::BatchNormOp;
pub use crate::batch_renorm::BatchRenormOp;
pub use crate::derf::DerfOp;
pub use crate::dyt::DytOp;
pub use crate::group_norm::{GroupNormOp, InstanceNormOp};
pub use crate::layer_norm::{LayerNormOp, RmsNormOp};
pub use crate::layer_norm_scaling::{DepthScalable, LayerNormScaling};
pub use crate::qk_norm::{QkScope, UnitOffsetRmsNorm};
pub use crate::switch_norm::SwitchNormOp;
pub use crate::sync_batch_norm::SyncBatchNormOp;
pub use crate::weight_norm::WeightNormOp;

use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::RunningStats;

/// One named parameter of an op, `len` values long in the packed slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub name: &'static str,
    pub len: usize,
}

/// How an op uses running statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// The op has none: `forward` must be given `None`.
    None,
    /// A training step that updates them when given (`Some`), one value
    /// per channel; `None` normalizes with batch statistics only.
    Updates { channels: usize },
    /// A training step that needs them (Batch Renormalization's
    /// corrections come from them) and updates them.
    Requires { channels: usize },
    /// Evaluation: normalized with them; they are read, not written.
    Reads { channels: usize },
}

impl Running {
    /// A training step's updates (`training`) or an evaluation's reads of
    /// `channels` running statistics.
    pub(crate) fn updates_or_reads(training: bool, channels: usize) -> Running {
        if training {
            Running::Updates { channels }
        } else {
            Running::Reads { channels }
        }
    }

    /// The channel count of the running statistics, if the op has any.
    pub fn channels(self) -> Option<usize> {
        match self {
            Running::None => None,
            Running::Updates { channels }
            | Running::Requires { channels }
            | Running::Reads { channels } => Some(channels),
        }
    }
}

/// What an op expects for one input shape: its packed parameters and its
/// running statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// In packing order.
    pub params: Vec<Param>,
    pub running: Running,
}

impl Signature {
    /// Total length of the packed parameters. Every signature an op of
    /// normkit returns has a total that fits in `usize`; for one built
    /// otherwise, this saturates at `usize::MAX` (which no slice matches).
    pub fn packed_len(&self) -> usize {
        self.params
            .iter()
            .fold(0usize, |sum, p| sum.saturating_add(p.len))
    }

    /// Splits a packed slice into one slice per parameter, in order.
    /// The caller checked the length ([`Signature::check_packed`]).
    pub fn split<'a>(&self, mut packed: &'a [f32]) -> Vec<&'a [f32]> {
        self.params
            .iter()
            .map(|p| {
                let (head, rest) = packed.split_at(p.len.min(packed.len()));
                packed = rest;
                head
            })
            .collect()
    }

    /// Mutable counterpart of [`Signature::split`].
    pub fn split_mut<'a>(&self, mut packed: &'a mut [f32]) -> Vec<&'a mut [f32]> {
        self.params
            .iter()
            .map(|p| {
                let at = p.len.min(packed.len());
                let (head, rest) = std::mem::take(&mut packed).split_at_mut(at);
                packed = rest;
                head
            })
            .collect()
    }

    /// The slice of the parameter called `name`, if the op has one.
    pub fn get<'a>(&self, packed: &'a [f32], name: &str) -> Option<&'a [f32]> {
        let i = self.params.iter().position(|p| p.name == name)?;
        self.split(packed).into_iter().nth(i)
    }

    /// A length error unless `packed` holds exactly the parameters.
    pub fn check_packed(
        &self,
        op: &'static str,
        name: &'static str,
        packed: usize,
        shape: &[usize],
    ) -> Result<()> {
        crate::layout::check_len(op, name, packed, self.packed_len(), shape)
    }

    /// Checks the running statistics handed to a forward pass against
    /// what the op uses.
    pub fn check_running(
        &self,
        op: &'static str,
        running: Option<&RunningStats<'_>>,
        shape: &[usize],
    ) -> Result<()> {
        match (self.running, running) {
            (Running::None, Some(_)) => Err(NormError::NoSuchParameter {
                op,
                name: "running_mean",
            }),
            (Running::Requires { .. } | Running::Reads { .. }, None) => Err(NormError::Missing {
                op,
                name: "running_mean",
            }),
            (r, Some(s)) => {
                let c = r.channels().unwrap_or(0);
                crate::layout::check_len(op, "running_mean", s.mean.len(), c, shape)?;
                crate::layout::check_len(op, "running_var", s.var.len(), c, shape)
            }
            (_, None) => Ok(()),
        }
    }
}

/// The gradient outputs of an op's backward pass.
#[derive(Debug)]
pub struct OpGrads<'a, T> {
    /// Gradient of the input, shaped like it.
    pub dx: &'a mut [T],
    /// Gradients of the packed parameters, packed the same way; `None`
    /// skips them (frozen parameters).
    pub dparams: Option<&'a mut [f32]>,
}

/// A normalization op over one input: forward and backward over
/// contiguous slices, every argument checked before anything is written.
///
/// An implementation writes [`NormOp::signature`] and the two `run_`
/// methods; the provided [`NormOp::forward`] and [`NormOp::backward`]
/// check the packed lengths and the running statistics against the
/// signature first, and the op's own entry points check the rest.
pub trait NormOp: Send + Sync {
    /// What the forward pass hands to the backward pass (mean and rstd,
    /// norms, ...).
    type Saved: Send + Sync + 'static;

    /// The op's name, as in its errors.
    fn name(&self) -> &'static str;

    /// Validates `shape` against the op's hyperparameters and says how its
    /// parameters are packed and whether it uses running statistics.
    fn signature(&self, shape: &[usize]) -> Result<Signature>;

    /// The forward pass, once `params` and `running` match `sig`.
    fn run_forward<T: Elem>(
        &self,
        sig: &Signature,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        running: Option<RunningStats<'_>>,
    ) -> Result<Self::Saved>;

    /// The backward pass, once `params` and `grads.dparams` match `sig`.
    #[allow(clippy::too_many_arguments)]
    fn run_backward<T: Elem>(
        &self,
        sig: &Signature,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Self::Saved,
    ) -> Result<()>;

    /// The error to return for a call the interface refused before running
    /// the op (`backward`: a backward call). Ops whose calls are collective
    /// across ranks (SyncBatchNorm) override it to take part in the call's
    /// agreement, so the other ranks fail alike instead of waiting; the
    /// default returns `error`.
    fn refuse(&self, backward: bool, error: NormError) -> NormError {
        let _ = backward;
        error
    }

    /// Writes `y` from `x` (shaped `shape`) and the packed `params`;
    /// updates or reads `running` as [`Signature::running`] says.
    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        running: Option<RunningStats<'_>>,
    ) -> Result<Self::Saved> {
        let checked = self.signature(shape).and_then(|sig| {
            sig.check_packed(self.name(), "params", params.len(), shape)?;
            sig.check_running(self.name(), running.as_ref(), shape)?;
            Ok(sig)
        });
        let sig = checked.map_err(|e| self.refuse(false, e))?;
        self.run_forward(&sig, y, x, shape, params, running)
    }

    /// Gradients of `sum(y · dy)` with respect to `x` and the packed
    /// parameters.
    fn backward<T: Elem>(
        &self,
        grads: OpGrads<'_, T>,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        saved: &Self::Saved,
    ) -> Result<()> {
        let checked = self.signature(shape).and_then(|sig| {
            sig.check_packed(self.name(), "params", params.len(), shape)?;
            if let Some(d) = &grads.dparams {
                sig.check_packed(self.name(), "dparams", d.len(), shape)?;
            }
            Ok(sig)
        });
        let sig = checked.map_err(|e| self.refuse(true, e))?;
        self.run_backward(&sig, grads, dy, x, shape, params, saved)
    }
}

/// The signature of `params` and `running`, once its packed length is
/// known to fit in `usize` (an error naming `shape` otherwise): how every
/// op's [`NormOp::signature`] ends.
pub(crate) fn checked_signature(
    op: &'static str,
    shape: &[usize],
    params: Vec<Param>,
    running: Running,
) -> Result<Signature> {
    let total = params
        .iter()
        .try_fold(0usize, |sum, p| sum.checked_add(p.len));
    match total {
        Some(_) => Ok(Signature { params, running }),
        None => Err(NormError::TooLarge {
            op,
            shape: shape.to_vec(),
        }),
    }
}

/// The packed parameters of `signature` that hold `weight` and `bias`,
/// as an [`crate::Affine`] (the first two slots of most ops).
pub(crate) fn affine_of<'a>(sig: &Signature, packed: &'a [f32]) -> crate::Affine<'a> {
    crate::Affine {
        weight: sig.get(packed, "weight"),
        bias: sig.get(packed, "bias"),
    }
}

/// `weight` and `bias` slots for an op with per-channel affine
/// parameters of `channels` values.
pub(crate) fn affine_params(weight: bool, bias: bool, channels: usize) -> Vec<Param> {
    let mut p = Vec::with_capacity(2);
    if weight {
        p.push(Param {
            name: "weight",
            len: channels,
        });
    }
    if bias {
        p.push(Param {
            name: "bias",
            len: channels,
        });
    }
    p
}

/// Splits packed parameter gradients the way `signature` splits the
/// parameters, into [`crate::Grads`] for an affine op and the rest.
pub(crate) fn affine_grads<'a, T>(
    sig: &Signature,
    grads: OpGrads<'a, T>,
) -> (crate::Grads<'a, T>, Vec<(&'static str, &'a mut [f32])>) {
    let mut rest = Vec::new();
    let dparams = grads.dparams;
    let mut grads = crate::Grads::dx(grads.dx);
    if let Some(d) = dparams {
        for (p, slot) in sig.params.iter().zip(sig.split_mut(d)) {
            match p.name {
                "weight" => grads.dweight = Some(slot),
                "bias" => grads.dbias = Some(slot),
                name => rest.push((name, slot)),
            }
        }
    }
    (grads, rest)
}
