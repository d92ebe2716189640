//! The study's report: a data model every experiment fills in, rendered to
//! a self-contained `index.html` (inline SVG, no scripts, readable
//! offline), `report.json` (every number) and `summary.md`.

use super::svg;
use super::verdict::{Judgement, Verdict};
use super::Mode;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub title: String,
    pub seed: u64,
    pub mode: Mode,
    pub sections: Vec<Section>,
}

/// One experiment: what was claimed, how it was tested, what came out, and
/// the verdict computed from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    /// Anchor and key: letters, digits, `-` and `_` read best.
    pub id: String,
    pub title: String,
    /// The published claim under test, with its source.
    pub claim: String,
    /// Data, model, schedule, seeds.
    pub setup: String,
    pub plots: Vec<Plot>,
    pub tables: Vec<Table>,
    /// Headline numbers by name, for report.json readers.
    pub metrics: BTreeMap<String, f64>,
    pub verdict: Verdict,
    pub verdict_reason: String,
}

impl Section {
    /// An empty section, inconclusive until judged.
    pub fn new(id: impl Into<String>, title: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            claim: String::new(),
            setup: String::new(),
            plots: Vec::new(),
            tables: Vec::new(),
            metrics: BTreeMap::new(),
            verdict: Verdict::Inconclusive,
            verdict_reason: "not judged".into(),
        }
    }

    pub fn claim(mut self, claim: impl Into<String>) -> Self {
        self.claim = claim.into();
        self
    }

    pub fn setup(mut self, setup: impl Into<String>) -> Self {
        self.setup = setup.into();
        self
    }

    pub fn plot(mut self, plot: Plot) -> Self {
        self.plots.push(plot);
        self
    }

    pub fn table(mut self, table: Table) -> Self {
        self.tables.push(table);
        self
    }

    pub fn metric(mut self, name: impl Into<String>, value: f64) -> Self {
        self.metrics.insert(name.into(), value);
        self
    }

    pub fn judged(mut self, judgement: Judgement) -> Self {
        self.verdict = judgement.verdict;
        self.verdict_reason = judgement.reason;
        self
    }
}

/// How a plot draws its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlotKind {
    /// Lines through `(x, y)` points.
    Line,
    /// Grouped bars: point `(i, y)` of each series is a bar in category
    /// `i`; the x axis shows `categories`.
    Bar,
}

/// A chart. Points that are not finite, beyond ±1e300, or not positive on
/// a log axis are skipped and break the line there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plot {
    pub title: String,
    pub kind: PlotKind,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    /// Category names of a bar plot; empty for line plots.
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Plot {
    pub fn line(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            kind: PlotKind::Line,
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x: false,
            log_y: false,
            categories: Vec::new(),
            series: Vec::new(),
        }
    }

    pub fn bars<S: Into<String>>(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
        categories: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            kind: PlotKind::Bar,
            categories: categories.into_iter().map(Into::into).collect(),
            ..Self::line(title, x_label, y_label)
        }
    }

    pub fn log_x(mut self) -> Self {
        self.log_x = true;
        self
    }

    pub fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    /// Adds a line series.
    pub fn series(mut self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.series.push(Series {
            name: name.into(),
            points,
        });
        self
    }

    /// Adds a bar series: one value per category, in order.
    pub fn bar_series(self, name: impl Into<String>, values: &[f64]) -> Self {
        let points = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64, v))
            .collect();
        self.series(name, points)
    }

    /// The plot as a standalone `<svg>` element.
    pub fn to_svg(&self) -> String {
        svg::render(self)
    }
}

/// A table of already formatted cells (see [`fmt_num`]).
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

