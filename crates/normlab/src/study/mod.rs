//! `normlab study`: experiments that train real models with each
//! normalization and a report of what came out.
//!
//! - [`data`]: MNIST-1D (generated), Fashion-MNIST (IDX files), text for a
//!   character language model; one [`data::Dataset`] type and its batches.
//! - [`report`]: the report's data model and its HTML, JSON and Markdown.
//! - [`svg`]: the plots.
//! - [`verdict`]: verdicts computed from numbers.
//! - [`experiments`]: the experiments themselves, which train models
//!   through normkit-burn; [`all_experiments`] lists them in order.
//!
//! An experiment implements [`Experiment`]: it gets a [`StudyContext`]
//! (options, seeds, lazily loaded data) and returns a
//! [`report::Section`] judged by a [`verdict`] function. [`run_study`] runs
//! a list of them, turning a failure or panic of one into an inconclusive
//! section instead of losing the others, and [`study`] also writes the
//! report.

pub mod data;
pub mod experiments;
pub mod report;
pub mod svg;
pub mod verdict;

use data::{CharCorpus, DataError, Mnist1dConfig, Split};
use report::{Report, ReportError, Section};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;
use verdict::{Judgement, Verdict};

/// How much compute the study spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Small models and few steps: minutes on a laptop, noisy verdicts.
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
}

/// The study's options, also its command-line arguments.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct StudyOptions {
    /// Directory for index.html, report.json and summary.md.
    #[arg(long, default_value = "normlab-report")]
    pub out: PathBuf,
    /// Seed for data generation, initialization and batch order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// quick: small models, few steps; full: the whole schedule.
    #[arg(long, value_enum, default_value_t = Mode::Quick)]
    pub mode: Mode,
    /// Directory with Fashion-MNIST's IDX files (plain or .gz)
    /// [default: /usr/share/datasets/fashion-mnist].
    #[arg(long, value_name = "DIR")]
    pub fashion_mnist: Option<PathBuf>,
    /// UTF-8 text for the character language model; without it, MNIST-1D
    /// rendered as text.
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Run only these experiments (ids, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub only: Vec<String>,
}

impl Default for StudyOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("normlab-report"),
            seed: 42,
            mode: Mode::Quick,
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

/// What an experiment may use: the options, derived seeds, and data loaded
/// on first use and then shared.
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

    /// A seed of its own for each named use ("bn-batch/init/3"), derived
    /// from the study's seed, so experiments do not share random streams
    /// and adding one does not change another's numbers.
    pub fn seed_for(&self, name: &str) -> u64 {
        // FNV-1a: a fixed, platform-independent string hash.
        let stream = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        data::derive_seed(self.options.seed, stream)
    }

    /// MNIST-1D with the original settings, generated from the study's
    /// seed.
    pub fn mnist1d(&self) -> Result<&Split, DataError> {
        cached(&self.mnist1d, || {
            data::mnist1d(&Mnist1dConfig {
                seed: self.options.seed,
                ..Mnist1dConfig::default()
            })
        })
    }

    /// Fashion-MNIST from `--fashion-mnist` or the default directory,
    /// pixels in `[0, 1]`.
    pub fn fashion_mnist(&self) -> Result<&Split, DataError> {
        cached(&self.fashion_mnist, || {
            data::fashion_mnist(self.options.fashion_mnist.as_deref(), None)
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

/// One experiment of the study.
pub trait Experiment {
    /// Stable, unique id: the section's anchor and the name `--only` takes.
    fn id(&self) -> &str;
    fn title(&self) -> &str;
    /// The claim under test, shown even if the experiment fails.
    fn claim(&self) -> &str;
    /// Runs and returns its judged section. The runner sets the section's
    /// id to [`Experiment::id`] and fills an empty title or claim.
    fn run(&self, ctx: &StudyContext) -> Result<Section, ExperimentError>;
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
}

/// What [`run_study`] reports while it works.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    Started {
        index: usize,
        total: usize,
        id: &'a str,
    },
    Finished {
        index: usize,
        total: usize,
        section: &'a Section,
        seconds: f64,
    },
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Started { index, total, id } => {
                write!(f, "[{}/{total}] {id} ...", index + 1)
            }
            Progress::Finished {
                index,
                total,
                section,
                seconds,
            } => write!(
                f,
                "[{}/{total}] {}: {} ({seconds:.1} s) {}",
                index + 1,
                section.id,
                section.verdict,
                section.verdict_reason
            ),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `experiments` (those named by `--only`, or all) in order and
/// collects their sections into a report. An experiment that returns an
/// error or panics still gets its section: inconclusive, saying why.
pub fn run_study(
    ctx: &StudyContext,
    experiments: &[&dyn Experiment],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report, StudyError> {
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
    let chosen: Vec<&dyn Experiment> = experiments
        .iter()
        .copied()
        .filter(|e| only.is_empty() || only.iter().any(|id| id == e.id()))
        .collect();
    let mut report = Report::new(
        "What normalization does",
        ctx.options.seed,
        ctx.options.mode,
    );
    let total = chosen.len();
    for (index, e) in chosen.into_iter().enumerate() {
        progress(Progress::Started {
            index,
            total,
            id: e.id(),
        });
        let start = Instant::now();
        let failed = |why: String| {
            Section::new(e.id(), e.title())
                .claim(e.claim())
                .judged(Judgement::new(Verdict::Inconclusive, why))
        };
        let mut section = match catch_unwind(AssertUnwindSafe(|| e.run(ctx))) {
            Ok(Ok(s)) => s,
            Ok(Err(err)) => failed(format!("did not run: {err}")),
            Err(payload) => failed(format!("panicked: {}", panic_message(payload.as_ref()))),
        };
        section.id = e.id().to_string();
        if section.title.is_empty() {
            section.title = e.title().to_string();
        }
        if section.claim.is_empty() {
            section.claim = e.claim().to_string();
        }
        progress(Progress::Finished {
            index,
            total,
            section: &section,
            seconds: start.elapsed().as_secs_f64(),
        });
        report.sections.push(section);
    }
    Ok(report)
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
