//! The study's parts that do not train: data (MNIST-1D, datasets and
//! batches, Fashion-MNIST from IDX files, text), the context and the job
//! runner with fake experiments.

use normlab::study::data::{
    self, fashion_mnist, mnist1d, CharCorpus, DataError, Dataset, FashionArm, Mnist1dConfig, Order,
    Part, SplitMix64,
};
use normlab::study::jobs::{Job, JobOutput, Results};
use normlab::study::verdict::{Claim, Direction, Verdict};
use normlab::study::{
    run_study, study, Analysis, Experiment, ExperimentError, Mode, Progress, StudyContext,
    StudyError, StudyOptions,
};
use std::path::Path;

// ---------------------------------------------------------------------------
// MNIST-1D
// ---------------------------------------------------------------------------

#[test]
fn mnist1d_has_the_original_shapes() {
    let split = mnist1d(&Mnist1dConfig::default()).unwrap();
    assert_eq!(split.train.shape(), [4000, 40]);
    assert_eq!(split.test.shape(), [1000, 40]);
    assert_eq!(split.train.num_classes(), 10);
    assert!(split
        .train
        .features()
        .iter()
        .chain(split.test.features())
        .all(|v| v.is_finite()));
}

#[test]
fn mnist1d_is_deterministic_in_its_seed() {
    let a = mnist1d(&Mnist1dConfig::default()).unwrap();
    let b = mnist1d(&Mnist1dConfig::default()).unwrap();
    assert_eq!(a, b);
    let c = mnist1d(&Mnist1dConfig {
        seed: 43,
        ..Mnist1dConfig::default()
    })
    .unwrap();
    assert_ne!(a.train.features(), c.train.features());
}

#[test]
fn mnist1d_classes_are_balanced_and_data_standardized() {
    let split = mnist1d(&Mnist1dConfig::default()).unwrap();
    let train = split.train.class_counts();
    let test = split.test.class_counts();
    for d in 0..10 {
        // 500 per digit in all; the shuffle spreads them 4:1 up to chance.
        assert_eq!(train[d] + test[d], 500, "digit {d}");
        assert!((350..=450).contains(&train[d]), "digit {d}: {train:?}");
    }
    // One mean and std for the whole set, as the original does.
    let all: Vec<f64> = split
        .train
        .features()
        .iter()
        .chain(split.test.features())
        .map(|&v| f64::from(v))
        .collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let var = all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / all.len() as f64;
    assert!(mean.abs() < 1e-5, "mean {mean}");
    assert!((var.sqrt() - 1.0).abs() < 1e-5, "std {}", var.sqrt());
}