/// A number for people: up to 4 significant digits, no trailing zeros,
/// scientific notation outside [1e-3, 1e5).
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{x:.3e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim_zeros(mantissa));
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = trim_zeros(&format!("{x:.decimals$}")).to_string();
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Escapes text for HTML and SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{margin-top:2.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}
caption{text-align:left;font-weight:600;padding:.3em 0}
.verdict{display:inline-block;padding:.1em .55em;border-radius:.8em;font-size:.8em;font-weight:600;vertical-align:middle;white-space:nowrap}
.v-reproduced{background:#d9f2e0;color:#135c2b}
.v-partly{background:#fff1c7;color:#6b4d00}
.v-not-reproduced{background:#fadbd8;color:#8a1c12}
.v-inconclusive{background:#e5e5e5;color:#444}
.plots{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}
svg.plot{max-width:100%;height:auto;border:1px solid #eee}
.reason{background:#fafafa;border-left:4px solid #bbb;padding:.5em .8em}
";

fn verdict_badge(v: Verdict) -> String {
    format!(
        "<span class=\"verdict v-{}\">{}</span>",
        v.slug(),
        escape(v.label())
    )
}

fn paragraphs(out: &mut String, lead: &str, text: &str) {
    let mut first = true;
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        out.push_str("<p>");
        if first {
            let _ = write!(out, "<strong>{}</strong> ", escape(lead));
            first = false;
        }
        out.push_str(&escape(para));
        out.push_str("</p>\n");
    }
}

fn html_table(out: &mut String, table: &Table) {
    out.push_str("<table>\n");
    if !table.title.is_empty() {
        let _ = writeln!(out, "<caption>{}</caption>", escape(&table.title));
    }
    out.push_str("<tr>");
    for h in &table.headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for row in &table.rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{}</td>", escape(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

impl Report {
    pub fn new(title: impl Into<String>, seed: u64, mode: Mode) -> Self {
        Self {
            title: title.into(),
            seed,
            mode,
            sections: Vec::new(),
        }
    }

    /// `index.html`: one page, styles inline, plots as inline SVG, no
    /// scripts; every piece of text escaped.
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
            escape(&self.title)
        );
        let _ = writeln!(out, "<h1>{}</h1>", escape(&self.title));
        let _ = writeln!(
            out,
            "<p class=\"meta\">Seed {} · {} mode · {} experiment{} · verdicts are computed from the numbers shown.</p>",
            self.seed,
            self.mode.label(),
            self.sections.len(),
            if self.sections.len() == 1 { "" } else { "s" }
        );
        if !self.sections.is_empty() {
            out.push_str("<table class=\"summary\">\n<tr><th>Experiment</th><th>Verdict</th><th>Why</th></tr>\n");
            for s in &self.sections {
                let _ = writeln!(
                    out,
                    "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
                    escape(&s.id),
                    escape(&s.title),
                    verdict_badge(s.verdict),
                    escape(&s.verdict_reason)
                );
            }
            out.push_str("</table>\n");
        }
        for s in &self.sections {
            let _ = writeln!(
                out,
                "<section id=\"{}\">\n<h2>{} {}</h2>",
                escape(&s.id),
                escape(&s.title),
                verdict_badge(s.verdict)
            );
            paragraphs(&mut out, "Claim.", &s.claim);
            paragraphs(&mut out, "Setup.", &s.setup);
            if !s.plots.is_empty() {
                out.push_str("<div class=\"plots\">\n");
                for p in &s.plots {
                    out.push_str("<figure>\n");
                    out.push_str(&p.to_svg());
                    out.push_str("\n</figure>\n");
                }
                out.push_str("</div>\n");
            }
            for t in &s.tables {
                html_table(&mut out, t);
            }
            if !s.metrics.is_empty() {
                let mut t = Table::new("Metrics", ["metric", "value"]);
                for (k, v) in &s.metrics {
                    t = t.row([k.clone(), fmt_num(*v)]);
                }
                html_table(&mut out, &t);
            }
            let _ = writeln!(
                out,
                "<p class=\"reason\"><strong>Verdict: {}.</strong> {}</p>\n</section>",
                escape(s.verdict.label()),
                escape(&s.verdict_reason)
            );
        }
        out.push_str("</body>\n</html>\n");
        out
    }

    /// `report.json`: the whole data model. Non-finite numbers become
    /// `null`, JSON having no NaN.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// `summary.md`: the verdicts, reasons and tables, without plots.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}\n", md_line(&self.title));
        let _ = writeln!(
            out,
            "Seed {}, {} mode. Plots are in index.html.\n",
            self.seed,
            self.mode.label()
        );
        if !self.sections.is_empty() {
            out.push_str("| Experiment | Verdict | Why |\n|---|---|---|\n");
            for s in &self.sections {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    md_cell(&s.title),
                    s.verdict.label(),
                    md_cell(&s.verdict_reason)
                );
            }
            out.push('\n');
        }
        for s in &self.sections {
            let _ = writeln!(
                out,
                "## {} (`{}`)\n",
                md_line(&s.title),
                s.id.replace('`', "'")
            );
            let _ = writeln!(
                out,
                "**Verdict: {}.** {}\n",
                s.verdict.label(),
                md_line(&s.verdict_reason)
            );
            if !s.claim.trim().is_empty() {
                let _ = writeln!(out, "**Claim.** {}\n", s.claim.trim());
            }
            if !s.setup.trim().is_empty() {
                let _ = writeln!(out, "**Setup.** {}\n", s.setup.trim());
            }
            for t in &s.tables {
                if !t.title.is_empty() {
                    let _ = writeln!(out, "*{}*\n", md_line(&t.title));
                }
                let width = t
                    .rows
                    .iter()
                    .map(Vec::len)
                    .chain([t.headers.len()])
                    .max()
                    .unwrap_or(0);
                if width == 0 {
                    continue;
                }
                let cells = |row: &[String]| {
                    let mut line = String::from("|");
                    for i in 0..width {
                        let _ = write!(
                            line,
                            " {} |",
                            md_cell(row.get(i).map_or("", String::as_str))
                        );
                    }
                    line
                };
                let _ = writeln!(out, "{}", cells(&t.headers));
                let _ = writeln!(out, "|{}", "---|".repeat(width));
                for r in &t.rows {
                    let _ = writeln!(out, "{}", cells(r));
                }
                out.push('\n');
            }
            if !s.metrics.is_empty() {
                out.push_str("| metric | value |\n|---|---|\n");
                for (k, v) in &s.metrics {
                    let _ = writeln!(out, "| {} | {} |", md_cell(k), fmt_num(*v));
                }
                out.push('\n');
            }
        }
        out
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

/// Text on one Markdown line.
fn md_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text in a Markdown table cell: one line, pipes escaped.
fn md_cell(s: &str) -> String {
    md_line(s).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_num_is_short_and_exact_where_it_can_be() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (0.91234, "0.9123"),
            (12.346, "12.35"),
            (1234.6, "1235"),
            (-2.5, "-2.5"),
            (0.001, "0.001"),
            (1e-4, "1e-4"),
            (1.5e-7, "1.5e-7"),
            (123456.0, "1.235e5"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (-0.00001, "-1e-5"),
        ];
        for (x, want) in cases {
            assert_eq!(fmt_num(x), want, "fmt_num({x})");
        }
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn markdown_cells_stay_on_one_line() {
        assert_eq!(md_cell("a | b\n c"), "a \\| b c");
    }
}
