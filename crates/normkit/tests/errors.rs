//! Bad input: every public function, given each kind of wrong argument,
//! returns the expected `NormError`, names itself in the message, and
//! leaves every output untouched. Legal empty inputs succeed.

use normkit::{
    batch_norm_backward_eval, batch_norm_backward_train, batch_norm_forward_eval,
    batch_norm_forward_train, dyt_backward, dyt_forward, group_norm_backward, group_norm_forward,
    instance_norm_backward_eval, instance_norm_backward_train, instance_norm_forward_eval,
    instance_norm_forward_train, layer_norm_backward, layer_norm_forward, rms_norm_backward,
    rms_norm_forward, weight_norm_backward, weight_norm_forward, Affine, BatchNormConfig,
    ChannelAxis, Grads, GroupNormConfig, InstanceNormConfig, Momentum, NormError, Result,
    RunningStats, Stats,
};

/// A NaN with a payload no kernel would produce: an output still holding
/// it was not written.
const SENTINEL: f32 = f32::from_bits(0x7fc0_1234);

/// A dimension so large that two of them overflow `usize`.
const HUGE: usize = 1 << 40;

/// Every argument of every op, valid until a case breaks one. Outputs
/// (and running statistics, which training updates) hold [`SENTINEL`].
#[derive(Clone)]
struct Args {
    shape: Vec<usize>,
    normalized_shape: Vec<usize>,
    x: Vec<f32>,
    dy: Vec<f32>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    stats: Stats,
    eps: f32,
    y: Vec<f32>,
    dx: Vec<f32>,
    dweight: Option<Vec<f32>>,
    dbias: Option<Vec<f32>>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    bn: BatchNormConfig,
    gn: GroupNormConfig,
    inorm: InstanceNormConfig,
    // WeightNorm.
    g: Vec<f32>,
    dg: Vec<f32>,
    norms: Vec<f32>,
    dim: Option<isize>,
}

impl Args {
    /// Valid arguments for an input of `shape` with `channels` parameters
    /// and `groups` saved statistics.
    fn new(shape: &[usize], channels: usize, groups: usize) -> Self {
        let len: usize = shape.iter().product();
        let ramp = |n: usize| (0..n).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>();
        Args {
            shape: shape.to_vec(),
            normalized_shape: Vec::new(),
            x: ramp(len),
            dy: ramp(len),
            weight: Some(vec![1.5; channels]),
            bias: Some(vec![0.5; channels]),
            stats: Stats {
                mean: vec![0.0; groups],
                rstd: vec![1.0; groups],
            },
            eps: 1e-5,
            y: vec![SENTINEL; len],
            dx: vec![SENTINEL; len],
            dweight: Some(vec![SENTINEL; channels]),
            dbias: Some(vec![SENTINEL; channels]),
            running_mean: vec![SENTINEL; channels],
            running_var: vec![SENTINEL; channels],
            bn: BatchNormConfig::default(),
            gn: GroupNormConfig::new(1),
            inorm: InstanceNormConfig::default(),
            g: Vec::new(),
            dg: Vec::new(),
            norms: Vec::new(),
            dim: None,
        }
    }

    /// Replaces the input with one of `shape`, resizing x, dy, y and dx.
    fn reshape(&mut self, shape: &[usize]) {
        let len: usize = shape.iter().product();
        self.shape = shape.to_vec();
        self.x.resize(len, 1.0);
        self.dy.resize(len, 1.0);
        self.y = vec![SENTINEL; len];
        self.dx = vec![SENTINEL; len];
    }

    /// Every output still holds the sentinel.
    fn assert_untouched(&self, ctx: &str) {
        let outputs = [
            ("y", Some(&self.y)),
            ("dx", Some(&self.dx)),
            ("dweight", self.dweight.as_ref()),
            ("dbias", self.dbias.as_ref()),
            ("running_mean", Some(&self.running_mean)),
            ("running_var", Some(&self.running_var)),
            ("dg", Some(&self.dg)),
        ];
        for (name, values) in outputs {
            for (i, v) in values.into_iter().flatten().enumerate() {
                assert_eq!(
                    v.to_bits(),
                    SENTINEL.to_bits(),
                    "{ctx}: {name}[{i}] was written"
                );
            }
        }
    }
}

/// The affine parameters of `a`, borrowing only those fields.
macro_rules! affine {
    ($a:expr) => {
        Affine {
            weight: $a.weight.as_deref(),
            bias: $a.bias.as_deref(),
        }
    };
}

