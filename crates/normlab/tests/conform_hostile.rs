//! `normlab conform` on hostile case files: the public cases altered at
//! random — metadata values, shapes (zero and huge extents), dtypes,
//! inexact float64 inputs, missing tensors, flipped and cut bytes. The
//! runner is a child process, so an abort or a hang is a failure of this
//! test rather than a dead test run. Every file must get its line, every
//! FAIL must say why, and the exit status must be 0 or 1.
//!
//! `NORMLAB_HOSTILE_CASES` sets the number of files (default 800),
//! `NORMLAB_HOSTILE_SEED` the seed.

use normlab::golden::read_case;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

/// xorshift64*: a reproducible stream from one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A tensor as it will be written: dtype, shape and little-endian bytes.
#[derive(Clone)]
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Raw {
    fn floats(dtype: Dtype, shape: Vec<usize>, values: &[f64]) -> Raw {
        let bytes = match dtype {
            Dtype::F64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            // bfloat16 is float32's upper half (rounded toward zero here).
            Dtype::BF16 => values
                .iter()
                .flat_map(|&v| (((v as f32).to_bits() >> 16) as u16).to_le_bytes())
                .collect(),
            Dtype::I64 => values
                .iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect(),
            Dtype::U8 => values.iter().map(|&v| v as u8).collect(),
            _ => values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        };
        Raw {
            dtype,
            shape,
            bytes,
        }
    }
}

const META_KEYS: [&str; 16] = [
    "op",
    "eps",
    "training",
    "momentum",
    "num_batches_tracked",
    "track_running_stats",
    "channel_axis",
    "normalized_shape",
    "num_groups",
    "dim",
    "expect_error",
    "tol_y",
    "tol_dx",
    "style_size",
    "unbiased",
    "rmax",
];

const HOSTILE_VALUES: [&str; 24] = [
    "0",
    "-1",
    "1",
    "2",
    "nan",
    "inf",
    "-inf",
    "1e39",
    "-0.0",
    "18446744073709551615",
    "9223372036854775808",
    "4294967296",
    "[]",
    "[0]",
    "[4294967296, 4294967296]",
    "[18446744073709551615]",
    "[3, -1]",
    "",
    "true",
    "none",
    "loose",
    "layer_norm",
    "batch_norm",
    "[[1]]",
];

const HUGE: [usize; 4] = [1 << 31, 1 << 33, usize::MAX, (usize::MAX >> 1) + 1];

/// A hostile shape with no more than a few thousand elements: small
/// extents, or a zero beside huge ones.
fn hostile_shape(rng: &mut Rng) -> Vec<usize> {
    let rank = rng.below(6);
    let mut shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(6)).collect();
    if rank > 0 && rng.below(2) == 0 {
        let z = rng.below(rank);
        shape[z] = 0;
        for (i, e) in shape.iter_mut().enumerate() {
            if i != z && rng.below(2) == 0 {
                *e = *rng.pick(&HUGE);
            }
        }
    }
    shape
}

fn numel(shape: &[usize]) -> usize {
    // A zero extent makes the product zero whatever the others are.
    if shape.contains(&0) {
        0
    } else {
        shape.iter().product()
    }
}

