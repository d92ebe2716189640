//! The bench's results: JSON lines for machines, a table for people.

use super::shapes::{Dtype, Layout, Mode, Op, Pass};
use super::Impl;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub op: Op,
    pub pass: Pass,
    pub shape: Vec<usize>,
    pub layout: Layout,
    /// The dtype this implementation ran in (burn, candle: always f32).
    pub dtype: Dtype,
    /// Size of the rayon pool the run used.
    pub threads: usize,
    pub implementation: Impl,
    pub median_ns: f64,
    pub min_ns: f64,
    pub iters: usize,
    /// Minimum-bytes model of the pass ([`super::bytes`]); for the copy,
    /// the bytes it moved.
    pub bytes: u64,
    /// `bytes / median_ns`: GB/s, as 1 byte/ns = 1 GB/s.
    pub gbps: f64,
    /// The roofline copy's GB/s for this pass, size and dtype.
    pub copy_gbps: f64,
    /// `100 · gbps / copy_gbps`.
    pub roofline_pct: f64,
    /// GroupNorm's group count.
    pub groups: Option<usize>,
    /// What exactly was timed.
    pub note: String,
}

/// A pass an implementation does not have, or could not run, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub op: Op,
    pub pass: Pass,
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub dtype: Dtype,
    pub threads: usize,
    pub implementation: Impl,
    pub reason: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub mode: Mode,
    pub threads: usize,
    /// normkit's dtype.
    pub dtype: Dtype,
    pub records: Vec<Record>,
    pub skips: Vec<Skip>,
    /// What holds for the whole run (bytes model, threads, limits).
    pub notes: Vec<String>,
}

impl Record {
    pub fn to_json(&self) -> Value {
        json!({
            "op": self.op.name(),
            "pass": self.pass.name(),
            "shape": self.shape,
            "layout": self.layout.name(),
            "dtype": self.dtype.name(),
            "threads": self.threads,
            "impl": self.implementation.name(),
            "median_ns": self.median_ns,
            "min_ns": self.min_ns,
            "iters": self.iters,
            "bytes": self.bytes,
            "gbps": self.gbps,
            "copy_gbps": self.copy_gbps,
            "roofline_pct": self.roofline_pct,
            "groups": self.groups,
            "note": self.note,
        })
    }
}

impl Skip {
    /// Same keys as a record; the measurements are `null` and `skipped`
    /// holds the reason.
    pub fn to_json(&self) -> Value {
        json!({
            "op": self.op.name(),
            "pass": self.pass.name(),
            "shape": self.shape,
            "layout": self.layout.name(),
            "dtype": self.dtype.name(),
            "threads": self.threads,
            "impl": self.implementation.name(),
            "median_ns": null,
            "gbps": null,
            "roofline_pct": null,
            "skipped": self.reason,
        })
    }
}

/// Groups rows by op, shape and layout, in first-seen order.
type GroupKey = (Op, Vec<usize>, Layout);

impl Report {
    pub(crate) fn new(mode: Mode, threads: usize, dtype: Dtype, notes: Vec<String>) -> Report {
        Report {
            mode,
            threads,
            dtype,
            records: Vec::new(),
            skips: Vec::new(),
            notes,
        }
    }

