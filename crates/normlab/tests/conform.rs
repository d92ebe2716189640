//! The conformance runner: the public golden cases pass, and the runner
//! itself tells a right answer from a wrong one.

use normlab::conform::{run_case, run_path, Failure};
use normlab::golden::{read_case, Case, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

#[test]
fn every_public_golden_case_passes() {
    let reports = run_path(&golden_dir()).unwrap();
    assert!(reports.len() >= 36, "found only {} cases", reports.len());
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.to_string())
        .collect();
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
}

#[test]
fn offset_case_beats_pytorch_float32() {
    // The golden file records the error PyTorch's own float32 kernel makes
    // on this large-mean input; normkit must do at least as well.
    let path = golden_dir().join("015_ln_offset.safetensors");
    let case = read_case(&path).unwrap();
    let report = run_case(&case);
    assert!(report.passed(), "{report}");
    for check in &report.checks {
        let torch: f64 = case.meta[&format!("torch_f32_err_{}", check.name)]
            .parse()
            .unwrap();
        let ours = check.max_err.unwrap();
        assert!(
            ours <= torch,
            "{}: normkit {ours:.3e} vs PyTorch float32 {torch:.3e}",
            check.name
        );
    }
}

#[test]
fn command_line_reports_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_normlab"))
        .arg("conform")
        .arg(golden_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let n = lines.len() - 1;
    assert_eq!(lines[n], format!("{n} passed, 0 failed"));
    assert!(lines[0].starts_with("001_bn1d_train") && lines[0].contains("PASS"));
    assert!(lines[0].contains(" y ") && lines[0].contains(" dx "));
}

/// A copy of a golden case, altered by `edit`, in a fresh directory.
fn altered(name: &str, edit: impl FnOnce(&mut Case)) -> Case {
    let mut case = read_case(&golden_dir().join(name)).unwrap();
    edit(&mut case);
    case
}

#[test]
fn a_wrong_expected_value_fails() {
    let case = altered("009_ln_small.safetensors", |c| {
        c.tensors.get_mut("dx").unwrap().data[3] += 1e-3;
    });
    let report = run_case(&case);
    assert!(!report.passed());
    let dx = report.checks.iter().find(|c| c.name == "dx").unwrap();
    assert!(!dx.passed() && dx.max_err.unwrap() > 9e-4);
}

#[test]
fn an_unproducible_expected_tensor_fails() {
    let case = altered("013_ln_noaffine.safetensors", |c| {
        c.tensors
            .insert("dgamma".into(), Tensor::new(vec![1], vec![0.0]));
    });
    assert!(!run_case(&case).passed());
}

#[test]
fn an_accepted_invalid_input_fails_an_error_case() {
    // A valid LayerNorm input marked as an expected error must fail.
    let case = altered("009_ln_small.safetensors", |c| {
        c.meta.insert("expect_error".into(), "true".into());
    });
    let report = run_case(&case);
    assert!(!report.passed());
    assert!(report.to_string().contains("accepted"));
}

