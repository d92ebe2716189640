//! The study end to end: every experiment trains real models (at the
//! smallest sizes) and the report holds every section, claim and plot;
//! a rerun with one seed gives the same numbers whatever the workers;
//! MNIST-1D's baselines land in the published range; the models' parts.

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use normkit_burn::fused_calls;
use normlab::study::data::{mnist1d, Mnist1dConfig};
use normlab::study::experiments::common::{train_arch, Arch};
use normlab::study::jobs::TIME_PREFIX;
use normlab::study::models::{
    Activation, Classifier, Cnn1d, Features, Gpt, GptSpec, HasNorms, Mlp, MlpSpec, Norm, NormKind,
    SeqNet,
};
use normlab::study::report::Report;
use normlab::study::train::{
    cross_entropy, device, evaluate, evaluate_batch_stats, matrix, one_hot,
    recompute_population_stats, train_classifier, OptimSpec, Schedule,
};
use normlab::study::verdict::Verdict;
use normlab::study::{all_experiments, study, Experiment, Mode, StudyOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Runs the whole study at smoke size into `out`.
pub fn run_smoke(out: &Path, seed: u64, workers: usize) -> Report {
    let experiments = all_experiments();
    let refs: Vec<&dyn Experiment> = experiments.iter().map(|e| e.as_ref()).collect();
    let options = StudyOptions {
        out: out.to_path_buf(),
        seed,
        mode: Mode::Smoke,
        workers: Some(workers),
        // Fashion-MNIST's arm is tested on its own (the fashion_mnist
        // tests); here the study runs on built-in data only.
        fashion_mnist: Some(out.join("no-fashion-mnist")),
        ..StudyOptions::default()
    };
    study(options, &refs, &mut |_| {}).expect("the study runs and writes its report")
}

/// One smoke study for every test that reads it: the directory and the
/// report.
pub fn smoke() -> &'static (PathBuf, Report) {
    static SMOKE: OnceLock<(PathBuf, Report)> = OnceLock::new();
    SMOKE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("normlab-smoke-{}", std::process::id()));
        let report = run_smoke(&dir, 7, 2);
        (dir, report)
    })
}

/// Every per-seed number that is not a timing: metrics, claims and job
/// outputs.
fn seeded_numbers(report: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for s in report["sections"].as_array().expect("sections") {
        let id = s["id"].as_str().expect("id");
        for (k, v) in s["metrics"].as_object().expect("metrics") {
            if !k.starts_with(TIME_PREFIX) {
                out.insert(format!("{id}/metric/{k}"), v.clone());
            }
        }
        let claims = std::iter::once(&s["primary"]).chain(s["secondary"].as_array().unwrap());
        for c in claims {
            let key = c["claim"]["key"].as_str().unwrap();
            if !id.starts_with("compute-cost") {
                out.insert(format!("{id}/claim/{key}"), c["per_seed"].clone());
            }
        }
    }
    for j in report["jobs"].as_array().expect("jobs") {
        let key = format!(
            "job/{}/{}/{}",
            j["experiment"].as_str().unwrap(),
            j["arm"].as_str().unwrap(),
            j["replicate"]
        );
        if let Some(values) = j["output"]["Ok"]["values"].as_object() {
            for (k, v) in values {
                if !k.starts_with(TIME_PREFIX) {
                    out.insert(format!("{key}/{k}"), v.clone());
                }
            }
        }
    }
    out
}

#[test]
fn smoke_study_fills_every_section_claim_and_plot() {
    let (dir, report) = smoke();
    for name in ["index.html", "report.json", "summary.md"] {
        assert!(dir.join(name).is_file(), "{name} written");
    }
    let ids: Vec<&str> = report.sections.iter().map(|s| s.id.as_str()).collect();
    let want: Vec<&str> = all_experiments().iter().map(|e| e.id()).collect();
    assert_eq!(ids, want, "every experiment, in order");
    for s in &report.sections {
        let failed: Vec<&String> = s.caveats.iter().filter(|c| c.contains("failed")).collect();
        assert!(failed.is_empty(), "{}: {failed:?}", s.id);
        assert!(!s.plots.is_empty(), "{} has plots", s.id);
        assert!(!s.setup.is_empty() && !s.result.is_empty(), "{}", s.id);
        assert!(
            !s.references.is_empty() && !s.caveats.is_empty(),
            "{}",
            s.id
        );
        assert_eq!(
            s.verdict, s.primary.verdict,
            "{}: the headline is the primary",
            s.id
        );
        for c in s.claims() {
            assert_eq!(
                c.per_seed.len(),
                2,
                "{}/{}: one value per seed",
                s.id,
                c.claim.key
            );
            assert!(!c.claim.margin_source.is_empty());
            if s.id != "batch-size" || !c.claim.key.contains("fashion") {
                assert!(
                    c.per_seed.iter().all(|v| v.is_finite()),
                    "{}/{}: {:?}",
                    s.id,
                    c.claim.key,
                    c.per_seed
                );
                assert!(c.interval.is_some(), "{}/{}", s.id, c.claim.key);
            }
        }
    }
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let plots: usize = report.sections.iter().map(|s| s.plots.len()).sum();
    assert_eq!(html.matches("<svg").count(), plots);
    assert!(html.contains("<table class=\"claims\">"));
    let claims: usize = report.sections.iter().map(|s| 1 + s.secondary.len()).sum();
    assert!(claims > 40, "{claims} claims");
    assert!(report.jobs.iter().all(|j| j.output.is_ok()));
}

