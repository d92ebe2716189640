//! The study's report: verdicts from intervals, the page, its plots, the
//! JSON and the summary, from hand-made sections.

use normlab::study::report::{Plot, Report, Section, Table};
use normlab::study::verdict::{judge, Claim, Direction, Verdict};
use normlab::study::Mode;
use std::collections::BTreeMap;

fn claim(key: &str, direction: Direction, margin: f64) -> Claim {
    Claim::new(
        key,
        format!("Claim {key} <holds> & \"more\"."),
        "effect",
        "points",
        direction,
        margin,
        "practical threshold: a number said as such",
    )
}

fn section(id: &str, title: &str, values: Vec<f64>, plots: Vec<Plot>) -> Section {
    let primary = judge(
        claim(&format!("{id}-primary"), Direction::AtLeast, 1.0),
        values,
    );
    let secondary = vec![
        judge(
            claim(&format!("{id}-flat"), Direction::Within, 2.0),
            vec![0.1, -0.2, 0.0],
        ),
        judge(
            claim(&format!("{id}-missing"), Direction::AtMost, 0.0).expecting("an exception"),
            vec![f64::NAN, 1.0],
        ),
    ];
    Section {
        id: id.into(),
        title: title.into(),
        topic: format!("topic {id}"),
        claim: "Somebody (2015) says so.\n\nSecond paragraph.".into(),
        setup: "An MLP, 3 seeds.".into(),
        result: "It came out.".into(),
        plots,
        tables: vec![Table::new("Final accuracy", ["norm", "accuracy"])
            .row(["none", "0.61"])
            .row(["bn", "0.88"])],
        verdict: primary.verdict,
        primary,
        secondary,
        caveats: vec!["Small <models>.".into()],
        references: vec!["Ioffe & Szegedy 2015.".into()],
        metrics: BTreeMap::from([("bn/accuracy".to_string(), vec![0.88, f64::NAN, 0.9])]),
        seconds: 12.5,
    }
}

/// A report with every verdict, plots of every kind, and hostile text.
fn sample_report() -> Report {
    let line = Plot::line("Loss by step", "step", "loss")
        .log_y()
        .seeded_series(
            "none",
            vec![
                (0.0, vec![2.3, 2.2, 2.4]),
                (1.0, vec![1.9, 1.8, 2.0]),
                (2.0, vec![f64::NAN, f64::NAN, f64::NAN]),
                (3.0, vec![1.2, 1.1, 1.3]),
                (4.0, vec![1.0, 0.9, 1.1]),
            ],
        )
        .series(
            "batch norm with a long legend name",
            vec![(0.0, 2.3), (1.0, 0.9), (2.0, 0.4), (3.0, 0.0)],
        )
        .guide(1.5, "margin");
    let bars = Plot::bars(
        "Accuracy by batch size",
        "batch size",
        "accuracy",
        ["32", "8", "2"],
    )
    .seeded_bars("BN", &[vec![0.9, 0.91], vec![0.85, 0.8], vec![0.6, 0.5]])
    .seeded_bars(
        "GN",
        &[vec![0.89, 0.88], vec![0.89, 0.9], vec![f64::INFINITY, 1.0]],
    )
    .guide(0.7, "chance + 60");
    let empty = Plot::line("Nothing finite", "x", "y").series("nan", vec![(f64::NAN, 1.0)]);
    Report {
        title: "Normalization <study> & friends".into(),
        seed: 42,
        mode: Mode::Quick,
        seeds: 3,
        sections: vec![
            section(
                "bn-lr",
                "BatchNorm allows higher learning rates",
                vec![3.0, 3.5, 2.5],
                vec![line, bars],
            ),
            section(
                "gn-batch",
                "GroupNorm and batch size",
                vec![0.0, 0.2, -0.1],
                vec![empty],
            ),
            section(
                "ln-rnn",
                "<script>alert('x')</script>",
                vec![0.0, 3.0, 6.0],
                vec![],
            ),
        ],
        jobs: Vec::new(),
    }
}

#[test]
fn sections_take_their_primary_claims_verdict() {
    let r = sample_report();
    let v: Vec<Verdict> = r.sections.iter().map(|s| s.verdict).collect();
    assert_eq!(
        v,
        [
            Verdict::Reproduced,
            Verdict::NotReproduced,
            Verdict::Inconclusive
        ]
    );
    assert_eq!(r.sections[0].secondary[0].verdict, Verdict::Reproduced);
    assert_eq!(r.sections[0].secondary[1].verdict, Verdict::Inconclusive);
}

