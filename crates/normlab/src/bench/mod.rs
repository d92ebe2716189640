//! `normlab bench`: normkit's speed against the memory roofline and against
//! the implementations a user would otherwise reach for.
//!
//! For each op, shape and pass ([`Pass`]) it times:
//!
//! - `normkit`: the kernels through the public API, at the chosen dtype;
//! - `unfused` (residual-add norms only): normkit's plain norm with the
//!   adds a user would write around it, so the table's `normkit x` column
//!   is what the fusion saves;
//! - `reference`: normkit's `f64` reference twin, only on inputs of at most
//!   [`REFERENCE_MAX_NUMEL`] values (its plain loops take seconds on the
//!   large shapes) and with a short budget;
//! - `burn`: burn 0.22's `nn` modules on its `flex` CPU backend, forward
//!   and forward + backward through autodiff (`bench/baselines_burn.rs`);
//! - `candle`: candle-nn's fused ops for the forward where it has them and
//!   its composed ops with autograd for forward + backward
//!   (`bench/baselines_candle.rs`);
//! - `copy`: the roofline, a plain memory copy of the same size on the
//!   same threads ([`CopyKind`]).
//!
//! burn and candle run in `f32` whatever `--dtype` says. Neither has a
//! standalone backward (their autodiff consumes the tape each step), so
//! they appear in `forward_train`, `forward_eval` and `forward_backward`;
//! `forward_backward` is timed for every implementation so all compare
//! like for like. What a framework lacks is composed from its tensor ops
//! (and the record's `note` says so) or skipped with a reason in the
//! report.
//!
//! GB/s follows the minimum-bytes model of [`bytes`]: every input read
//! once, every output written once. `roofline_pct` is that bandwidth as a
//! percentage of the copy's, where the copy is 1-read-1-write for forward
//! passes, 2-read-1-write for backward, and both in turn for
//! forward + backward.
//!
//! Threads: everything runs inside one rayon pool of `threads` threads;
//! on the medium shapes ([`shapes::MEDIUM`]) normkit is timed in a pool of
//! one thread as well, and its table row shows that time over the pool's.
//! normkit and the copy use it; so do candle's fused LayerNorm and RMSNorm.
//! candle's elementwise ops use candle's own pool (sized by
//! `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the physical cores).
//! burn-flex, as this workspace builds it (without its `rayon` feature),
//! runs on the calling thread.
//!
//! The command line maps onto [`BenchOptions`]: `--quick` and `--smoke` set
//! [`Mode`], `--threads N`, `--dtype f32|bf16|f16`, `--op` (repeatable) and
//! `--impl` (repeatable) the fields of the same names; [`run`] returns a
//! [`Report`], printed with [`Report::table`] or, for `--json`,
//! [`Report::json_lines`]. For real numbers build with `--release`.

mod baselines_burn;
mod baselines_candle;
mod copy;
mod inputs;
mod kernels;
mod report;
mod shapes;
mod timing;

use kernels::Route;

pub use copy::CopyKind;
pub use inputs::{Inputs, SplitMix64};
pub use report::{Record, Report, Skip};
pub use shapes::{bytes, Case, Dtype, Extents, Layout, Mode, Op, Pass, MEDIUM};
pub use timing::{Budget, Sample};

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// The reference twin is timed only on inputs up to this many values.
pub const REFERENCE_MAX_NUMEL: usize = 1 << 19;

/// An implementation the bench times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Impl {
    Normkit,
    Unfused,
    Reference,
    Burn,
    Candle,
    Copy,
}

impl Impl {
    pub const ALL: [Impl; 6] = [
        Impl::Normkit,
        Impl::Unfused,
        Impl::Reference,
        Impl::Burn,
        Impl::Candle,
        Impl::Copy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Impl::Normkit => "normkit",
            Impl::Unfused => "unfused",
            Impl::Reference => "reference",
            Impl::Burn => "burn",
            Impl::Candle => "candle",
            Impl::Copy => "copy",
        }
    }
}

impl fmt::Display for Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Impl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Impl::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown implementation `{s}` (expected one of: {})",
                    Impl::ALL.map(Impl::name).join(", ")
                )
            })
    }
}

/// What `normlab bench` runs.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Which fixed case list and timing budget (`--quick`, `--smoke`).
    pub mode: Mode,
    /// Size of the rayon pool (`--threads N`); `None`: one per CPU.
    pub threads: Option<usize>,
    /// normkit's activation dtype (`--dtype`); baselines stay in `f32`.
    pub dtype: Dtype,
    /// Only these ops (`--op`); empty: all.
    pub ops: Vec<Op>,
    /// Only these implementations (`--impl`); empty: all. The copy is
    /// measured regardless, since every percentage needs it.
    pub impls: Vec<Impl>,
    /// Replaces the mode's case list (the timing budget stays the mode's).
    pub cases: Option<Vec<Case>>,
    /// Print one line per measurement on stderr while running.
    pub progress: bool,
}

