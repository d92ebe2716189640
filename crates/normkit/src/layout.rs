//! Shapes, layouts and the small argument bundles shared by every op.

use crate::error::{NormError, Result};

/// Where the channel dimension sits in an input of rank ≥ 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelAxis {
    /// `[N, C, *]`: PyTorch's default (NCHW).
    #[default]
    First,
    /// `[N, *, C]`: channels-last (NHWC), as in tokens × features.
    Last,
}

/// Optional per-channel affine parameters `y = x̂ · weight + bias`.
/// A missing weight means 1, a missing bias means 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Affine<'a> {
    pub weight: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
}

impl<'a> Affine<'a> {
    /// No affine transform.
    pub const NONE: Affine<'static> = Affine {
        weight: None,
        bias: None,
    };

    /// Both weight and bias.
    pub fn new(weight: &'a [f32], bias: &'a [f32]) -> Self {
        Affine {
            weight: Some(weight),
            bias: Some(bias),
        }
    }
}

/// Gradient outputs of a backward pass. `dweight`/`dbias` are written when
/// present (and overwritten, not accumulated into).
#[derive(Debug)]
pub struct Grads<'a, T> {
    pub dx: &'a mut [T],
    pub dweight: Option<&'a mut [f32]>,
    pub dbias: Option<&'a mut [f32]>,
}

impl<'a, T> Grads<'a, T> {
    /// Only the input gradient.
    pub fn dx(dx: &'a mut [T]) -> Self {
        Grads {
            dx,
            dweight: None,
            dbias: None,
        }
    }
}

/// Statistics a training forward pass saves for its backward pass, one entry
/// per normalized group (per channel for BatchNorm, per row for LayerNorm,
/// per (sample, group) for GroupNorm and InstanceNorm).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    /// Mean of each group, rounded to f32. Empty for RMSNorm, which has none.
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + eps)` (RMSNorm: `1 / sqrt(mean(x²) + eps)`).
    pub rstd: Vec<f32>,
}

/// Running statistics, updated in place by a training step.
#[derive(Debug)]
pub struct RunningStats<'a> {
    pub mean: &'a mut [f32],
    pub var: &'a mut [f32],
}

/// How running statistics follow the batch statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Momentum {
    /// `running = (1 - m) · running + m · batch` (PyTorch's `momentum=m`).
    Exponential(f32),
    /// Cumulative moving average: `m = 1 / (num_batches_tracked + 1)`
    /// (PyTorch's `momentum=None`), with the count taken before the step.
    CumulativeAverage { num_batches_tracked: u64 },
}

impl Default for Momentum {
    fn default() -> Self {
        Momentum::Exponential(0.1)
    }
}

impl Momentum {
    /// The weight of this batch's statistic in the update.
    pub fn factor(self) -> f64 {
        match self {
            Momentum::Exponential(m) => m as f64,
            Momentum::CumulativeAverage {
                num_batches_tracked,
            } => 1.0 / (num_batches_tracked as f64 + 1.0),
        }
    }

    pub(crate) fn validate(self, op: &'static str) -> Result<()> {
        if let Momentum::Exponential(m) = self {
            if !m.is_finite() {
                return Err(NormError::Param {
                    op,
                    name: "momentum",
                    domain: "finite",
                    value: m as f64,
                });
            }
        }
        Ok(())
    }
}

/// The canonical view every per-channel op works on: `[n, c, s]` when
/// channels come first, `[n, s, c]` when they come last, where `s` is the
/// product of the spatial dimensions (1 when there are none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub n: usize,
    pub c: usize,
    pub s: usize,
    pub axis: ChannelAxis,
}

impl Geometry {
    /// Splits `shape` (rank ≥ 2) into batch, channel and spatial extents.
    pub fn channels(op: &'static str, shape: &[usize], axis: ChannelAxis) -> Result<Self> {
        if shape.len() < 2 {
            return Err(NormError::Rank {
                op,
                shape: shape.to_vec(),
                min_rank: 2,
            });
        }
        numel(op, shape)?;
        let n = shape[0];
        let (c, spatial) = match axis {
            ChannelAxis::First => (shape[1], &shape[2..]),
            ChannelAxis::Last => (shape[shape.len() - 1], &shape[1..shape.len() - 1]),
        };
        // With an empty batch the product above is 0 whatever the other
        // extents are, so check the per-sample ones the plans multiply.
        let s = product(op, spatial, shape)?;
        product(op, &[c, s], shape)?;
        Ok(Geometry { n, c, s, axis })
    }

    /// Number of values. The product of the three fits (it is the input's
    /// checked element count), but `n · c` alone may not when `s` is 0.
    pub fn len(&self) -> usize {
        if self.c == 0 || self.s == 0 {
            0
        } else {
            self.n * self.c * self.s
        }
    }
}

/// Number of elements of `shape`, or an error if it overflows.
pub(crate) fn numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    product(op, shape, shape)
}

/// The product of `dims`, or an error naming `shape` (the input shape the
/// caller was given) if it overflows.
pub(crate) fn product(op: &'static str, dims: &[usize], shape: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NormError::TooLarge {
            op,
            shape: shape.to_vec(),
        })
}

pub(crate) fn check_len(
    op: &'static str,
    name: &'static str,
    got: usize,
    expected: usize,
    shape: &[usize],
) -> Result<()> {
    if got != expected {
        return Err(NormError::Length {
            op,
            name,
            expected,
            got,
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

pub(crate) fn check_opt_len(
    op: &'static str,
    name: &'static str,
    v: Option<&[f32]>,
    expected: usize,
    shape: &[usize],
) -> Result<()> {
    match v {
        Some(v) => check_len(op, name, v.len(), expected, shape),
        None => Ok(()),
    }
}

pub(crate) fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(NormError::Eps { op, eps })
    }
}

pub(crate) fn check_affine(
    op: &'static str,
    affine: Affine<'_>,
    channels: usize,
    shape: &[usize],
) -> Result<()> {
    check_opt_len(op, "weight", affine.weight, channels, shape)?;
    check_opt_len(op, "bias", affine.bias, channels, shape)
}

/// Checks the gradient outputs against the input's length and channel count.
pub(crate) fn check_grads<T>(
    op: &'static str,
    grads: &Grads<'_, T>,
    len: usize,
    channels: usize,
    shape: &[usize],
) -> Result<()> {
    check_len(op, "dx", grads.dx.len(), len, shape)?;
    check_opt_len(op, "dweight", grads.dweight.as_deref(), channels, shape)?;
    check_opt_len(op, "dbias", grads.dbias.as_deref(), channels, shape)
}