/// The gradient outputs of `a`, borrowing only those fields.
macro_rules! grads {
    ($a:expr) => {
        Grads {
            dx: &mut $a.dx,
            dweight: $a.dweight.as_deref_mut(),
            dbias: $a.dbias.as_deref_mut(),
        }
    };
}

/// The op and, where the error has one, the shape it names.
fn parts(e: &NormError) -> (&'static str, Option<&[usize]>) {
    match e {
        NormError::Length { op, shape, .. }
        | NormError::Rank { op, shape, .. }
        | NormError::NormalizedShape { op, shape, .. }
        | NormError::Groups { op, shape, .. }
        | NormError::TooFewValues { op, shape }
        | NormError::Empty { op, shape }
        | NormError::Dim { op, shape, .. }
        | NormError::TooLarge { op, shape } => (op, Some(shape)),
        NormError::Eps { op, .. }
        | NormError::Param { op, .. }
        | NormError::NoSuchParameter { op, .. }
        | NormError::Missing { op, .. }
        | NormError::DType { op, .. }
        | NormError::Saved { op }
        | NormError::Distributed { op, .. } => (op, None),
    }
}

/// One bad input: what it breaks, how, and the error it must give.
type Case = (&'static str, fn(&mut Args), fn(&NormError) -> bool);

/// Runs each case on a fresh copy of `base` and checks the error, its
/// message and the untouched outputs.
fn check<R>(op: &str, base: &Args, cases: &[Case], call: impl Fn(&mut Args) -> Result<R>) {
    for (what, mutate, expected) in cases {
        let mut a = base.clone();
        mutate(&mut a);
        let ctx = format!("{op}, {what}");
        let e = match call(&mut a) {
            Ok(_) => panic!("{ctx}: accepted"),
            Err(e) => e,
        };
        assert!(expected(&e), "{ctx}: unexpected error {e:?}");
        let (named, shape) = parts(&e);
        assert_eq!(named, op, "{ctx}: error names the wrong op");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{op}: ")),
            "{ctx}: message {msg:?}"
        );
        if let Some(shape) = shape {
            assert!(
                msg.contains(&format!("{shape:?}")),
                "{ctx}: message {msg:?} lacks the shape"
            );
        }
        a.assert_untouched(&ctx);
    }
}

fn pop(v: &mut Vec<f32>) {
    v.pop();
}

fn is_len(e: &NormError, which: &str) -> bool {
    matches!(e, NormError::Length { name, .. } if *name == which)
}

// Cases shared by several ops. Each breaks one argument of a valid `Args`.

const BAD_EPS: [Case; 3] = [
    (
        "negative eps",
        |a| set_eps(a, -1e-5),
        |e| matches!(e, NormError::Eps { .. }),
    ),
    (
        "NaN eps",
        |a| set_eps(a, f32::NAN),
        |e| matches!(e, NormError::Eps { .. }),
    ),
    (
        "infinite eps",
        |a| set_eps(a, f32::INFINITY),
        |e| matches!(e, NormError::Eps { .. }),
    ),
];

fn set_eps(a: &mut Args, eps: f32) {
    a.eps = eps;
    a.bn.eps = eps;
    a.gn.eps = eps;
    a.inorm.eps = eps;
}

const BAD_FORWARD_LENGTHS: [Case; 6] = [
    ("short x", |a| pop(&mut a.x), |e| is_len(e, "x")),
    ("long x", |a| a.x.push(0.0), |e| is_len(e, "x")),
    ("short y", |a| pop(&mut a.y), |e| is_len(e, "y")),
    ("long y", |a| a.y.push(SENTINEL), |e| is_len(e, "y")),
    (
        "short weight",
        |a| pop(a.weight.as_mut().unwrap()),
        |e| is_len(e, "weight"),
    ),
    (
        "long bias",
        |a| a.bias.as_mut().unwrap().push(0.0),
        |e| is_len(e, "bias"),
    ),
];

const BAD_BACKWARD_LENGTHS: [Case; 7] = [
    ("short x", |a| pop(&mut a.x), |e| is_len(e, "x")),
    ("short dy", |a| pop(&mut a.dy), |e| is_len(e, "dy")),
    ("long dy", |a| a.dy.push(0.0), |e| is_len(e, "dy")),
    ("short dx", |a| pop(&mut a.dx), |e| is_len(e, "dx")),
    (
        "short dweight",
        |a| pop(a.dweight.as_mut().unwrap()),
        |e| is_len(e, "dweight"),
    ),
    (
        "long dbias",
        |a| a.dbias.as_mut().unwrap().push(SENTINEL),
        |e| is_len(e, "dbias"),
    ),
    (
        "long weight",
        |a| a.weight.as_mut().unwrap().push(1.0),
        |e| is_len(e, "weight"),
    ),
];

