//! SyncBatchNorm's numbers: over 1, 2 and 3 ranks with uneven and empty
//! shards it computes what BatchNorm computes on the concatenated batch,
//! and what the `f64` reference computes, with the same statistics on
//! every rank bit for bit.

use normkit::comm::{SingleProcess, ThreadComm};
use normkit::reference::{self, Dims};
use normkit::{bf16, f16, ChannelAxis, Elem};

use super::{assert_ranks_agree, concat, sum_over_ranks, Case, Out};
use crate::common::{abs, assert_close, max_abs, param_max, rounding, wide, Rng, Rounding, Scale};

/// The bounds of normkit's property tests (tests/property.rs), where they
/// are derived: `TOL` for the f32 arithmetic of an output relative to its
/// operands, `STAT_TOL` for statistics relative to their own size. A
/// rank's share of the statistics, merged with Chan's update in f64, adds
/// nothing measurable to either.
const TOL: f64 = 2e-6;
const STAT_TOL: f64 = 1e-6;

use ChannelAxis::{First, Last};

/// `(one sample's shape, axis)`: spatial extents, none (`[C]`, which runs
/// on the column path), channels first and last.
const SAMPLES: [(&[usize], ChannelAxis); 7] = [
    (&[3, 5], First),
    (&[4], First),
    (&[2, 3, 3], First),
    (&[1, 7], First),
    (&[5, 3], Last),
    (&[4], Last),
    (&[3, 3, 2], Last),
];

/// Samples per rank: 1, 2 and 3 ranks, even, uneven, and empty shards.
const SHARDS: [&[usize]; 11] = [
    &[4],
    &[1],
    &[1, 3],
    &[0, 4],
    &[2, 2],
    &[5, 0],
    &[2, 0, 3],
    &[1, 1, 1],
    &[0, 0, 2],
    &[3, 4, 1],
    &[0, 1, 0],
];

/// A tensor and its statistics as `f64`, from the ranks, from BatchNorm
/// or from the reference.
struct Seen {
    y: Vec<f64>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
    running: Option<(Vec<f64>, Vec<f64>)>,
    dx: Vec<f64>,
    dweight: Vec<f64>,
    dbias: Vec<f64>,
}

/// How large each compared quantity's operands are (see property.rs).
struct Bounds {
    y: f64,
    mean: Vec<f64>,
    rstd: Vec<f64>,
    running: (Vec<f64>, Vec<f64>),
    dx: f64,
    dweight: Vec<f64>,
    dbias: Vec<f64>,
}

fn seen_one<T: Elem>(o: &Out<T>) -> Seen {
    Seen {
        y: wide(&o.y),
        mean: wide(&o.stats.mean),
        rstd: wide(&o.stats.rstd),
        running: o.running.as_ref().map(|(m, v)| (wide(m), wide(v))),
        dx: wide(&o.dx),
        dweight: wide(&o.dweight),
        dbias: wide(&o.dbias),
    }
}

/// The ranks' outputs as one batch: outputs and input gradients
/// concatenated, parameter gradients summed, statistics from rank 0.
fn seen_ranks<T: Elem>(outs: &[Out<T>]) -> Seen {
    Seen {
        y: wide(&concat(outs.iter().map(|o| o.y.clone()))),
        dx: wide(&concat(outs.iter().map(|o| o.dx.clone()))),
        dweight: sum_over_ranks(outs.iter().map(|o| o.dweight.clone())),
        dbias: sum_over_ranks(outs.iter().map(|o| o.dbias.clone())),
        ..seen_one(&outs[0])
    }
}

