//! The study's report: a data model every experiment fills in, rendered to
//! a self-contained `index.html` (inline SVG, no scripts, readable
//! offline), `report.json` (every number, every seed) and `summary.md`.
//!
//! - [`plot`]: the plots' data model; [`svg`] draws them;
//! - [`html`] and [`markdown`] render a [`Report`].

pub mod html;
pub mod markdown;
pub mod plot;
pub mod svg;

pub use plot::{Guide, Plot, PlotKind, Point, Series};

use super::jobs::JobRecord;
use super::verdict::{Judged, Verdict};
use super::Mode;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub title: String,
    pub seed: u64,
    pub mode: Mode,
    /// Replicates per arm.
    pub seeds: usize,
    pub sections: Vec<Section>,
    /// Every training job's outputs, by (experiment, arm, replicate).
    pub jobs: Vec<JobRecord>,
}

/// One experiment: what was claimed, how it was tested, what came out, and
/// the verdicts computed from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    /// Anchor and key: letters, digits, `-` and `_` read best.
    pub id: String,
    pub title: String,
    /// The survey's topic this section tests ("batch size", "DyT").
    pub topic: String,
    /// The published claim under test, with its source.
    pub claim: String,
    /// Data, model, schedule, seeds.
    pub setup: String,
    /// What came out, in words (the plots and tables hold the numbers).
    pub result: String,
    pub plots: Vec<Plot>,
    pub tables: Vec<Table>,
    /// The headline: the section's verdict is this claim's.
    pub primary: Judged,
    /// Further claims, each judged on its own, never averaged in.
    pub secondary: Vec<Judged>,
    pub caveats: Vec<String>,
    pub references: Vec<String>,
    /// Named numbers, one value per seed.
    pub metrics: BTreeMap<String, Vec<f64>>,
    pub verdict: Verdict,
    /// Seconds of training jobs (summed over jobs) and analysis.
    pub seconds: f64,
}

impl Section {
    /// All judged claims, primary first.
    pub fn claims(&self) -> impl Iterator<Item = &Judged> {
        std::iter::once(&self.primary).chain(&self.secondary)
    }
}

/// A table of already formatted cells.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(
        title: impl Into<String>,
        headers: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            title: title.into(),
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(mut self, cells: impl IntoIterator<Item = S>) -> Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }
}

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("two sections share the id {0:?}")]
    DuplicateId(String),
    #[error("report.json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Report {
    /// `report.json`: the whole data model. Non-finite numbers become
    /// `null`, JSON having no NaN.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    pub fn to_html(&self) -> String {
        html::render(self)
    }

    pub fn to_markdown(&self) -> String {
        markdown::render(self)
    }

    /// Writes `index.html`, `report.json` and `summary.md` into `dir`,
    /// creating it. Refuses a report whose section ids repeat (they are
    /// the page's anchors).
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        let mut ids = BTreeSet::new();
        for s in &self.sections {
            if !ids.insert(s.id.as_str()) {
                return Err(ReportError::DuplicateId(s.id.clone()));
            }
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReportError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let json = self.to_json()?;
        for (name, text) in [
            ("index.html", self.to_html()),
            ("report.json", json),
            ("summary.md", self.to_markdown()),
        ] {
            let path = dir.join(name);
            fs::write(&path, text).map_err(io(&path))?;
        }
        Ok(())
    }
}