#[test]
fn smoke_study_reruns_identically_on_one_worker() {
    let (dir, report) = smoke();
    let again_dir = dir.join("again");
    let again = run_smoke(&again_dir, 7, 1);
    let (a, b): (Value, Value) = (
        serde_json::from_str(&report.to_json().unwrap()).unwrap(),
        serde_json::from_str(&again.to_json().unwrap()).unwrap(),
    );
    let (a, b) = (seeded_numbers(&a), seeded_numbers(&b));
    assert!(a.len() > 200, "{} numbers", a.len());
    assert_eq!(
        a, b,
        "the same seed gives the same numbers on 1 or 2 workers"
    );
    let verdicts = |r: &Report| -> Vec<Verdict> { r.sections.iter().map(|s| s.verdict).collect() };
    assert_eq!(verdicts(report), verdicts(&again));
}

#[test]
fn population_statistics_replace_the_running_ones() {
    let split = mnist1d(&Mnist1dConfig::default()).unwrap();
    let dev = device();
    let model = Cnn1d::new(40, 8, 10, NormKind::Batch, 3, &dev).unwrap();
    let schedule = Schedule {
        name: "bn".into(),
        steps: 30,
        batch: 4,
        optim: OptimSpec::Sgd {
            lr: 0.05,
            momentum: 0.9,
        },
        eval_every: 30,
        seed: 1,
    };
    let (model, _) = train_classifier(model, &split.train, &split.test, &schedule, &dev, None);
    let fresh = recompute_population_stats(&model, &split.train, 500, &dev);
    let running = |m: &Cnn1d| -> Vec<f32> {
        match &m.norms()[0] {
            Some(Norm::Batch(bn)) => bn
                .running_mean
                .as_ref()
                .unwrap()
                .value()
                .into_data()
                .iter::<f32>()
                .collect(),
            _ => panic!("a BatchNorm"),
        }
    };
    assert_ne!(running(&model), running(&fresh));
    // The recomputed mean is the first layer's mean over the training set:
    // the first conv's output averaged over examples and positions.
    let x = matrix(
        split.train.features()[..4000 * 40].to_vec(),
        4000,
        40,
        &dev.clone().without_autodiff(),
    );
    let conv = model.valid().blocks[0]
        .conv
        .forward(x.reshape([4000, 1, 40]));
    let mean: Vec<f32> = conv
        .mean_dim(2)
        .mean_dim(0)
        .into_data()
        .iter::<f32>()
        .collect();
    for (a, b) in running(&fresh).iter().zip(&mean) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    // Three readings of one model, all sensible accuracies.
    for acc in [
        evaluate(&model, &split.test, &dev).accuracy,
        evaluate(&fresh, &split.test, &dev).accuracy,
        evaluate_batch_stats(&model, &split.test, 4, &dev).accuracy,
    ] {
        assert!((0.0..=1.0).contains(&acc), "{acc}");
    }
}

#[test]
fn padded_sequences_mask_the_padding_for_layer_norm() {
    let dev = device().without_autodiff();
    let model = SeqNet::new(8, 4, 3, NormKind::Layer, 1, &device())
        .unwrap()
        .valid();
    // The same 5-long sequence alone and beside an 8-long one: LN's output
    // for it does not depend on its batch-mate's padding.
    let seq = [0.5f32, -1.0, 2.0, 0.0, 1.0];
    let mut alone = seq.to_vec();
    alone.extend([0.0, 0.0, 0.0, 5.0]);
    let mut pair = alone.clone();
    pair.extend([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 8.0]);
    let a: Vec<f32> = model
        .logits(matrix(alone, 1, 9, &dev))
        .into_data()
        .iter::<f32>()
        .collect();
    let b: Vec<f32> = model
        .logits(matrix(pair, 2, 9, &dev))
        .into_data()
        .iter::<f32>()
        .collect();
    for (x, y) in a.iter().zip(&b[..3]) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
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
    let run = |arch, steps| {
        train_arch(
            arch,
            NormKind::None,
            &split,
            &schedule(steps),
            2,
            &dev,
            |_| (),
        )
        .unwrap()
        .0
        .final_accuracy()
    };
    let (mlp, cnn) = (run(Arch::Mlp, 1500), run(Arch::Cnn, 1200));
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
    let spec = MlpSpec::new(40, 16, 1, 10, Activation::Relu);
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
    let (model, _) = normlab::study::train::train_classifier(
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
        let m = Gpt::new(spec, kind, 0.5, 1, &device()).valid();
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
