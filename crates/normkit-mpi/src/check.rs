//! SyncBatchNorm checked across the ranks of any [`Communicator`]: what
//! the MPI test program runs on every rank (and the tests run on threads).
//!
//! Every rank builds the whole batch from the same seed, keeps its shard
//! (shards uneven, some empty), and compares SyncBatchNorm on its shard
//! with single-process BatchNorm on the whole batch; the ranks then compare
//! their statistics bit for bit. Bad input follows: ranks that disagree or
//! refuse must all return the same error, and the ranks must still be in
//! step afterwards.
//!
//! A failed comparison is recorded, never returned early: every rank makes
//! the same collective calls whatever it finds, so a failure on one rank
//! cannot leave the others waiting.

use normkit::comm::Communicator;
use normkit::{
    batch_norm_backward_train, batch_norm_forward_train, bf16, f16, sync_batch_norm_backward_train,
    sync_batch_norm_forward_train, Affine, BatchNormConfig, ChannelAxis, Elem, Grads, Momentum,
    NormError, RunningStats, Stats,
};

/// What a run checked, and what failed on this rank.
#[derive(Debug, Default)]
pub struct Report {
    pub comparisons: usize,
    pub failures: Vec<String>,
}

impl Report {
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.comparisons += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    /// `|got - want| ≤ tol · scale + round · |want|` element by element.
    fn close(&mut self, what: &str, got: &[f64], want: &[f64], scale: f64, tol: f64, round: f64) {
        // Written so that a NaN fails.
        let within = |(g, w): (&f64, &f64)| (g - w).abs() <= tol * scale + round * w.abs();
        let bad = got.len() != want.len() || !got.iter().zip(want).all(within);
        self.expect(!bad, || {
            let worst = got
                .iter()
                .zip(want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f64::max);
            format!("{what}: off by up to {worst:e} (scale {scale:e})")
        });
    }
}

/// Runs every check on this rank. Collective: every rank of `comm` calls
/// it. Returns this rank's report and whether every rank passed.
pub fn run(comm: &dyn Communicator) -> (Report, bool) {
    let mut report = Report::default();
    for (i, case) in cases(comm.size()).iter().enumerate() {
        match case.dtype {
            "bf16" => numeric::<bf16>(comm, case, i as u64, &mut report),
            "f16" => numeric::<f16>(comm, case, i as u64, &mut report),
            _ => numeric::<f32>(comm, case, i as u64, &mut report),
        }
    }
    errors(comm, &mut report);
    let failed = comm
        .all_reduce_max_u64(&[report.failures.len() as u64])
        .map(|m| m[0])
        .unwrap_or_else(|e| {
            report.failures.push(format!("final exchange: {e}"));
            1
        });
    (report, failed == 0)
}

struct NumericCase {
    sample: &'static [usize],
    axis: ChannelAxis,
    dtype: &'static str,
    /// Samples of each rank.
    shards: Vec<usize>,
    mean: f64,
}

/// The cases for `size` ranks: shards uneven, rank 1 (when there is one)
/// empty in some, everything on the last rank in one.
fn cases(size: usize) -> Vec<NumericCase> {
    use ChannelAxis::{First, Last};
    let uneven = |k: usize| {
        (0..size)
            .map(|r| if r == 1 { 0 } else { 2 + (r + k) % 3 })
            .collect()
    };
    let one_holds_all = (0..size)
        .map(|r| if r + 1 == size { 6 } else { 0 })
        .collect();
    let ones = vec![1; size];
    vec![
        NumericCase {
            sample: &[3, 5],
            axis: First,
            dtype: "f32",
            shards: uneven(0),
            mean: 0.5,
        },
        NumericCase {
            sample: &[4],
            axis: First,
            dtype: "f32",
            shards: uneven(1),
            mean: -2.0,
        },
        NumericCase {
            sample: &[2, 3, 3],
            axis: Last,
            dtype: "f32",
            shards: ones,
            mean: 1e4,
        },
        NumericCase {
            sample: &[7, 6],
            axis: Last,
            dtype: "bf16",
            shards: uneven(2),
            mean: 1.0,
        },
        NumericCase {
            sample: &[5, 9],
            axis: First,
            dtype: "f16",
            shards: one_holds_all,
            mean: 0.0,
        },
        NumericCase {
            sample: &[3, 40, 40],
            axis: First,
            dtype: "f32",
            shards: (0..size).map(|r| 7 + 5 * r).collect(),
            mean: 3.0,
        },
    ]
}

/// SplitMix64 normal values: the same on every rank.
fn values(seed: u64, len: usize, mean: f64, std: f64) -> Vec<f32> {
    let mut s = seed;
    let mut unit = move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..len)
        .map(|_| {
            let (u, v) = (1.0 - unit(), unit());
            let n = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            (mean + std * n) as f32
        })
        .collect()
}

