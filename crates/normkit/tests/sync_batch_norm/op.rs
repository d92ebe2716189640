//! `SyncBatchNormOp` through the one op interface (and its erased form)
//! computes what the entry points compute; in evaluation it is BatchNorm's
//! evaluation and does not communicate.

use std::sync::Arc;
use std::time::Duration;

use normkit::comm::{Communicator, ThreadComm};
use normkit::op::{
    BatchNormOp, ElemSlice, ElemSliceMut, ErasedOp, NormOp, OpGrads, SyncBatchNormOp,
};
use normkit::{bf16, BatchNormConfig, ChannelAxis, Elem, RunningStats};

use super::errors::on_ranks;
use super::Case;
use crate::common::Rng;

fn op(comm: Arc<dyn Communicator>, training: bool, axis: ChannelAxis) -> SyncBatchNormOp {
    SyncBatchNormOp {
        cfg: BatchNormConfig {
            channel_axis: axis,
            ..Default::default()
        },
        training,
        weight: true,
        bias: true,
        comm,
    }
}

/// What one rank's op call wrote: y, dx, packed parameter gradients and
/// running statistics.
type Written<T> = (Vec<T>, Vec<T>, Vec<f32>, Vec<f32>);

/// Forward and backward of rank `comm.rank()`'s shard through `op`.
fn through<T: Elem, O: NormOp>(op: &O, case: &Case<T>, rank: usize) -> Written<T> {
    let (shape, x) = case.shard(&case.x, rank);
    let (_, dy) = case.shard(&case.dy, rank);
    let c = case.channels();
    let params = [case.weight.clone().unwrap(), case.bias.clone().unwrap()].concat();
    let (mut mean, mut var) = case.running.clone().unwrap();
    let mut y = vec![T::from_f32(0.0); x.len()];
    let r = RunningStats {
        mean: &mut mean,
        var: &mut var,
    };
    let saved = op.forward(&mut y, x, &shape, &params, Some(r)).unwrap();
    let (mut dx, mut dp) = (vec![T::from_f32(0.0); x.len()], vec![0.0f32; 2 * c]);
    let grads = OpGrads {
        dx: &mut dx,
        dparams: Some(&mut dp),
    };
    op.backward(grads, dy, x, &shape, &params, &saved).unwrap();
    mean.extend(var);
    (y, dx, dp, mean)
}

fn case<T: Elem>(seed: u64, shards: &[usize], axis: ChannelAxis) -> Case<T> {
    let mut rng = Rng::new(seed);
    let mut case = Case::<T>::random(&mut rng, &[3, 4], shards, axis, 1.0, 2.0);
    case.weight = Some(rng.uniforms(case.channels(), -1.0, 1.0));
    case.bias = Some(rng.uniforms(case.channels(), -1.0, 1.0));
    let c = case.channels();
    case.running = Some((rng.uniforms(c, -1.0, 1.0), rng.uniforms(c, 0.5, 2.0)));
    case.cfg.momentum = normkit::Momentum::default();
    case.cfg.eps = 1e-5;
    case
}

#[test]
fn training_through_the_interface_is_the_entry_points() {
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let case = case::<f32>(1, &[2, 0, 3], axis);
        let got = on_ranks(3, |comm| {
            through(&op(comm.clone(), true, axis), &case, comm.rank())
        });
        let want = case.sync();
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            let mut dp = w.dweight.clone();
            dp.extend(&w.dbias);
            let (m, v) = w.running.clone().unwrap();
            let running = [m, v].concat();
            assert_eq!(
                g,
                &(w.y.clone(), w.dx.clone(), dp, running),
                "{axis:?} rank {r}"
            );
        }
    }
}

#[test]
fn the_erased_interface_is_the_generic_one() {
    let axis = ChannelAxis::Last;
    let case = case::<bf16>(2, &[1, 4], axis);
    let got = on_ranks(2, |comm| {
        let op = op(comm.clone(), true, axis);
        let (shape, x) = case.shard(&case.x, comm.rank());
        let (_, dy) = case.shard(&case.dy, comm.rank());
        let params = [case.weight.clone().unwrap(), case.bias.clone().unwrap()].concat();
        let (mut mean, mut var) = case.running.clone().unwrap();
        let mut y = vec![bf16::ZERO; x.len()];
        let r = RunningStats {
            mean: &mut mean,
            var: &mut var,
        };
        let yy = ElemSliceMut::Bf16(&mut y);
        let saved = op
            .forward_erased(yy, ElemSlice::Bf16(x), &shape, &params, Some(r))
            .unwrap();
        let (mut dx, mut dp) = (vec![bf16::ZERO; x.len()], vec![0.0f32; 2 * case.channels()]);
        let (dxs, dys, xs) = (
            ElemSliceMut::Bf16(&mut dx),
            ElemSlice::Bf16(dy),
            ElemSlice::Bf16(x),
        );
        op.backward_erased(dxs, Some(&mut dp), dys, xs, &shape, &params, &saved)
            .unwrap();
        mean.extend(var);
        (y, dx, dp, mean)
    });
    let want = on_ranks(2, |comm| {
        through(&op(comm.clone(), true, axis), &case, comm.rank())
    });
    assert_eq!(got, want);
}

/// Evaluation is BatchNorm's, bit for bit, and never waits for the other
/// ranks: here they never call, and the communicator would time out.
#[test]
fn evaluation_is_batch_norm_and_does_not_communicate() {
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let case = case::<f32>(3, &[5], axis);
        let bn = BatchNormOp {
            cfg: case.cfg,
            training: false,
            weight: true,
            bias: true,
        };
        let mut group = ThreadComm::group(2);
        let lone = group.remove(0).with_timeout(Duration::from_millis(50));
        let sync = op(Arc::new(lone), false, axis);
        assert_eq!(through(&sync, &case, 0), through(&bn, &case, 0), "{axis:?}");
    }
}
