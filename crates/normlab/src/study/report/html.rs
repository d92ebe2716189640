//! `index.html`: one page, styles inline, plots as inline SVG, no scripts;
//! every piece of text escaped. The claims table comes first; then one
//! section per experiment: Claim, Setup, Result, Verdict, Caveats,
//! References.

use super::svg;
use super::{Report, Section, Table};
use crate::study::fmt::{escape, fmt_num};
use crate::study::verdict::{Judged, Verdict};
use std::fmt::Write as _;

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{margin-top:2.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin:1.2em 0 .3em;font-size:1.05em}
.meta{color:#666}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}
tr.secondary td{color:#444;font-size:.95em}
tr.secondary td:first-child{padding-left:1.6em}
caption{text-align:left;font-weight:600;padding:.3em 0}
.verdict{display:inline-block;padding:.1em .55em;border-radius:.8em;font-size:.8em;font-weight:600;vertical-align:middle;white-space:nowrap}
.v-reproduced{background:#d9f2e0;color:#135c2b}
.v-not-reproduced{background:#fadbd8;color:#8a1c12}
.v-inconclusive{background:#e5e5e5;color:#444}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:1em;align-items:start}
figure{margin:0}
svg.plot{width:100%;height:auto;border:1px solid #eee}
.reason{background:#fafafa;border-left:4px solid #bbb;padding:.5em .8em}
.spec li{margin:.2em 0}
.num{white-space:nowrap}
";

fn badge(v: Verdict) -> String {
    format!(
        "<span class=\"verdict v-{}\">{}</span>",
        v.slug(),
        escape(v.label())
    )
}

fn paragraphs(out: &mut String, text: &str) {
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "<p>{}</p>", escape(para));
    }
}

fn table(out: &mut String, table: &Table) {
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

/// A claim's specification, as stated before its numbers.
fn spec(j: &Judged, role: &str) -> String {
    let c = &j.claim;
    let mut s = format!(
        "<li><strong>{}</strong> ({}): {} <em>Measure:</em> {}. <em>Margin:</em> {} ({}).",
        escape(role),
        escape(&c.key),
        escape(&c.statement),
        escape(&c.threshold()),
        escape(&fmt_num(c.margin)),
        escape(&c.margin_source)
    );
    if let Some(e) = &c.expected {
        let _ = write!(s, " <em>Expected here:</em> {}.", escape(e));
    }
    s.push_str("</li>\n");
    s
}

fn verdict_item(j: &Judged) -> String {
    format!(
        "<li>{} <strong>{}</strong>: <span class=\"num\">{}</span> — {}</li>\n",
        badge(j.verdict),
        escape(&j.claim.key),
        escape(&j.interval_text()),
        escape(&j.reason)
    )
}

fn claims_table(out: &mut String, report: &Report) {
    out.push_str(
        "<h2 id=\"claims\">Claims and verdicts</h2>\n<p>Every claim the study tests, with \
         the experiment that tests it. A section's headline (bold) is its primary claim; the \
         claims under it are judged on their own. Each verdict reads the 95% interval of the \
         per-seed effect against a margin fixed before the run.</p>\n\
         <table class=\"claims\">\n<tr><th>Topic / claim</th><th>Experiment</th>\
         <th>Effect and margin</th><th>Mean [95% interval]</th><th>Verdict</th></tr>\n",
    );
    for s in &report.sections {
        for (i, j) in s.claims().enumerate() {
            // The topic and the experiment once, on the primary claim's row.
            let (class, name, experiment) = if i == 0 {
                (
                    "primary",
                    format!(
                        "<strong>{}</strong>: {}",
                        escape(&s.topic),
                        escape(&j.claim.key)
                    ),
                    format!("<a href=\"#{}\">{}</a>", escape(&s.id), escape(&s.title)),
                )
            } else {
                ("secondary", escape(&j.claim.key), String::new())
            };
            let _ = writeln!(
                out,
                "<tr class=\"{class}\"><td>{name}</td><td>{experiment}</td><td>{}</td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>",
                escape(&j.claim.threshold()),
                escape(&j.interval_text()),
                badge(j.verdict)
            );
        }
    }
    out.push_str("</table>\n");
}

fn section(out: &mut String, s: &Section) {
    let _ = writeln!(
        out,
        "<section id=\"{}\" class=\"experiment\">\n<h2>{} {}</h2>",
        escape(&s.id),
        escape(&s.title),
        badge(s.verdict)
    );
    out.push_str("<h3>Claim</h3>\n");
    paragraphs(out, &s.claim);
    out.push_str("<ul class=\"spec\">\n");
    out.push_str(&spec(&s.primary, "Primary"));
    for j in &s.secondary {
        out.push_str(&spec(j, "Secondary"));
    }
    out.push_str("</ul>\n<h3>Setup</h3>\n");
    paragraphs(out, &s.setup);
    out.push_str("<h3>Result</h3>\n");
    paragraphs(out, &s.result);
    if !s.plots.is_empty() {
        out.push_str("<div class=\"plots\">\n");
        for p in &s.plots {
            out.push_str("<figure>\n");
            out.push_str(&svg::render(p));
            out.push_str("\n</figure>\n");
        }
        out.push_str("</div>\n");
    }
    for t in &s.tables {
        table(out, t);
    }
    let _ = writeln!(
        out,
        "<h3>Verdict</h3>\n<p class=\"reason\"><strong>{}</strong> {} — primary claim {}: {}</p>",
        escape(s.verdict.label()),
        escape(&s.primary.interval_text()),
        escape(&s.primary.claim.key),
        escape(&s.primary.reason)
    );
    if !s.secondary.is_empty() {
        out.push_str("<ul class=\"secondary\">\n");
        for j in &s.secondary {
            out.push_str(&verdict_item(j));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h3>Caveats</h3>\n<ul>\n");
    for c in &s.caveats {
        let _ = writeln!(out, "<li>{}</li>", escape(c));
    }
    out.push_str("</ul>\n<h3>References</h3>\n<ul class=\"references\">\n");
    for r in &s.references {
        let _ = writeln!(out, "<li>{}</li>", escape(r));
    }
    let _ = writeln!(
        out,
        "</ul>\n<p class=\"meta\">{} s of computation on this machine.</p>\n</section>",
        fmt_num(s.seconds)
    );
}

/// The page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&report.title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(&report.title));
    let _ = writeln!(
        out,
        "<p class=\"meta\">Seed {} · {} mode · {} seeds per arm · {} experiment{} · {} training \
         jobs · verdicts are computed from the numbers shown.</p>",
        report.seed,
        report.mode.label(),
        report.seeds,
        report.sections.len(),
        if report.sections.len() == 1 { "" } else { "s" },
        report.jobs.len()
    );
    if !report.sections.is_empty() {
        claims_table(&mut out, report);
    }
    for s in &report.sections {
        section(&mut out, s);
    }
    out.push_str("</body>\n</html>\n");
    out
}
