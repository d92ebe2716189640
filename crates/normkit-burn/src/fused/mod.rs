//! The fused path: any normkit op ([`normkit::op::ErasedOp`]) as one burn
//! backend-extension call. On `flex` it is the op's forward kernel; on
//! `Autodiff<flex>` also one custom backward node running the op's
//! backward kernel with what the forward saved.
//!
//! - `extension`: the extension trait and the flex implementation;
//! - `node`: the autodiff implementation and its backward node;
//! - here: packing the parameters and running statistics into the call
//!   and unpacking what comes back, as tensor operations in burn's graph.
//!
//! Adding an op needs nothing here: its `ErasedOp` is the whole contract.

mod extension;
mod node;

use std::sync::Arc;

use burn::backend::{Dispatch, DispatchTensor};
use burn::tensor::{DType, Tensor};
use normkit::op::ErasedOp;

use crate::error::Result;
use crate::functional::Running;
use extension::{Maybe, NormBackend, OpRef, Outcome};

/// `t` in `f32`, cast in the graph when it is not.
fn as_f32(t: Tensor<1>) -> Tensor<1> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(DType::F32)
    }
}

/// Tensors laid end to end as one `f32` tensor; `None` when there are
/// none. The concatenation is a graph operation: the gradient of the
/// result splits back onto each part.
fn pack(parts: Vec<Tensor<1>>) -> Option<DispatchTensor> {
    let mut parts: Vec<Tensor<1>> = parts.into_iter().map(as_f32).collect();
    let packed = match parts.len() {
        0 => return None,
        1 => parts.pop()?,
        _ => Tensor::cat(parts, 0),
    };
    Some(packed.into_dispatch())
}

/// Runs `op` on `x` by the fused kernels. `params` are the op's
/// parameters present, flattened, in the order of its signature;
/// `running` its running statistics. Returns the output and, for a
/// training step given running statistics, their updated values in the
/// running statistics' own type.
///
/// The caller has checked the arguments against `op`'s signature
/// (`functional::prepare`).
pub(crate) fn run<const D: usize>(
    op: Arc<dyn ErasedOp>,
    x: Tensor<D>,
    params: Vec<Tensor<1>>,
    running: Option<Running>,
) -> Result<(Tensor<D>, Option<Running>)> {
    let like = running.as_ref().map(|(m, _)| (m.dims()[0], m.dtype()));
    let running = running.and_then(|(m, v)| pack(vec![m, v]));
    let out = <Dispatch as NormBackend>::normkit_op(
        OpRef(op),
        x.into_dispatch(),
        Maybe::from_option(pack(params)),
        Maybe::from_option(running),
    );
    match out {
        Outcome::Done { y, running } => {
            let running = running.into_option().zip(like).map(|(r, (c, dtype))| {
                let r = Tensor::<1>::from_dispatch(r);
                let part = |at: usize| {
                    let t = r.clone().narrow(0, at, c);
                    if dtype == DType::F32 {
                        t
                    } else {
                        t.cast(dtype)
                    }
                };
                (part(0), part(c))
            });
            Ok((Tensor::from_dispatch(y), running))
        }
        Outcome::Refused(e) => Err(e.into()),
    }
}
