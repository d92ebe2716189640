//! The one error type of the crate.

use normkit::NormError;

/// Why a layer refused its configuration, its input or a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input does not fit the op (shape, rank, groups, too few values):
    /// the same error the normkit kernel gives, raised before any work.
    #[error(transparent)]
    Norm(#[from] NormError),
    /// The input's channel count differs from the one the layer was built for.
    #[error("{op}: input shape {shape:?} has {got} channels on its channel axis, the layer was built for {expected}")]
    Channels {
        op: &'static str,
        expected: usize,
        got: usize,
        shape: Vec<usize>,
    },
    /// A configuration value is out of its domain.
    #[error("{op}: {name} must be {domain}, got {value}")]
    Config {
        op: &'static str,
        name: &'static str,
        domain: &'static str,
        value: f64,
    },
    /// A layer's input tensor has an element type the op cannot take.
    #[error("{op}: unsupported element type {dtype}")]
    DType { op: &'static str, dtype: String },
    /// A checkpoint lacks a tensor the layer needs.
    #[error("checkpoint has no tensor `{key}`")]
    MissingTensor { key: String },
    /// A checkpoint tensor has the wrong shape for the layer.
    #[error("checkpoint tensor `{key}` has shape {got:?}, the layer expects {expected:?}")]
    TensorShape {
        key: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A checkpoint tensor has an element type that is not a number.
    #[error("checkpoint tensor `{key}` has unsupported element type {dtype}")]
    TensorDType { key: String, dtype: String },
    /// The safetensors container itself is malformed.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// The checkpoint file could not be read.
    #[error("reading checkpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks the `eps` of a configuration: non-negative and finite once
/// rounded to the `f32` the kernels take.
pub(crate) fn check_eps(op: &'static str, eps: f64) -> Result<()> {
    if (eps as f32).is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::Config {
            op,
            name: "eps",
            domain: "non-negative and finite in f32",
            value: eps,
        })
    }
}

/// Checks an exponential momentum: the weight of a batch in a running
/// average, within `[0, 1]` (as burn's layers require).
pub(crate) fn check_momentum(op: &'static str, momentum: Option<f64>) -> Result<()> {
    match momentum {
        Some(m) if !(0.0..=1.0).contains(&m) => Err(Error::Config {
            op,
            name: "momentum",
            domain: "within [0, 1]",
            value: m,
        }),
        _ => Ok(()),
    }
}

/// Checks a count that must be positive.
pub(crate) fn check_positive(op: &'static str, name: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        Err(Error::Config {
            op,
            name,
            domain: "positive",
            value: 0.0,
        })
    } else {
        Ok(())
    }
}

/// Checks that an input of `shape` has `expected` channels on `axis`, as
/// the layer was built for; ranks below 2 are left to the op's own check.
pub(crate) fn check_channels(
    op: &'static str,
    shape: &[usize],
    axis: crate::ChannelAxis,
    expected: usize,
) -> Result<()> {
    let got = match (shape.len(), axis) {
        (0 | 1, _) => return Ok(()),
        (_, crate::ChannelAxis::First) => shape[1],
        (d, crate::ChannelAxis::Last) => shape[d - 1],
    };
    if got == expected {
        Ok(())
    } else {
        Err(Error::Channels {
            op,
            expected,
            got,
            shape: shape.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_op_and_the_values() {
        let e = check_eps("BatchNorm", -1.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BatchNorm: eps must be non-negative and finite in f32, got -1"
        );
        // Finite in f64, infinite in the kernels' f32.
        assert!(check_eps("LayerNorm", 1e39).is_err());
        assert!(check_eps("LayerNorm", 0.0).is_ok());
        let e = check_positive("GroupNorm", "num_channels", 0).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("GroupNorm: num_channels must be positive"));
        assert!(check_momentum("BatchNorm", None).is_ok());
        assert!(check_momentum("BatchNorm", Some(f64::NAN)).is_err());
        assert!(check_momentum("BatchNorm", Some(5.0)).is_err());
        assert!(check_momentum("BatchNorm", Some(-0.1)).is_err());
        assert!(check_momentum("BatchNorm", Some(1.0)).is_ok());
        let e: Error = NormError::Eps {
            op: "layer_norm",
            eps: f32::NAN,
        }
        .into();
        assert!(e.to_string().starts_with("layer_norm: eps"));
    }
}
