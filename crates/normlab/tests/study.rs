//! The study's parts that do not train: data loaders (including broken
//! files), MNIST-1D, verdicts, the report and the experiment runner.

use normlab::study::data::{
    self, fashion_mnist, mnist1d, read_idx, read_idx_pair, CharCorpus, DataError, Dataset,
    Mnist1dConfig, Order, Part, SplitMix64,
};
use normlab::study::report::{Plot, Report, Section, Table};
use normlab::study::verdict::{
    all_of, close_to, compare_higher_is_better, compare_lower_is_better, monotonic_trend,
    ratio_at_least, ratio_at_most, stays_flat, Direction, Judgement, Verdict,
};
use normlab::study::{
    run_study, study, Experiment, ExperimentError, Mode, Progress, StudyContext, StudyError,
    StudyOptions,
};
use std::io::Write;
use std::path::{Path, PathBuf};

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
// IDX files
// ---------------------------------------------------------------------------

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes a Fashion-MNIST-shaped directory of `count` 2x3 images per split;
/// `edit` may replace any file's bytes.
fn fake_fashion(dir: &Path, count: u32, gz: bool, edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) {
    for split in ["train", "t10k"] {
        let pixels: Vec<u8> = (0..count * 6).map(|i| (i * 37 % 256) as u8).collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        for (name, bytes) in [
            (
                format!("{split}-images-idx3-ubyte"),
                idx_bytes(0x803, &[count, 2, 3], &pixels),
            ),
            (
                format!("{split}-labels-idx1-ubyte"),
                idx_bytes(0x801, &[count], &labels),
            ),
        ] {
            let bytes = edit(&name, bytes);
            let (path, bytes) = if gz {
                (dir.join(format!("{name}.gz")), gzip(&bytes))
            } else {
                (dir.join(&name), bytes)
            };
            std::fs::write(path, bytes).unwrap();
        }
    }
}

#[test]
fn idx_files_load_plain_or_gzipped() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        fake_fashion(dir.path(), 12, gz, |_, b| b);
        let split = fashion_mnist(Some(dir.path()), None).unwrap();
        assert_eq!(split.train.shape(), [12, 1, 2, 3]);
        assert_eq!(split.test.shape(), [12, 1, 2, 3]);
        assert_eq!(split.train.labels()[11], 1);
        // Pixel 7 is 7 * 37 % 256 = 3, scaled to [0, 1].
        assert_eq!(split.train.features()[7], 3.0 / 255.0);
        let limited = fashion_mnist(Some(dir.path()), Some(5)).unwrap();
        assert_eq!(limited.train.len(), 5);
        assert_eq!(limited.train.features(), &split.train.features()[..30]);
    }
}

/// The error from loading a fake directory with one file edited, and that
/// file's path.
fn broken(file: &str, edit: impl Fn(Vec<u8>) -> Vec<u8>) -> (DataError, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    fake_fashion(
        dir.path(),
        4,
        false,
        |name, b| {
            if name == file {
                edit(b)
            } else {
                b
            }
        },
    );
    let err = fashion_mnist(Some(dir.path()), None).unwrap_err();
    (err, dir.path().join(file))
}

fn names(err: &DataError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
}

#[test]
fn idx_wrong_magic_is_named() {
    let (err, path) = broken("train-images-idx3-ubyte", |mut b| {
        b[3] = 1;
        b
    });
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{err:?}"
    );
    names(&err, &path);
    // Labels given where images belong: same check, other file.
    let (err, path) = broken("t10k-labels-idx1-ubyte", |mut b| {
        b[2] = 0x0d; // float data
        b
    });
    assert!(matches!(err, DataError::BadMagic { .. }), "{err:?}");
    names(&err, &path);
}

