//! The normalizations the study compares, as one pluggable layer type.

use burn::module::{Module, RunningState};
use burn::tensor::{Device, Tensor};
use normkit_burn::{
    BatchNorm, BatchNormConfig, BatchRenorm, BatchRenormConfig, ChannelAxis, Dyt, DytConfig,
    GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, LayerNorm, LayerNormConfig,
    RenormScheduleConfig, RmsNorm, RmsNormConfig, SwitchNorm, SwitchNormConfig,
};

/// The normalizations the study compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NormKind {
    None,
    Batch,
    Layer,
    /// GroupNorm with [`group_count`] groups.
    Group,
    /// GroupNorm with this many groups (GN(1) normalizes each sample over
    /// all its channels and positions, like LayerNorm).
    GroupOf(usize),
    Instance,
    Rms,
    Weight,
    Dyt,
    /// Batch Renormalization.
    Renorm,
    /// Switchable Normalization.
    Switch,
}

impl NormKind {
    /// The name the report prints.
    pub fn label(self) -> String {
        match self {
            NormKind::None => "none".into(),
            NormKind::Batch => "BN".into(),
            NormKind::Layer => "LN".into(),
            NormKind::Group => "GN".into(),
            NormKind::GroupOf(g) => format!("GN({g})"),
            NormKind::Instance => "IN".into(),
            NormKind::Rms => "RMSNorm".into(),
            NormKind::Weight => "WeightNorm".into(),
            NormKind::Dyt => "DyT".into(),
            NormKind::Renorm => "BatchRenorm".into(),
            NormKind::Switch => "SwitchNorm".into(),
        }
    }

    /// A short lowercase name for arms, metric keys and seed streams.
    pub fn slug(self) -> String {
        match self {
            NormKind::None => "none".into(),
            NormKind::Batch => "bn".into(),
            NormKind::Layer => "ln".into(),
            NormKind::Group => "gn".into(),
            NormKind::GroupOf(g) => format!("gn{g}"),
            NormKind::Instance => "in".into(),
            NormKind::Rms => "rms".into(),
            NormKind::Weight => "wn".into(),
            NormKind::Dyt => "dyt".into(),
            NormKind::Renorm => "brn".into(),
            NormKind::Switch => "sn".into(),
        }
    }

    /// Whether the layer keeps running statistics of the batch.
    pub fn uses_batch(self) -> bool {
        matches!(self, NormKind::Batch | NormKind::Renorm | NormKind::Switch)
    }
}

/// The shape a normalization layer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// `[N, C]`: hidden units of an MLP.
    Flat(usize),
    /// `[N, C, *spatial]`, channels first; `spatial` holds up to two
    /// sizes, a 0 marking an absent one.
    Conv {
        channels: usize,
        spatial: [usize; 2],
    },
    /// `[N, T, C]`: tokens, channels last.
    Tokens(usize),
}

/// GroupNorm's group count: the GN paper's 32 where the channels allow,
/// otherwise the largest divisor of the channels up to a quarter of them
/// (so every group holds at least four channels when it can).
pub fn group_count(channels: usize) -> usize {
    if channels % 32 == 0 && channels >= 128 {
        return 32;
    }
    let target = (channels / 4).max(1);
    (1..=target).rev().find(|g| channels % g == 0).unwrap_or(1)
}

/// One normalization layer of any kind. `WeightNorm` reparameterizes the
/// preceding layer's weight instead and has no layer here; nor has `None`.
#[derive(Module, Debug)]
pub enum Norm {
    Batch(BatchNorm),
    Layer(LayerNorm),
    Group(GroupNorm),
    Instance(InstanceNorm),
    Rms(RmsNorm),
    Dyt(Dyt),
    Renorm(BatchRenorm),
    Switch(SwitchNorm),
}

/// Batch Renormalization's schedule in the study: the paper relaxes
/// `r_max` from 1 to 3 and `d_max` from 0 to 5 over tens of thousands of
/// steps; the study's runs are a few hundred to a few thousand steps, so
/// the same shape is compressed: BatchNorm for 100 steps, `d_max = 5` at
/// step 600, `r_max = 3` at step 1000.
pub fn renorm_schedule() -> RenormScheduleConfig {
    RenormScheduleConfig::new()
        .with_warmup(100)
        .with_r_max_at(1000)
        .with_d_max_at(600)
}

/// Why a normalization cannot go where it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} cannot normalize {features:?}: {why}")]
pub struct Unsupported {
    pub kind: String,
    pub features: Features,
    pub why: &'static str,
}

/// DyT's `alpha0` where nothing else is said: the paper's default.
pub const DYT_ALPHA0: f64 = 0.5;

impl Norm {
    /// The layer of `kind` for `features`; `Ok(None)` for `None` and
    /// `WeightNorm`. InstanceNorm needs more than one position per channel
    /// and so does not apply to MLP units. DyT starts at the paper's
    /// `alpha0 = 0.5`; InstanceNorm gets affine parameters like the others.
    pub fn new(
        kind: NormKind,
        features: Features,
        device: &Device,
    ) -> Result<Option<Norm>, Unsupported> {
        Self::with_alpha(kind, features, DYT_ALPHA0, device)
    }

