//! Tests that need the real Fashion-MNIST (Debian's
//! `dataset-fashion-mnist`); run them alone with the filter
//! `fashion_mnist`. They fail when the files are missing unless
//! `NORMKIT_SKIP=fashion_mnist`.

use crate::study_resources;
use normlab::study::data::{fashion_mnist, FashionArm};
use normlab::study::{all_experiments, run_study, Experiment, Mode, StudyContext, StudyOptions};

#[test]
fn fashion_mnist_installed_files_load_in_file_order() {
    let Some(dir) = study_resources::fashion_mnist() else {
        return;
    };
    let split = fashion_mnist(
        Some(&dir),
        FashionArm {
            train: 60_000,
            test: 10_000,
        },
    )
    .unwrap();
    assert_eq!(split.train.shape(), [60000, 1, 28, 28]);
    assert_eq!(split.test.shape(), [10000, 1, 28, 28]);
    // Balanced: 6,000 and 1,000 images per class.
    assert_eq!(split.train.class_counts(), [6000; 10]);
    assert_eq!(split.test.class_counts(), [1000; 10]);
    // The standardization's constants are the training set's own moments.
    let (mean, std) = split.train.feature_mean_std();
    assert!(mean.abs() < 2e-3, "mean {mean}");
    assert!((std - 1.0).abs() < 2e-3, "std {std}");
    // The first training image is an ankle boot (label 9), as published.
    assert_eq!(split.train.labels()[0], 9);
}

#[test]
fn fashion_mnist_batch_size_arm_reads_bn_three_ways() {
    let Some(dir) = study_resources::fashion_mnist() else {
        return;
    };
    let experiments = all_experiments();
    let refs: Vec<&dyn Experiment> = experiments.iter().map(|e| e.as_ref()).collect();
    let ctx = StudyContext::new(StudyOptions {
        mode: Mode::Smoke,
        fashion_mnist: Some(dir),
        only: vec!["batch-size".into()],
        ..StudyOptions::default()
    });
    let report = run_study(&ctx, &refs, &mut |_| {}).unwrap();
    let s = &report.sections[0];
    assert_eq!(s.primary.claim.key, "bn-degrades-more-than-gn/fashion");
    assert!(
        s.primary.per_seed.iter().all(|v| v.is_finite()),
        "{:?}",
        s.primary.per_seed
    );
    for way in ["running", "recomputed", "batch"] {
        let key = format!("fashion/bn/b2/{way}/error");
        let v = &s.metrics[&key];
        assert!(v.iter().all(|e| (0.0..=100.0).contains(e)), "{key}: {v:?}");
    }
    assert!(s.metrics.contains_key("fashion/gn8/b32/running/error"));
    assert!(s.metrics.contains_key("fashion/gn1/b2/running/error"));
}