fn wide<T: Elem>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// A hash of bit patterns, to compare many values across ranks in one
/// exchange.
fn hash(words: impl Iterator<Item = u32>) -> u64 {
    words.fold(0xcbf2_9ce4_8422_2325, |h: u64, w| {
        (h ^ w as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Forward and backward outputs of one call.
struct Outputs<T> {
    y: Vec<T>,
    stats: Stats,
    mean: Vec<f32>,
    var: Vec<f32>,
    dx: Vec<T>,
    dweight: Vec<f32>,
    dbias: Vec<f32>,
}

/// Forward and backward through BatchNorm (`comm` None) or SyncBatchNorm.
#[allow(clippy::too_many_arguments)]
fn step<T: Elem>(
    comm: Option<&dyn Communicator>,
    shape: &[usize],
    x: &[T],
    dy: &[T],
    weight: &[f32],
    bias: &[f32],
    cfg: &BatchNormConfig,
) -> Result<Outputs<T>, NormError> {
    let c = weight.len();
    let (mut mean, mut var) = (vec![0.25f32; c], vec![2.0f32; c]);
    let mut y = vec![T::from_f32(0.0); x.len()];
    let running = Some(RunningStats {
        mean: &mut mean,
        var: &mut var,
    });
    let affine = Affine::new(weight, bias);
    let stats = match comm {
        Some(comm) => sync_batch_norm_forward_train(&mut y, x, shape, affine, running, cfg, comm)?,
        None => batch_norm_forward_train(&mut y, x, shape, affine, running, cfg)?,
    };
    let (mut dx, mut dweight, mut dbias) =
        (vec![T::from_f32(0.0); x.len()], vec![0.0; c], vec![0.0; c]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dweight),
        dbias: Some(&mut dbias),
    };
    let w = Some(weight);
    match comm {
        Some(comm) => sync_batch_norm_backward_train(grads, dy, x, shape, w, &stats, cfg, comm)?,
        None => batch_norm_backward_train(grads, dy, x, shape, w, &stats, cfg)?,
    }
    Ok(Outputs {
        y,
        stats,
        mean,
        var,
        dx,
        dweight,
        dbias,
    })
}

/// One case: this rank's shard against BatchNorm on the whole batch, and
/// the ranks' statistics against each other.
fn numeric<T: Elem>(comm: &dyn Communicator, case: &NumericCase, seed: u64, report: &mut Report) {
    let (rank, size) = (comm.rank(), comm.size());
    let ctx = format!(
        "{} {:?} {:?} shards {:?}",
        T::NAME,
        case.sample,
        case.axis,
        case.shards
    );
    let per: usize = case.sample.iter().product();
    let total: usize = case.shards.iter().sum();
    let c = match case.axis {
        ChannelAxis::First => case.sample[0],
        ChannelAxis::Last => case.sample[case.sample.len() - 1],
    };
    let cast = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let x = cast(values(seed * 4, total * per, case.mean, 1.5));
    let dy = cast(values(seed * 4 + 1, total * per, 0.0, 1.0));
    let weight = values(seed * 4 + 2, c, 1.0, 0.5);
    let bias = values(seed * 4 + 3, c, 0.0, 0.5);
    let cfg = BatchNormConfig {
        eps: 1e-5,
        momentum: Momentum::Exponential(0.1),
        channel_axis: case.axis,
    };
    let shape = |n: usize| [&[n][..], case.sample].concat();
    let start = case.shards[..rank].iter().sum::<usize>() * per;
    let span = start..start + case.shards[rank] * per;
    let whole = step(None, &shape(total), &x, &dy, &weight, &bias, &cfg);
    let mine = step(
        Some(comm),
        &shape(case.shards[rank]),
        &x[span.clone()],
        &dy[span.clone()],
        &weight,
        &bias,
        &cfg,
    );
    // Parameter gradients: this rank's share, summed over the ranks as a
    // data-parallel all-reduce would. Exchanged whatever happened above,
    // so that every rank makes the same calls.
    let share: Vec<f64> = match &mine {
        Ok(o) => o
            .dweight
            .iter()
            .chain(&o.dbias)
            .map(|&v| v as f64)
            .collect(),
        Err(_) => vec![f64::NAN; 2 * c],
    };
    let summed = comm.all_reduce_sum_f64(&share);
    let fingerprint = match &mine {
        Ok(o) => {
            let words = [&o.stats.mean, &o.stats.rstd, &o.mean, &o.var];
            hash(words.into_iter().flatten().map(|v| v.to_bits()))
        }
        Err(_) => rank as u64,
    };
    let prints = comm.all_gather_u64(&[fingerprint]);
    let (whole, mine, summed, prints) = match (whole, mine, summed, prints) {
        (Ok(w), Ok(m), Ok(s), Ok(p)) => (w, m, s, p),
        (w, m, s, p) => {
            report.expect(false, || {
                let e = [
                    w.err().map(|e| e.to_string()),
                    m.err().map(|e| e.to_string()),
                ];
                let c = [
                    s.err().map(|e| e.to_string()),
                    p.err().map(|e| e.to_string()),
                ];
                format!("{ctx}: failed: {e:?} {c:?}")
            });
            return;
        }
    };
    report.expect(prints.iter().all(|&p| p == prints[0]), || {
        format!("{ctx}: statistics differ between ranks: {prints:x?}")
    });
    // Tolerances: f32 arithmetic on operands of the given scale, plus two
    // roundings to T (one ulp) for the outputs stored as T.
    let round = match T::NAME {
        "bf16" => 2f64.powi(-7),
        "f16" => 2f64.powi(-10),
        _ => 0.0,
    };
    let tol = 1e-5;
    // This rank's part of the whole batch's outputs.
    for (what, got, whole) in [("y", &mine.y, &whole.y), ("dx", &mine.dx, &whole.dx)] {
        let want = wide(&whole[span.clone()]);
        let scale = max_abs(&want) + 1.0;
        report.close(
            &format!("{ctx}: {what}"),
            &wide(got),
            &want,
            scale,
            tol,
            round,
        );
    }
    for (what, got, want) in [
        ("mean", &mine.stats.mean, &whole.stats.mean),
        ("rstd", &mine.stats.rstd, &whole.stats.rstd),
        ("running_mean", &mine.mean, &whole.mean),
        ("running_var", &mine.var, &whole.var),
    ] {
        let (g, w) = (wide(got), wide(want));
        let scale = max_abs(&w) + 1.0;
        report.close(&format!("{ctx}: {what}"), &g, &w, scale, tol, 0.0);
    }
    let grads_want: Vec<f64> = whole
        .dweight
        .iter()
        .chain(&whole.dbias)
        .map(|&v| v as f64)
        .collect();
    // Sums over the batch: their scale is the batch's Σ|dy| · max|x̂|.
    let sum_scale = wide(&dy).iter().map(|v| v.abs()).sum::<f64>() * 4.0 / c as f64 + 1.0;
    let what = format!("{ctx}: dweight, dbias summed over {size} ranks");
    report.close(&what, &summed, &grads_want, sum_scale, tol, 0.0);
}

/// Bad input across ranks: every rank gets the same error, and the ranks
/// stay in step (a good call afterwards works).
fn errors(comm: &dyn Communicator, report: &mut Report) {
    let (rank, size) = (comm.rank(), comm.size());
    let cfg = BatchNormConfig::default();
    let call = |shape: &[usize], y_len: usize, as_bf16: bool| -> Result<Stats, NormError> {
        let len: usize = shape.iter().product();
        let x = values(99, len, 0.0, 1.0);
        let c = if shape.len() > 1 { shape[1] } else { 0 };
        let w = vec![1.0f32; c];
        let affine = Affine {
            weight: Some(&w),
            bias: None,
        };
        if as_bf16 {
            let x: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let mut y = vec![bf16::ZERO; y_len];
            sync_batch_norm_forward_train(&mut y, &x, shape, affine, None, &cfg, comm)
        } else {
            let mut y = vec![0.0f32; y_len];
            sync_batch_norm_forward_train(&mut y, &x, shape, affine, None, &cfg, comm)
        }
    };
    let last = rank + 1 == size;
    let channels = 3 + rank % 2;
    let cases: [(&str, Result<Stats, NormError>, bool); 4] = [
        // Channel counts differ (when there are two ranks or more).
        (
            "channels",
            call(&[2, channels, 2], 4 * channels, false),
            size > 1,
        ),
        // The last rank's y is one value short.
        ("refused", call(&[2, 3, 2], 12 - last as usize, false), true),
        // Rank 0 runs bf16, the others f32.
        ("dtype", call(&[2, 3, 2], 12, rank == 0), size > 1),
        // One value per channel over all ranks.
        (
            "too few",
            call(&[rank.min(1) ^ 1, 3], 3 * (rank.min(1) ^ 1), false),
            true,
        ),
    ];
    for (what, res, fails) in cases {
        let text = match &res {
            Ok(_) => String::from("ok"),
            Err(e) => e.to_string(),
        };
        report.expect(res.is_err() == fails, || format!("{what}: got {text}"));
        let prints = comm.all_gather_u64(&[hash(text.bytes().map(u32::from))]);
        report.expect(
            prints.as_ref().is_ok_and(|p| p.iter().all(|&h| h == p[0])),
            || format!("{what}: ranks returned different results (this rank: {text})"),
        );
    }
    // Still in step.
    let after = call(&[2, 3, 2], 12, false);
    report.expect(after.is_ok(), || {
        format!("a good call after the errors: {after:?}")
    });
}
