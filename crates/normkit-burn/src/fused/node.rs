//! The `Autodiff<flex>` side of the fused path: the forward as on flex,
//! plus one custom backward node, the same for every op. The node keeps
//! the op, the contiguous input, the packed parameters and what the
//! forward saved (the op's `Saved`, erased); its backward is the op's.
//!
//! The node has the input and the packed parameters as parents. Packing
//! and unpacking are tensor operations in the graph (see `fused::run`), so
//! burn's own autodiff routes each parameter's share of the packed
//! gradient back to it, casts included.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Flex};
use normkit::op::ErasedSaved;
use normkit::NormError;

use super::extension::{
    contiguous_as, dims, elems, elems_mut, empty_like, f32_tensor, forward, values_f32, Maybe,
    NormBackend, OpRef, Outcome,
};
use crate::route;

/// Everything the backward needs, saved by the forward.
#[derive(Debug, Clone)]
struct State {
    op: OpRef,
    /// The input, contiguous.
    x: FlexTensor,
    params: Arc<[f32]>,
    saved: ErasedSaved,
}

/// The custom backward node of every fused op: parent 0 is the input,
/// parent 1 (when the op has parameters) the packed parameters.
#[derive(Debug)]
struct FusedBackward;

impl<const N: usize> Backward<Flex, N> for FusedBackward {
    type State = State;

    fn backward(self, ops: Ops<State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let want_dparams = N == 2 && ops.parents[N - 1].is_some();
        let (dx, dparams) = backward(&ops.state, dy, want_dparams);
        let mut computed = [Some(dx), dparams];
        for (parent, grad) in ops.parents.into_iter().zip(computed.iter_mut()) {
            if let (Some(node), Some(grad)) = (parent, grad.take()) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// `dx` and, when asked, the packed parameters' gradient (`f32`).
fn backward(state: &State, dy: FlexTensor, want_dparams: bool) -> (FlexTensor, Option<FlexTensor>) {
    route::count_backward();
    let shape = dims(&state.x);
    let dy = contiguous_as(dy, state.x.dtype());
    let mut dx = empty_like(&shape, &state.x);
    let mut dparams = want_dparams.then(|| vec![0.0f32; state.params.len()]);
    // The forward took these very shapes and saved this state: a refusal
    // here is a broken invariant, not a user's input.
    if let Err(e) = run_backward(state, &mut dx, dparams.as_deref_mut(), &dy, &shape) {
        panic!("fused backward of a validated forward failed: {e}");
    }
    (dx, dparams.map(f32_tensor))
}

fn run_backward(
    state: &State,
    dx: &mut FlexTensor,
    dparams: Option<&mut [f32]>,
    dy: &FlexTensor,
    shape: &[usize],
) -> Result<(), NormError> {
    let op = &state.op;
    op.0.backward_erased(
        elems_mut(op, dx)?,
        dparams,
        elems(op, dy)?,
        elems(op, &state.x)?,
        shape,
        &state.params,
        &state.saved,
    )
}

type AdTensor<C> = FloatTensor<Autodiff<Flex, C>>;

/// Registers `output` as the result of the fused node over `parents`.
fn track<C: CheckpointStrategy, const N: usize>(
    parents: [NodeGuard; N],
    state: State,
    output: FlexTensor,
) -> AdTensor<C> {
    match FusedBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

impl<C: CheckpointStrategy> NormBackend for Autodiff<Flex, C> {
    fn normkit_op(
        op: OpRef,
        x: AdTensor<C>,
        params: Maybe<Self>,
        running: Maybe<Self>,
    ) -> Outcome<Self> {
        let (x, x_node) = x.into_parts();
        let params = params.into_option().map(|p| {
            let (p, node) = p.into_parts();
            (values_f32(&p), node)
        });
        // Running statistics are constants of the graph.
        let running = running.into_option().map(|r| r.into_primitive());
        let packed: &[f32] = params.as_ref().map_or(&[], |(p, _)| p);
        let fwd = match forward(&op, x, packed, running) {
            Ok(fwd) => fwd,
            Err(e) => return Outcome::Refused(e),
        };
        let state = |params: Vec<f32>| State {
            op,
            x: fwd.x,
            params: params.into(),
            saved: fwd.saved,
        };
        let y = match params {
            Some((p, node)) => track::<C, 2>([x_node, node], state(p), fwd.y),
            None => track::<C, 1>([x_node], state(Vec::new()), fwd.y),
        };
        Outcome::Done {
            y,
            running: Maybe::from_option(fwd.running.map(<Self as AutodiffBackend>::from_inner)),
        }
    }
}