/// Why a bench run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid case: {0}")]
    Case(String),
    #[error("no cases to run: the op filter {0:?} matches none")]
    NoCases(Vec<Op>),
    #[error("--threads must be at least 1")]
    ZeroThreads,
    #[error("cannot build a pool of {threads} threads: {source}")]
    Pool {
        threads: usize,
        source: rayon::ThreadPoolBuildError,
    },
    #[error("normkit failed on {case}: {source}")]
    Normkit {
        case: String,
        source: normkit::NormError,
    },
}

/// One implementation's outcome on one pass.
pub(crate) struct Timed {
    pass: Pass,
    result: Result<Sample, String>,
    note: Option<String>,
}

impl Timed {
    fn measured(pass: Pass, sample: Sample, note: String) -> Timed {
        Timed {
            pass,
            result: Ok(sample),
            note: Some(note),
        }
    }

    fn skipped(pass: Pass, reason: &str) -> Timed {
        Timed {
            pass,
            result: Err(reason.to_string()),
            note: None,
        }
    }
}

pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".into())
}

/// Runs the bench and returns every measurement; print it with
/// [`Report::table`] or [`Report::json_lines`].
pub fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    let threads = match opts.threads {
        Some(0) => return Err(BenchError::ZeroThreads),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let cases: Vec<Case> = opts
        .cases
        .clone()
        .unwrap_or_else(|| opts.mode.cases())
        .into_iter()
        .filter(|c| opts.ops.is_empty() || opts.ops.contains(&c.op))
        .collect();
    if cases.is_empty() {
        return Err(BenchError::NoCases(opts.ops.clone()));
    }
    for case in &cases {
        case.validate().map_err(BenchError::Case)?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|source| BenchError::Pool { threads, source })?;
    pool.install(|| Runner::new(opts, threads).run(&cases))
}

struct Runner<'a> {
    opts: &'a BenchOptions,
    threads: usize,
    budget: Budget,
    report: Report,
    copies: HashMap<(CopyKind, usize, usize), Sample>,
}

impl<'a> Runner<'a> {
    fn new(opts: &'a BenchOptions, threads: usize) -> Self {
        let budget = match opts.mode {
            Mode::Full => Budget::FULL,
            Mode::Quick => Budget::QUICK,
            Mode::Smoke => Budget::SMOKE,
        };
        Runner {
            opts,
            threads,
            budget,
            report: Report::new(opts.mode, threads, opts.dtype, global_notes(opts, threads)),
            copies: HashMap::new(),
        }
    }

    fn wants(&self, imp: Impl) -> bool {
        self.opts.impls.is_empty() || self.opts.impls.contains(&imp)
    }

    fn run(mut self, cases: &[Case]) -> Result<Report, BenchError> {
        for (i, case) in cases.iter().enumerate() {
            if self.opts.progress {
                eprintln!("[{}/{}] {case}", i + 1, cases.len());
            }
            self.run_case(case)?;
        }
        Ok(self.report)
    }

