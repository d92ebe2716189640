//! What is measured: the ops, passes, layouts and shapes, and the
//! minimum-bytes model that turns a time into a bandwidth.

use std::fmt;
use std::str::FromStr;

/// An op of normkit that the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    BatchNorm,
    LayerNorm,
    RmsNorm,
    GroupNorm,
    InstanceNorm,
    Dyt,
    /// The residual add fused with LayerNorm: `sum = x + residual`,
    /// `y = layer_norm(sum)`, both written.
    AddLayerNorm,
    /// The residual add fused with RMSNorm.
    AddRmsNorm,
    Derf,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::LayerNorm,
        Op::RmsNorm,
        Op::AddLayerNorm,
        Op::AddRmsNorm,
        Op::Dyt,
        Op::Derf,
        Op::BatchNorm,
        Op::GroupNorm,
        Op::InstanceNorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::BatchNorm => "batch_norm",
            Op::LayerNorm => "layer_norm",
            Op::RmsNorm => "rms_norm",
            Op::GroupNorm => "group_norm",
            Op::InstanceNorm => "instance_norm",
            Op::Dyt => "dyt",
            Op::AddLayerNorm => "add_layer_norm",
            Op::AddRmsNorm => "add_rms_norm",
            Op::Derf => "derf",
        }
    }

    /// The passes this op has. Evaluation is listed only where it differs
    /// from training: BatchNorm and InstanceNorm normalize with running
    /// statistics there; the others compute the same thing in both modes.
    pub fn passes(self) -> &'static [Pass] {
        match self {
            Op::BatchNorm | Op::InstanceNorm => &[
                Pass::ForwardTrain,
                Pass::ForwardEval,
                Pass::Backward,
                Pass::ForwardBackward,
            ],
            _ => &[Pass::ForwardTrain, Pass::Backward, Pass::ForwardBackward],
        }
    }

    /// Ops that take `[rows, features]` rather than `[N, C, H, W]`.
    pub fn is_row_op(self) -> bool {
        matches!(
            self,
            Op::LayerNorm | Op::RmsNorm | Op::Dyt | Op::AddLayerNorm | Op::AddRmsNorm | Op::Derf
        )
    }

    /// The fused residual-add norms, which also write `sum` (and whose
    /// backward also reads its gradient `dsum`).
    pub fn is_residual(self) -> bool {
        matches!(self, Op::AddLayerNorm | Op::AddRmsNorm)
    }

    /// Ops with one saved statistic per group (no mean).
    fn is_rms(self) -> bool {
        matches!(self, Op::RmsNorm | Op::AddRmsNorm)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.to_ascii_lowercase().replace('-', "_");
        let op = match key.as_str() {
            "batch_norm" | "bn" => Op::BatchNorm,
            "layer_norm" | "ln" => Op::LayerNorm,
            "rms_norm" | "rmsnorm" | "rms" => Op::RmsNorm,
            "group_norm" | "gn" => Op::GroupNorm,
            "instance_norm" | "in" => Op::InstanceNorm,
            "dyt" => Op::Dyt,
            "add_layer_norm" | "add_ln" => Op::AddLayerNorm,
            "add_rms_norm" | "add_rms" => Op::AddRmsNorm,
            "derf" => Op::Derf,
            _ => {
                return Err(format!(
                    "unknown op `{s}` (expected one of: {})",
                    Op::ALL.map(Op::name).join(", ")
                ))
            }
        };
        Ok(op)
    }
}

/// One timed unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pass {
    /// Normalizing with the batch's own statistics (and, for BatchNorm,
    /// updating the running ones).
    ForwardTrain,
    /// Normalizing with running statistics.
    ForwardEval,
    /// The training backward alone, from saved statistics.
    Backward,
    /// A training step's forward plus backward: the one pass every
    /// implementation has, so they compare like for like.
    ForwardBackward,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::ForwardTrain => "forward_train",
            Pass::ForwardEval => "forward_eval",
            Pass::Backward => "backward",
            Pass::ForwardBackward => "forward_backward",
        }
    }
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Memory layout of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    /// `[rows, features]`, normalized (or, for DyT, scaled) per feature
    /// along the last dimension: tokens × hidden size.
    Rows,
    /// `[N, C, H, W]`, channels first.
    Nchw,
    /// `[N, H, W, C]`, channels last.
    Nhwc,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Rows => "rows",
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
    }

    pub fn channel_axis(self) -> normkit::ChannelAxis {
        match self {
            Layout::Nchw => normkit::ChannelAxis::First,
            Layout::Rows | Layout::Nhwc => normkit::ChannelAxis::Last,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Storage type of activations and their gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "float16" => Ok(Dtype::F16),
            _ => Err(format!("unknown dtype `{s}` (expected f32, bf16 or f16)")),
        }
    }
}