#[test]
fn mnist1d_config_is_checked() {
    for bad in [
        Mnist1dConfig {
            num_samples: 9,
            ..Default::default()
        },
        Mnist1dConfig {
            train_split: 1.0,
            ..Default::default()
        },
        Mnist1dConfig {
            padding: (60, 36),
            ..Default::default()
        },
        Mnist1dConfig {
            max_translation: 0,
            ..Default::default()
        },
        Mnist1dConfig {
            shear_scale: f64::NAN,
            ..Default::default()
        },
    ] {
        assert!(
            matches!(mnist1d(&bad), Err(DataError::Invalid { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn mnist1d_without_noise_or_shifts_is_its_templates() {
    // With every random transform off, each sequence is its template
    // stretched by a fixed padding and resampled: one curve per digit.
    let split = mnist1d(&Mnist1dConfig {
        num_samples: 50,
        padding: (40, 40),
        scale_coeff: 0.0,
        max_translation: 1,
        corr_noise_scale: 0.0,
        iid_noise_scale: 0.0,
        shear_scale: 0.0,
        ..Default::default()
    })
    .unwrap();
    let d = &split.train;
    for i in 0..d.len() {
        for j in 0..d.len() {
            let same = d.example(i) == d.example(j);
            assert_eq!(same, d.labels()[i] == d.labels()[j], "examples {i}, {j}");
        }
    }
}

fn accuracy(predict: impl Fn(&[f32]) -> usize, d: &Dataset) -> f64 {
    let right = (0..d.len())
        .filter(|&i| predict(d.example(i).unwrap()) == d.labels()[i])
        .count();
    right as f64 / d.len() as f64
}

#[test]
fn mnist1d_is_learnable_but_not_trivial() {
    let split = mnist1d(&Mnist1dConfig::default()).unwrap();
    let (train, test) = (&split.train, &split.test);
    let n = train.example_len();

    // Nearest centroid.
    let mut centroids = vec![vec![0.0f64; n]; 10];
    for i in 0..train.len() {
        let c = &mut centroids[train.labels()[i]];
        for (s, &v) in c.iter_mut().zip(train.example(i).unwrap()) {
            *s += f64::from(v);
        }
    }
    for (c, &count) in centroids.iter_mut().zip(&train.class_counts()) {
        c.iter_mut().for_each(|s| *s /= count as f64);
    }
    let nearest = |x: &[f32]| {
        let dist = |c: &Vec<f64>| -> f64 {
            c.iter()
                .zip(x)
                .map(|(a, &b)| (a - f64::from(b)).powi(2))
                .sum()
        };
        (0..10)
            .min_by(|&a, &b| dist(&centroids[a]).total_cmp(&dist(&centroids[b])))
            .unwrap()
    };
    let centroid_acc = accuracy(nearest, test);

    // Softmax regression, full-batch gradient descent. The MNIST-1D paper
    // reports 32% test accuracy for logistic regression.
    let (mut w, mut b) = (vec![0.0f64; 10 * n], [0.0f64; 10]);
    let logits = |w: &[f64], b: &[f64; 10], x: &[f32]| -> [f64; 10] {
        std::array::from_fn(|k| {
            b[k] + w[k * n..(k + 1) * n]
                .iter()
                .zip(x)
                .map(|(a, &v)| a * f64::from(v))
                .sum::<f64>()
        })
    };
    for _ in 0..300 {
        let (mut dw, mut db) = (vec![0.0f64; 10 * n], [0.0f64; 10]);
        for i in 0..train.len() {
            let x = train.example(i).unwrap();
            let z = logits(&w, &b, x);
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for k in 0..10 {
                let g = e[k] / sum - f64::from(u8::from(k == train.labels()[i]));
                db[k] += g;
                for (d, &v) in dw[k * n..(k + 1) * n].iter_mut().zip(x) {
                    *d += g * f64::from(v);
                }
            }
        }
        let lr = 0.5 / train.len() as f64;
        w.iter_mut().zip(&dw).for_each(|(a, d)| *a -= lr * d);
        b.iter_mut().zip(&db).for_each(|(a, d)| *a -= lr * d);
    }
    let argmax = |x: &[f32]| {
        let z = logits(&w, &b, x);
        (0..10).max_by(|&a, &c| z[a].total_cmp(&z[c])).unwrap()
    };
    let logistic_acc = accuracy(argmax, test);

    // Above chance (10%) by a clear margin, far from solved.
    for (name, acc) in [
        ("nearest centroid", centroid_acc),
        ("logistic", logistic_acc),
    ] {
        assert!(acc > 0.2 && acc < 0.6, "{name}: test accuracy {acc}");
    }
    // Close to the paper's linear baseline: the generator is faithful.
    assert!(
        (logistic_acc - 0.32).abs() < 0.08,
        "logistic regression: {logistic_acc}, paper 0.32"
    );
}

// ---------------------------------------------------------------------------
// Dataset and batches
// ---------------------------------------------------------------------------

fn toy(n: usize) -> Dataset {
    let features = (0..n * 3).map(|v| v as f32).collect();
    let labels = (0..n).map(|i| i % 4).collect();
    Dataset::new(features, labels, vec![3], 4).unwrap()
}

#[test]
fn dataset_new_checks_its_parts() {
    let e = Dataset::new(vec![0.0; 5], vec![0, 1], vec![3], 2).unwrap_err();
    assert!(e.to_string().contains("5 features"), "{e}");
    let e = Dataset::new(vec![0.0; 6], vec![0, 2], vec![3], 2).unwrap_err();
    assert!(e.to_string().contains("label 2 at index 1"), "{e}");
    assert!(Dataset::new(vec![], vec![], vec![0], 2).is_err());
    let empty = Dataset::new(vec![], vec![], vec![3], 2).unwrap();
    assert!(empty.is_empty());
    assert_eq!(
        empty.batches(4, Order::Sequential, false).unwrap().count(),
        0
    );
}

#[test]
fn dataset_accessors_and_subsets() {
    let d = toy(10);
    assert_eq!(d.example(2), Some(&[6.0f32, 7.0, 8.0][..]));
    assert_eq!(d.example(10), None);
    let s = d.subset(&[9, 0, 9]).unwrap();
    assert_eq!(s.labels(), [1, 0, 1]);
    assert_eq!(s.example(0), d.example(9));
    assert!(d.subset(&[10]).is_err());
    assert_eq!(d.head(3).shape(), [3, 3]);
    assert_eq!(d.head(99).len(), 10);
    assert_eq!(d.class_counts(), [3, 3, 2, 2]);
}

#[test]
fn sequential_batches_cover_everything_in_order() {
    let d = toy(10);
    let batches: Vec<_> = d.batches(4, Order::Sequential, false).unwrap().collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].shape, [4, 3]);
    assert_eq!(batches[2].shape, [2, 3]);
    let all: Vec<f32> = batches.iter().flat_map(|b| b.features.clone()).collect();
    assert_eq!(all, d.features());
    let dropped = d.batches(4, Order::Sequential, true).unwrap();
    assert_eq!(dropped.len(), 2);
    assert!(dropped.into_iter().all(|b| b.labels.len() == 4));
    assert!(d.batches(0, Order::Sequential, false).is_err());
}

#[test]
fn shuffled_batches_are_a_seeded_permutation() {
    let d = toy(50);
    let order = |seed| -> Vec<usize> {
        d.batches(8, Order::Shuffled(seed), false)
            .unwrap()
            .flat_map(|b| {
                // Feature 0 of example i is 3i.
                b.features
                    .chunks(3)
                    .map(|x| x[0] as usize / 3)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let a = order(1);
    assert_eq!(a, order(1));
    assert_ne!(a, order(2));
    assert_ne!(a, (0..50).collect::<Vec<_>>());
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    // Labels travel with their features.
    for b in d.batches(8, Order::Shuffled(1), false).unwrap() {
        for (x, &l) in b.features.chunks(3).zip(&b.labels) {
            assert_eq!(x[0] as usize / 3 % 4, l);
        }
    }
    assert_ne!(data::derive_seed(1, 0), data::derive_seed(1, 1));
}

#[test]
fn standardize_uses_the_training_statistics() {
    let mut split = data::Split {
        train: Dataset::new(vec![1.0, 3.0], vec![0, 0], vec![1], 1).unwrap(),
        test: Dataset::new(vec![5.0], vec![0], vec![1], 1).unwrap(),
    };
    split.standardize().unwrap();
    assert_eq!(split.train.features(), [-1.0, 1.0]);
    assert_eq!(split.test.features(), [3.0]);
    let mut flat = Dataset::new(vec![2.0, 2.0], vec![0, 0], vec![1], 1).unwrap();
    assert!(flat.standardize(2.0, 0.0).is_err());
}

// ---------------------------------------------------------------------------
// Fashion-MNIST through the one IDX reader
// ---------------------------------------------------------------------------

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Writes a Fashion-MNIST-shaped directory of `count` 28×28 images per
/// split, image `i` filled with the byte `i · 37 mod 256`, label `i mod 10`.
fn fake_fashion(dir: &Path, count: u32) {
    for split in ["train", "t10k"] {
        let pixels: Vec<u8> = (0..count)
            .flat_map(|i| std::iter::repeat_n((i * 37 % 256) as u8, 784))
            .collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            dir.join(format!("{split}-images-idx3-ubyte")),
            idx_bytes(0x803, &[count, 28, 28], &pixels),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{split}-labels-idx1-ubyte")),
            idx_bytes(0x801, &[count], &labels),
        )
        .unwrap();
    }
}

#[test]
fn fashion_arm_takes_the_first_images_in_file_order_standardized() {
    let dir = tempfile::tempdir().unwrap();
    fake_fashion(dir.path(), 12);
    let split = fashion_mnist(Some(dir.path()), FashionArm { train: 5, test: 20 }).unwrap();
    assert_eq!(split.train.shape(), [5, 1, 28, 28]);
    assert_eq!(
        split.test.shape(),
        [12, 1, 28, 28],
        "fewer in the file than asked"
    );
    for i in 0..5 {
        let p = (i * 37 % 256) as f64;
        let want = ((p / 255.0 - 0.2860) / 0.3530) as f32;
        assert!(split.train.example(i).unwrap().iter().all(|&x| x == want));
        assert_eq!(split.train.labels()[i], i % 10);
    }
}

#[test]
fn missing_or_broken_fashion_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = fashion_mnist(Some(dir.path()), FashionArm { train: 1, test: 1 }).unwrap_err();
    assert!(matches!(err, DataError::Idx(_)), "{err:?}");
    names(&err, &dir.path().join("train-images-idx3-ubyte"));
    fake_fashion(dir.path(), 3);
    let labels = dir.path().join("t10k-labels-idx1-ubyte");
    std::fs::write(&labels, idx_bytes(0x801, &[3], &[1, 2, 11])).unwrap();
    let err = fashion_mnist(Some(dir.path()), FashionArm { train: 3, test: 3 }).unwrap_err();
    names(&err, &labels);
    assert!(err.to_string().contains("label 11"), "{err}");
}

fn names(err: &DataError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
}

/// `normlab study` with a data source it cannot read stops at once with
/// exit status 2 and a message naming the flag and the file, whatever the
/// mode (the quick study does not train on Fashion-MNIST, yet `--data`
/// was asked for).
#[test]
fn the_command_refuses_an_unreadable_requested_source() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let bad_text = dir.path().join("latin1.txt");
    std::fs::write(&bad_text, b"caf\xe9 au lait\n".repeat(50)).unwrap();
    let cases = [
        (
            "--data",
            missing.clone(),
            missing.join("train-images-idx3-ubyte"),
        ),
        (
            "--text",
            missing.join("corpus.txt"),
            missing.join("corpus.txt"),
        ),
        ("--text", bad_text.clone(), bad_text.clone()),
    ];
    for (flag, arg, named) in cases {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_normlab"))
            .args(["study", "--quick", "--out"])
            .arg(dir.path().join("report"))
            .arg(flag)
            .arg(&arg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {}: {stderr}",
            arg.display()
        );
        assert!(stderr.contains(flag), "{stderr}");
        assert!(stderr.contains(&named.display().to_string()), "{stderr}");
        assert!(!dir.path().join("report/index.html").exists());
        // Before any training: a quick study takes minutes.
        assert!(
            started.elapsed().as_secs() < 30,
            "{flag}: {:?}",
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------

#[test]
fn char_corpus_vocab_split_and_round_trip() {
    let text = "hello world, hello rust!\n".repeat(4);
    let c = CharCorpus::from_text(&text, 0.25).unwrap();
    let mut vocab: Vec<char> = text.chars().collect();
    vocab.sort_unstable();
    vocab.dedup();
    assert_eq!(c.vocab(), vocab);
    assert_eq!(c.tokens(Part::Train).len() + c.tokens(Part::Val).len(), 100);
    assert_eq!(c.tokens(Part::Val).len(), 25);
    let all: Vec<usize> = [c.tokens(Part::Train), c.tokens(Part::Val)].concat();
    assert_eq!(c.decode(&all), text);
    assert_eq!(c.encode("hello").unwrap(), all[..5]);
    assert!(matches!(
        c.encode("héllo"),
        Err(DataError::UnknownChar { ch: 'é' })
    ));
    assert_eq!(c.decode(&[999]), "\u{fffd}");
}

#[test]
fn token_batches_are_windows_and_their_next_characters() {
    let text: String = (0..500)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let c = CharCorpus::from_text(&text, 0.2).unwrap();
    let mut rng = SplitMix64::new(5);
    let b = c.sample(Part::Train, 6, 9, &mut rng).unwrap();
    assert_eq!((b.inputs.len(), b.targets.len()), (54, 54));
    let train = c.tokens(Part::Train);
    for (input, target) in b.inputs.chunks(9).zip(b.targets.chunks(9)) {
        let start = (0..train.len() - 9)
            .find(|&s| train[s..s + 9] == *input && train[s + 1..s + 10] == *target);
        assert!(
            start.is_some(),
            "window {input:?} / {target:?} not in the text"
        );
    }
    let again = c
        .sample(Part::Train, 6, 9, &mut SplitMix64::new(5))
        .unwrap();
    assert_eq!(b, again);
    let val = c.tokens(Part::Val).len();
    assert!(matches!(
        c.sample(Part::Val, 1, val, &mut rng),
        Err(DataError::TooShort { .. })
    ));
    assert!(c.sample(Part::Val, 1, val - 1, &mut rng).is_ok());
    assert!(c.sample(Part::Train, 0, 4, &mut rng).is_err());
}

#[test]
fn text_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 ol\xe9").unwrap();
    let err = CharCorpus::from_file(&latin1, 0.1).unwrap_err();
    assert!(matches!(err, DataError::NotUtf8 { .. }), "{err:?}");
    names(&err, &latin1);
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "abc").unwrap();
    let err = CharCorpus::from_file(&short, 0.1).unwrap_err();
    assert!(matches!(err, DataError::TooShort { .. }), "{err:?}");
    names(&err, &short);
    let missing = dir.path().join("missing.txt");
    names(&CharCorpus::from_file(&missing, 0.1).unwrap_err(), &missing);
    assert!(CharCorpus::from_text("abcdef", 1.0).is_err());
}

#[test]
fn mnist1d_as_text_is_one_line_per_sequence() {
    let split = mnist1d(&Mnist1dConfig::default()).unwrap();
    let c = CharCorpus::from_mnist1d(&split, 16).unwrap();
    assert_eq!(c.vocab_size(), 10 + 2 + 16);
    let text = c.decode(c.tokens(Part::Train));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4000);
    for (line, &label) in lines.iter().zip(split.train.labels()) {
        assert_eq!(line.len(), 2 + 40);
        assert_eq!(line[..2], format!("{label}:"));
        assert!(
            line[2..].chars().all(|ch| ('a'..='p').contains(&ch)),
            "{line}"
        );
    }
    assert_eq!(c.decode(c.tokens(Part::Val)).lines().count(), 1000);
    assert!(CharCorpus::from_mnist1d(&split, 27).is_err());
}

// ---------------------------------------------------------------------------
// Context and runner
// ---------------------------------------------------------------------------

/// An experiment that trains nothing: each job reports its replicate and
/// the training set's size, or fails as told.
struct Fake {
    id: &'static str,
    fail_job: Option<(usize, bool)>,
    fail_plan: bool,
}

impl Fake {
    fn new(id: &'static str) -> Self {
        Self {
            id,
            fail_job: None,
            fail_plan: false,
        }
    }
}

impl Experiment for Fake {
    fn id(&self) -> &'static str {
        self.id
    }
    fn title(&self) -> &'static str {
        "Fake experiment"
    }
    fn topic(&self) -> &'static str {
        "fakes"
    }
    fn claim(&self) -> &'static str {
        "Fakes behave."
    }
    fn claims(&self, _: &StudyContext) -> Vec<Claim> {
        vec![
            Claim::new(
                "size",
                "The set has 4,000 examples.",
                "examples − 3990",
                "examples",
                Direction::AtLeast,
                5.0,
                "practical",
            ),
            Claim::new(
                "unmeasured",
                "Nothing measures this.",
                "nothing",
                "",
                Direction::AtLeast,
                0.0,
                "practical",
            ),
        ]
    }
    fn caveats(&self) -> Vec<&'static str> {
        vec!["A fake."]
    }
    fn references(&self) -> Vec<&'static str> {
        vec!["Nobody 2024."]
    }
    fn jobs(&self, ctx: &StudyContext) -> Result<Vec<Job>, ExperimentError> {
        if self.fail_plan {
            ctx.fashion_mnist()?;
        }
        Ok((0..ctx.seeds())
            .map(|r| Job::new(self.id, "only", r, serde_json::json!({ "r": r })))
            .collect())
    }
    fn run_job(&self, ctx: &StudyContext, job: &Job) -> Result<JobOutput, ExperimentError> {
        if let Some((r, panic)) = self.fail_job {
            if job.replicate == r {
                if panic {
                    panic!("shape mismatch in layer 3");
                }
                return Err("no data here".into());
            }
        }
        let n = ctx.mnist1d()?.train.len() as f64 + job.replicate as f64;
        Ok(JobOutput::default().value("n", n))
    }
    fn analyze(&self, _: &StudyContext, results: &Results) -> Result<Analysis, ExperimentError> {
        let n = results.values("only", "n");
        let mut a = Analysis {
            setup: "Nothing trains.".into(),
            result: "Counted.".into(),
            ..Analysis::default()
        };
        a.effects
            .insert("size".into(), n.iter().map(|v| v - 3990.0).collect());
        a.metrics.insert("n".into(), n);
        Ok(a)
    }
}

