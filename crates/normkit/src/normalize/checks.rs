//! A plan's argument checks: buffer lengths, parameters and saved
//! statistics against its geometry.

use super::plan::Plan;
use crate::error::Result;
use crate::layout::{check_affine, check_grads, check_len, Affine, Grads, Stats};

impl Plan {
    /// Checks a forward call's buffers against the plan.
    pub fn check_forward(
        &self,
        op: &'static str,
        y_len: usize,
        x_len: usize,
        affine: Affine<'_>,
        shape: &[usize],
    ) -> Result<()> {
        check_len(op, "x", x_len, self.geo.len(), shape)?;
        check_len(op, "y", y_len, self.geo.len(), shape)?;
        check_affine(op, affine, self.geo.c, shape)
    }

    /// Checks a backward call's buffers and saved statistics against the
    /// plan (`mean` may be empty for uncentered plans).
    #[allow(clippy::too_many_arguments)]
    pub fn check_backward<T>(
        &self,
        op: &'static str,
        grads: &Grads<'_, T>,
        dy: &[T],
        x: &[T],
        weight: Option<&[f32]>,
        stats: &Stats,
        shape: &[usize],
    ) -> Result<()> {
        let (len, c, k) = (self.geo.len(), self.geo.c, self.num_groups());
        check_len(op, "x", x.len(), len, shape)?;
        check_len(op, "dy", dy.len(), len, shape)?;
        check_grads(op, grads, len, c, shape)?;
        check_affine(op, Affine { weight, bias: None }, c, shape)?;
        if self.centered {
            check_len(op, "mean", stats.mean.len(), k, shape)?;
        }
        check_len(op, "rstd", stats.rstd.len(), k, shape)
    }
}
