//! `normlab study`: experiments that train real models with each
//! normalization and a report of which claims hold here.
//!
//! - [`data`]: MNIST-1D (generated), Fashion-MNIST (IDX files), text;
//! - [`models`]: the networks, each with a pluggable normalization;
//! - [`train`]: the training loop, evaluation and BatchNorm's three ways
//!   of taking statistics;
//! - [`stats`]: means and 95% intervals over seeds; [`verdict`]: claims
//!   judged from those intervals;
//! - [`jobs`]: training runs as (experiment, arm, replicate, config) jobs
//!   and a runner for them;
//! - [`report`]: the report's data model and its HTML, JSON and Markdown;
//! - [`experiments`]: the experiments; [`all_experiments`] lists them.
//!
//! A run is three steps, each usable alone so that a distributed runner
//! can share out the middle one: [`plan`] lists every job of the chosen
//! experiments, [`execute`] runs one job, and [`assemble`] turns all the
//! outputs into the report. [`run_study`] does the three on local
//! threads. The report depends only on the options and the outputs, never
//! on the order jobs ran in (timings aside).

pub mod data;
pub mod experiments;
pub mod fmt;
pub mod jobs;
pub mod models;
pub mod report;
pub mod stats;
pub mod train;
pub mod verdict;

use data::{CharCorpus, DataError, FashionArm, Mnist1dConfig, Split};
use jobs::{Job, JobOutput, JobRecord, Results};
use report::{Plot, Report, ReportError, Section, Table};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;
use verdict::{judge, Claim, Judged};

/// How much compute the study spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Small models and few steps: minutes on two cores, wide intervals.
    #[default]
    Quick,
    /// The full schedule.
    Full,
    /// The smallest sizes, seconds in all: checks that everything runs;
    /// its numbers mean little.
    Smoke,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Full => "full",
            Mode::Smoke => "smoke",
        }
    }

    /// Seeds per arm when `--seeds` is not given.
    pub fn default_seeds(self) -> usize {
        match self {
            Mode::Smoke => 2,
            Mode::Quick => 3,
            Mode::Full => 5,
        }
    }
}

/// The study's options.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyOptions {
    /// Directory for index.html, report.json and summary.md.
    pub out: PathBuf,
    /// Seed for data generation, initialization and batch order.
    pub seed: u64,
    pub mode: Mode,
    /// Replicates per arm; `None`: the mode's default (3 quick, 5 full).
    pub seeds: Option<usize>,
    /// Threads running jobs at once; `None`: one per core.
    pub workers: Option<usize>,
    /// Directory with Fashion-MNIST's IDX files (plain or .gz).
    pub fashion_mnist: Option<PathBuf>,
    /// UTF-8 text for the character language model.
    pub text: Option<PathBuf>,
    /// Run only these experiments (ids).
    pub only: Vec<String>,
}

impl Default for StudyOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("normlab-report"),
            seed: 42,
            mode: Mode::Quick,
            seeds: None,
            workers: None,
            fashion_mnist: None,
            text: None,
            only: Vec::new(),
        }
    }
}

/// Quantization levels when MNIST-1D stands in for text.
const MNIST1D_TEXT_LEVELS: usize = 16;
/// Validation share of a text file.
const TEXT_VAL_FRACTION: f64 = 0.1;
/// The Fashion-MNIST the study loads: the batch-size arm's first 10,000
/// training images and all 10,000 test images.
pub const FASHION_ARM: FashionArm = FashionArm {
    train: 10_000,
    test: 10_000,
};

/// What an experiment may use: the options, derived seeds, and data loaded
/// on first use and then shared (also between threads).
#[derive(Debug)]
pub struct StudyContext {
    options: StudyOptions,
    mnist1d: OnceLock<Split>,
    fashion_mnist: OnceLock<Split>,
    text: OnceLock<CharCorpus>,
}

/// Loads into `cell` once; a failed load is not cached (and is retried by
/// the next caller, which then sees the same error).
fn cached<T>(
    cell: &OnceLock<T>,
    load: impl FnOnce() -> Result<T, DataError>,
) -> Result<&T, DataError> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = load()?;
    Ok(cell.get_or_init(|| v))
}

impl StudyContext {
    pub fn new(options: StudyOptions) -> Self {
        Self {
            options,
            mnist1d: OnceLock::new(),
            fashion_mnist: OnceLock::new(),
            text: OnceLock::new(),
        }
    }