#[test]
fn runner_judges_claims_and_keeps_going_past_failures() {
    let dir = tempfile::tempdir().unwrap();
    let options = StudyOptions {
        out: dir.path().join("out"),
        fashion_mnist: Some(dir.path().join("no-such-dir")),
        seeds: Some(3),
        workers: Some(2),
        ..StudyOptions::default()
    };
    let good = Fake::new("good");
    let failing = Fake {
        fail_job: Some((1, false)),
        ..Fake::new("fails")
    };
    let panicking = Fake {
        fail_job: Some((2, true)),
        ..Fake::new("panics")
    };
    let unplanned = Fake {
        fail_plan: true,
        ..Fake::new("unplanned")
    };
    let mut log = Vec::new();
    let report = study(
        options,
        &[&good, &failing, &panicking, &unplanned],
        &mut |p: Progress<'_>| log.push(p.to_string()),
    )
    .unwrap();
    let verdicts: Vec<_> = report
        .sections
        .iter()
        .map(|s| (s.id.as_str(), s.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("good", Verdict::Reproduced),
            ("fails", Verdict::Inconclusive),
            ("panics", Verdict::Inconclusive),
            ("unplanned", Verdict::Inconclusive)
        ]
    );
    let good = &report.sections[0];
    // 4000 + r − 3990 for r = 0, 1, 2: mean 11, clear of the margin 5.
    assert_eq!(good.primary.per_seed, [10.0, 11.0, 12.0]);
    assert!(good.primary.interval.unwrap().lo > 5.0);
    assert_eq!(
        good.secondary[0].verdict,
        Verdict::Inconclusive,
        "no values"
    );
    assert_eq!(good.metrics["n"], [4000.0, 4001.0, 4002.0]);
    assert_eq!(
        (good.title.as_str(), good.claim.as_str()),
        ("Fake experiment", "Fakes behave.")
    );
    let fails = &report.sections[1];
    assert!(fails.primary.per_seed[1].is_nan());
    assert!(
        fails
            .caveats
            .iter()
            .any(|c| c.contains("only seed 1: did not run: no data here")),
        "{:?}",
        fails.caveats
    );
    assert!(report.sections[2]
        .caveats
        .iter()
        .any(|c| c.contains("shape mismatch in layer 3")));
    assert!(
        report.sections[3]
            .caveats
            .iter()
            .any(|c| c.contains("no-such-dir")),
        "{:?}",
        report.sections[3].caveats
    );
    // 9 jobs (the unplanned experiment has none), then 4 sections.
    assert_eq!(report.jobs.len(), 9);
    assert_eq!(log.len(), 1 + 9 + 4, "{log:?}");
    assert_eq!(log[0], "9 training jobs");
    assert!(dir.path().join("out/index.html").is_file());
}