const BAD_STATS: [Case; 3] = [
    (
        "short stats.mean",
        |a| pop(&mut a.stats.mean),
        |e| is_len(e, "mean"),
    ),
    (
        "long stats.rstd",
        |a| a.stats.rstd.push(1.0),
        |e| is_len(e, "rstd"),
    ),
    (
        "empty stats",
        |a| a.stats = Stats::default(),
        |e| is_len(e, "mean"),
    ),
];

const BAD_RUNNING: [Case; 2] = [
    (
        "short running_mean",
        |a| pop(&mut a.running_mean),
        |e| is_len(e, "running_mean"),
    ),
    (
        "long running_var",
        |a| a.running_var.push(SENTINEL),
        |e| is_len(e, "running_var"),
    ),
];

const BAD_MOMENTUM: [Case; 2] = [
    (
        "NaN momentum",
        |a| set_momentum(a, f32::NAN),
        |e| is_param(e, "momentum"),
    ),
    (
        "infinite momentum",
        |a| set_momentum(a, f32::NEG_INFINITY),
        |e| is_param(e, "momentum"),
    ),
];

fn set_momentum(a: &mut Args, m: f32) {
    a.bn.momentum = Momentum::Exponential(m);
    a.inorm.momentum = Momentum::Exponential(m);
}

fn is_param(e: &NormError, which: &str) -> bool {
    matches!(e, NormError::Param { name, .. } if *name == which)
}

/// Inputs below rank 2 for ops with a channel axis.
const BAD_RANK: [Case; 2] = [
    (
        "rank-1 input",
        |a| a.reshape(&[6]),
        |e| matches!(e, NormError::Rank { min_rank: 2, .. }),
    ),
    (
        "rank-0 input",
        |a| a.reshape(&[]),
        |e| matches!(e, NormError::Rank { min_rank: 2, .. }),
    ),
];

/// An empty batch whose other extents multiply past `usize`.
const OVERFLOW: Case = (
    "per-sample size overflows",
    |a| a.reshape(&[0, HUGE, HUGE]),
    |e| matches!(e, NormError::TooLarge { .. }),
);

fn cases(groups: &[&[Case]]) -> Vec<Case> {
    groups.iter().flat_map(|g| g.iter().copied()).collect()
}

// ------------------------------------------------------- LayerNorm, RMSNorm

/// `[3, 4]` normalized over `[4]`.
fn row_args() -> Args {
    let mut a = Args::new(&[3, 4], 4, 3);
    a.normalized_shape = vec![4];
    a
}

const BAD_NORMALIZED_SHAPE: [Case; 7] = [
    (
        "an empty normalized_shape (PyTorch refuses it too)",
        |a| a.normalized_shape = vec![],
        |e| matches!(e, NormError::NormalizedShape { .. }),
    ),
    (
        "normalized_shape not a suffix",
        |a| a.normalized_shape = vec![3],
        |e| matches!(e, NormError::NormalizedShape { .. }),
    ),
    (
        "normalized_shape longer than the input",
        |a| a.normalized_shape = vec![1, 3, 4],
        |e| matches!(e, NormError::NormalizedShape { .. }),
    ),
    (
        "normalized_shape of another size",
        |a| a.normalized_shape = vec![5],
        |e| matches!(e, NormError::NormalizedShape { .. }),
    ),
    (
        "normalized_shape containing 0",
        |a| {
            a.reshape(&[3, 0]);
            a.normalized_shape = vec![0];
        },
        |e| matches!(e, NormError::Empty { .. }),
    ),
    (
        "more elements than usize holds",
        |a| {
            a.shape = vec![HUGE, HUGE, 2];
            a.normalized_shape = vec![2];
        },
        |e| matches!(e, NormError::TooLarge { .. }),
    ),
    (
        "row size overflows",
        |a| {
            a.reshape(&[0, HUGE, HUGE]);
            a.normalized_shape = vec![HUGE, HUGE];
        },
        |e| matches!(e, NormError::TooLarge { .. }),
    ),
];

#[test]
fn layer_norm_rejects_bad_input() {
    let op = "layer_norm";
    let forward = cases(&[&BAD_FORWARD_LENGTHS, &BAD_EPS, &BAD_NORMALIZED_SHAPE]);
    check(op, &row_args(), &forward, |a| {
        layer_norm_forward(
            &mut a.y,
            &a.x,
            &a.shape,
            &a.normalized_shape,
            affine!(a),
            a.eps,
        )
    });
    let backward = cases(&[&BAD_BACKWARD_LENGTHS, &BAD_STATS, &BAD_NORMALIZED_SHAPE]);
    check(op, &row_args(), &backward, |a| {
        let w = a.weight.as_deref();
        layer_norm_backward(
            grads!(a),
            &a.dy,
            &a.x,
            &a.shape,
            &a.normalized_shape,
            w,
            &a.stats,
        )
    });
}