#[test]
fn malformed_cases_fail_even_when_an_error_is_expected() {
    let case = altered("034_err_bn_one_value.safetensors", |c| {
        c.meta.insert("op".into(), "frobnicate_norm".into());
    });
    let report = run_case(&case);
    assert!(matches!(report.failure, Some(Failure::Malformed(_))));
    assert!(!report.passed());

    let dir = std::env::temp_dir().join(format!("normlab-conform-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("garbage.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let reports = run_path(&bad).unwrap();
    assert_eq!(reports.len(), 1);
    assert!(!reports[0].passed());
    let out = Command::new(env!("CARGO_BIN_EXE_normlab"))
        .arg("conform")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .ends_with("0 passed, 1 failed\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Invalid variants of valid cases, as a hidden suite might pose them: each
/// must be refused (no panic, no output).
#[test]
fn invalid_variants_are_refused() {
    let variants: Vec<(&str, Box<dyn Fn(&mut Case)>)> = vec![
        (
            "009_ln_small.safetensors",
            Box::new(|c| set(c, "eps", "nan")),
        ),
        (
            "009_ln_small.safetensors",
            Box::new(|c| set(c, "eps", "-1e-5")),
        ),
        (
            "009_ln_small.safetensors",
            Box::new(|c| set(c, "normalized_shape", "[7, 32]x")),
        ),
        (
            "009_ln_small.safetensors",
            Box::new(|c| set(c, "normalized_shape", "[0]")),
        ),
        (
            "009_ln_small.safetensors",
            Box::new(|c| truncate(c, "weight")),
        ),
        (
            "011_ln_2dshape.safetensors",
            Box::new(|c| reshape(c, "weight", vec![6, 4])),
        ),
        (
            "002_bn2d_train.safetensors",
            Box::new(|c| truncate(c, "bias")),
        ),
        (
            "002_bn2d_train.safetensors",
            Box::new(|c| truncate(c, "running_var")),
        ),
        (
            "002_bn2d_train.safetensors",
            Box::new(|c| set(c, "eps", "nan")),
        ),
        (
            "002_bn2d_train.safetensors",
            Box::new(|c| reshape(c, "x", vec![1, 6, 1, 1])),
        ),
        (
            "019_gn_basic.safetensors",
            Box::new(|c| set(c, "num_groups", "0")),
        ),
        (
            "019_gn_basic.safetensors",
            Box::new(|c| set(c, "num_groups", "3")),
        ),
        (
            "023_in2d.safetensors",
            Box::new(|c| reshape(c, "x", vec![2, 3, 1, 1])),
        ),
        (
            "023_in2d.safetensors",
            Box::new(|c| reshape(c, "x", vec![216])),
        ),
        (
            "027_wn_linear_dim0.safetensors",
            Box::new(|c| set(c, "dim", "2")),
        ),
        (
            "027_wn_linear_dim0.safetensors",
            Box::new(|c| set(c, "dim", "-3")),
        ),
        (
            "027_wn_linear_dim0.safetensors",
            Box::new(|c| truncate(c, "g")),
        ),
        (
            "031_dyt_tokens.safetensors",
            Box::new(|c| truncate(c, "weight")),
        ),
        (
            "031_dyt_tokens.safetensors",
            Box::new(|c| truncate(c, "dy")),
        ),
        (
            "016_rms_small.safetensors",
            Box::new(|c| set(c, "eps", "-0.5")),
        ),
        (
            "101_add_ln_small.safetensors",
            Box::new(|c| truncate(c, "residual")),
        ),
        (
            "101_add_ln_small.safetensors",
            Box::new(|c| truncate(c, "weight")),
        ),
        (
            "101_add_ln_small.safetensors",
            Box::new(|c| truncate(c, "bias")),
        ),
        (
            "101_add_ln_small.safetensors",
            Box::new(|c| truncate(c, "dy")),
        ),
        (
            "101_add_ln_small.safetensors",
            Box::new(|c| truncate(c, "dsum")),
        ),
        (
            "101_add_ln_small.safetensors",
            Box::new(|c| set(c, "normalized_shape", "[31]")),
        ),
        (
            "101_add_ln_small.safetensors",
            Box::new(|c| set(c, "eps", "nan")),
        ),
        (
            "102_add_ln_3d.safetensors",
            Box::new(|c| reshape(c, "residual", vec![5, 2, 48])),
        ),
        (
            "104_add_rms_small.safetensors",
            Box::new(|c| {
                let bias = Tensor::new(vec![40], vec![0.5; 40]);
                c.tensors.insert("bias".into(), bias);
            }),
        ),
        (
            "104_add_rms_small.safetensors",
            Box::new(|c| truncate(c, "weight")),
        ),
        (
            "105_add_rms_noaffine.safetensors",
            Box::new(|c| set(c, "eps", "-1e-6")),
        ),
        (
            "106_derf_tokens.safetensors",
            Box::new(|c| truncate(c, "weight")),
        ),
        (
            "106_derf_tokens.safetensors",
            Box::new(|c| reshape(c, "alpha", vec![2])),
        ),
        (
            "106_derf_tokens.safetensors",
            Box::new(|c| reshape(c, "shift", vec![2])),
        ),
        (
            "106_derf_tokens.safetensors",
            Box::new(|c| truncate(c, "dy")),
        ),
        (
            "107_derf_nchw.safetensors",
            Box::new(|c| truncate(c, "bias")),
        ),
        (
            "107_derf_nchw.safetensors",
            Box::new(|c| set(c, "channel_axis", "2")),
        ),
    ];
    for (file, edit) in variants {
        let mut case = read_case(&golden_dir().join(file)).unwrap();
        edit(&mut case);
        case.meta.insert("expect_error".into(), "true".into());
        let report = run_case(&case);
        assert!(
            matches!(report.failure, Some(Failure::Refused(_))),
            "{file}: {report} (meta {:?})",
            case.meta
        );
        let message = report.failure.unwrap().to_string();
        assert!(!message.is_empty());
    }
}

/// The same values laid out in another shape are the same case: the
/// residual norms over two trailing dimensions, on 3-D and 4-D inputs,
/// and Derf's tokens as rows.
#[test]
fn regrouped_residual_and_derf_cases_pass() {
    let regroup = |c: &mut Case, names: &[&str], shape: &[usize]| {
        for name in names {
            if let Some(t) = c.tensors.get_mut(*name) {
                assert_eq!(t.numel(), shape.iter().product::<usize>());
                t.shape = shape.to_vec();
            }
        }
    };
    let rows = ["x", "residual", "dy", "dsum", "y", "sum", "dx", "dresidual"];
    let params = ["weight", "bias", "dweight", "dbias"];
    let add_ln = altered("101_add_ln_small.safetensors", |c| {
        regroup(c, &rows, &[2, 3, 4, 8]);
        regroup(c, &params, &[4, 8]);
        set(c, "normalized_shape", "[4, 8]");
    });
    let add_rms = altered("104_add_rms_small.safetensors", |c| {
        regroup(c, &rows, &[7, 5, 8]);
        regroup(c, &params, &[5, 8]);
        set(c, "normalized_shape", "[5, 8]");
    });
    let derf = altered("106_derf_tokens.safetensors", |c| {
        regroup(c, &["x", "dy", "y", "dx"], &[40, 32]);
        c.meta.remove("channel_axis");
    });
    for case in [add_ln, add_rms, derf] {
        let report = run_case(&case);
        assert!(report.passed(), "{report}");
        assert!(report.checks.len() >= 4, "{report}");
    }
}

/// Without `dy` only `dsum` flows back: it passes through the sum to both
/// inputs, and the parameters get nothing.
#[test]
fn residual_gradient_alone_passes_through_the_sum() {
    let case = altered("101_add_ln_small.safetensors", |c| {
        c.tensors.remove("dy");
        let dsum = c.tensors["dsum"].clone();
        c.tensors.insert("dx".into(), dsum.clone());
        c.tensors.insert("dresidual".into(), dsum);
        for name in ["dweight", "dbias"] {
            c.tensors
                .insert(name.into(), Tensor::new(vec![32], vec![0.0; 32]));
        }
    });
    let report = run_case(&case);
    assert!(report.passed(), "{report}");
    assert_eq!(report.checks.len(), 6, "{report}");
}

fn set(c: &mut Case, key: &str, value: &str) {
    c.meta.insert(key.into(), value.into());
}

fn truncate(c: &mut Case, name: &str) {
    let t = c.tensors.get_mut(name).unwrap();
    t.data.pop();
    let last = t.shape.len() - 1;
    t.shape[last] -= 1;
}

fn reshape(c: &mut Case, name: &str, shape: Vec<usize>) {
    let t = c.tensors.get_mut(name).unwrap();
    let n: usize = shape.iter().product();
    t.data.resize(n, 0.5);
    t.shape = shape.clone();
    // Keep dy consistent with a new x.
    if name == "x" {
        if let Some(dy) = c.tensors.get_mut("dy") {
            dy.data.resize(n, 0.25);
            dy.shape = shape;
        }
    }
}

#[test]
fn reads_a_case_written_with_safetensors() {
    // A tiny DyT case written here; expected values from the formula
    // y = weight · tanh(alpha · x) + bias evaluated in f64.
    let x = [0.5f32, -1.0, 2.0, 0.0];
    let (alpha, weight, bias) = (0.7f32, [2.0f32, -1.0], [0.1f32, 0.2]);
    let y: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| weight[i % 2] as f64 * (alpha as f64 * v as f64).tanh() + bias[i % 2] as f64)
        .collect();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let f64_bytes = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (xb, ab, wb, bb, yb) = (
        f32_bytes(&x),
        f32_bytes(&[alpha]),
        f32_bytes(&weight),
        f32_bytes(&bias),
        f64_bytes(&y),
    );
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let views = vec![
        ("x", TensorView::new(Dtype::F32, vec![2, 2], &xb).unwrap()),
        ("alpha", TensorView::new(Dtype::F32, vec![1], &ab).unwrap()),
        ("weight", TensorView::new(Dtype::F32, vec![2], &wb).unwrap()),
        ("bias", TensorView::new(Dtype::F32, vec![2], &bb).unwrap()),
        ("y", TensorView::new(Dtype::F64, vec![2, 2], &yb).unwrap()),
    ];
    let meta: BTreeMap<String, String> = [("op", "dyt"), ("channel_axis", "-1"), ("tol_y", "1e-6")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta.into_iter().collect())).unwrap();
    let path = std::env::temp_dir().join(format!("normlab-dyt-{}.safetensors", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let case = read_case(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(case.tensors["x"].shape, vec![2, 2]);
    let report = run_case(&case);
    assert!(report.passed(), "{report}");
    // tanh is within 3 ulp and |weight| ≤ 2: a few 1e-7 at most.
    assert!(report.checks[0].max_err.unwrap() < 8e-7);
}

/// What the runner refuses to guess: each of these is a malformed case,
/// and its line says why.
#[test]
fn unreadable_intent_is_a_malformed_case_that_says_why() {
    let malformed = |case: &Case, needle: &str| {
        let report = run_case(case);
        assert!(!report.passed(), "{report}");
        match &report.failure {
            Some(Failure::Malformed(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected a malformed case, got {other:?}"),
        }
        assert!(report.to_string().contains(needle), "{report}");
    };
    // An input float32 cannot hold would be rounded before the op sees it.
    let case = altered("009_ln_small.safetensors", |c| {
        c.tensors.get_mut("x").unwrap().data[2] = 0.1;
    });
    malformed(&case, "float32 cannot hold exactly");
    // A float64 input whose values float32 holds exactly is the same case.
    let case = altered("009_ln_small.safetensors", |c| {
        c.tensors.get_mut("x").unwrap().data[2] = 0.125;
        c.tensors.get_mut("y").unwrap().data[2] = f64::NAN;
    });
    let report = run_case(&case);
    assert!(report.failure.is_none(), "{report}");
    // A tolerance that is not a number is not the default tolerance.
    let case = altered("009_ln_small.safetensors", |c| set(c, "tol_y", "loose"));
    malformed(&case, "tol_y = \"loose\"");
    let case = altered("009_ln_small.safetensors", |c| set(c, "tol_dx", "-1e-6"));
    malformed(&case, "tol_dx");
    // A case that expects nothing cannot pass by producing anything.
    let case = altered("009_ln_small.safetensors", |c| {
        for name in ["y", "dx", "dweight", "dbias"] {
            c.tensors.remove(name);
        }
    });
    malformed(&case, "no expected tensor");
    let case = altered("034_err_bn_one_value.safetensors", |c| {
        set(c, "expect_error", "maybe")
    });
    malformed(&case, "expect_error = \"maybe\"");
}

#[test]
fn integer_tensors_are_read_errors_naming_the_tensor() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let x: Vec<u8> = [1i64, 2, 3, 4]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let views = vec![("x", TensorView::new(Dtype::I64, vec![2, 2], &x).unwrap())];
    let meta = [("op".to_string(), "layer_norm".to_string())]
        .into_iter()
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("int.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let err = read_case(&path).unwrap_err().to_string();
    assert!(err.contains("`x`") && err.contains("I64"), "{err}");
    let report = normlab::conform::run_file(&path);
    assert!(!report.passed());
    assert!(report.to_string().contains("I64"), "{report}");
}
