//! The bench: a tiny run produces well-formed JSON lines covering every
//! implementation, and the bytes model adds up. Nothing here asserts on
//! speed.

use normlab::bench::{self, BenchOptions, Case, Dtype, Impl, Layout, Mode, Op, Pass};
use serde_json::Value;
use std::collections::BTreeSet;

fn smoke(ops: &[Op], dtype: Dtype) -> bench::Report {
    let opts = BenchOptions {
        mode: Mode::Smoke,
        threads: Some(2),
        dtype,
        ops: ops.to_vec(),
        ..BenchOptions::default()
    };
    bench::run(&opts).unwrap()
}

fn parse(report: &bench::Report) -> Vec<Value> {
    report
        .json_lines()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

const FIELDS: [&str; 12] = [
    "op",
    "pass",
    "shape",
    "layout",
    "dtype",
    "threads",
    "impl",
    "median_ns",
    "gbps",
    "roofline_pct",
    "bytes",
    "note",
];

#[test]
fn smoke_run_emits_complete_json_lines() {
    let report = smoke(&[], Dtype::F32);
    let lines = parse(&report);
    assert!(!lines.is_empty());
    let mut impls_per_op: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for v in &lines {
        let o = v.as_object().expect("each line is an object");
        if let Some(reason) = o.get("skipped") {
            // A skip says why and measures nothing.
            assert!(!reason.as_str().unwrap().is_empty(), "{v}");
            assert!(o["median_ns"].is_null(), "{v}");
            continue;
        }
        for f in FIELDS {
            assert!(o.contains_key(f), "missing `{f}` in {v}");
        }
        let op: Op = o["op"].as_str().unwrap().parse().unwrap();
        let pass = o["pass"].as_str().unwrap();
        assert!(
            [
                "forward_train",
                "forward_eval",
                "backward",
                "forward_backward"
            ]
            .contains(&pass),
            "{v}"
        );
        assert!(op.passes().iter().any(|p| p.name() == pass), "{v}");
        let shape: Vec<u64> = o["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert!(shape.len() == 2 || shape.len() == 4, "{v}");
        assert!(["rows", "nchw", "nhwc"].contains(&o["layout"].as_str().unwrap()));
        assert!(["f32", "bf16", "f16"].contains(&o["dtype"].as_str().unwrap()));
        assert_eq!(o["threads"].as_u64(), Some(2));
        let imp: Impl = o["impl"].as_str().unwrap().parse().unwrap();
        let median = o["median_ns"].as_f64().unwrap();
        let gbps = o["gbps"].as_f64().unwrap();
        let pct = o["roofline_pct"].as_f64().unwrap();
        let bytes = o["bytes"].as_u64().unwrap();
        assert!(median > 0.0 && median.is_finite(), "{v}");
        assert!(bytes > 0, "{v}");
        // GB/s is bytes per nanosecond, by definition.
        assert!((gbps - bytes as f64 / median).abs() <= 1e-9 * gbps, "{v}");
        assert!(pct > 0.0 && pct.is_finite(), "{v}");
        if imp == Impl::Copy {
            assert!((pct - 100.0).abs() < 1e-6, "{v}");
        }
        impls_per_op
            .entry(op.name().to_string())
            .or_default()
            .insert(imp.name().to_string());
    }
    // Every op appears, and at least one has every implementation.
    assert_eq!(impls_per_op.len(), Op::ALL.len(), "{impls_per_op:?}");
    let everything: BTreeSet<String> = ["normkit", "reference", "burn", "candle", "copy"]
        .map(String::from)
        .into();
    assert!(
        impls_per_op.values().any(|s| *s == everything),
        "{impls_per_op:?}"
    );
    // normkit has every pass of every op; burn and candle have the
    // training step of every op.
    for op in Op::ALL {
        for pass in op.passes() {
            let has = |imp: Impl| {
                report
                    .records
                    .iter()
                    .any(|r| r.op == op && r.pass == *pass && r.implementation == imp)
            };
            assert!(has(Impl::Normkit), "normkit {op} {pass}");
            // The residual-add norms also run unfused (normkit's add, then
            // its norm), and only they do.
            assert_eq!(has(Impl::Unfused), op.is_residual(), "unfused {op} {pass}");
            if *pass == Pass::ForwardBackward {
                assert!(has(Impl::Burn), "burn {op} {pass}: {:?}", report.skips);
                assert!(has(Impl::Candle), "candle {op} {pass}: {:?}", report.skips);
            }
        }
    }
}

#[test]
fn skips_are_reported_with_a_reason() {
    // Neither burn nor candle has InstanceNorm with running statistics.
    let report = smoke(&[Op::InstanceNorm], Dtype::F32);
    for imp in [Impl::Burn, Impl::Candle] {
        let skip = report
            .skips
            .iter()
            .find(|s| s.implementation == imp && s.pass == Pass::ForwardEval)
            .unwrap_or_else(|| panic!("{imp} forward_eval not reported: {:?}", report.skips));
        assert!(
            skip.reason.contains("running statistics"),
            "{}",
            skip.reason
        );
    }
    assert!(report.table().contains("skipped: burn forward_eval"));
}

#[test]
fn half_precision_runs_normkit_in_that_dtype_and_baselines_in_f32() {
    let report = smoke(&[Op::RmsNorm], Dtype::Bf16);
    for r in &report.records {
        let want = match r.implementation {
            Impl::Normkit | Impl::Copy => Dtype::Bf16,
            _ => Dtype::F32,
        };
        assert_eq!(r.dtype, want, "{r:?}");
    }
    assert!(report.notes.iter().any(|n| n.contains("bf16")));
}

#[test]
fn custom_cases_and_impl_filter() {
    let opts = BenchOptions {
        mode: Mode::Smoke,
        threads: Some(1),
        impls: vec![Impl::Normkit],
        cases: Some(vec![Case::new(Op::LayerNorm, &[3, 5], Layout::Rows)]),
        ..BenchOptions::default()
    };
    let report = bench::run(&opts).unwrap();
    assert_eq!(report.records.len(), 3, "{:?}", report.records);
    assert!(report
        .records
        .iter()
        .all(|r| r.implementation == Impl::Normkit && r.shape == [3, 5]));
    let table = report.table();
    for pass in ["forward_train", "backward", "forward_backward"] {
        assert!(table.contains(pass), "{table}");
    }
}

#[test]
fn invalid_options_are_errors() {
    let bad_case = BenchOptions {
        cases: Some(vec![Case::new(Op::BatchNorm, &[4, 8], Layout::Rows)]),
        ..BenchOptions::default()
    };
    assert!(matches!(
        bench::run(&bad_case),
        Err(bench::BenchError::Case(_))
    ));
    let zero = BenchOptions {
        threads: Some(0),
        ..BenchOptions::default()
    };
    assert!(matches!(
        bench::run(&zero),
        Err(bench::BenchError::ZeroThreads)
    ));
    assert!("layer_norm".parse::<Op>().is_ok());
    assert!("fp8".parse::<Dtype>().is_err());
    assert!("pytorch".parse::<Impl>().is_err());
}

/// The bytes model on LayerNorm over [8192, 1024] in f32, by hand:
/// n = 8 388 608 values, C = 1024 features, G = 8192 rows.
#[test]
fn bytes_model_on_a_known_shape() {
    let ln = Case::new(Op::LayerNorm, &[8192, 1024], Layout::Rows);
    let n = 8192 * 1024;
    // read x + write y (4 bytes each), weight + bias read, mean + rstd
    // written per row.
    let forward = 2 * n * 4 + 4 * (2 * 1024 + 2 * 8192);
    assert_eq!(forward, 67_182_592);
    assert_eq!(bench::bytes(&ln, Pass::ForwardTrain, 4), forward);
    // read x, dy + write dx; weight and saved statistics read; dweight and
    // dbias written.
    let backward = 3 * n * 4 + 4 * (1024 + 2 * 8192 + 2 * 1024);
    assert_eq!(backward, 100_741_120);
    assert_eq!(bench::bytes(&ln, Pass::Backward, 4), backward);
    assert_eq!(
        bench::bytes(&ln, Pass::ForwardBackward, 4),
        forward + backward
    );
    // bf16 halves the activations only.
    assert_eq!(
        bench::bytes(&ln, Pass::ForwardTrain, 2),
        2 * n * 2 + 4 * (2 * 1024 + 2 * 8192)
    );

    // BatchNorm on [32, 64, 56, 56]: 64 channels; training also reads and
    // writes the running mean and variance; evaluation reads them.
    let bn = Case::new(Op::BatchNorm, &[32, 64, 56, 56], Layout::Nchw);
    let n = 32 * 64 * 56 * 56;
    assert_eq!(
        bench::bytes(&bn, Pass::ForwardTrain, 4),
        2 * n * 4 + 4 * (2 * 64 + 4 * 64 + 2 * 64)
    );
    assert_eq!(
        bench::bytes(&bn, Pass::ForwardEval, 4),
        2 * n * 4 + 4 * (2 * 64 + 2 * 64)
    );
    // The NHWC twin moves the same bytes.
    let bn_nhwc = Case::new(Op::BatchNorm, &[32, 56, 56, 64], Layout::Nhwc);
    for pass in Op::BatchNorm.passes() {
        assert_eq!(
            bench::bytes(&bn, *pass, 4),
            bench::bytes(&bn_nhwc, *pass, 4)
        );
    }

    // RMSNorm saves only rstd and has no bias.
    let rms = Case::new(Op::RmsNorm, &[16, 768], Layout::Rows);
    let n = 16 * 768;
    assert_eq!(
        bench::bytes(&rms, Pass::ForwardTrain, 4),
        2 * n * 4 + 4 * (768 + 16)
    );
    assert_eq!(
        bench::bytes(&rms, Pass::Backward, 4),
        3 * n * 4 + 4 * (768 + 16 + 768)
    );
}