#[test]
fn rms_norm_rejects_bad_input() {
    let op = "rms_norm";
    let mut base = row_args();
    base.bias = None;
    base.dbias = None;
    base.stats.mean.clear();
    let forward_lengths: Vec<Case> = BAD_FORWARD_LENGTHS[..5].to_vec();
    let forward = cases(&[&forward_lengths, &BAD_EPS, &BAD_NORMALIZED_SHAPE]);
    check(op, &base, &forward, |a| {
        let w = a.weight.as_deref();
        rms_norm_forward(&mut a.y, &a.x, &a.shape, &a.normalized_shape, w, a.eps)
    });
    let specific: [Case; 3] = [
        (
            "a dbias",
            |a| a.dbias = Some(vec![SENTINEL; 4]),
            |e| matches!(e, NormError::NoSuchParameter { name: "dbias", .. }),
        ),
        (
            "an empty dbias",
            |a| a.dbias = Some(Vec::new()),
            |e| matches!(e, NormError::NoSuchParameter { name: "dbias", .. }),
        ),
        (
            "short stats.rstd",
            |a| pop(&mut a.stats.rstd),
            |e| is_len(e, "rstd"),
        ),
    ];
    let backward_lengths: Vec<Case> = BAD_BACKWARD_LENGTHS
        .iter()
        .copied()
        .filter(|(what, ..)| !what.contains("dbias"))
        .collect();
    let backward = cases(&[&backward_lengths, &specific, &BAD_NORMALIZED_SHAPE]);
    check(op, &base, &backward, |a| {
        let w = a.weight.as_deref();
        rms_norm_backward(
            grads!(a),
            &a.dy,
            &a.x,
            &a.shape,
            &a.normalized_shape,
            w,
            &a.stats,
        )
    });
}

// ---------------------------------------------------------------- BatchNorm

/// `[2, 3, 4]`, channels first.
fn channel_args() -> Args {
    Args::new(&[2, 3, 4], 3, 3)
}

const TOO_FEW_PER_CHANNEL: [Case; 4] = [
    (
        "one value per channel, [1, C]",
        |a| a.reshape(&[1, 3]),
        is_too_few,
    ),
    (
        "one value per channel, [1, C, 1]",
        |a| a.reshape(&[1, 3, 1]),
        is_too_few,
    ),
    (
        "one value per channel, channels last [1, 1, C]",
        |a| {
            a.reshape(&[1, 1, 3]);
            a.bn.channel_axis = ChannelAxis::Last;
        },
        is_too_few,
    ),
    ("empty batch", |a| a.reshape(&[0, 3, 4]), is_too_few),
];

fn is_too_few(e: &NormError) -> bool {
    matches!(e, NormError::TooFewValues { .. })
}

const NO_CHANNELS: Case = (
    "no channels",
    |a| a.reshape(&[2, 0, 4]),
    |e| matches!(e, NormError::Empty { .. }),
);

#[test]
fn batch_norm_rejects_bad_input() {
    let op = "batch_norm";
    let train = cases(&[
        &BAD_FORWARD_LENGTHS,
        &BAD_RUNNING,
        &BAD_EPS,
        &BAD_MOMENTUM,
        &TOO_FEW_PER_CHANNEL,
        &BAD_RANK,
        &[NO_CHANNELS, OVERFLOW],
    ]);
    check(op, &channel_args(), &train, |a| {
        let running = RunningStats {
            mean: &mut a.running_mean,
            var: &mut a.running_var,
        };
        batch_norm_forward_train(&mut a.y, &a.x, &a.shape, affine!(a), Some(running), &a.bn)
    });
    let eval = cases(&[
        &BAD_FORWARD_LENGTHS,
        &BAD_RUNNING,
        &BAD_EPS,
        &BAD_RANK,
        &[NO_CHANNELS, OVERFLOW],
    ]);
    check(op, &channel_args(), &eval, |a| {
        let (rm, rv) = (&a.running_mean, &a.running_var);
        batch_norm_forward_eval(&mut a.y, &a.x, &a.shape, affine!(a), rm, rv, &a.bn)
    });
    let backward_train = cases(&[
        &BAD_BACKWARD_LENGTHS,
        &BAD_STATS,
        &BAD_EPS,
        &TOO_FEW_PER_CHANNEL[..2],
        &BAD_RANK,
        &[OVERFLOW],
    ]);
    check(op, &channel_args(), &backward_train, |a| {
        let w = a.weight.as_deref();
        batch_norm_backward_train(grads!(a), &a.dy, &a.x, &a.shape, w, &a.stats, &a.bn)
    });
    let backward_eval = cases(&[
        &BAD_BACKWARD_LENGTHS,
        &BAD_STATS,
        &BAD_EPS,
        &BAD_RANK,
        &[OVERFLOW],
    ]);
    check(op, &channel_args(), &backward_eval, |a| {
        let w = a.weight.as_deref();
        batch_norm_backward_eval(grads!(a), &a.dy, &a.x, &a.shape, w, &a.stats, &a.bn)
    });
}