    fn run_case(&mut self, case: &Case) -> Result<(), BenchError> {
        let inputs = Inputs::new(case);
        let passes = case.op.passes();
        let dtype = self.opts.dtype;
        let budget = self.budget;
        let mut timed: Vec<(Impl, Dtype, Timed)> = Vec::new();
        // The copy is measured per case, interleaved with normkit's
        // iterations (see [`copy::Interleave`]), so a busy moment on a
        // shared machine slows both alike.
        self.copies.clear();

        if self.wants(Impl::Normkit) {
            let (numel, esize) = (case.extents().numel, dtype.size());
            let mut copies = copy::Interleave::new(numel, esize, &budget);
            let samples = kernels::run_normkit(
                case,
                &inputs,
                dtype,
                passes,
                &budget,
                &mut copies,
                Route::Fused,
            )
            .map_err(|source| BenchError::Normkit {
                case: case.to_string(),
                source,
            })?;
            for (kind, sample) in copies.samples() {
                self.copies.insert((kind, numel, esize), sample);
            }
            for (pass, sample) in samples {
                timed.push((
                    Impl::Normkit,
                    dtype,
                    Timed::measured(pass, sample, String::new()),
                ));
            }
        }
        for &pass in passes {
            self.roofline(case, pass, dtype.size());
        }
        if self.wants(Impl::Unfused) && case.op.is_residual() {
            // Its copies are not kept: the roofline is the one measured
            // beside normkit's fused kernels.
            let mut copies = copy::Interleave::new(case.extents().numel, dtype.size(), &budget);
            let samples = kernels::run_normkit(
                case,
                &inputs,
                dtype,
                passes,
                &budget,
                &mut copies,
                Route::Unfused,
            )
            .map_err(|source| BenchError::Normkit {
                case: case.to_string(),
                source,
            })?;
            let (norm, d) = match case.op {
                Op::AddRmsNorm => ("rms_norm", "rms_norm_backward"),
                _ => ("layer_norm", "layer_norm_backward"),
            };
            let note = format!(
                "normkit unfused: sum = x + residual (a rayon loop), then {norm}; {d}, then dx = dnorm + dsum; \
                 GB/s on the fused op's bytes"
            );
            for (pass, sample) in samples {
                timed.push((
                    Impl::Unfused,
                    dtype,
                    Timed::measured(pass, sample, note.clone()),
                ));
            }
        }
        if self.wants(Impl::Reference) {
            if case.extents().numel <= REFERENCE_MAX_NUMEL {
                for (pass, sample) in kernels::run_reference(case, &inputs, passes, &budget.slow())
                {
                    let note = "f64 twin (normkit::reference), inputs widened before timing; \
                                its backward recomputes the statistics";
                    timed.push((
                        Impl::Reference,
                        Dtype::F32,
                        Timed::measured(pass, sample, note.into()),
                    ));
                }
            } else {
                for &pass in passes {
                    let reason = format!(
                        "reference twin timed only up to {REFERENCE_MAX_NUMEL} values (its f64 loops take seconds here)"
                    );
                    timed.push((Impl::Reference, Dtype::F32, Timed::skipped(pass, &reason)));
                }
            }
        }
        if self.wants(Impl::Burn) {
            for t in baselines_burn::run_burn(case, &inputs, passes, &budget) {
                timed.push((Impl::Burn, Dtype::F32, t));
            }
        }
        if self.wants(Impl::Candle) {
            for t in baselines_candle::run_candle(case, &inputs, passes, &budget) {
                timed.push((Impl::Candle, Dtype::F32, t));
            }
        }

        for (imp, dtype, t) in timed {
            if self.opts.progress {
                match &t.result {
                    Ok(s) => eprintln!(
                        "  {:<16} {:<9} {}",
                        t.pass.name(),
                        imp.name(),
                        report::duration(s.median_ns)
                    ),
                    Err(why) => {
                        eprintln!("  {:<16} {:<9} skipped: {why}", t.pass.name(), imp.name())
                    }
                }
            }
            self.push(case, imp, dtype, t);
        }
        if self.wants(Impl::Normkit) && case.is_medium() && self.threads > 1 {
            self.one_thread(case, &inputs)?;
        }
        if self.wants(Impl::Copy) {
            for &pass in passes {
                let (copy_ns, copy_bytes, iters, min_ns) = self.roofline(case, pass, dtype.size());
                let kind = match pass {
                    Pass::ForwardTrain | Pass::ForwardEval => "1-read-1-write copy",
                    Pass::Backward => "2-read-1-write z = x + y",
                    Pass::ForwardBackward => "1-read-1-write copy then 2-read-1-write z = x + y",
                };
                let sample = Sample {
                    median_ns: copy_ns,
                    min_ns,
                    iters,
                };
                let note = kind.to_string();
                let rec = self.record(case, Impl::Copy, dtype, pass, sample, copy_bytes, note);
                self.report.records.push(rec);
            }
        }
        Ok(())
    }