    pub fn options(&self) -> &StudyOptions {
        &self.options
    }

    pub fn seed(&self) -> u64 {
        self.options.seed
    }

    pub fn mode(&self) -> Mode {
        self.options.mode
    }

    /// Replicates per arm.
    pub fn seeds(&self) -> usize {
        self.options
            .seeds
            .unwrap_or_else(|| self.options.mode.default_seeds())
            .max(1)
    }

    /// A seed of its own for each named use ("batch-size/init/3"), derived
    /// from the study's seed, so experiments do not share random streams
    /// and adding one does not change another's numbers.
    pub fn seed_for(&self, name: &str) -> u64 {
        // FNV-1a: a fixed, platform-independent string hash.
        let stream = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        data::derive_seed(self.options.seed, stream)
    }

    /// Replicate `r`'s seed of stream `stream` of `experiment`.
    pub fn replicate_seed(&self, experiment: &str, stream: &str, r: usize) -> u64 {
        self.seed_for(&format!("{experiment}/{stream}/{r}"))
    }

    /// MNIST-1D with the original settings, generated from the study's
    /// seed: the same data for every replicate.
    pub fn mnist1d(&self) -> Result<&Split, DataError> {
        cached(&self.mnist1d, || {
            data::mnist1d(&Mnist1dConfig {
                seed: self.options.seed,
                ..Mnist1dConfig::default()
            })
        })
    }

    /// Fashion-MNIST from `--data` or the default directory: the first
    /// 10,000 training and 10,000 test images, standardized.
    pub fn fashion_mnist(&self) -> Result<&Split, DataError> {
        cached(&self.fashion_mnist, || {
            data::fashion_mnist(self.options.fashion_mnist.as_deref(), FASHION_ARM)
        })
    }

    /// The text corpus: `--text`, split 90/10, or MNIST-1D as text.
    pub fn text(&self) -> Result<&CharCorpus, DataError> {
        cached(&self.text, || match &self.options.text {
            Some(path) => CharCorpus::from_file(path, TEXT_VAL_FRACTION),
            None => CharCorpus::from_mnist1d(self.mnist1d()?, MNIST1D_TEXT_LEVELS),
        })
    }

    /// Where [`StudyContext::text`] comes from, for a section's setup.
    pub fn text_source(&self) -> String {
        match &self.options.text {
            Some(path) => format!(
                "{} (last {}% held out)",
                path.display(),
                TEXT_VAL_FRACTION * 100.0
            ),
            None => format!(
                "MNIST-1D rendered as text, one line per sequence, {MNIST1D_TEXT_LEVELS} levels"
            ),
        }
    }
}

/// What an experiment returns on failure; anything that is an error.
pub type ExperimentError = Box<dyn std::error::Error + Send + Sync>;

/// What an experiment makes of its jobs' outputs: the section's text,
/// plots and tables, and one value per seed for each of its claims.
#[derive(Debug, Default)]
pub struct Analysis {
    pub setup: String,
    pub result: String,
    pub plots: Vec<Plot>,
    pub tables: Vec<Table>,
    /// Per-seed effect values, by claim key.
    pub effects: BTreeMap<String, Vec<f64>>,
    /// Further per-seed numbers for report.json.
    pub metrics: BTreeMap<String, Vec<f64>>,
    /// Caveats that depend on the run (the experiment's fixed ones come
    /// from [`Experiment::caveats`]).
    pub caveats: Vec<String>,
}

/// One experiment of the study.
pub trait Experiment: Sync {
    /// Stable, unique id: the section's anchor and the name `--only` takes.
    fn id(&self) -> &'static str;
    fn title(&self) -> &'static str;
    /// The survey's topic it tests, for the claims table.
    fn topic(&self) -> &'static str;
    /// The published claim under test, in words with its source.
    fn claim(&self) -> &'static str;
    /// The claims it judges, primary first: effect, direction, margin and
    /// the margin's source, fixed before any job runs.
    fn claims(&self, ctx: &StudyContext) -> Vec<Claim>;
    fn caveats(&self) -> Vec<&'static str>;
    fn references(&self) -> Vec<&'static str>;
    /// Its training runs.
    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError>;
    /// Runs one of its jobs.
    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError>;
    /// Turns its jobs' outputs into its section's content.
    fn analyze(&self, ctx: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError>;
}

/// Every experiment of the study, in report order.
pub fn all_experiments() -> Vec<Box<dyn Experiment>> {
    experiments::all()
}

/// Why the study could not run or be written.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("unknown experiment {id:?}; known: {}", known.join(", "))]
    UnknownExperiment { id: String, known: Vec<String> },
    #[error("two experiments share the id {0:?}")]
    DuplicateExperiment(String),
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A data source the command line asked for (`--data`, `--text`)
    /// cannot be read: the study stops before training anything rather
    /// than report on other data.
    #[error("{flag}: {source}")]
    Data {
        flag: &'static str,
        #[source]
        source: DataError,
    },
}