/// The reference on the whole batch, and the size of each quantity's
/// operands.
fn reference_of<T: Elem>(case: &Case<T>) -> (Seen, Bounds) {
    let d = Dims::of(&case.whole_shape(), case.cfg.channel_axis);
    let (x, dy) = (wide(&case.x), wide(&case.dy));
    let w = case.weight.as_ref().map(|v| wide(v));
    let b = case.bias.as_ref().map(|v| wide(v));
    let eps = case.cfg.eps as f64;
    let fwd = reference::batch_norm_train(&x, d, w.as_deref(), b.as_deref(), eps);
    let xhat = max_abs(&reference::batch_norm_train(&x, d, None, None, eps).y);
    let grads = reference::batch_norm_backward_train(&dy, &x, d, w.as_deref(), eps);
    let sum_abs_dy = reference::batch_norm_backward_train(&abs(&dy), &x, d, None, eps).dbias;
    let running = case.running.as_ref().map(|(m, v)| {
        let m0 = case.cfg.momentum.factor();
        reference::batch_norm_running_update(&x, d, &wide(m), &wide(v), m0)
    });
    let spread: Vec<f64> = fwd.var.iter().map(|v| v.sqrt()).collect();
    let plus_spread =
        |m: &[f64]| -> Vec<f64> { m.iter().zip(&spread).map(|(m, s)| m.abs() + s).collect() };
    let max_g = max_abs(&dy) * param_max(&w, 1.0);
    let bounds = Bounds {
        y: xhat * param_max(&w, 1.0) + param_max(&b, 0.0),
        mean: plus_spread(&fwd.mean),
        rstd: abs(&fwd.rstd),
        running: running
            .as_ref()
            .map(|(m, v)| (plus_spread(m), abs(v)))
            .unwrap_or_default(),
        dx: max_abs(&fwd.rstd) * max_g * (2.0 + xhat),
        dweight: sum_abs_dy.iter().map(|s| s * xhat).collect(),
        dbias: sum_abs_dy,
    };
    let seen = Seen {
        y: fwd.y,
        mean: fwd.mean,
        rstd: fwd.rstd,
        running,
        dx: grads.dx,
        dweight: grads.dweight,
        dbias: grads.dbias,
    };
    (seen, bounds)
}

/// `got` against `want` within `factor` times the property tests' bounds.
fn check(ctx: &str, got: &Seen, want: &Seen, b: &Bounds, factor: f64, round: Rounding) {
    let (tol, stat) = (TOL * factor, STAT_TOL * factor);
    let close = |what: &str, g: &[f64], w: &[f64], s: Scale<'_>, t: f64, r: Rounding| {
        assert_close(&format!("{ctx}: {what}"), g, w, s, t, r);
    };
    close("y", &got.y, &want.y, Scale::All(b.y), tol, round);
    close(
        "mean",
        &got.mean,
        &want.mean,
        Scale::Each(&b.mean),
        stat,
        Rounding::NONE,
    );
    close(
        "rstd",
        &got.rstd,
        &want.rstd,
        Scale::Each(&b.rstd),
        stat,
        Rounding::NONE,
    );
    assert_eq!(got.running.is_some(), want.running.is_some(), "{ctx}");
    if let (Some((gm, gv)), Some((wm, wv))) = (&got.running, &want.running) {
        let (sm, sv) = (&b.running.0, &b.running.1);
        close(
            "running_mean",
            gm,
            wm,
            Scale::Each(sm),
            stat,
            Rounding::NONE,
        );
        close("running_var", gv, wv, Scale::Each(sv), stat, Rounding::NONE);
    }
    close("dx", &got.dx, &want.dx, Scale::All(b.dx), tol, round);
    let (sw, sb) = (Scale::Each(&b.dweight), Scale::Each(&b.dbias));
    close(
        "dweight",
        &got.dweight,
        &want.dweight,
        sw,
        tol,
        Rounding::NONE,
    );
    close("dbias", &got.dbias, &want.dbias, sb, tol, Rounding::NONE);
}

/// Two roundings of nearly the same value to `T` may differ by a unit in
/// the last place: twice the rounding bound.
fn two_roundings<T: Elem>() -> Rounding {
    let r = rounding::<T>();
    Rounding {
        unit: 2.0 * r.unit,
        ..r
    }
}

/// Every case: the ranks agree bit for bit, match the reference, and
/// match single-process BatchNorm on the concatenated batch.
fn check_case<T: Elem>(ctx: &str, case: &Case<T>) {
    let outs = case.sync();
    assert_ranks_agree(ctx, &outs);
    let got = seen_ranks(&outs);
    let (want, bounds) = reference_of(case);
    check(
        &format!("{ctx} vs reference"),
        &got,
        &want,
        &bounds,
        1.0,
        rounding::<T>(),
    );
    let bn = seen_one(&case.batch_norm());
    let round = two_roundings::<T>();
    check(
        &format!("{ctx} vs BatchNorm"),
        &got,
        &bn,
        &bounds,
        2.0,
        round,
    );
}