    /// One JSON object per line: every record, then every skip.
    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        let lines = self.records.iter().map(Record::to_json);
        for v in lines.chain(self.skips.iter().map(Skip::to_json)) {
            out.push_str(&v.to_string());
            out.push('\n');
        }
        out
    }

    /// normkit's record for the same op, shape, layout and pass, on the
    /// run's threads.
    fn normkit(&self, r: &Record) -> Option<&Record> {
        self.records.iter().find(|n| {
            n.implementation == Impl::Normkit
                && n.threads == self.threads
                && n.op == r.op
                && n.pass == r.pass
                && n.shape == r.shape
                && n.layout == r.layout
        })
    }

    /// The table: one block per op and shape, one row per pass and
    /// implementation, notes as numbered footnotes.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "normlab bench: {} mode, {} threads, normkit in {}",
            self.mode.name(),
            self.threads,
            self.dtype
        );
        for n in &self.notes {
            let _ = writeln!(out, "- {n}");
        }
        let mut footnotes: Vec<String> = Vec::new();
        let mut footnote = |note: &str| -> String {
            if note.is_empty() {
                return String::new();
            }
            let i = match footnotes.iter().position(|n| n == note) {
                Some(i) => i,
                None => {
                    footnotes.push(note.to_string());
                    footnotes.len() - 1
                }
            };
            format!("[{}]", i + 1)
        };

        let mut order: Vec<GroupKey> = Vec::new();
        let mut groups: BTreeMap<usize, (Vec<&Record>, Vec<&Skip>)> = BTreeMap::new();
        let mut index = |key: GroupKey| match order.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                order.push(key);
                order.len() - 1
            }
        };
        for r in &self.records {
            let i = index((r.op, r.shape.clone(), r.layout));
            groups.entry(i).or_default().0.push(r);
        }
        for s in &self.skips {
            let i = index((s.op, s.shape.clone(), s.layout));
            groups.entry(i).or_default().1.push(s);
        }

        for (i, (records, skips)) in &groups {
            let (op, shape, layout) = &order[*i];
            let groups_note = records
                .first()
                .and_then(|r| r.groups)
                .map_or(String::new(), |g| format!(", {g} groups"));
            let _ = writeln!(out, "\n{op} {shape:?} {layout}{groups_note}");
            let _ = writeln!(
                out,
                "  {:<17}{:<11}{:>11}{:>10}{:>9}{:>11}  note",
                "pass", "impl", "median", "GB/s", "% copy", "normkit x"
            );
            for pass in op.passes() {
                let mut first = true;
                let mut rows: Vec<&&Record> = records.iter().filter(|r| r.pass == *pass).collect();
                rows.sort_by_key(|r| r.implementation);
                for r in rows {
                    let speedup = match (r.implementation, self.normkit(r)) {
                        (Impl::Normkit, Some(n)) if r.threads != n.threads => {
                            format!("{:.2}x", r.median_ns / n.median_ns)
                        }
                        (Impl::Normkit | Impl::Copy, _) | (_, None) => String::new(),
                        (_, Some(n)) => format!("{:.2}x", r.median_ns / n.median_ns),
                    };
                    let _ = writeln!(
                        out,
                        "  {:<17}{:<11}{:>11}{:>10.1}{:>8.0}%{:>11}  {}",
                        if first { pass.name() } else { "" },
                        r.implementation.name(),
                        duration(r.median_ns),
                        r.gbps,
                        r.roofline_pct,
                        speedup,
                        footnote(&r.note),
                    );
                    first = false;
                }
            }
            // One line per implementation and reason, listing its passes.
            let mut reasons: Vec<(Impl, &str, Vec<&str>)> = Vec::new();
            for s in skips {
                match reasons
                    .iter_mut()
                    .find(|(imp, why, _)| *imp == s.implementation && *why == s.reason)
                {
                    Some((_, _, passes)) => passes.push(s.pass.name()),
                    None => reasons.push((s.implementation, &s.reason, vec![s.pass.name()])),
                }
            }
            for (imp, why, passes) in reasons {
                let _ = writeln!(out, "  skipped: {imp} {}: {why}", passes.join(", "));
            }
        }
        if !footnotes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for (i, n) in footnotes.iter().enumerate() {
                let _ = writeln!(out, "  [{}] {n}", i + 1);
            }
        }
        let _ = writeln!(
            out,
            "\nnormkit x: the implementation's median time over normkit's (above 1: normkit is faster); \
             on normkit's 1-thread rows, the 1-thread time over the run's (above 1: threads help)."
        );
        out
    }
}

/// `850 ns`, `12.3 µs`, `4.56 ms`, `1.234 s`.
pub fn duration(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(imp: Impl, median_ns: f64) -> Record {
        Record {
            op: Op::LayerNorm,
            pass: Pass::ForwardTrain,
            shape: vec![2, 3],
            layout: Layout::Rows,
            dtype: Dtype::F32,
            threads: 1,
            implementation: imp,
            median_ns,
            min_ns: median_ns,
            iters: 3,
            bytes: 100,
            gbps: 100.0 / median_ns,
            copy_gbps: 1.0,
            roofline_pct: 10000.0 / median_ns,
            groups: None,
            note: format!("{imp} note"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration(850.0), "850 ns");
        assert_eq!(duration(12_345.0), "12.3 µs");
        assert_eq!(duration(4_560_000.0), "4.56 ms");
        assert_eq!(duration(1_234_000_000.0), "1.234 s");
    }

    #[test]
    fn table_shows_speedup_and_footnotes() {
        let mut r = Report::new(Mode::Smoke, 1, Dtype::F32, vec!["global".into()]);
        r.records.push(record(Impl::Normkit, 100.0));
        r.records.push(record(Impl::Burn, 300.0));
        r.skips.push(Skip {
            op: Op::LayerNorm,
            pass: Pass::Backward,
            shape: vec![2, 3],
            layout: Layout::Rows,
            dtype: Dtype::F32,
            threads: 1,
            implementation: Impl::Candle,
            reason: "because".into(),
        });
        let t = r.table();
        assert!(t.contains("3.00x"), "{t}");
        assert!(t.contains("[2] burn note"), "{t}");
        assert!(t.contains("skipped: candle backward: because"), "{t}");
        assert_eq!(r.json_lines().lines().count(), 3);
    }
}
