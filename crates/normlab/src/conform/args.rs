//! The typed view of a case: its metadata parsed into the ops' arguments,
//! its input tensors by name.

use super::Failure;
use crate::golden::{Case, Tensor};
use normkit::ChannelAxis;

/// The typed view of a case's metadata and tensors.
pub(super) struct Args<'a> {
    pub(super) case: &'a Case,
}

impl<'a> Args<'a> {
    pub(super) fn meta(&self, key: &str) -> Option<&'a str> {
        self.case.meta.get(key).map(String::as_str)
    }

    pub(super) fn tensor(&self, name: &str) -> Option<&'a Tensor> {
        self.case.tensors.get(name)
    }

    pub(super) fn input(&self, name: &str) -> Result<&'a Tensor, Failure> {
        self.tensor(name)
            .ok_or_else(|| Failure::Malformed(format!("no input tensor `{name}`")))
    }

    pub(super) fn vec(&self, name: &str) -> Option<Vec<f32>> {
        self.tensor(name).map(Tensor::to_f32)
    }

    pub(super) fn parse<T: std::str::FromStr>(
        &self,
        key: &str,
        default: Option<T>,
    ) -> Result<T, Failure> {
        match self.meta(key) {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| Failure::Refused(format!("invalid {key} = {v:?}"))),
            None => default.ok_or_else(|| Failure::Malformed(format!("no `{key}` in metadata"))),
        }
    }

    pub(super) fn eps(&self, default: f32) -> Result<f32, Failure> {
        match self.meta("eps").map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("nan") => Ok(f32::NAN),
            _ => self.parse("eps", Some(default)),
        }
    }

    pub(super) fn flag(&self, key: &str, default: bool) -> Result<bool, Failure> {
        match self.meta(key).map(str::trim) {
            None => Ok(default),
            Some("true" | "True" | "1") => Ok(true),
            Some("false" | "False" | "0") => Ok(false),
            Some(v) => Err(Failure::Refused(format!("invalid {key} = {v:?}"))),
        }
    }

    /// `1` is channels-first; `-1` (or the last axis) is channels-last.
    pub(super) fn channel_axis(
        &self,
        rank: usize,
        default: ChannelAxis,
    ) -> Result<ChannelAxis, Failure> {
        let Some(v) = self.meta("channel_axis") else {
            return Ok(default);
        };
        let axis: i64 = self.parse("channel_axis", None)?;
        match axis {
            1 if rank >= 2 => Ok(ChannelAxis::First),
            -1 => Ok(ChannelAxis::Last),
            a if rank >= 2 && a == rank as i64 - 1 => Ok(ChannelAxis::Last),
            _ => Err(Failure::Refused(format!(
                "channel_axis {v} is not 1 or the last axis of a rank-{rank} input"
            ))),
        }
    }

    /// `momentum` as a factor; `None` when the case says `none`.
    pub(super) fn momentum(&self) -> Result<Option<f32>, Failure> {
        match self.meta("momentum").map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("none") => Ok(None),
            _ => self.parse("momentum", Some(0.1)).map(Some),
        }
    }

    pub(super) fn int_list(&self, key: &str) -> Result<Vec<usize>, Failure> {
        let raw = self
            .meta(key)
            .ok_or_else(|| Failure::Malformed(format!("no `{key}` in metadata")))?;
        let inner = raw.trim().trim_start_matches('[').trim_end_matches(']');
        inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| Failure::Refused(format!("invalid {key} = {raw:?}")))
            })
            .collect()
    }
}

/// Parameter tensors must be shaped `[C]` (or `normalized_shape`).
pub(super) fn check_param_shape(args: &Args, name: &str, want: &[usize]) -> Result<(), Failure> {
    match args.tensor(name) {
        Some(t) if t.shape != want => Err(Failure::Refused(format!(
            "`{name}` has shape {:?}, expected {want:?}",
            t.shape
        ))),
        _ => Ok(()),
    }
}

/// A scalar parameter: a tensor of one value.
pub(super) fn scalar(args: &Args, op: &str, name: &str) -> Result<f32, Failure> {
    let t = args.input(name)?;
    if t.numel() != 1 {
        return Err(Failure::Refused(format!(
            "{op}: {name} must hold one value, got shape {:?}",
            t.shape
        )));
    }
    Ok(t.data[0] as f32)
}