#[test]
fn idx_truncated_data_or_header_is_named() {
    let (err, path) = broken("train-images-idx3-ubyte", |mut b| {
        b.truncate(b.len() - 1);
        b
    });
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 40,
                found: 39,
                ..
            }
        ),
        "{err:?}"
    );
    names(&err, &path);
    let (err, path) = broken("train-labels-idx1-ubyte", |mut b| {
        b.truncate(6);
        b
    });
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 8,
                found: 6,
                ..
            }
        ),
        "{err:?}"
    );
    names(&err, &path);
    let (err, _) = broken("train-labels-idx1-ubyte", |_| vec![0, 0]);
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
}

#[test]
fn idx_trailing_data_is_named() {
    let (err, path) = broken("t10k-images-idx3-ubyte", |mut b| {
        b.push(0);
        b
    });
    assert!(matches!(err, DataError::TrailingData { .. }), "{err:?}");
    names(&err, &path);
}

#[test]
fn idx_count_mismatch_names_both_files() {
    let (err, labels) = broken("train-labels-idx1-ubyte", |_| {
        idx_bytes(0x801, &[3], &[0, 1, 2])
    });
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 4,
                labels: 3,
                ..
            }
        ),
        "{err:?}"
    );
    names(&err, &labels);
    names(&err, &labels.with_file_name("train-images-idx3-ubyte"));
}

#[test]
fn idx_out_of_range_label_is_named() {
    let (err, path) = broken("t10k-labels-idx1-ubyte", |_| {
        idx_bytes(0x801, &[4], &[0, 1, 10, 2])
    });
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 2,
                label: 10,
                ..
            }
        ),
        "{err:?}"
    );
    names(&err, &path);
}

#[test]
fn idx_missing_and_corrupt_gzip_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    fake_fashion(dir.path(), 4, true, |_, b| b);
    let gz = dir.path().join("t10k-images-idx3-ubyte.gz");
    std::fs::remove_file(&gz).unwrap();
    let err = fashion_mnist(Some(dir.path()), None).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("t10k-images-idx3-ubyte.gz"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");

    // Cut the gzip stream short.
    let whole = gzip(&idx_bytes(0x803, &[4, 2, 3], &[7; 24]));
    std::fs::write(&gz, &whole[..whole.len() / 2]).unwrap();
    let err = fashion_mnist(Some(dir.path()), None).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    names(&err, &gz);

    let nowhere = dir.path().join("nowhere");
    let err = read_idx(&nowhere, 1).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    names(&err, &nowhere);
}

#[test]
fn idx_pair_reads_any_image_size() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = (dir.path().join("i"), dir.path().join("l"));
    std::fs::write(&images, idx_bytes(0x803, &[2, 1, 2], &[0, 255, 51, 102])).unwrap();
    std::fs::write(&labels, idx_bytes(0x801, &[2], &[1, 0])).unwrap();
    let d = read_idx_pair(&images, &labels, 2, None).unwrap();
    assert_eq!(d.shape(), [2, 1, 1, 2]);
    assert_eq!(d.features(), [0.0, 1.0, 0.2, 0.4]);
    assert_eq!(d.labels(), [1, 0]);
}