/// What [`run_study`] reports while it works.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The plan: this many jobs in all.
    Planned { jobs: usize },
    /// A job finished (the `done`-th of `total`).
    JobDone {
        done: usize,
        total: usize,
        job: &'a Job,
        seconds: f64,
        failed: bool,
    },
    /// A section was assembled.
    Section { section: &'a Section },
}

impl std::fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Planned { jobs } => write!(f, "{jobs} training jobs"),
            Progress::JobDone {
                done,
                total,
                job,
                seconds,
                failed,
            } => write!(
                f,
                "[{done}/{total}] {} {} seed {} ({seconds:.1} s){}",
                job.experiment,
                job.arm,
                job.replicate,
                if *failed { " FAILED" } else { "" }
            ),
            Progress::Section { section } => write!(
                f,
                "{}: {} {} ({:.0} s)",
                section.id,
                section.verdict,
                section.primary.interval_text(),
                section.seconds
            ),
        }
    }
}

/// The experiments `--only` names (all when empty), checking the ids.
pub fn choose<'a>(
    ctx: &StudyContext,
    experiments: &[&'a dyn Experiment],
) -> Result<Vec<&'a dyn Experiment>, StudyError> {
    let mut ids = BTreeSet::new();
    for e in experiments {
        if !ids.insert(e.id()) {
            return Err(StudyError::DuplicateExperiment(e.id().to_string()));
        }
    }
    let only = &ctx.options.only;
    if let Some(id) = only.iter().find(|id| !ids.contains(id.as_str())) {
        return Err(StudyError::UnknownExperiment {
            id: id.clone(),
            known: ids.iter().map(|s| s.to_string()).collect(),
        });
    }
    Ok(experiments
        .iter()
        .copied()
        .filter(|e| only.is_empty() || only.iter().any(|id| id == e.id()))
        .collect())
}

/// Every job of `experiments`, in report order, and each experiment's
/// planning failure (an experiment that cannot plan gets no jobs and an
/// inconclusive section).
pub fn plan(
    ctx: &StudyContext,
    experiments: &[&dyn Experiment],
) -> (Vec<Job>, BTreeMap<String, String>) {
    let mut jobs = Vec::new();
    let mut failed = BTreeMap::new();
    for e in experiments {
        match jobs::catching(|| e.jobs(ctx)) {
            Ok(planned) => jobs.extend(planned),
            Err(why) => {
                failed.insert(e.id().to_string(), why);
            }
        }
    }
    (jobs, failed)
}

/// Runs one job of `experiments`.
pub fn execute(
    ctx: &StudyContext,
    experiments: &[&dyn Experiment],
    job: &Job,
) -> Result<JobOutput, String> {
    let Some(e) = experiments.iter().find(|e| e.id() == job.experiment) else {
        return Err(format!("no experiment {:?}", job.experiment));
    };
    jobs::run_one(job, |j| e.run_job(ctx, j))
}

fn section(
    ctx: &StudyContext,
    e: &dyn Experiment,
    results: &Results,
    planned: Option<&String>,
) -> Section {
    let start = Instant::now();
    let claims = e.claims(ctx);
    let analysis = match planned {
        Some(why) => Err(format!("could not plan its runs: {why}")),
        None => jobs::catching(|| e.analyze(ctx, results)),
    };
    let mut caveats: Vec<String> = e.caveats().into_iter().map(String::from).collect();
    let failures = results.failures();
    if !failures.is_empty() {
        caveats.push(format!(
            "{} job(s) failed and count as missing seeds: {}",
            failures.len(),
            failures.join("; ")
        ));
    }
    let a = analysis.unwrap_or_else(|why| {
        caveats.push(format!("The experiment failed: {why}."));
        Analysis {
            result: format!("No result: the experiment failed ({why})."),
            ..Analysis::default()
        }
    });
    caveats.extend(a.caveats.iter().cloned());
    let mut effects = a.effects;
    let mut judged: Vec<Judged> = claims
        .into_iter()
        .map(|c| {
            let values = effects.remove(&c.key).unwrap_or_default();
            judge(c, values)
        })
        .collect();
    if judged.is_empty() {
        judged.push(judge(
            Claim::new(
                "none",
                "no claim stated",
                "nothing",
                "",
                verdict::Direction::AtLeast,
                0.0,
                "none",
            ),
            Vec::new(),
        ));
    }
    let primary = judged.remove(0);
    Section {
        id: e.id().to_string(),
        title: e.title().to_string(),
        topic: e.topic().to_string(),
        claim: e.claim().to_string(),
        setup: a.setup,
        result: a.result,
        plots: a.plots,
        tables: a.tables,
        verdict: primary.verdict,
        primary,
        secondary: judged,
        caveats,
        references: e.references().into_iter().map(String::from).collect(),
        metrics: a.metrics,
        seconds: results.seconds() + start.elapsed().as_secs_f64(),
    }
}