/// One op on one shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Case {
    pub op: Op,
    pub shape: Vec<usize>,
    pub layout: Layout,
}

/// The extents the bytes model and the runners need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extents {
    /// Values in the input.
    pub numel: usize,
    /// Samples (rows for the row ops).
    pub n: usize,
    /// Length of the per-channel parameters (features for the row ops).
    pub c: usize,
    /// Spatial positions per sample and channel (1 for the row ops).
    pub s: usize,
}

impl Case {
    pub fn new(op: Op, shape: &[usize], layout: Layout) -> Case {
        Case {
            op,
            shape: shape.to_vec(),
            layout,
        }
    }

    /// Checks that the shape fits the op and layout; the message names both.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |why: &str| {
            Err(format!(
                "{} {:?} {}: {why}",
                self.op, self.shape, self.layout
            ))
        };
        if self.shape.contains(&0) {
            return bad("empty dimension");
        }
        match (self.op.is_row_op(), self.layout) {
            (true, Layout::Rows) if self.shape.len() == 2 => {}
            (true, _) => return bad("row ops take a [rows, features] shape with layout rows"),
            (false, Layout::Nchw | Layout::Nhwc) if self.shape.len() == 4 => {}
            (false, _) => return bad("channel ops take a 4-D shape with layout nchw or nhwc"),
        }
        let e = self.extents();
        if matches!(self.op, Op::BatchNorm) && e.n * e.s < 2 {
            return bad("batch norm needs at least two values per channel");
        }
        if matches!(self.op, Op::InstanceNorm) && e.s < 2 {
            return bad("instance norm needs at least two spatial positions");
        }
        Ok(())
    }

    pub fn extents(&self) -> Extents {
        let numel = self.shape.iter().product();
        let (n, c) = match self.layout {
            Layout::Rows => (self.shape[0], self.shape[1]),
            Layout::Nchw => (self.shape[0], self.shape[1]),
            Layout::Nhwc => (self.shape[0], self.shape[3]),
        };
        let s = match self.layout {
            Layout::Rows => 1,
            Layout::Nchw => self.shape[2] * self.shape[3],
            Layout::Nhwc => self.shape[1] * self.shape[2],
        };
        Extents { numel, n, c, s }
    }

    /// GroupNorm's group count: the largest divisor of C that is at most 32
    /// and at most C / 2 (32 groups is the paper's default; at least two
    /// channels per group keeps it distinct from InstanceNorm).
    pub fn groups(&self) -> Option<usize> {
        if self.op != Op::GroupNorm {
            return None;
        }
        let c = self.extents().c;
        let cap = (c / 2).clamp(1, 32);
        (1..=cap).rev().find(|g| c % g == 0)
    }

    /// Per-group statistics a training forward saves (mean and rstd each).
    fn stat_groups(&self) -> usize {
        let e = self.extents();
        match self.op {
            Op::BatchNorm => e.c,
            Op::LayerNorm | Op::RmsNorm | Op::AddLayerNorm | Op::AddRmsNorm => e.n,
            Op::GroupNorm => e.n * self.groups().unwrap_or(1),
            Op::InstanceNorm => e.n * e.c,
            Op::Dyt | Op::Derf => 0,
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} {}", self.op, self.shape, self.layout)
    }
}