/// `.ci/run` installs Debian's dataset-fashion-mnist, so the real files
/// are checked wherever the tests run.
#[test]
fn installed_fashion_mnist_loads() {
    let split = fashion_mnist(None, None).unwrap();
    assert_eq!(split.train.shape(), [60000, 1, 28, 28]);
    assert_eq!(split.test.shape(), [10000, 1, 28, 28]);
    // Fashion-MNIST is balanced: 6,000 and 1,000 images per class.
    assert_eq!(split.train.class_counts(), [6000; 10]);
    assert_eq!(split.test.class_counts(), [1000; 10]);
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
// Verdicts
// ---------------------------------------------------------------------------

#[test]
fn higher_is_better_comparisons() {
    let j = compare_higher_is_better(&[0.90, 0.92, 0.91], &[0.85, 0.86, 0.80], 0.02);
    assert_eq!(j.verdict, Verdict::Reproduced, "{}", j.reason);
    assert!(
        j.reason.contains("0.91") && j.reason.contains("0.85"),
        "{}",
        j.reason
    );
    let j = compare_higher_is_better(&[0.90], &[0.89], 0.02);
    assert_eq!(j.verdict, Verdict::Partly, "{}", j.reason);
    let j = compare_higher_is_better(&[0.80], &[0.89], 0.02);
    assert_eq!(j.verdict, Verdict::NotReproduced, "{}", j.reason);
    // A tie is not "better", even with no margin.
    assert_eq!(
        compare_higher_is_better(&[0.5], &[0.5], 0.0).verdict,
        Verdict::NotReproduced
    );
    assert_eq!(
        compare_higher_is_better(&[0.51], &[0.5], 0.0).verdict,
        Verdict::Reproduced
    );
    // Exactly at the margin counts (0.5 and 0.25 are exact in binary).
    assert_eq!(
        compare_higher_is_better(&[0.75], &[0.5], 0.25).verdict,
        Verdict::Reproduced
    );
    // The median ignores one outlier run.
    let j = compare_higher_is_better(&[0.9, 0.9, 0.1], &[0.8, 0.8, 0.8], 0.05);
    assert_eq!(j.verdict, Verdict::Reproduced, "{}", j.reason);
}

#[test]
fn diverged_runs_count_as_the_worst() {
    // Baseline diverged (NaN loss, so NaN accuracy): the claim holds.
    let j = compare_higher_is_better(&[0.6, 0.6], &[f64::NAN, f64::NAN], 0.1);
    assert_eq!(j.verdict, Verdict::Reproduced, "{}", j.reason);
    assert!(j.reason.contains("non-finite: 0 vs 2"), "{}", j.reason);
    let j = compare_lower_is_better(&[f64::INFINITY, f64::NAN, 0.1], &[0.5, 0.5, 0.5], 0.1);
    assert_eq!(j.verdict, Verdict::NotReproduced, "{}", j.reason);
    let j = compare_lower_is_better(&[f64::NAN], &[f64::NAN], 0.1);
    assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.reason);
    // A positive infinity is no better than NaN on a higher-is-better metric.
    let j = compare_higher_is_better(&[f64::INFINITY], &[0.5], 0.1);
    assert_eq!(j.verdict, Verdict::NotReproduced, "{}", j.reason);
}

#[test]
fn lower_is_better_and_bad_inputs() {
    assert_eq!(
        compare_lower_is_better(&[0.2], &[0.5], 0.1).verdict,
        Verdict::Reproduced
    );
    assert_eq!(
        compare_lower_is_better(&[0.45], &[0.5], 0.1).verdict,
        Verdict::Partly
    );
    assert_eq!(
        compare_lower_is_better(&[0.6], &[0.5], 0.1).verdict,
        Verdict::NotReproduced
    );
    assert_eq!(
        compare_lower_is_better(&[], &[0.5], 0.1).verdict,
        Verdict::Inconclusive
    );
    assert_eq!(
        compare_higher_is_better(&[1.0], &[], 0.1).verdict,
        Verdict::Inconclusive
    );
    for margin in [-0.1, f64::NAN, f64::INFINITY] {
        assert_eq!(
            compare_higher_is_better(&[1.0], &[0.0], margin).verdict,
            Verdict::Inconclusive
        );
    }
}