// ---------------------------------------------------------------- GroupNorm

/// `[2, 6, 3]` in 3 groups: 6 saved statistics.
fn group_args() -> Args {
    let mut a = Args::new(&[2, 6, 3], 6, 6);
    a.gn = GroupNormConfig::new(3);
    a
}

const BAD_GROUPS: [Case; 4] = [
    ("zero groups", |a| a.gn.num_groups = 0, is_groups),
    ("groups not dividing C", |a| a.gn.num_groups = 4, is_groups),
    (
        "more groups than channels",
        |a| a.gn.num_groups = 12,
        is_groups,
    ),
    (
        "groups not dividing C, channels last",
        |a| {
            a.gn.channel_axis = ChannelAxis::Last;
            a.reshape(&[2, 3, 6]);
            a.gn.num_groups = 5;
        },
        is_groups,
    ),
];

fn is_groups(e: &NormError) -> bool {
    matches!(e, NormError::Groups { .. })
}

#[test]
fn group_norm_rejects_bad_input() {
    let op = "group_norm";
    let forward = cases(&[
        &BAD_FORWARD_LENGTHS,
        &BAD_GROUPS,
        &BAD_EPS,
        &BAD_RANK,
        &[OVERFLOW],
    ]);
    check(op, &group_args(), &forward, |a| {
        group_norm_forward(&mut a.y, &a.x, &a.shape, affine!(a), &a.gn)
    });
    let wrong_stats: [Case; 1] = [
        // One per channel (6) is right; one per sample (2) is not.
        (
            "stats per sample",
            |a| {
                a.stats = Stats {
                    mean: vec![0.0; 2],
                    rstd: vec![1.0; 2],
                }
            },
            |e| is_len(e, "mean"),
        ),
    ];
    let backward = cases(&[
        &BAD_BACKWARD_LENGTHS,
        &BAD_STATS,
        &wrong_stats,
        &BAD_GROUPS,
        &BAD_RANK,
    ]);
    check(op, &group_args(), &backward, |a| {
        let w = a.weight.as_deref();
        group_norm_backward(grads!(a), &a.dy, &a.x, &a.shape, w, &a.stats, &a.gn)
    });
}

// ------------------------------------------------------------- InstanceNorm

/// `[2, 3, 4]` with instance statistics: N × C = 6 saved values.
fn instance_args() -> Args {
    Args::new(&[2, 3, 4], 3, 6)
}

const TOO_FEW_PER_INSTANCE: [Case; 3] = [
    (
        "one spatial position, [N, C, 1]",
        |a| a.reshape(&[2, 3, 1]),
        is_too_few,
    ),
    (
        "no spatial dimension, [N, C]",
        |a| a.reshape(&[2, 3]),
        is_too_few,
    ),
    (
        "one spatial position, channels last [N, 1, C]",
        |a| {
            a.reshape(&[2, 1, 3]);
            a.inorm.channel_axis = ChannelAxis::Last;
        },
        is_too_few,
    ),
];

