//! The study end to end: every experiment trains real models (at the
//! smallest sizes) and the report holds every section and plot; reruns
//! with one seed give the same numbers; MNIST-1D's baselines land in the
//! published range.

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use normkit_burn::fused_calls;
use normlab::study::data::{mnist1d, Mnist1dConfig};
use normlab::study::experiments::convergence::{train_arch, Arch};
use normlab::study::experiments::models::{
    Activation, Classifier, Cnn1d, Features, Gpt, GptSpec, Mlp, MlpSpec, Norm, NormKind,
};
use normlab::study::experiments::train::{
    cross_entropy, device, evaluate, matrix, one_hot, OptimSpec, Schedule,
};
use normlab::study::experiments::TIME_PREFIX;
use normlab::study::{all_experiments, study, Experiment, Mode, StudyOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn run_smoke(out: &Path, seed: u64) -> Value {
    let experiments = all_experiments();
    let refs: Vec<&dyn Experiment> = experiments.iter().map(|e| e.as_ref()).collect();
    let options = StudyOptions {
        out: out.to_path_buf(),
        seed,
        mode: Mode::Smoke,
        ..StudyOptions::default()
    };
    study(options, &refs, &mut |_| {}).expect("the study runs and writes its report");
    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    serde_json::from_str(&json).expect("report.json parses")
}

/// Every metric that is not a timing, by section and name.
fn seeded_numbers(report: &Value) -> BTreeMap<String, Option<f64>> {
    let mut out = BTreeMap::new();
    for s in report["sections"].as_array().expect("sections") {
        let id = s["id"].as_str().expect("id");
        for (k, v) in s["metrics"].as_object().expect("metrics") {
            if !k.starts_with(TIME_PREFIX) {
                out.insert(format!("{id}/{k}"), v.as_f64());
            }
        }
    }
    out
}

#[test]
fn smoke_study_fills_every_section_and_reruns_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a = run_smoke(&a_dir, 7);

    for name in ["index.html", "report.json", "summary.md"] {
        assert!(a_dir.join(name).is_file(), "{name} written");
    }
    let html = std::fs::read_to_string(a_dir.join("index.html")).unwrap();
    let summary = std::fs::read_to_string(a_dir.join("summary.md")).unwrap();
    let ids: Vec<String> = all_experiments()
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "gradient-flow",
            "convergence",
            "lr-robustness",
            "batch-size",
            "covariate-shift",
            "transformer",
            "conditioning"
        ]
    );
    let sections = a["sections"].as_array().expect("sections");
    assert_eq!(sections.len(), ids.len());
    for (s, id) in sections.iter().zip(&ids) {
        assert_eq!(s["id"], id.as_str());
        let reason = s["verdict_reason"].as_str().unwrap();
        assert!(
            !reason.starts_with("did not run") && !reason.starts_with("panicked"),
            "{id} failed: {reason}"
        );
        let verdict = s["verdict"].as_str().unwrap();
        assert!(
            ["reproduced", "partly", "not-reproduced", "inconclusive"].contains(&verdict),
            "{id}: verdict {verdict}"
        );
        for field in ["claim", "setup", "verdict_reason"] {
            assert!(
                !s[field].as_str().unwrap().trim().is_empty(),
                "{id}: empty {field}"
            );
        }
        assert!(
            !s["tables"].as_array().unwrap().is_empty(),
            "{id}: no table"
        );
        assert!(
            !s["metrics"].as_object().unwrap().is_empty(),
            "{id}: no metric"
        );
        let plots = s["plots"].as_array().unwrap();
        assert!(!plots.is_empty(), "{id}: no plot");
        for p in plots {
            let finite = p["series"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["points"].as_array().unwrap())
                .filter(|pt| pt[1].as_f64().is_some_and(f64::is_finite))
                .count();
            assert!(finite > 0, "{id}: plot {} has no finite point", p["title"]);
        }

        // The section's HTML holds one <svg> per plot.
        let start = html
            .find(&format!("<section id=\"{id}\">"))
            .unwrap_or_else(|| panic!("{id}: no <section> in index.html"));
        let end = html[start..]
            .find("</section>")
            .map(|e| start + e)
            .expect("section closes");
        let svgs = html[start..end].matches("<svg").count();
        assert_eq!(svgs, plots.len(), "{id}: <svg> count");
        assert!(summary.contains(&format!("(`{id}`)")), "{id} in summary.md");
    }

    // The same seed again: the same numbers, verdicts and reasons.
    let b = run_smoke(&b_dir, 7);
    assert_eq!(seeded_numbers(&a), seeded_numbers(&b));
    for (sa, sb) in sections.iter().zip(b["sections"].as_array().unwrap()) {
        assert_eq!(sa["verdict"], sb["verdict"]);
        assert_eq!(sa["verdict_reason"], sb["verdict_reason"]);
    }
    assert!(
        seeded_numbers(&a).len() > 50,
        "the sections report their numbers"
    );
}

#[test]
fn mnist1d_baselines_land_in_the_published_range() {
    // Greydanus (2020) reports 68% for the MLP and 94% for the CNN after
    // 6000 steps; fewer steps here, so the ranges are the brief's: MLP
    // 60–75%, CNN above 85%.
    let split = mnist1d(&Mnist1dConfig::default()).unwrap();
    let dev = device();
    let schedule = |steps| Schedule {
        name: "baseline".into(),
        steps,
        batch: 100,
        optim: OptimSpec::Adam { lr: 1e-2 },
        eval_every: steps,
        seed: 1,
    };
    let mlp = train_arch(Arch::Mlp, NormKind::None, &split, &schedule(1500), 2, &dev).unwrap();
    let cnn = train_arch(Arch::Cnn, NormKind::None, &split, &schedule(1200), 2, &dev).unwrap();
    let (mlp, cnn) = (mlp.final_accuracy(), cnn.final_accuracy());
    assert!((0.60..=0.75).contains(&mlp), "MLP test accuracy {mlp}");
    assert!(cnn > 0.85, "CNN test accuracy {cnn}");
}