#[test]
fn runner_selects_and_checks_ids() {
    let (a, b) = (Fake::new("a"), Fake::new("b"));
    let ctx = |only: &[&str]| {
        StudyContext::new(StudyOptions {
            only: only.iter().map(|s| s.to_string()).collect(),
            ..StudyOptions::default()
        })
    };
    let r = run_study(&ctx(&["b"]), &[&a, &b], &mut |_| {}).unwrap();
    assert_eq!(r.sections.len(), 1);
    assert_eq!(r.sections[0].id, "b");
    let err = run_study(&ctx(&["c"]), &[&a, &b], &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, StudyError::UnknownExperiment { id, .. } if id == "c"),
        "{err}"
    );
    assert!(err.to_string().contains("a, b"), "{err}");
    let err = run_study(&ctx(&[]), &[&a, &a], &mut |_| {}).unwrap_err();
    assert!(matches!(err, StudyError::DuplicateExperiment(_)));
}

#[test]
fn reports_are_the_same_whatever_the_workers() {
    let a = Fake::new("a");
    let run = |workers| {
        let ctx = StudyContext::new(StudyOptions {
            workers: Some(workers),
            seeds: Some(4),
            ..StudyOptions::default()
        });
        let mut r = run_study(&ctx, &[&a], &mut |_| {}).unwrap();
        for s in &mut r.sections {
            s.seconds = 0.0;
        }
        for j in &mut r.jobs {
            if let Ok(o) = &mut j.output {
                o.seconds = 0.0;
            }
        }
        r.to_json().unwrap()
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn context_seeds_replicates_and_text_fallback() {
    let ctx = StudyContext::new(StudyOptions::default());
    assert_eq!(ctx.seeds(), 3, "quick mode's default");
    assert_eq!(ctx.seed_for("bn/init"), ctx.seed_for("bn/init"));
    assert_ne!(ctx.seed_for("bn/init"), ctx.seed_for("gn/init"));
    assert_ne!(
        ctx.replicate_seed("e", "init", 0),
        ctx.replicate_seed("e", "init", 1)
    );
    let other = StudyContext::new(StudyOptions {
        seed: 7,
        mode: Mode::Full,
        ..StudyOptions::default()
    });
    assert_eq!(other.seeds(), 5, "full mode's default");
    assert_ne!(ctx.seed_for("bn/init"), other.seed_for("bn/init"));
    // No --text: MNIST-1D stands in, built from the same generated split.
    let text = ctx.text().unwrap();
    assert_eq!(text.decode(text.tokens(Part::Val)).lines().count(), 1000);
    assert!(ctx.text_source().contains("MNIST-1D"));
    assert!(std::ptr::eq(ctx.mnist1d().unwrap(), ctx.mnist1d().unwrap()));
}