#[test]
fn ratio_thresholds() {
    assert_eq!(
        ratio_at_least(3.0, 1.0, 2.0, 1.5).verdict,
        Verdict::Reproduced
    );
    assert_eq!(
        ratio_at_least(2.0, 1.0, 2.0, 1.5).verdict,
        Verdict::Reproduced
    );
    assert_eq!(ratio_at_least(1.6, 1.0, 2.0, 1.5).verdict, Verdict::Partly);
    assert_eq!(
        ratio_at_least(1.2, 1.0, 2.0, 1.5).verdict,
        Verdict::NotReproduced
    );
    assert_eq!(
        ratio_at_most(1.05, 1.0, 1.1, 1.5).verdict,
        Verdict::Reproduced
    );
    assert_eq!(ratio_at_most(1.3, 1.0, 1.1, 1.5).verdict, Verdict::Partly);
    assert_eq!(
        ratio_at_most(2.0, 1.0, 1.1, 1.5).verdict,
        Verdict::NotReproduced
    );
    let j = ratio_at_least(3.0, 1.5, 2.0, 1.5);
    assert!(j.reason.contains("= 2"), "{}", j.reason);
    for j in [
        ratio_at_least(1.0, 0.0, 2.0, 1.5),
        ratio_at_least(f64::NAN, 1.0, 2.0, 1.5),
        ratio_at_most(1.0, f64::INFINITY, 1.1, 1.5),
        ratio_at_least(1.0, 1.0, 1.5, 2.0),
        ratio_at_most(1.0, 1.0, 1.5, 1.1),
        ratio_at_least(1.0, 1.0, f64::NAN, 1.0),
    ] {
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.reason);
    }
}

#[test]
fn batch_norm_degrades_while_group_norm_stays_flat() {
    // Accuracy by batch size 32, 16, 8, 4, 2.
    let bn = [0.91, 0.90, 0.87, 0.80, 0.62];
    let gn = [0.89, 0.89, 0.885, 0.89, 0.888];
    let degrades = monotonic_trend(&bn, Direction::Decreasing, 0.05, 0.005);
    assert_eq!(degrades.verdict, Verdict::Reproduced, "{}", degrades.reason);
    let flat = stays_flat(&gn, 0.01);
    assert_eq!(flat.verdict, Verdict::Reproduced, "{}", flat.reason);
    let both = all_of(&[degrades.clone().prefixed("BN"), flat.prefixed("GN")]);
    assert_eq!(both.verdict, Verdict::Reproduced);
    assert!(
        both.reason.contains("BN: ") && both.reason.contains("GN: "),
        "{}",
        both.reason
    );

    // GN degrading too: half the claim.
    let gn_bad = stays_flat(&[0.89, 0.85, 0.80, 0.75, 0.70], 0.01);
    assert_eq!(gn_bad.verdict, Verdict::NotReproduced);
    assert_eq!(all_of(&[degrades, gn_bad]).verdict, Verdict::Partly);
}

#[test]
fn monotonic_trend_edge_cases() {
    use Direction::*;
    // Large but with one bump against the trend: partly.
    let j = monotonic_trend(&[1.0, 0.8, 0.85, 0.5], Decreasing, 0.2, 0.01);
    assert_eq!(j.verdict, Verdict::Partly, "{}", j.reason);
    // The bump within the slack is not counted.
    assert_eq!(
        monotonic_trend(&[1.0, 0.8, 0.805, 0.5], Decreasing, 0.2, 0.01).verdict,
        Verdict::Reproduced
    );
    // Monotone but smaller than asked: partly.
    assert_eq!(
        monotonic_trend(&[1.0, 0.99, 0.98], Decreasing, 0.2, 0.0).verdict,
        Verdict::Partly
    );
    // Flat, or the wrong way: not reproduced.
    assert_eq!(
        monotonic_trend(&[1.0, 1.0], Decreasing, 0.0, 0.0).verdict,
        Verdict::NotReproduced
    );
    assert_eq!(
        monotonic_trend(&[1.0, 2.0, 3.0], Decreasing, 0.5, 0.0).verdict,
        Verdict::NotReproduced
    );
    assert_eq!(
        monotonic_trend(&[1.0, 2.0, 3.0], Increasing, 0.5, 0.0).verdict,
        Verdict::Reproduced
    );
    // Up and down with no net change.
    assert_eq!(
        monotonic_trend(&[1.0, 2.0, 1.0], Increasing, 0.0, 0.0).verdict,
        Verdict::NotReproduced
    );
    for j in [
        monotonic_trend(&[1.0], Decreasing, 0.1, 0.0),
        monotonic_trend(&[], Decreasing, 0.1, 0.0),
        monotonic_trend(&[1.0, f64::NAN], Decreasing, 0.1, 0.0),
        monotonic_trend(&[1.0, 0.0], Decreasing, -0.1, 0.0),
    ] {
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.reason);
    }
}