#[test]
fn instance_norm_rejects_bad_input() {
    let op = "instance_norm";
    let train = cases(&[
        &BAD_FORWARD_LENGTHS,
        &BAD_RUNNING,
        &BAD_EPS,
        &BAD_MOMENTUM,
        &TOO_FEW_PER_INSTANCE,
        &BAD_RANK,
        &[OVERFLOW],
    ]);
    check(op, &instance_args(), &train, |a| {
        let running = RunningStats {
            mean: &mut a.running_mean,
            var: &mut a.running_var,
        };
        instance_norm_forward_train(
            &mut a.y,
            &a.x,
            &a.shape,
            affine!(a),
            Some(running),
            &a.inorm,
        )
    });
    let eval = cases(&[&BAD_FORWARD_LENGTHS, &BAD_RUNNING, &BAD_EPS, &BAD_RANK]);
    check(op, &instance_args(), &eval, |a| {
        let (rm, rv) = (&a.running_mean, &a.running_var);
        instance_norm_forward_eval(&mut a.y, &a.x, &a.shape, affine!(a), rm, rv, &a.inorm)
    });
    let per_channel: [Case; 1] = [(
        "per-channel stats in training",
        |a| {
            a.stats = Stats {
                mean: vec![0.0; 3],
                rstd: vec![1.0; 3],
            }
        },
        |e| is_len(e, "mean"),
    )];
    let backward_train = cases(&[&BAD_BACKWARD_LENGTHS, &BAD_STATS, &per_channel, &BAD_RANK]);
    check(op, &instance_args(), &backward_train, |a| {
        let w = a.weight.as_deref();
        instance_norm_backward_train(grads!(a), &a.dy, &a.x, &a.shape, w, &a.stats, &a.inorm)
    });
    let mut eval_base = instance_args();
    eval_base.stats = Stats {
        mean: vec![0.0; 3],
        rstd: vec![1.0; 3],
    };
    let per_instance: [Case; 1] = [(
        "per-instance stats in evaluation",
        |a| {
            a.stats = Stats {
                mean: vec![0.0; 6],
                rstd: vec![1.0; 6],
            }
        },
        |e| is_len(e, "mean"),
    )];
    let backward_eval = cases(&[&BAD_BACKWARD_LENGTHS, &BAD_STATS, &per_instance, &BAD_RANK]);
    check(op, &eval_base, &backward_eval, |a| {
        let w = a.weight.as_deref();
        instance_norm_backward_eval(grads!(a), &a.dy, &a.x, &a.shape, w, &a.stats, &a.inorm)
    });
}

// --------------------------------------------------------------- WeightNorm

/// `v` of shape `[3, 4]` with one norm per row (`dim = 0`). x is `v`, dy
/// is `dw`, y is `w` and dx is `dv`.
fn weight_args() -> Args {
    let mut a = Args::new(&[3, 4], 0, 0);
    a.dim = Some(0);
    a.g = vec![1.0; 3];
    a.dg = vec![SENTINEL; 3];
    a.norms = vec![2.0; 3];
    a
}

const BAD_WEIGHT_NORM: [Case; 10] = [
    ("dim = rank", |a| a.dim = Some(2), is_dim),
    ("dim far too large", |a| a.dim = Some(isize::MAX), is_dim),
    ("dim = -rank - 1", |a| a.dim = Some(-3), is_dim),
    ("dim = isize::MIN", |a| a.dim = Some(isize::MIN), is_dim),
    ("a dim of a rank-0 v", |a| a.reshape(&[]), is_dim),
    (
        "empty v",
        |a| a.reshape(&[0, 4]),
        |e| matches!(e, NormError::Empty { .. }),
    ),
    (
        "empty v, dim None",
        |a| {
            a.reshape(&[3, 0]);
            a.dim = None;
        },
        |e| matches!(e, NormError::Empty { .. }),
    ),
    (
        "v too large",
        |a| a.shape = vec![HUGE, HUGE],
        |e| matches!(e, NormError::TooLarge { .. }),
    ),
    (
        "g per column for dim 0",
        |a| a.g = vec![1.0; 4],
        |e| is_len(e, "g"),
    ),
    (
        "g per row for dim None",
        |a| a.dim = None,
        |e| is_len(e, "g"),
    ),
];

fn is_dim(e: &NormError) -> bool {
    matches!(e, NormError::Dim { .. })
}

#[test]
fn weight_norm_rejects_bad_input() {
    let op = "weight_norm";
    let lengths: [Case; 3] = [
        ("short v", |a| pop(&mut a.x), |e| is_len(e, "v")),
        ("short w", |a| pop(&mut a.y), |e| is_len(e, "w")),
        ("long w", |a| a.y.push(SENTINEL), |e| is_len(e, "w")),
    ];
    check(
        op,
        &weight_args(),
        &cases(&[&lengths, &BAD_WEIGHT_NORM]),
        |a| weight_norm_forward(&mut a.y, &a.x, &a.shape, &a.g, a.dim),
    );
    let lengths: [Case; 6] = [
        ("short v", |a| pop(&mut a.x), |e| is_len(e, "v")),
        ("short dw", |a| pop(&mut a.dy), |e| is_len(e, "dw")),
        ("long dv", |a| a.dx.push(SENTINEL), |e| is_len(e, "dv")),
        ("short dg", |a| pop(&mut a.dg), |e| is_len(e, "dg")),
        ("short norms", |a| pop(&mut a.norms), |e| is_len(e, "norms")),
        ("long norms", |a| a.norms.push(1.0), |e| is_len(e, "norms")),
    ];
    check(
        op,
        &weight_args(),
        &cases(&[&lengths, &BAD_WEIGHT_NORM]),
        |a| {
            weight_norm_backward(
                &mut a.dx, &mut a.dg, &a.dy, &a.x, &a.shape, &a.g, a.dim, &a.norms,
            )
        },
    );
}