/// One random alteration of a case's metadata and tensors.
fn alter(rng: &mut Rng, meta: &mut BTreeMap<String, String>, tensors: &mut BTreeMap<String, Raw>) {
    let names: Vec<String> = tensors.keys().cloned().collect();
    match rng.below(7) {
        0 | 1 => {
            let key = rng.pick(&META_KEYS).to_string();
            meta.insert(key, rng.pick(&HOSTILE_VALUES).to_string());
        }
        2 => {
            let keys: Vec<String> = meta.keys().cloned().collect();
            if !keys.is_empty() {
                meta.remove(rng.pick(&keys));
            }
        }
        3 if !names.is_empty() => {
            // A new shape with values for it.
            let name = rng.pick(&names).clone();
            let shape = hostile_shape(rng);
            let values: Vec<f64> = (0..numel(&shape))
                .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.25)
                .collect();
            tensors.insert(name, Raw::floats(Dtype::F32, shape, &values));
        }
        4 if !names.is_empty() => {
            // Another dtype, or float64 values float32 cannot hold.
            let name = rng.pick(&names).clone();
            let t = tensors[&name].clone();
            let n = numel(&t.shape);
            let values: Vec<f64> = (0..n).map(|i| 0.1 + i as f64 * 1e-9).collect();
            let dtype = *rng.pick(&[Dtype::F64, Dtype::BF16, Dtype::I64, Dtype::U8]);
            tensors.insert(name, Raw::floats(dtype, t.shape, &values));
        }
        5 if !names.is_empty() => {
            tensors.remove(rng.pick(&names).as_str());
        }
        _ => {
            // Special values in a tensor.
            if let Some(name) = names.first() {
                let t = tensors.get_mut(name).unwrap();
                if t.dtype == Dtype::F32 && !t.bytes.is_empty() {
                    let i = rng.below(t.bytes.len() / 4) * 4;
                    let v = *rng.pick(&[f32::NAN, f32::INFINITY, f32::MAX, -f32::MAX, 1e-45]);
                    t.bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// Writes the safetensors layout by hand (an 8-byte header length, the
/// JSON header, the data): the library refuses to write a shape whose
/// extents overflow when multiplied, and such headers are what a reader
/// must survive.
fn serialize(meta: &BTreeMap<String, String>, tensors: &BTreeMap<String, Raw>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(meta));
    let mut data = Vec::new();
    for (name, t) in tensors {
        let dtype = match t.dtype {
            Dtype::F64 => "F64",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::U8 => "U8",
            _ => "F32",
        };
        let (start, end) = (data.len(), data.len() + t.bytes.len());
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, end]}),
        );
        data.extend_from_slice(&t.bytes);
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}

/// A case file's metadata and tensors, as written (inputs float32, expected
/// values float64).
fn load(path: &Path) -> (BTreeMap<String, String>, BTreeMap<String, Raw>) {
    let case = read_case(path).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = case
        .tensors
        .iter()
        .map(|(name, t)| {
            let dtype = st.tensor(name).unwrap().dtype();
            (name.clone(), Raw::floats(dtype, t.shape.clone(), &t.data))
        })
        .collect();
    (case.meta, tensors)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

#[test]
fn hostile_case_files_get_a_reasoned_verdict_each() {
    let count = env_number("NORMLAB_HOSTILE_CASES", 800) as usize;
    let seed = env_number("NORMLAB_HOSTILE_SEED", 0x636f_6e66_6f72_6d21);
    let mut rng = Rng(seed | 1);
    let mut sources: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    sources.sort();
    assert!(sources.len() >= 36);
    let cases: Vec<_> = sources.iter().map(|p| load(p)).collect();

    let dir = tempfile::tempdir().unwrap();
    for k in 0..count {
        let i = rng.below(cases.len());
        let (mut meta, mut tensors) = cases[i].clone();
        for _ in 0..1 + rng.below(3) {
            alter(&mut rng, &mut meta, &mut tensors);
        }
        let mut bytes = serialize(&meta, &tensors);
        // Some files are damaged below the format: a cut, flipped bytes.
        match rng.below(10) {
            0 => bytes.truncate(rng.below(bytes.len())),
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            _ => {}
        }
        let stem = sources[i]
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::write(dir.path().join(format!("{k:04}_{stem}.safetensors")), bytes).unwrap();
    }

    let start = Instant::now();
    // Output to files, not pipes: a pipe nobody reads until the end fills
    // up and stalls the child.
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let file = |p: &Path| Stdio::from(std::fs::File::create(p).unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_normlab"))
        .arg("conform")
        .arg(dir.path())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            panic!("normlab conform hung on the hostile files (seed {seed}, over {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned();
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "normlab conform ended with {status} on the hostile files (seed {seed}); stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), count + 1, "one line per file and a summary");
    let mut failed = 0;
    for line in &lines[..count] {
        let verdict = line.split_whitespace().nth(1);
        assert!(matches!(verdict, Some("PASS" | "FAIL")), "{line}");
        if verdict == Some("FAIL") {
            failed += 1;
            let why = line.split_once("FAIL").unwrap().1.trim();
            assert!(!why.is_empty(), "a FAIL that does not say why: {line}");
            assert!(!why.contains("panicked"), "{line}");
        }
    }
    assert_eq!(
        lines[count],
        format!("{} passed, {failed} failed", count - failed)
    );
    // Most alterations break a case; a run where none did altered nothing.
    assert!(
        failed > count / 4,
        "only {failed} of {count} hostile files failed"
    );
    eprintln!(
        "{count} hostile files: {failed} failed with a reason, {} passed, in {:.1} s",
        count - failed,
        start.elapsed().as_secs_f64()
    );
}