#[test]
fn flatness_and_closeness_edge_cases() {
    assert_eq!(stays_flat(&[0.5], 0.0).verdict, Verdict::Reproduced);
    assert_eq!(stays_flat(&[0.5, 0.515], 0.01).verdict, Verdict::Partly);
    assert_eq!(
        stays_flat(&[0.5, f64::NAN], 0.01).verdict,
        Verdict::NotReproduced
    );
    assert_eq!(stays_flat(&[], 0.01).verdict, Verdict::Inconclusive);
    assert_eq!(stays_flat(&[1.0], -1.0).verdict, Verdict::Inconclusive);

    // MNIST-1D's published CNN accuracy, 94%.
    assert_eq!(close_to(0.93, 0.94, 0.02).verdict, Verdict::Reproduced);
    assert_eq!(close_to(0.91, 0.94, 0.02).verdict, Verdict::Partly);
    assert_eq!(close_to(0.80, 0.94, 0.02).verdict, Verdict::NotReproduced);
    assert_eq!(
        close_to(f64::NAN, 0.94, 0.02).verdict,
        Verdict::NotReproduced
    );
    assert_eq!(close_to(0.9, f64::NAN, 0.02).verdict, Verdict::Inconclusive);
}

#[test]
fn combining_verdicts() {
    let j = |v| Judgement::new(v, "x");
    use Verdict::*;
    assert_eq!(all_of(&[]).verdict, Inconclusive);
    assert_eq!(all_of(&[j(Inconclusive)]).verdict, Inconclusive);
    assert_eq!(all_of(&[j(Reproduced), j(Reproduced)]).verdict, Reproduced);
    assert_eq!(
        all_of(&[j(NotReproduced), j(NotReproduced)]).verdict,
        NotReproduced
    );
    assert_eq!(all_of(&[j(Reproduced), j(NotReproduced)]).verdict, Partly);
    assert_eq!(all_of(&[j(Partly), j(Partly)]).verdict, Partly);
    // An untested part keeps a claim from being fully reproduced...
    assert_eq!(all_of(&[j(Reproduced), j(Inconclusive)]).verdict, Partly);
    // ...and does not rescue a refuted one.
    assert_eq!(
        all_of(&[j(NotReproduced), j(Inconclusive)]).verdict,
        NotReproduced
    );
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// A report with every kind of section content and every verdict.
fn sample_report() -> Report {
    let mut r = Report::new("Normalization <study> & friends", 42, Mode::Quick);
    r.sections.push(
        Section::new("bn-lr", "BatchNorm allows higher learning rates")
            .claim("Ioffe & Szegedy (2015): BN trains at learning rates where plain nets diverge.")
            .setup("MLP on MNIST-1D, 3 seeds.\n\nSecond paragraph.")
            .plot(
                Plot::line("Loss by step", "step", "loss")
                    .log_y()
                    .series(
                        "none",
                        vec![
                            (0.0, 2.3),
                            (1.0, 1.9),
                            (2.0, f64::NAN),
                            (3.0, 1.2),
                            (4.0, 1.0),
                        ],
                    )
                    .series(
                        "batch norm",
                        vec![(0.0, 2.3), (1.0, 0.9), (2.0, 0.4), (3.0, 0.0)],
                    ),
            )
            .table(
                Table::new("Final accuracy", ["norm", "accuracy"])
                    .row(["none", "0.61"])
                    .row(["bn", "0.88"]),
            )
            .metric("bn_accuracy", 0.88)
            .metric("none_loss", f64::NAN)
            .judged(compare_higher_is_better(&[0.88], &[0.61], 0.05)),
    );
    r.sections.push(
        Section::new("gn-batch", "GroupNorm is independent of batch size")
            .claim("Wu & He (2018).")
            .setup("CNN on Fashion-MNIST.")
            .plot(
                Plot::bars(
                    "Accuracy by batch size",
                    "batch size",
                    "accuracy",
                    ["32", "8", "2"],
                )
                .bar_series("BN", &[0.9, 0.85, 0.6])
                .bar_series("GN", &[0.89, 0.89, f64::INFINITY]),
            )
            .plot(Plot::line("Nothing finite", "x", "y").series("nan", vec![(f64::NAN, 1.0)]))
            .judged(Judgement::new(Verdict::Partly, "half of it")),
    );
    r.sections.push(
        Section::new("ln-rnn", "<script>alert('x')</script>")
            .claim("Claims with <b>markup</b> & \"quotes\" | pipes")
            .judged(Judgement::new(Verdict::NotReproduced, "no <gain>")),
    );
    r.sections
        .push(Section::new("wn-cost", "Weight norm is cheap"));
    r
}

#[test]
fn html_has_every_section_plot_and_verdict() {
    let r = sample_report();
    let html = r.to_html();
    for s in &r.sections {
        assert!(
            html.contains(&format!("<section id=\"{}\">", s.id)),
            "section {}",
            s.id
        );
        assert!(
            html.contains(&format!("href=\"#{}\"", s.id)),
            "link to {}",
            s.id
        );
    }
    let plots: usize = r.sections.iter().map(|s| s.plots.len()).sum();
    assert_eq!(html.matches("<svg").count(), plots);
    assert_eq!(html.matches("</svg>").count(), plots);
    for word in ["reproduced", "partly", "not reproduced", "inconclusive"] {
        assert!(
            html.contains(&format!("Verdict: {word}.")),
            "verdict {word}"
        );
    }
    assert!(
        !html.to_lowercase().contains("<script"),
        "unescaped script tag"
    );
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("Normalization &lt;study&gt; &amp; friends"));
    assert!(!html.contains("<b>markup"));
    assert!(html.contains("<td>0.88</td>"));
    assert!(html.contains("no finite data"));
    // No number in the page is NaN or infinite: those points were skipped.
    for bad in ["NaN\"", "inf\"", "=\"NaN", "=\"inf", "=\"-inf"] {
        assert!(!html.contains(bad), "found {bad}");
    }
    // The line with a NaN in the middle is drawn as two runs.
    let first_svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    assert_eq!(first_svg.matches("<polyline").count(), 3, "{first_svg}");
}