// ---------------------------------------------------------------------- DyT

const DYT_RANK: [Case; 2] = [
    (
        "rank-1 input, channels first",
        |a| a.reshape(&[3]),
        |e| matches!(e, NormError::Rank { .. }),
    ),
    (
        "rank-0 input, channels last",
        |a| {
            a.reshape(&[]);
            a.bn.channel_axis = ChannelAxis::Last;
        },
        |e| matches!(e, NormError::Rank { .. }),
    ),
];

#[test]
fn dyt_rejects_bad_input() {
    let op = "dyt";
    // The channel axis travels in `bn`, the one config DyT does not read.
    let forward = cases(&[&BAD_FORWARD_LENGTHS, &DYT_RANK, &[OVERFLOW]]);
    check(op, &channel_args(), &forward, |a| {
        dyt_forward(&mut a.y, &a.x, &a.shape, 0.5, affine!(a), a.bn.channel_axis)
    });
    let backward = cases(&[&BAD_BACKWARD_LENGTHS, &DYT_RANK, &[OVERFLOW]]);
    check(op, &channel_args(), &backward, |a| {
        let w = a.weight.as_deref();
        dyt_backward(grads!(a), &a.dy, &a.x, &a.shape, 0.5, w, a.bn.channel_axis)
    });
}

// ---------------------------------------------------------- legal and empty

/// Empty batches where the op is defined: Ok, no statistics per sample,
/// nothing to write; per-channel outputs are the empty sums, zero.
#[test]
fn empty_batches_are_fine() {
    let mut a = row_args();
    a.reshape(&[0, 4]);
    a.stats = Stats::default();
    let stats = layer_norm_forward(&mut a.y, &a.x, &[0, 4], &[4], affine!(a), 1e-5).unwrap();
    assert_eq!(stats, Stats::default());
    layer_norm_backward(
        grads!(a),
        &a.dy,
        &a.x,
        &[0, 4],
        &[4],
        a.weight.as_deref(),
        &stats,
    )
    .unwrap();
    assert_eq!(a.dweight.as_deref(), Some(&[0.0; 4][..]));
    assert_eq!(a.dbias.as_deref(), Some(&[0.0; 4][..]));

    let mut y: Vec<f32> = Vec::new();
    let stats = rms_norm_forward(&mut y, &[], &[0, 5], &[5], None, 1e-5).unwrap();
    assert!(stats.rstd.is_empty() && stats.mean.is_empty());
    let mut dx: Vec<f32> = Vec::new();
    rms_norm_backward(Grads::dx(&mut dx), &[], &[], &[0, 5], &[5], None, &stats).unwrap();

    // No rows at all.
    let stats = layer_norm_forward::<f32>(&mut [], &[], &[0, 3], &[3], Affine::NONE, 1e-5).unwrap();
    assert!(stats.rstd.is_empty());

    let mut a = group_args();
    a.reshape(&[0, 6, 3]);
    let stats = group_norm_forward(&mut a.y, &a.x, &a.shape, affine!(a), &a.gn).unwrap();
    assert!(stats.mean.is_empty() && stats.rstd.is_empty());
    group_norm_backward(
        grads!(a),
        &a.dy,
        &a.x,
        &a.shape,
        a.weight.as_deref(),
        &stats,
        &a.gn,
    )
    .unwrap();
    assert_eq!(a.dbias.as_deref(), Some(&[0.0; 6][..]));

    // Evaluation needs no batch statistics.
    let mut a = channel_args();
    a.reshape(&[0, 3, 4]);
    let (rm, rv) = ([0.0f32; 3], [1.0f32; 3]);
    let stats =
        batch_norm_forward_eval(&mut a.y, &a.x, &a.shape, affine!(a), &rm, &rv, &a.bn).unwrap();
    assert_eq!(stats.mean, rm);
    batch_norm_backward_eval(
        grads!(a),
        &a.dy,
        &a.x,
        &a.shape,
        a.weight.as_deref(),
        &stats,
        &a.bn,
    )
    .unwrap();
    assert_eq!(a.dweight.as_deref(), Some(&[0.0; 3][..]));

    // InstanceNorm on an empty batch: no instances, running stats unmoved.
    let mut a = instance_args();
    a.reshape(&[0, 3, 4]);
    let (mut rm, mut rv) = ([0.25f32; 3], [2.0f32; 3]);
    let running = RunningStats {
        mean: &mut rm,
        var: &mut rv,
    };
    let stats = instance_norm_forward_train(
        &mut a.y,
        &a.x,
        &a.shape,
        affine!(a),
        Some(running),
        &a.inorm,
    )
    .unwrap();
    assert!(stats.mean.is_empty());
    assert_eq!((rm, rv), ([0.25; 3], [2.0; 3]));
    let stats =
        instance_norm_forward_eval(&mut a.y, &a.x, &a.shape, affine!(a), &rm, &rv, &a.inorm)
            .unwrap();
    assert_eq!(stats.rstd.len(), 3);

    let mut a = channel_args();
    a.reshape(&[0, 5, 3]);
    a.weight = Some(vec![1.0; 3]);
    a.dweight = Some(vec![SENTINEL; 3]);
    a.dbias = Some(vec![SENTINEL; 3]);
    dyt_forward(
        &mut a.y,
        &a.x,
        &a.shape,
        0.5,
        Affine::NONE,
        ChannelAxis::Last,
    )
    .unwrap();
    let dalpha = dyt_backward(
        grads!(a),
        &a.dy,
        &a.x,
        &a.shape,
        0.5,
        a.weight.as_deref(),
        ChannelAxis::Last,
    )
    .unwrap();
    assert_eq!(dalpha, 0.0);
    assert_eq!(a.dbias.as_deref(), Some(&[0.0; 3][..]));
}