/// The minimum-bytes model: the bytes a pass must move if every input is
/// read once and every output written once, and nothing else.
///
/// With `n` values of `esize` bytes, `C` channels and `G` saved statistic
/// groups (BatchNorm: C; LayerNorm, RMSNorm: rows; GroupNorm: N · groups;
/// InstanceNorm: N · C; DyT: none), parameters and statistics in `f32`:
///
/// ```text
/// forward_train    = 2·n·esize  (read x, write y)
///                  + 4·(params read + 2·G statistics written)
/// forward_eval     = 2·n·esize + 4·(params read + running mean, var read)
/// backward         = 3·n·esize  (read x, dy; write dx)
///                  + 4·(weight read + 2·G statistics read + dweight, dbias written)
/// forward_backward = forward_train + backward
/// ```
///
/// where the forward's parameters are weight and bias (RMSNorm: weight;
/// DyT: weight, bias and alpha; Derf: those and shift), BatchNorm's
/// training forward also reads and writes its running mean and variance,
/// RMSNorm has one statistic per group (no mean) and no dbias, and DyT's
/// backward reads alpha and writes dalpha (Derf's also shift and dshift).
///
/// The residual-add norms move two more tensors each way: the forward
/// reads `x` and `residual` and writes `sum` and `y` (`4·n·esize`), the
/// backward reads `dy`, `dsum` and `sum` and writes `dx`, which is also
/// `dresidual` (`4·n·esize`): 8 tensor streams for a step, where an add
/// followed by the norm moves 11 (add 3, norm forward 2, norm backward 3,
/// the add of `dsum` 3).
///
/// The model ignores caches: a pass that reads x twice still "moves" it
/// once, so GB/s above the copy's means data came from cache.
pub fn bytes(case: &Case, pass: Pass, esize: usize) -> u64 {
    let e = case.extents();
    let (n, c) = (e.numel as u64, e.c as u64);
    let g = case.stat_groups() as u64;
    let esize = esize as u64;
    let stats_per_group = if case.op.is_rms() { 1 } else { 2 };
    // Tensors of n values each pass reads and writes.
    let streams = if case.op.is_residual() {
        (4, 4)
    } else {
        (2, 3)
    };
    let forward_params = match case.op {
        Op::RmsNorm | Op::AddRmsNorm => c,
        Op::Dyt => 2 * c + 1,
        Op::Derf => 2 * c + 2,
        // Running mean and variance, read and written.
        Op::BatchNorm => 2 * c + 4 * c,
        _ => 2 * c,
    };
    let forward_train = streams.0 * n * esize + 4 * (forward_params + stats_per_group * g);
    let backward = {
        let param_grads = match case.op {
            Op::RmsNorm | Op::AddRmsNorm => c,
            // dweight, dbias, and alpha read plus dalpha written.
            Op::Dyt => 2 * c + 2,
            // The same, with shift and dshift.
            Op::Derf => 2 * c + 4,
            _ => 2 * c,
        };
        streams.1 * n * esize + 4 * (c + stats_per_group * g + param_grads)
    };
    match pass {
        Pass::ForwardTrain => forward_train,
        Pass::ForwardEval => 2 * n * esize + 4 * (2 * c + 2 * c),
        Pass::Backward => backward,
        Pass::ForwardBackward => forward_train + backward,
    }
}

/// Medium shapes: large enough for normkit to consider threads, small
/// enough that waking them can cost more than it saves (a transformer's
/// `[batch · tokens, features]` = `[8 · 64, 256]` rows, a small CNN's
/// activations). The bench times normkit on these with one thread as well.
pub const MEDIUM: [&[usize]; 2] = [&[512, 256], &[4, 128, 28, 28]];

impl Case {
    /// Whether the case's shape is one of [`MEDIUM`] (channels last: its
    /// `[N, H, W, C]` form).
    pub fn is_medium(&self) -> bool {
        MEDIUM.iter().any(|m| match (self.layout, m) {
            (Layout::Nhwc, [n, c, h, w]) => self.shape == [*n, *h, *w, *c],
            _ => self.shape == *m,
        })
    }
}