#[test]
fn svg_has_axes_legend_and_log_ticks() {
    let svg = Plot::line("t", "learning rate", "loss")
        .log_x()
        .series("a", vec![(1e-4, 1.0), (1e-2, 2.0), (0.0, 3.0), (-1.0, 4.0)])
        .series("b", vec![(1e-3, 1.5)])
        .to_svg();
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    for text in [
        ">1e-4<",
        ">0.001<",
        ">0.01<",
        ">learning rate<",
        ">loss<",
        ">a<",
        ">b<",
    ] {
        assert!(svg.contains(text), "missing {text} in {svg}");
    }
    // Non-positive x on a log axis are skipped; b's single point is a marker.
    assert_eq!(svg.matches("<polyline").count(), 1);
    assert!(svg.matches("<circle").count() >= 3);
    // Two series, two colours.
    assert!(svg.contains("#0072B2") && svg.contains("#D55E00"));

    let bars = Plot::bars("b", "", "acc", ["x", "y"])
        .bar_series("s", &[0.5, -0.25])
        .to_svg();
    // Two bars plus the legend swatch.
    assert_eq!(bars.matches("fill=\"#0072B2\"").count(), 3, "{bars}");
    assert!(bars.contains(">x<") && bars.contains(">y<"));
}

#[test]
fn svg_survives_extreme_values() {
    let plots = [
        Plot::line("huge", "x", "y").series(
            "s",
            vec![(0.0, 1e308), (1.0, -1e308), (2.0, 1.0), (3.0, 2.0)],
        ),
        Plot::line("tiny", "x", "y")
            .log_y()
            .series("s", vec![(0.0, 5e-324), (1.0, 1e-300), (2.0, 1e300)]),
        Plot::line("flat", "x", "y").series("s", vec![(0.0, 0.0), (0.0, 0.0)]),
        Plot::line("empty", "x", "y"),
        Plot::bars("no categories", "x", "y", Vec::<String>::new()).bar_series("s", &[]),
        Plot::bars("stray", "x", "y", ["a"]).series("s", vec![(0.5, 1.0), (7.0, 1.0), (0.0, 2.0)]),
    ];
    for p in &plots {
        let svg = p.to_svg();
        for bad in ["NaN", "inf"] {
            assert!(!svg.contains(bad), "{}: {bad} in {svg}", p.title);
        }
        assert!(svg.len() < 20_000, "{}: {} bytes", p.title, svg.len());
    }
    // The huge values are dropped and the rest is drawn on a normal scale.
    let huge = plots[0].to_svg();
    assert!(huge.contains(">2.0<") && !huge.contains("e30"), "{huge}");
    assert!(plots[3].to_svg().contains("no finite data"));
    // A bar at a non-integral or unknown category is not drawn; a stray
    // integral one widens the axis to its category.
    let stray = plots[5].to_svg();
    assert_eq!(stray.matches("<title>s: ").count(), 2, "{stray}");
    assert!(stray.contains(">7<"), "{stray}");
}