    /// [`Norm::new`] with DyT's `alpha0` given.
    pub fn with_alpha(
        kind: NormKind,
        features: Features,
        alpha0: f64,
        device: &Device,
    ) -> Result<Option<Norm>, Unsupported> {
        let (channels, axis, trailing): (usize, ChannelAxis, Vec<usize>) = match features {
            Features::Flat(c) => (c, ChannelAxis::First, vec![c]),
            Features::Conv { channels, spatial } => {
                let mut t = vec![channels];
                t.extend(spatial.iter().copied().filter(|&s| s > 0));
                (channels, ChannelAxis::First, t)
            }
            Features::Tokens(c) => (c, ChannelAxis::Last, vec![c]),
        };
        let unsupported = |why| Unsupported {
            kind: kind.label(),
            features,
            why,
        };
        let group = |groups: usize| {
            Norm::Group(
                GroupNormConfig::new(groups, channels)
                    .with_channel_axis(axis)
                    .init(device),
            )
        };
        let norm = match kind {
            NormKind::None | NormKind::Weight => return Ok(None),
            NormKind::Batch => Norm::Batch(
                BatchNormConfig::new(channels)
                    .with_channel_axis(axis)
                    .init(device),
            ),
            NormKind::Layer => Norm::Layer(LayerNormConfig::new(trailing).init(device)),
            NormKind::Rms => Norm::Rms(RmsNormConfig::new(trailing).init(device)),
            NormKind::Group => group(group_count(channels)),
            NormKind::GroupOf(g) => {
                if g == 0 || channels % g != 0 {
                    return Err(unsupported("the group count must divide the channels"));
                }
                group(g)
            }
            NormKind::Instance => {
                if matches!(features, Features::Flat(_)) {
                    return Err(unsupported(
                        "an MLP unit has one value per example, so there are no \
                         instance statistics to take",
                    ));
                }
                Norm::Instance(
                    InstanceNormConfig::new(channels)
                        .with_affine(true)
                        .with_channel_axis(axis)
                        .init(device),
                )
            }
            NormKind::Renorm => Norm::Renorm(
                BatchRenormConfig::new(channels)
                    .with_channel_axis(axis)
                    .with_schedule(Some(renorm_schedule()))
                    .init(device),
            ),
            NormKind::Switch => Norm::Switch(
                SwitchNormConfig::new(channels)
                    .with_channel_axis(axis)
                    .init(device),
            ),
            NormKind::Dyt => {
                // DyT's channel axis is where the channels are: last for
                // [N, C] and tokens, first for feature maps.
                let axis = match features {
                    Features::Conv { .. } => ChannelAxis::First,
                    _ => ChannelAxis::Last,
                };
                Norm::Dyt(
                    DytConfig::new(channels)
                        .with_alpha_init(alpha0)
                        .with_channel_axis(axis)
                        .init(device),
                )
            }
        };
        Ok(Some(norm))
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Norm::Batch(n) => n.forward(x),
            Norm::Layer(n) => n.forward(x),
            Norm::Group(n) => n.forward(x),
            Norm::Instance(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
            Norm::Dyt(n) => n.forward(x),
            Norm::Renorm(n) => n.forward(x),
            Norm::Switch(n) => n.forward(x),
        }
    }

    /// Forgets BatchNorm's and Batch Renorm's running statistics and
    /// switches them to a cumulative average, so that training-mode passes
    /// over a dataset leave its population statistics (PyTorch's
    /// `momentum=None`). Other layers are left alone.
    pub fn reset_running_stats(&mut self) {
        fn fresh(state: &RunningState<Tensor<1>>, value: f32) -> RunningState<Tensor<1>> {
            let like = state.value_sync();
            RunningState::new(like.zeros_like().add_scalar(value))
        }
        match self {
            Norm::Batch(bn) => {
                bn.momentum = None;
                bn.running_mean = bn.running_mean.as_ref().map(|s| fresh(s, 0.0));
                bn.running_var = bn.running_var.as_ref().map(|s| fresh(s, 1.0));
                bn.num_batches_tracked = bn.num_batches_tracked.as_ref().map(|s| fresh(s, 0.0));
            }
            Norm::Renorm(brn) => {
                brn.momentum = None;
                brn.running_mean = fresh(&brn.running_mean, 0.0);
                brn.running_var = fresh(&brn.running_var, 1.0);
                brn.num_batches_tracked = fresh(&brn.num_batches_tracked, 0.0);
            }
            _ => {}
        }
    }
}

/// `norm(x)`, or `x` where there is no layer.
pub fn norm_forward<const D: usize>(norm: &Option<Norm>, x: Tensor<D>) -> Tensor<D> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

/// Softmaxed importances of a Switchable Normalization layer's mean and
/// variance mixtures, each in the order IN, LN, BN.
pub type Importances = ([f32; 3], [f32; 3]);

/// The importances of every SwitchNorm layer among `norms`, in order.
pub fn switch_importances<'a>(norms: impl Iterator<Item = &'a Option<Norm>>) -> Vec<Importances> {
    norms
        .filter_map(|n| match n {
            Some(Norm::Switch(s)) => Some(s.importances()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_counts_divide_the_channels() {
        assert_eq!(group_count(25), 5);
        assert_eq!(group_count(100), 25);
        assert_eq!(group_count(256), 32);
        assert_eq!(group_count(16), 4);
        assert_eq!(group_count(3), 1);
        for c in 1..300 {
            assert_eq!(c % group_count(c), 0, "{c}");
        }
    }

    #[test]
    fn labels_and_slugs_name_group_counts() {
        assert_eq!(NormKind::GroupOf(8).label(), "GN(8)");
        assert_eq!(NormKind::GroupOf(1).slug(), "gn1");
        assert!(NormKind::Renorm.uses_batch() && !NormKind::Layer.uses_batch());
    }
}