/// How many shapes to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every shape, stable timings.
    #[default]
    Full,
    /// Fewer and smaller shapes, short timings: under a minute.
    Quick,
    /// One tiny shape per op and two iterations: checks that every path
    /// runs, for tests.
    Smoke,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Quick => "quick",
            Mode::Smoke => "smoke",
        }
    }

    /// The fixed case list of this mode, in the order it runs.
    pub fn cases(self) -> Vec<Case> {
        let (rows, channels): (&[&[usize]], &[&[usize]]) = match self {
            Mode::Full => (
                &[&[16, 768], &[512, 256], &[8192, 1024], &[64, 65536]],
                &[&[16, 32, 8, 8], &[4, 128, 28, 28], &[32, 64, 56, 56]],
            ),
            Mode::Quick => (
                &[&[16, 768], &[512, 256], &[2048, 1024]],
                &[&[4, 128, 28, 28], &[8, 64, 28, 28]],
            ),
            Mode::Smoke => (&[&[4, 64]], &[&[2, 8, 4, 4]]),
        };
        let mut cases = Vec::new();
        for op in Op::ALL {
            if op.is_row_op() {
                for shape in rows {
                    cases.push(Case::new(op, shape, Layout::Rows));
                }
            } else {
                for nchw in channels {
                    let [n, c, h, w] = [nchw[0], nchw[1], nchw[2], nchw[3]];
                    cases.push(Case::new(op, &[n, c, h, w], Layout::Nchw));
                    cases.push(Case::new(op, &[n, h, w, c], Layout::Nhwc));
                }
            }
        }
        cases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_case_is_valid() {
        for mode in [Mode::Full, Mode::Quick, Mode::Smoke] {
            for case in mode.cases() {
                case.validate().unwrap();
            }
        }
    }

    #[test]
    fn required_shapes_are_in_the_full_run() {
        let cases = Mode::Full.cases();
        for op in Op::ALL.into_iter().filter(|op| op.is_row_op()) {
            for shape in [[8192, 1024], [64, 65536], [16, 768]] {
                assert!(cases.contains(&Case::new(op, &shape, Layout::Rows)));
            }
        }
        for op in [Op::BatchNorm, Op::GroupNorm, Op::InstanceNorm] {
            assert!(cases.contains(&Case::new(op, &[32, 64, 56, 56], Layout::Nchw)));
            assert!(cases.contains(&Case::new(op, &[32, 56, 56, 64], Layout::Nhwc)));
        }
    }

    #[test]
    fn medium_shapes_run_in_every_layout() {
        let cases = Mode::Full.cases();
        let medium: Vec<&Case> = cases.iter().filter(|c| c.is_medium()).collect();
        // Six row ops on [512, 256], three channel ops in two layouts.
        assert_eq!(medium.len(), 12);
        assert!(medium.contains(&&Case::new(Op::BatchNorm, &[4, 28, 28, 128], Layout::Nhwc)));
        assert!(!Case::new(Op::LayerNorm, &[16, 768], Layout::Rows).is_medium());
    }

    #[test]
    fn residual_norms_move_eight_streams_where_add_then_norm_moves_eleven() {
        // Same parameters and statistics as the plain norm: the difference
        // is the tensor streams alone. The norm moves 2 + 3; the fused op
        // 4 + 4; an add before it (3) and an add of dsum after its
        // backward (3) would make 11.
        let n: u64 = 8 * 16;
        for (fused, plain) in [
            (Op::AddLayerNorm, Op::LayerNorm),
            (Op::AddRmsNorm, Op::RmsNorm),
        ] {
            let f = Case::new(fused, &[8, 16], Layout::Rows);
            let p = Case::new(plain, &[8, 16], Layout::Rows);
            let more = |pass| bytes(&f, pass, 4) - bytes(&p, pass, 4);
            assert_eq!(more(Pass::ForwardTrain), 2 * n * 4);
            assert_eq!(more(Pass::Backward), n * 4);
            assert_eq!(more(Pass::ForwardBackward), 3 * n * 4);
        }
    }

    #[test]
    fn extents_follow_the_layout() {
        let nhwc = Case::new(Op::BatchNorm, &[2, 5, 7, 3], Layout::Nhwc).extents();
        assert_eq!((nhwc.n, nhwc.c, nhwc.s, nhwc.numel), (2, 3, 35, 210));
        let nchw = Case::new(Op::BatchNorm, &[2, 3, 5, 7], Layout::Nchw).extents();
        assert_eq!((nchw.n, nchw.c, nchw.s, nchw.numel), (2, 3, 35, 210));
    }

    #[test]
    fn group_count() {
        let gn = |c| Case::new(Op::GroupNorm, &[1, c, 2, 2], Layout::Nchw).groups();
        assert_eq!(gn(64), Some(32));
        assert_eq!(gn(32), Some(16));
        assert_eq!(gn(8), Some(4));
        assert_eq!(gn(3), Some(1));
        assert_eq!(gn(1), Some(1));
    }

    #[test]
    fn wrong_rank_is_rejected() {
        assert!(Case::new(Op::LayerNorm, &[2, 3, 4], Layout::Rows)
            .validate()
            .is_err());
        assert!(Case::new(Op::BatchNorm, &[2, 3], Layout::Nchw)
            .validate()
            .is_err());
        assert!(Case::new(Op::InstanceNorm, &[2, 3, 1, 1], Layout::Nchw)
            .validate()
            .is_err());
    }
}