#[test]
fn html_has_the_claims_table_every_section_part_and_plot() {
    let r = sample_report();
    let html = r.to_html();
    assert!(html.contains("<table class=\"claims\">"));
    let claims_table = &html[html.find("<table class=\"claims\">").unwrap()..];
    let claims_table = &claims_table[..claims_table.find("</table>").unwrap()];
    // One row per claim, primary and secondary.
    assert_eq!(claims_table.matches("<tr class=\"primary\">").count(), 3);
    assert_eq!(claims_table.matches("<tr class=\"secondary\">").count(), 6);
    for s in &r.sections {
        assert!(html.contains(&format!("<section id=\"{}\" class=\"experiment\">", s.id)));
        assert!(claims_table.contains(&format!("href=\"#{}\"", s.id)));
    }
    for part in [
        "Claim",
        "Setup",
        "Result",
        "Verdict",
        "Caveats",
        "References",
    ] {
        assert_eq!(
            html.matches(&format!("<h3>{part}</h3>")).count(),
            3,
            "{part}"
        );
    }
    assert_eq!(html.matches("<svg").count(), 3);
    assert_eq!(html.matches("</svg>").count(), 3);
    // Margins and intervals are drawn.
    assert!(html.contains("class=\"guide\""));
    assert!(html.contains("class=\"band\""));
    assert!(html.contains("class=\"errorbar\""));
    // Every claim's margin source is stated in its section.
    assert_eq!(
        html.matches("practical threshold: a number said as such")
            .count(),
        9
    );
    assert!(html.contains("Expected here:</em> an exception."));
    assert!(
        !html.to_lowercase().contains("<script"),
        "unescaped script tag"
    );
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("Normalization &lt;study&gt; &amp; friends"));
    assert!(html.contains("<td>0.88</td>"));
    assert!(html.contains("no finite data"));
    for bad in ["NaN\"", "inf\"", "=\"NaN", "=\"inf", "=\"-inf"] {
        assert!(!html.contains(bad), "found {bad}");
    }
}

#[test]
fn legends_wrap_instead_of_cutting_names() {
    let names: Vec<String> = (0..9)
        .map(|i| format!("a rather long series name number {i}"))
        .collect();
    let mut plot = Plot::line("Many series", "x", "y");
    for n in &names {
        plot = plot.series(n.clone(), vec![(0.0, 1.0), (1.0, 2.0)]);
    }
    let svg = normlab::study::report::svg::render(&plot);
    for n in &names {
        assert!(svg.contains(&format!(">{n}</text>")), "legend cut {n}");
    }
    assert!(!svg.contains('…'));
    // The legend takes several rows, and the picture grows to hold them.
    let height = |s: &str| -> f64 {
        let h = &s[s.find("height=\"").unwrap() + 8..];
        h[..h.find('"').unwrap()].parse().unwrap()
    };
    let one = Plot::line("One", "x", "y").series("a", vec![(0.0, 1.0), (1.0, 2.0)]);
    assert!(height(&svg) > height(&normlab::study::report::svg::render(&one)) + 40.0);
}

#[test]
fn json_keeps_every_seed_and_markdown_the_claims() {
    let r = sample_report();
    let json: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
    let s = &json["sections"][0];
    assert_eq!(s["primary"]["per_seed"], serde_json::json!([3.0, 3.5, 2.5]));
    assert_eq!(s["primary"]["claim"]["margin"], 1.0);
    assert_eq!(s["primary"]["verdict"], "reproduced");
    assert!(s["primary"]["interval"]["lo"].as_f64().unwrap() > 1.0);
    assert_eq!(s["metrics"]["bn/accuracy"][1], serde_json::Value::Null);
    let md = r.to_markdown();
    assert!(md.contains("| topic | claim |"));
    assert!(md.contains("**bn-lr-primary**"));
    assert!(md.contains("not reproduced"));
    assert!(md.contains("## BatchNorm allows higher learning rates (`bn-lr`)"));
}

#[test]
fn report_writes_three_files_and_refuses_duplicate_ids() {
    let dir = tempfile::tempdir().unwrap();
    let r = sample_report();
    r.write(&dir.path().join("out")).unwrap();
    for f in ["index.html", "report.json", "summary.md"] {
        assert!(dir.path().join("out").join(f).is_file(), "{f}");
    }
    let mut dup = r.clone();
    dup.sections.push(dup.sections[0].clone());
    assert!(dup.write(&dir.path().join("dup")).is_err());
    assert!(!dir.path().join("dup").exists());
}