/// The report from every job's output (in [`plan`]'s order).
pub fn assemble(
    ctx: &StudyContext,
    experiments: &[&dyn Experiment],
    jobs: &[Job],
    outputs: Vec<Result<JobOutput, String>>,
    planning_failures: &BTreeMap<String, String>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Report {
    let mut by_experiment: BTreeMap<&str, Results> = BTreeMap::new();
    let mut records = Vec::new();
    for (job, out) in jobs.iter().zip(outputs) {
        by_experiment
            .entry(job.experiment.as_str())
            .or_insert_with(|| Results::new(ctx.seeds()))
            .insert(&job.arm, job.replicate, out.clone());
        records.push(JobRecord {
            experiment: job.experiment.clone(),
            arm: job.arm.clone(),
            replicate: job.replicate,
            output: out,
        });
    }
    let mut report = Report {
        title: "What normalization does".into(),
        seed: ctx.options.seed,
        mode: ctx.options.mode,
        seeds: ctx.seeds(),
        sections: Vec::new(),
        jobs: records,
    };
    let empty = Results::new(ctx.seeds());
    for e in experiments {
        let results = by_experiment.get(e.id()).unwrap_or(&empty);
        let s = section(ctx, *e, results, planning_failures.get(e.id()));
        progress(Progress::Section { section: &s });
        report.sections.push(s);
    }
    report
}

/// Plans the chosen experiments' jobs, runs them on `--workers` threads
/// and assembles the report. A job that fails or panics is a missing seed
/// in its section, which says so.
pub fn run_study(
    ctx: &StudyContext,
    experiments: &[&dyn Experiment],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report, StudyError> {
    let chosen = choose(ctx, experiments)?;
    let (jobs, planning_failures) = plan(ctx, &chosen);
    progress(Progress::Planned { jobs: jobs.len() });
    let workers = ctx.options.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let total = jobs.len();
    let mut done = 0;
    let run = |job: &Job| execute(ctx, &chosen, job);
    let outputs = jobs::run_jobs(&jobs, workers, &run, &mut |_, job, out| {
        done += 1;
        progress(Progress::JobDone {
            done,
            total,
            job,
            seconds: out.as_ref().map_or(0.0, |o| o.seconds),
            failed: out.is_err(),
        });
    });
    Ok(assemble(
        ctx,
        &chosen,
        &jobs,
        outputs,
        &planning_failures,
        progress,
    ))
}

/// Reads the data sources named on the command line, whichever
/// experiments run: a source asked for and unreadable is the user's
/// mistake to hear about at once (a default source that is missing only
/// leaves its experiments' sections saying so). `normlab study` calls it
/// before [`run_study`]; a library caller that names a missing directory
/// on purpose, to leave an arm out, does not.
pub fn check_requested_data(ctx: &StudyContext) -> Result<(), StudyError> {
    if ctx.options.fashion_mnist.is_some() {
        ctx.fashion_mnist().map_err(|source| StudyError::Data {
            flag: "--data",
            source,
        })?;
    }
    if ctx.options.text.is_some() {
        ctx.text().map_err(|source| StudyError::Data {
            flag: "--text",
            source,
        })?;
    }
    Ok(())
}

/// [`run_study`], then writes the report to `--out`.
pub fn study(
    options: StudyOptions,
    experiments: &[&dyn Experiment],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report, StudyError> {
    let ctx = StudyContext::new(options);
    let report = run_study(&ctx, experiments, progress)?;
    report.write(&ctx.options.out)?;
    Ok(report)
}
