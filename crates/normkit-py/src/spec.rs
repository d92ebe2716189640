//! Op descriptions: one string names an op and its hyperparameters, so a
//! single entry point (and a single `torch.library` op) serves them all.
//!
//! Format: `kind;key=value;...`, values as Python prints them, lists
//! comma-separated, booleans `0`/`1`, `none` for an absent optional:
//!
//! | kind | keys |
//! |---|---|
//! | `layer_norm` | `shape`, `eps`, `weight`, `bias` |
//! | `rms_norm` | `shape`, `eps` (`none`: the input dtype's machine eps), `weight` |
//! | `batch_norm` | `eps`, `momentum` (`none`: cumulative average), `training`, `weight`, `bias` |
//! | `group_norm` | `groups`, `eps`, `weight`, `bias` |
//! | `instance_norm` | `eps`, `momentum`, `training`, `weight`, `bias` |
//! | `dyt`, `derf` | `channels_last` (`[*, C]` input), `weight`, `bias` |
//! | `weight_norm` | `dim` (`none`: one norm) |
//! | `adain` | `style` (its logical shape), `eps`, `unbiased` |
//! | `ada_norm` | `shape`, `eps` (`none` as RMSNorm), `rms`, `weight`, `bias` |
//! | `switch_norm` | `eps`, `momentum`, `training`, `weight`, `bias` |
//! | `batch_renorm` | `eps`, `momentum`, `training`, `r_max`, `d_max`, `weight`, `bias` |
//!
//! Channel ops take their channel axis from the input's memory layout.

use std::collections::HashMap;

use normkit::op::{
    AdaInOp, AdaNormOp, BatchNormOp, BatchRenormOp, DerfOp, DytOp, ErasedOp, GroupNormOp,
    InstanceNormOp, LayerNormOp, Precision, RmsNormOp, SwitchNormOp, WeightNormOp,
};
use normkit::{
    AdaInConfig, BatchNormConfig, BatchRenormConfig, ChannelAxis, GroupNormConfig,
    InstanceNormConfig, Momentum, SwitchNormConfig,
};
use pyo3::exceptions::PyValueError;
use pyo3::PyResult;

use crate::dlpack::{Dtype, Layout};

/// What the spec cannot say: the input's dtype and memory layout, and the
/// running count of a cumulative-average momentum.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub dtype: Dtype,
    pub layout: Layout,
    pub num_batches_tracked: u64,
}

/// A parsed spec.
struct Spec<'a> {
    text: &'a str,
    kind: &'a str,
    keys: HashMap<&'a str, &'a str>,
}

impl<'a> Spec<'a> {
    fn parse(text: &'a str) -> PyResult<Spec<'a>> {
        let mut parts = text.split(';');
        let kind = parts.next().unwrap_or_default();
        let mut keys = HashMap::new();
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| bad(text, &format!("`{p}` is not key=value")))?;
            keys.insert(k, v);
        }
        Ok(Spec { text, kind, keys })
    }

    fn raw(&self, key: &str) -> PyResult<&'a str> {
        self.keys
            .get(key)
            .copied()
            .ok_or_else(|| bad(self.text, &format!("missing `{key}`")))
    }

    fn parsed<T: std::str::FromStr>(&self, key: &str, v: &str) -> PyResult<T> {
        v.trim()
            .parse()
            .map_err(|_| bad(self.text, &format!("`{key}={v}` is not a valid value")))
    }

    fn f32(&self, key: &str) -> PyResult<f32> {
        self.parsed(key, self.raw(key)?)
    }

    fn flag(&self, key: &str) -> PyResult<bool> {
        match self.raw(key)? {
            "1" | "True" | "true" => Ok(true),
            "0" | "False" | "false" => Ok(false),
            v => Err(bad(self.text, &format!("`{key}={v}` is not 0 or 1"))),
        }
    }

    fn usizes(&self, key: &str) -> PyResult<Vec<usize>> {
        let v = self.raw(key)?;
        if v.is_empty() {
            return Ok(Vec::new());
        }
        v.split(',').map(|d| self.parsed(key, d)).collect()
    }

    /// `eps`, or the machine epsilon of `dtype` for `none` (PyTorch's
    /// RMSNorm default).
    fn eps_or_machine(&self, dtype: Dtype) -> PyResult<f32> {
        match self.raw("eps")? {
            "none" | "None" => {
                let p = match dtype {
                    Dtype::Bf16 => Precision::Bf16,
                    Dtype::F16 => Precision::F16,
                    _ => Precision::F32,
                };
                Ok(p.machine_eps() as f32)
            }
            _ => self.f32("eps"),
        }
    }

    fn momentum(&self, count: u64) -> PyResult<Momentum> {
        match self.raw("momentum")? {
            "none" | "None" => Ok(Momentum::CumulativeAverage {
                num_batches_tracked: count,
            }),
            _ => Ok(Momentum::Exponential(self.f32("momentum")?)),
        }
    }

    /// `weight` and `bias`.
    fn affine(&self) -> PyResult<(bool, bool)> {
        Ok((self.flag("weight")?, self.flag("bias")?))
    }

    /// `eps`, `momentum` and `training` of an op with running statistics.
    fn running(&self, count: u64) -> PyResult<(f32, Momentum, bool)> {
        Ok((
            self.f32("eps")?,
            self.momentum(count)?,
            self.flag("training")?,
        ))
    }
}