#[test]
fn json_holds_every_number() {
    let r = sample_report();
    let v: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
    assert_eq!(v["seed"], 42);
    assert_eq!(v["mode"], "quick");
    let s0 = &v["sections"][0];
    assert_eq!(s0["id"], "bn-lr");
    assert_eq!(s0["verdict"], "reproduced");
    assert_eq!(s0["metrics"]["bn_accuracy"], 0.88);
    assert!(s0["metrics"]["none_loss"].is_null());
    assert_eq!(s0["plots"][0]["series"][1]["points"][1][1], 0.9);
    assert_eq!(s0["plots"][0]["log_y"], true);
    assert_eq!(v["sections"][1]["plots"][0]["kind"], "bar");
    assert_eq!(v["sections"][2]["verdict"], "not-reproduced");
    assert_eq!(v["sections"][3]["verdict"], "inconclusive");
}

#[test]
fn markdown_summarizes_verdicts_and_tables() {
    let md = sample_report().to_markdown();
    assert!(md.starts_with("# Normalization <study> & friends\n"));
    assert!(md.contains("| BatchNorm allows higher learning rates | reproduced |"));
    assert!(md.contains("| none | 0.61 |"));
    assert!(md.contains("## GroupNorm is independent of batch size (`gn-batch`)"));
    assert!(md.contains("**Verdict: not reproduced.** no <gain>"));
}

#[test]
fn report_writes_three_files_and_refuses_duplicate_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/report");
    let r = sample_report();
    r.write(&out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        r.to_html()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("summary.md")).unwrap(),
        r.to_markdown()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("report.json")).unwrap(),
        r.to_json().unwrap()
    );

    let mut dup = r.clone();
    dup.sections.push(Section::new("bn-lr", "again"));
    let err = dup.write(&dir.path().join("dup")).unwrap_err();
    assert!(err.to_string().contains("bn-lr"), "{err}");
    assert!(!dir.path().join("dup").exists());
}

// ---------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------

struct Fake {
    id: &'static str,
    outcome: fn(&StudyContext) -> Result<Section, ExperimentError>,
}

impl Experiment for Fake {
    fn id(&self) -> &str {
        self.id
    }
    fn title(&self) -> &str {
        "Fake experiment"
    }
    fn claim(&self) -> &str {
        "Fakes behave."
    }
    fn run(&self, ctx: &StudyContext) -> Result<Section, ExperimentError> {
        (self.outcome)(ctx)
    }
}

