//! `summary.md`: the claims table and, per section, its verdicts and
//! tables, without plots.

use super::{Report, Table};
use crate::study::fmt::fmt_num;
use std::fmt::Write as _;

/// Text on one Markdown line.
fn md_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text in a Markdown table cell: one line, pipes escaped.
pub fn md_cell(s: &str) -> String {
    md_line(s).replace('|', "\\|")
}

fn table(out: &mut String, t: &Table) {
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
        return;
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

/// The summary.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", md_line(&report.title));
    let _ = writeln!(
        out,
        "Seed {}, {} mode, {} seeds per arm. Plots are in index.html.\n",
        report.seed,
        report.mode.label(),
        report.seeds
    );
    if !report.sections.is_empty() {
        out.push_str(
            "| topic | claim | experiment | effect and margin | mean [95% interval] | verdict |\n\
             |---|---|---|---|---|---|\n",
        );
        for s in &report.sections {
            for (i, j) in s.claims().enumerate() {
                let topic = if i == 0 {
                    md_cell(&s.topic)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "| {topic} | {}{} | {} | {} | {} | {} |",
                    if i == 0 { "**" } else { "" },
                    md_cell(&j.claim.key) + if i == 0 { "**" } else { "" },
                    md_cell(&s.id),
                    md_cell(&j.claim.threshold()),
                    md_cell(&j.interval_text()),
                    j.verdict.label()
                );
            }
        }
        out.push('\n');
        out.push_str("| experiment | seconds |\n|---|---|\n");
        for s in &report.sections {
            let _ = writeln!(out, "| {} | {} |", md_cell(&s.id), fmt_num(s.seconds));
        }
        out.push('\n');
    }
    for s in &report.sections {
        let _ = writeln!(
            out,
            "## {} (`{}`)\n",
            md_line(&s.title),
            s.id.replace('`', "'")
        );
        let _ = writeln!(
            out,
            "**Verdict: {}.** {}: {}\n",
            s.verdict.label(),
            md_line(&s.primary.claim.key),
            md_line(&s.primary.reason)
        );
        for j in &s.secondary {
            let _ = writeln!(
                out,
                "- {}: {} — {}",
                md_line(&j.claim.key),
                j.verdict.label(),
                md_line(&j.reason)
            );
        }
        if !s.secondary.is_empty() {
            out.push('\n');
        }
        if !s.claim.trim().is_empty() {
            let _ = writeln!(out, "**Claim.** {}\n", md_line(&s.claim));
        }
        if !s.setup.trim().is_empty() {
            let _ = writeln!(out, "**Setup.** {}\n", md_line(&s.setup));
        }
        for t in &s.tables {
            table(&mut out, t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_cells_stay_on_one_line() {
        assert_eq!(md_cell("a | b\n c"), "a \\| b c");
    }
}
