//! The report as a reader sees it: headless Chromium renders the smoke
//! study's index.html; every section, plot and the claims table must be
//! in the rendered page, and a screenshot must come out. Run alone with
//! the filter `chromium`; fails when Chromium is missing unless
//! `NORMKIT_SKIP=chromium`.

use crate::study_e2e::smoke;
use crate::study_resources;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs headless Chromium with `args` on `page`, returning its stdout;
/// gives up after two minutes.
fn chromium(binary: &Path, profile: &Path, args: &[String], page: &Path) -> String {
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let start = Instant::now();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium did not finish in two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap_or_default()
}

#[test]
fn chromium_renders_every_section_plot_and_the_claims_table() {
    let Some(binary) = study_resources::chromium() else {
        return;
    };
    let (dir, report) = smoke();
    let page = dir.join("index.html").canonicalize().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(&binary, profile.path(), &["--dump-dom".into()], &page);
    assert!(
        dom.contains("<table class=\"claims\">"),
        "claims table rendered"
    );
    for s in &report.sections {
        let open = format!("<section id=\"{}\" class=\"experiment\">", s.id);
        let at = dom
            .find(&open)
            .unwrap_or_else(|| panic!("section {} rendered", s.id));
        let body = &dom[at..];
        let body = &body[..body.find("</section>").expect("section closes")];
        assert_eq!(
            body.matches("<svg").count(),
            s.plots.len(),
            "{}: plots",
            s.id
        );
        for part in [
            "Claim",
            "Setup",
            "Result",
            "Verdict",
            "Caveats",
            "References",
        ] {
            assert!(
                body.contains(&format!("<h3>{part}</h3>")),
                "{}: {part}",
                s.id
            );
        }
        for p in &s.plots {
            // The DOM escapes only &, < and > in text.
            let title = p
                .title
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            assert!(body.contains(&title), "{}: plot {title}", s.id);
        }
    }
    let shot = profile.path().join("report.png");
    chromium(
        &binary,
        &profile.path().join("shot"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2400".into(),
        ],
        &page,
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 20_000, "{} bytes: an empty page?", png.len());
}