fn good(ctx: &StudyContext) -> Result<Section, ExperimentError> {
    let split = ctx.mnist1d()?;
    Ok(Section::new("ignored", "")
        .metric("train", split.train.len() as f64)
        .judged(close_to(split.train.len() as f64, 4000.0, 0.0)))
}

fn fails(ctx: &StudyContext) -> Result<Section, ExperimentError> {
    ctx.fashion_mnist()?;
    Ok(Section::new("x", "x"))
}

fn panics(_: &StudyContext) -> Result<Section, ExperimentError> {
    panic!("shape mismatch in layer 3")
}

#[test]
fn runner_keeps_going_past_failures() {
    let dir = tempfile::tempdir().unwrap();
    let options = StudyOptions {
        out: dir.path().join("out"),
        fashion_mnist: Some(dir.path().join("no-such-dir")),
        ..StudyOptions::default()
    };
    let (a, b, c) = (
        Fake {
            id: "good",
            outcome: good,
        },
        Fake {
            id: "fails",
            outcome: fails,
        },
        Fake {
            id: "panics",
            outcome: panics,
        },
    );
    let mut log = Vec::new();
    let report = study(options, &[&a, &b, &c], &mut |p: Progress<'_>| {
        log.push(p.to_string())
    })
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
            ("panics", Verdict::Inconclusive)
        ]
    );
    assert_eq!(report.sections[0].title, "Fake experiment");
    assert_eq!(report.sections[0].claim, "Fakes behave.");
    assert!(
        report.sections[1].verdict_reason.contains("no-such-dir"),
        "{}",
        report.sections[1].verdict_reason
    );
    assert!(report.sections[2]
        .verdict_reason
        .contains("shape mismatch in layer 3"));
    assert_eq!(log.len(), 6);
    assert!(log[1].starts_with("[1/3] good: reproduced"), "{}", log[1]);
    assert!(dir.path().join("out/index.html").is_file());
}

#[test]
fn runner_selects_and_checks_ids() {
    let (a, b) = (
        Fake {
            id: "a",
            outcome: good,
        },
        Fake {
            id: "b",
            outcome: good,
        },
    );
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
fn context_seeds_and_text_fallback() {
    let ctx = StudyContext::new(StudyOptions::default());
    assert_eq!(ctx.seed_for("bn/init"), ctx.seed_for("bn/init"));
    assert_ne!(ctx.seed_for("bn/init"), ctx.seed_for("gn/init"));
    let other = StudyContext::new(StudyOptions {
        seed: 7,
        ..StudyOptions::default()
    });
    assert_ne!(ctx.seed_for("bn/init"), other.seed_for("bn/init"));
    // No --text: MNIST-1D stands in, built from the same generated split.
    let text = ctx.text().unwrap();
    assert_eq!(text.decode(text.tokens(Part::Val)).lines().count(), 1000);
    assert!(ctx.text_source().contains("MNIST-1D"));
    assert!(std::ptr::eq(ctx.mnist1d().unwrap(), ctx.mnist1d().unwrap()));
}

#[test]
fn options_parse_from_the_command_line() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: StudyOptions,
    }
    let defaults = Cli::try_parse_from(["normlab"]).unwrap().options;
    assert_eq!(defaults, StudyOptions::default());
    let o = Cli::try_parse_from([
        "normlab", "--out", "r", "--seed", "7", "--mode", "full", "--text", "t.txt", "--only",
        "a,b",
    ])
    .unwrap()
    .options;
    assert_eq!(o.out, PathBuf::from("r"));
    assert_eq!((o.seed, o.mode), (7, Mode::Full));
    assert_eq!(o.text, Some(PathBuf::from("t.txt")));
    assert_eq!(o.only, ["a", "b"]);
    assert!(Cli::try_parse_from(["normlab", "--mode", "slow"]).is_err());
}
