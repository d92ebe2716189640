//! Running statistics: PyTorch's `running_mean`, `running_var` and
//! `num_batches_tracked` buffers, held as candle [`Var`]s so a training
//! step updates them in place.

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use normkit::Momentum;

/// The running-statistics buffers of BatchNorm and InstanceNorm.
///
/// Built from a [`VarBuilder`] backed by a `VarMap`, the `Var`s share their
/// storage with the map's, so `VarMap::save` writes the updated values.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub mean: Var,
    pub var: Var,
    pub num_batches_tracked: Var,
}

impl Running {
    /// Loads (or creates: mean 0, variance 1, count 0) the buffers for
    /// `channels` channels. A state dict without `num_batches_tracked`
    /// (PyTorch before 0.4.1) starts the count at 0.
    pub fn load(channels: usize, vb: &VarBuilder) -> Result<Self> {
        let count_missing =
            vb.contains_tensor("running_mean") && !vb.contains_tensor("num_batches_tracked");
        let mean =
            vb.get_with_hints_dtype(channels, "running_mean", Init::Const(0.0), DType::F32)?;
        let var = vb.get_with_hints_dtype(channels, "running_var", Init::Const(1.0), DType::F32)?;
        let num_batches_tracked = if count_missing {
            Var::zeros((), DType::I64, vb.device())?
        } else {
            Var::from_tensor(&vb.get_with_hints_dtype(
                (),
                "num_batches_tracked",
                Init::Const(0.0),
                DType::I64,
            )?)?
        };
        Ok(Running {
            mean: Var::from_tensor(&mean)?,
            var: Var::from_tensor(&var)?,
            num_batches_tracked,
        })
    }

    /// Buffers holding copies of `mean` and `var` (as f32), with the count
    /// at 0.
    pub fn from_tensors(mean: &Tensor, var: &Tensor) -> Result<Self> {
        let f32_var = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F32)?);
        Ok(Running {
            mean: f32_var(mean)?,
            var: f32_var(var)?,
            num_batches_tracked: Var::zeros((), DType::I64, mean.device())?,
        })
    }

    /// The running mean and variance as f32 values.
    pub fn values(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let read = |v: &Var| v.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1();
        Ok((read(&self.mean)?, read(&self.var)?))
    }

    /// Overwrites the running mean and variance.
    pub fn store(&self, mean: Vec<f32>, var: Vec<f32>) -> Result<()> {
        let write = |dst: &Var, v: Vec<f32>| {
            let t = Tensor::from_vec(v, dst.shape(), dst.device())?.to_dtype(dst.dtype())?;
            dst.set(&t)
        };
        write(&self.mean, mean)?;
        write(&self.var, var)
    }

    /// `num_batches_tracked`.
    pub fn count(&self) -> Result<u64> {
        let v = self
            .num_batches_tracked
            .as_tensor()
            .flatten_all()?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?;
        Ok(v.first().map_or(0, |&n| n.max(0) as u64))
    }

    /// Sets `num_batches_tracked` to `n`.
    pub fn set_count(&self, n: u64) -> Result<()> {
        let dst = &self.num_batches_tracked;
        let t = Tensor::full(n as i64, dst.shape(), dst.device())?.to_dtype(dst.dtype())?;
        dst.set(&t)
    }

    /// The buffers under PyTorch's names.
    pub fn named(&self) -> [(&'static str, Tensor); 3] {
        [
            ("running_mean", self.mean.as_tensor().clone()),
            ("running_var", self.var.as_tensor().clone()),
            (
                "num_batches_tracked",
                self.num_batches_tracked.as_tensor().clone(),
            ),
        ]
    }
}

/// The update rule of a training step: `momentum`, or with `None` the
/// cumulative average over the batches `update` has tracked. A step that
/// updates nothing gets the default (it is not used).
pub(crate) fn momentum(momentum: Option<f64>, update: Option<&Running>) -> Result<Momentum> {
    Ok(match (momentum, update) {
        (Some(m), _) => Momentum::Exponential(m as f32),
        (None, Some(r)) => Momentum::CumulativeAverage {
            num_batches_tracked: r.count()?,
        },
        (None, None) => Momentum::default(),
    })
}