fn shard_cases<T: Elem>(seed: u64) {
    let mut rng = Rng::new(seed);
    for (sample, axis) in SAMPLES {
        for shards in SHARDS {
            let per: usize = sample.iter().product();
            let c = if axis == First {
                sample[0]
            } else {
                sample[sample.len() - 1]
            };
            // BatchNorm needs more than one value per channel.
            if shards.iter().sum::<usize>() * per / c <= 1 {
                continue;
            }
            let case = Case::<T>::random(&mut rng, sample, shards, axis, 0.5, 1.3);
            let ctx = format!("{} {sample:?} {axis:?} shards {shards:?}", T::NAME);
            check_case(&ctx, &case);
        }
    }
}

#[test]
fn k_ranks_equal_batch_norm_on_the_whole_batch_f32() {
    shard_cases::<f32>(1);
}

#[test]
fn k_ranks_equal_batch_norm_on_the_whole_batch_bf16() {
    shard_cases::<bf16>(2);
}

#[test]
fn k_ranks_equal_batch_norm_on_the_whole_batch_f16() {
    shard_cases::<f16>(3);
}

/// Shards large enough to run on several threads and in several chunks on
/// each rank, random shapes with odd sizes, and a mean of 1e4 with unit
/// spread, whose variance `E[x²] - E[x]²` in f32 would lose entirely.
#[test]
fn large_random_and_large_mean_shards_match_the_reference() {
    let mut rng = Rng::new(4);
    let mut cases: Vec<(Vec<usize>, Vec<usize>, ChannelAxis, f64)> = vec![
        (vec![3, 33, 37], vec![20, 0, 44], First, 0.0),
        (vec![7, 7, 5], vec![1500, 2500], Last, 0.0),
        (vec![5, 200], vec![3, 7, 1], First, 1e4),
        (vec![9], vec![700, 0, 301], Last, 1e4),
    ];
    for _ in 0..12 {
        let axis = rng.pick(&[First, Last]);
        let rank = rng.between(1, 3);
        let sample: Vec<usize> = (0..rank).map(|_| rng.between(1, 13)).collect();
        let k = rng.between(1, 3);
        let shards: Vec<usize> = (0..k).map(|_| rng.pick(&[0, 1, 2, 5, 17])).collect();
        cases.push((sample, shards, axis, rng.pick(&[0.0, -3.0, 100.0])));
    }
    for (i, (sample, shards, axis, mean)) in cases.into_iter().enumerate() {
        let c = if axis == First {
            sample[0]
        } else {
            sample[sample.len() - 1]
        };
        let n = shards.iter().sum::<usize>() * sample.iter().product::<usize>() / c;
        if n <= 1 {
            continue;
        }
        let case = Case::<f32>::random(&mut rng, &sample, &shards, axis, mean, 1.0);
        check_case(
            &format!("case {i}: {sample:?} {axis:?} shards {shards:?}"),
            &case,
        );
    }
}

/// On one rank, SyncBatchNorm is BatchNorm: the same statistics from the
/// same machinery, the same kernels, the same bits.
#[test]
fn one_rank_is_batch_norm_bit_for_bit() {
    let mut rng = Rng::new(5);
    for (sample, axis) in SAMPLES {
        for n in [2, 9, 300] {
            let case = Case::<f32>::random(&mut rng, sample, &[n], axis, 2.0, 0.7);
            let bn = case.batch_norm();
            let bits = |o: &Out<f32>| {
                let b = |v: &[f32]| super::bits(v);
                let r = o.running.as_ref().map(|(m, v)| (b(m), b(v)));
                (b(&o.y), b(&o.stats.mean), b(&o.stats.rstd), r, b(&o.dx))
            };
            let ctx = format!("{sample:?} {axis:?} n {n}");
            assert_eq!(bits(&case.sync_rank(&SingleProcess)), bits(&bn), "{ctx}");
            let threads = ThreadComm::run(1, |c| case.sync_rank(c));
            assert_eq!(bits(&threads[0]), bits(&bn), "{ctx}: one thread");
        }
    }
}