fn bad(text: &str, why: &str) -> pyo3::PyErr {
    PyValueError::new_err(format!("normkit: op description `{text}`: {why}"))
}

fn axis(layout: Layout) -> ChannelAxis {
    match layout {
        Layout::Contiguous => ChannelAxis::First,
        Layout::ChannelsLast => ChannelAxis::Last,
    }
}

/// The op `text` describes, for an input of `ctx`'s dtype and layout.
pub fn build(text: &str, ctx: Context) -> PyResult<Box<dyn ErasedOp>> {
    let s = Spec::parse(text)?;
    let channel_axis = axis(ctx.layout);
    let row_op = |name: &str| -> PyResult<()> {
        if ctx.layout == Layout::ChannelsLast {
            return Err(bad(text, &format!("{name} takes a contiguous input")));
        }
        Ok(())
    };
    let op: Box<dyn ErasedOp> = match s.kind {
        "layer_norm" => {
            row_op("layer_norm")?;
            Box::new(LayerNormOp {
                normalized_shape: s.usizes("shape")?,
                eps: s.f32("eps")?,
                weight: s.flag("weight")?,
                bias: s.flag("bias")?,
            })
        }
        "rms_norm" => {
            row_op("rms_norm")?;
            Box::new(RmsNormOp {
                normalized_shape: s.usizes("shape")?,
                eps: s.eps_or_machine(ctx.dtype)?,
                weight: s.flag("weight")?,
            })
        }
        "batch_norm" => {
            let (eps, momentum, training) = s.running(ctx.num_batches_tracked)?;
            let (weight, bias) = s.affine()?;
            let cfg = BatchNormConfig {
                eps,
                momentum,
                channel_axis,
            };
            Box::new(BatchNormOp {
                cfg,
                training,
                weight,
                bias,
            })
        }
        "group_norm" => Box::new(GroupNormOp {
            cfg: GroupNormConfig {
                num_groups: s.parsed("groups", s.raw("groups")?)?,
                eps: s.f32("eps")?,
                channel_axis,
            },
            weight: s.flag("weight")?,
            bias: s.flag("bias")?,
        }),
        "instance_norm" => {
            let (eps, momentum, training) = s.running(ctx.num_batches_tracked)?;
            let (weight, bias) = s.affine()?;
            let cfg = InstanceNormConfig {
                eps,
                momentum,
                channel_axis,
            };
            Box::new(InstanceNormOp {
                cfg,
                training,
                weight,
                bias,
            })
        }
        "dyt" | "derf" => {
            let rows = s.flag("channels_last")?;
            if rows {
                row_op("an elementwise op with channels_last=True")?;
            }
            let channel_axis = if rows {
                ChannelAxis::Last
            } else {
                channel_axis
            };
            let (weight, bias) = s.affine()?;
            if s.kind == "dyt" {
                Box::new(DytOp {
                    channel_axis,
                    weight,
                    bias,
                })
            } else {
                Box::new(DerfOp {
                    channel_axis,
                    weight,
                    bias,
                })
            }
        }
        "weight_norm" => {
            row_op("weight_norm")?;
            let dim = match s.raw("dim")? {
                "none" | "None" => None,
                d => Some(s.parsed("dim", d)?),
            };
            Box::new(WeightNormOp { dim })
        }
        "adain" => {
            let style = s.usizes("style")?;
            let order = ctx.layout.memory_order(style.len());
            Box::new(AdaInOp {
                cfg: AdaInConfig {
                    eps: s.f32("eps")?,
                    unbiased: s.flag("unbiased")?,
                    channel_axis,
                },
                style_shape: order.iter().map(|&d| style[d]).collect(),
            })
        }
        "ada_norm" => {
            row_op("ada_norm")?;
            let rms = s.flag("rms")?;
            Box::new(AdaNormOp {
                normalized_shape: s.usizes("shape")?,
                eps: if rms {
                    s.eps_or_machine(ctx.dtype)?
                } else {
                    s.f32("eps")?
                },
                rms,
                weight: s.flag("weight")?,
                bias: s.flag("bias")?,
            })
        }
        "switch_norm" => {
            let (eps, momentum, training) = s.running(ctx.num_batches_tracked)?;
            let (weight, bias) = s.affine()?;
            let cfg = SwitchNormConfig {
                eps,
                momentum,
                channel_axis,
            };
            Box::new(SwitchNormOp {
                cfg,
                training,
                weight,
                bias,
            })
        }
        "batch_renorm" => {
            let (eps, momentum, training) = s.running(ctx.num_batches_tracked)?;
            let (weight, bias) = s.affine()?;
            let cfg = BatchRenormConfig {
                eps,
                momentum,
                channel_axis,
                r_max: s.f32("r_max")?,
                d_max: s.f32("d_max")?,
            };
            Box::new(BatchRenormOp {
                cfg,
                training,
                weight,
                bias,
            })
        }
        other => return Err(bad(text, &format!("unknown op `{other}`"))),
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            dtype: Dtype::F32,
            layout: Layout::Contiguous,
            num_batches_tracked: 0,
        }
    }

    #[test]
    fn every_kind_builds_and_names_its_op() {
        let cases = [
            (
                "layer_norm;shape=4,5;eps=1e-05;weight=1;bias=0",
                "layer_norm",
            ),
            ("rms_norm;shape=5;eps=none;weight=1", "rms_norm"),
            (
                "batch_norm;eps=1e-05;momentum=none;training=1;weight=1;bias=1",
                "batch_norm",
            ),
            (
                "group_norm;groups=2;eps=1e-05;weight=1;bias=1",
                "group_norm",
            ),
            (
                "instance_norm;eps=1e-05;momentum=0.1;training=0;weight=0;bias=0",
                "instance_norm",
            ),
            ("dyt;channels_last=1;weight=1;bias=1", "dyt"),
            ("derf;channels_last=0;weight=0;bias=1", "derf"),
            ("weight_norm;dim=0", "weight_norm"),
            ("adain;style=2,3,4;eps=1e-05;unbiased=1", "adain"),
            (
                "ada_norm;shape=5;eps=none;rms=1;weight=1;bias=0",
                "ada_rms_norm",
            ),
            (
                "switch_norm;eps=1e-05;momentum=0.1;training=1;weight=1;bias=1",
                "switch_norm",
            ),
            (
                "batch_renorm;eps=1e-05;momentum=0.1;training=1;r_max=3;d_max=5;weight=1;bias=1",
                "batch_renorm",
            ),
        ];
        for (text, name) in cases {
            assert_eq!(build(text, ctx()).unwrap().name_erased(), name, "{text}");
        }
    }

    #[test]
    fn rms_eps_none_is_the_dtype_machine_eps() {
        let op = build(
            "rms_norm;shape=4;eps=none;weight=0",
            Context {
                dtype: Dtype::Bf16,
                ..ctx()
            },
        )
        .unwrap();
        // eps enters the signature's checks only; the packed length shows the op built.
        assert_eq!(op.signature_erased(&[2, 4]).unwrap().packed_len(), 0);
        let s = Spec::parse("rms_norm;eps=none").unwrap();
        assert_eq!(s.eps_or_machine(Dtype::Bf16).unwrap(), 0.0078125);
        assert_eq!(s.eps_or_machine(Dtype::F32).unwrap(), f32::EPSILON);
    }

    #[test]
    fn bad_descriptions_are_errors() {
        pyo3::Python::initialize();
        for text in [
            "nope;eps=1",
            "layer_norm;shape=4;eps=x;weight=1;bias=1",
            "layer_norm;shape=4",
            "batch_norm;eps=1e-5;momentum=0.1;training=2;weight=1;bias=1",
            "group_norm;groups=-1;eps=1e-5;weight=1;bias=1",
        ] {
            assert!(build(text, ctx()).is_err(), "{text}");
        }
    }
}