#[test]
fn every_normalization_runs_the_fused_kernels_in_training() {
    let dev = device();
    let x = matrix(
        (0..8 * 40).map(|i| (i % 7) as f32 - 3.0).collect(),
        8,
        40,
        &dev,
    );
    let y = one_hot(&[0, 1, 2, 3, 4, 5, 6, 7], 10, &dev);
    for kind in [
        NormKind::Batch,
        NormKind::Layer,
        NormKind::Group,
        NormKind::Instance,
        NormKind::Rms,
        NormKind::Dyt,
    ] {
        let model = Cnn1d::new(40, 8, 10, kind, 3, &dev).unwrap();
        let before = fused_calls();
        let grads = cross_entropy(model.logits(x.clone()), y.clone()).backward();
        let after = fused_calls();
        // Three normalization layers, each one fused forward and one fused
        // backward (other tests may add calls of their own meanwhile).
        assert!(after.forward >= before.forward + 3, "{kind:?} forward");
        assert!(after.backward >= before.backward + 3, "{kind:?} backward");
        assert!(model.head.weight.grad(&grads).is_some(), "{kind:?}");
    }
}

#[test]
fn weight_norm_trains_direction_and_magnitude() {
    let dev = device();
    let spec = MlpSpec {
        inputs: 40,
        width: 16,
        depth: 1,
        classes: 10,
        activation: Activation::Relu,
    };
    let plain = Mlp::new(spec, NormKind::None, 5, &dev).unwrap();
    let model = Mlp::new(spec, NormKind::Weight, 5, &dev).unwrap();
    let plain_w: Vec<f32> = plain.blocks[0]
        .linear
        .weight
        .val()
        .into_data()
        .iter::<f32>()
        .collect();
    let wn_w: Vec<f32> = model.blocks[0]
        .linear
        .weight
        .val()
        .into_data()
        .iter::<f32>()
        .collect();
    for (a, b) in plain_w.iter().zip(&wn_w) {
        assert!(
            (a - b).abs() <= 1e-6 * a.abs().max(1.0),
            "same initial function"
        );
    }
    let split = mnist1d(&Mnist1dConfig::default()).unwrap();
    let magnitude = |m: &Mlp| -> Vec<f32> {
        let w = m.blocks[0].linear.weight.val();
        (w.clone() * w)
            .sum_dim(0)
            .sqrt()
            .into_data()
            .iter::<f32>()
            .collect()
    };
    let (g0, base0) = (
        magnitude(&model),
        model.blocks[0]
            .linear
            .weight
            .base()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>(),
    );
    let schedule = Schedule {
        name: "wn".into(),
        steps: 5,
        batch: 50,
        optim: OptimSpec::Adam { lr: 1e-2 },
        eval_every: 5,
        seed: 1,
    };
    let (model, _) = normlab::study::experiments::train::train_classifier(
        model,
        &split.train,
        &split.test,
        &schedule,
        &dev,
        None,
    );
    let base1: Vec<f32> = model.blocks[0]
        .linear
        .weight
        .base()
        .into_data()
        .iter::<f32>()
        .collect();
    let g1 = magnitude(&model);
    assert_ne!(base0, base1, "the direction v trains");
    assert_ne!(g0, g1, "the magnitude g trains");
    let e = evaluate(&model, &split.test, &dev);
    assert!(e.loss.is_finite());
}

#[test]
fn instance_norm_refuses_mlp_units() {
    let dev = device();
    let err = Norm::new(NormKind::Instance, Features::Flat(16), &dev).unwrap_err();
    assert!(err.to_string().contains("IN cannot normalize"), "{err}");
}

#[test]
fn the_transformer_is_causal_with_every_norm() {
    let plain = device().without_autodiff();
    let tokens = |ids: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 4]), &plain);
    for kind in [
        NormKind::None,
        NormKind::Layer,
        NormKind::Rms,
        NormKind::Dyt,
    ] {
        let spec = GptSpec {
            vocab: 11,
            context: 8,
            d_model: 8,
            heads: 2,
            layers: 2,
        };
        let m = Gpt::new(spec, kind, 1, &device()).valid();
        let a = m.forward(tokens(vec![1, 2, 3, 4, 5, 6, 7, 8]));
        // Only the last token of each row changes.
        let b = m.forward(tokens(vec![1, 2, 3, 9, 5, 6, 7, 10]));
        assert_eq!(a.dims(), [2, 4, 11], "{kind:?}");
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.into_data().iter::<f32>().collect(),
            b.into_data().iter::<f32>().collect(),
        );
        for row in 0..2 {
            for t in 0..4 {
                let at = |v: &[f32]| v[(row * 4 + t) * 11..(row * 4 + t + 1) * 11].to_vec();
                if t < 3 {
                    assert_eq!(at(&a), at(&b), "{kind:?}: position {t} saw the future");
                } else {
                    assert_ne!(at(&a), at(&b), "{kind:?}: the last position sees its token");
                }
            }
        }
    }
}