/// DyT takes channels-last input down to rank 1: a single row.
#[test]
fn dyt_accepts_a_single_row() {
    let mut y = [SENTINEL; 3];
    dyt_forward(
        &mut y,
        &[0.0, 1.0, -1.0],
        &[3],
        1.0,
        Affine::NONE,
        ChannelAxis::Last,
    )
    .unwrap();
    assert_eq!(y[0], 0.0);
    assert!((y[1] - 1f32.tanh()).abs() < 1e-7 && y[2] == -y[1]);
}

/// Zero values with a huge extent elsewhere: each op answers at once,
/// without walking ~2⁴⁰ empty runs, with Ok where the op is defined and
/// the error it gives for any empty group otherwise.
#[test]
fn empty_inputs_with_huge_extents_return_at_once() {
    let bn = BatchNormConfig::default();
    let mut y: [f32; 0] = [];
    let (mut dweight, mut dbias) = ([SENTINEL], [SENTINEL]);
    let shape = [HUGE, 1, 0];
    let stats =
        batch_norm_forward_eval(&mut y, &[], &shape, Affine::NONE, &[0.0], &[1.0], &bn).unwrap();
    let grads = Grads {
        dx: &mut y,
        dweight: Some(&mut dweight),
        dbias: Some(&mut dbias),
    };
    batch_norm_backward_eval(grads, &[], &[], &shape, None, &stats, &bn).unwrap();
    assert_eq!((dweight, dbias), ([0.0], [0.0]));
    let r = batch_norm_forward_train(&mut y, &[], &shape, Affine::NONE, None, &bn);
    assert!(matches!(r, Err(NormError::TooFewValues { .. })), "{r:?}");

    // Three channels and no positions, either way round.
    for (shape, axis) in [
        ([HUGE, 0, 3], ChannelAxis::Last),
        ([HUGE, 3, 0], ChannelAxis::First),
    ] {
        dyt_forward(&mut y, &[], &shape, 0.5, Affine::NONE, axis).unwrap();
        let mut dweight = [SENTINEL; 3];
        let grads = Grads {
            dx: &mut y,
            dweight: Some(&mut dweight),
            dbias: None,
        };
        assert_eq!(
            dyt_backward(grads, &[], &[], &shape, 0.5, None, axis).unwrap(),
            0.0
        );
        assert_eq!(dweight, [0.0; 3]);
    }

    let gn = GroupNormConfig::new(1);
    let r = group_norm_forward(&mut y, &[], &[HUGE, 4, 0], Affine::NONE, &gn);
    assert!(matches!(r, Err(NormError::Empty { .. })), "{r:?}");
    let inorm = InstanceNormConfig::default();
    let r = instance_norm_forward_eval(
        &mut y,
        &[],
        &[HUGE, 1, 0],
        Affine::NONE,
        &[0.0],
        &[1.0],
        &inorm,
    );
    assert!(matches!(r, Err(NormError::Empty { .. })), "{r:?}");
    let stats = layer_norm_forward(&mut y, &[], &[0, HUGE], &[HUGE], Affine::NONE, 1e-5).unwrap();
    assert!(stats.rstd.is_empty());
}