    /// normkit on `case` in a pool of one thread, recorded with
    /// `threads: 1` beside the run's own.
    fn one_thread(&mut self, case: &Case, inputs: &Inputs) -> Result<(), BenchError> {
        let (dtype, budget) = (self.opts.dtype, self.budget);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|source| BenchError::Pool { threads: 1, source })?;
        let samples = pool
            .install(|| {
                // Its copies are not kept: the roofline is the run's.
                let numel = case.extents().numel;
                let mut copies = copy::Interleave::new(numel, dtype.size(), &budget);
                let passes = case.op.passes();
                kernels::run_normkit(
                    case,
                    inputs,
                    dtype,
                    passes,
                    &budget,
                    &mut copies,
                    Route::Fused,
                )
            })
            .map_err(|source| BenchError::Normkit {
                case: case.to_string(),
                source,
            })?;
        for (pass, sample) in samples {
            let bytes = bytes(case, pass, dtype.size());
            let note = "the same kernels in a pool of 1 thread".to_string();
            let mut rec = self.record(case, Impl::Normkit, dtype, pass, sample, bytes, note);
            rec.threads = 1;
            self.report.records.push(rec);
        }
        Ok(())
    }

    fn push(&mut self, case: &Case, imp: Impl, dtype: Dtype, t: Timed) {
        match t.result {
            Ok(sample) => {
                let bytes = bytes(case, t.pass, dtype.size());
                let note = t.note.unwrap_or_default();
                let rec = self.record(case, imp, dtype, t.pass, sample, bytes, note);
                self.report.records.push(rec);
            }
            Err(reason) => self.report.skips.push(Skip {
                op: case.op,
                pass: t.pass,
                shape: case.shape.clone(),
                layout: case.layout,
                dtype,
                threads: self.threads,
                implementation: imp,
                reason,
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        case: &Case,
        imp: Impl,
        dtype: Dtype,
        pass: Pass,
        s: Sample,
        bytes: u64,
        note: String,
    ) -> Record {
        let (copy_ns, copy_bytes, _, _) = self.roofline(case, pass, dtype.size());
        let gbps = bytes as f64 / s.median_ns;
        let copy_gbps = copy_bytes as f64 / copy_ns;
        Record {
            op: case.op,
            pass,
            shape: case.shape.clone(),
            layout: case.layout,
            dtype,
            threads: self.threads,
            implementation: imp,
            median_ns: s.median_ns,
            min_ns: s.min_ns,
            iters: s.iters,
            bytes,
            gbps,
            copy_gbps,
            roofline_pct: 100.0 * gbps / copy_gbps,
            groups: case.groups(),
            note,
        }
    }

    /// The copy's median time, bytes, iterations and minimum time for
    /// `pass` on this case's size; each copy is measured once per case.
    fn roofline(&mut self, case: &Case, pass: Pass, esize: usize) -> (f64, u64, usize, f64) {
        let numel = case.extents().numel;
        let mut one = |kind: CopyKind| {
            let budget = self.budget;
            let s = *self
                .copies
                .entry((kind, numel, esize))
                .or_insert_with(|| copy::measure_copy(kind, numel, esize, &budget));
            (s.median_ns, kind.bytes(numel, esize), s.iters, s.min_ns)
        };
        CopyKind::for_pass(pass)
            .iter()
            .map(|&kind| one(kind))
            .reduce(|a, b| (a.0 + b.0, a.1 + b.1, a.2.min(b.2), a.3 + b.3))
            .expect("every pass has a copy")
    }
}

fn global_notes(opts: &BenchOptions, threads: usize) -> Vec<String> {
    let mut notes = vec![
        "GB/s: minimum-bytes model (forward: read x + write y; backward: read x, dy + write dx; \
         plus parameters and saved statistics; forward_backward: both). % copy: that GB/s over a \
         plain copy's on the same size and threads (1-read-1-write for forward, 2-read-1-write for \
         backward)."
            .to_string(),
        "burn and candle have no standalone backward (autodiff consumes the tape each step): \
         compare them on forward_backward, which includes their loss sum(y·dy) that seeds dy."
            .to_string(),
        format!(
            "threads: normkit, the copy and candle's fused LayerNorm/RMSNorm run in a rayon pool of \
             {threads}; candle's elementwise ops use candle's own pool of {} (CANDLE_NUM_THREADS, \
             else RAYON_NUM_THREADS, else the physical cores).",
            baselines_candle::candle_threads()
        ),
        format!("burn: {}.", baselines_burn::BUILD),
        "candle: candle-core/candle-nn 0.11.1 on the CPU device.".to_string(),
        // A kernel that lost its instruction set is otherwise invisible.
        format!(
            "normkit's SIMD level: {:?} (the best this CPU has unless NORMKIT_SIMD lowers it).",
            normkit::simd_level()
        ),
        format!(
            "reference: the f64 twin, timed only up to {REFERENCE_MAX_NUMEL} values and with few \
             iterations; a yardstick, not a competitor."
        ),
        "weight_norm is not benchmarked: it transforms weights once per step, not activations.".to_string(),
    ];
    if opts.dtype != Dtype::F32 {
        notes.push(format!(
            "dtype: normkit and the copy run in {}; burn, candle and the reference in f32 \
             (their GB/s and % copy use f32 bytes and an f32 copy).",
            opts.dtype
        ));
    }
    if opts.mode != Mode::Full {
        notes.push(format!(
            "{} mode: fewer shapes and short timings; numbers are rough.",
            opts.mode.name()
        ));
    }
    notes
}
