//! Threads and instruction sets change speed, never results: outputs are
//! bitwise identical whatever the thread count and whatever the SIMD
//! level.

use crate::common::{wide, Rng};
use normkit::*;
use std::sync::Mutex;

/// Tests that touch process-wide state (the SIMD level) take turns so one
/// never changes the level under another.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Every output of every op on inputs large enough to be split into many
/// chunks (each above the single-thread threshold).
fn run_all(rng_seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(rng_seed);
    let mut out = Vec::new();
    let grads = |len: usize, c: usize| (vec![0.0f32; len], vec![0.0f32; c], vec![0.0f32; c]);

    // LayerNorm / RMSNorm / DyT on rows with a tail (1037 is not a multiple
    // of any vector width).
    let shape = [301, 1037];
    let n: usize = shape.iter().product();
    let x = rng.normals(n, 3.0, 2.0);
    let dy = rng.normals(n, 0.0, 1.0);
    let w = rng.normals(1037, 1.0, 0.3);
    let b = rng.normals(1037, 0.0, 0.3);
    let mut y = vec![0.0f32; n];
    let st = layer_norm_forward(&mut y, &x, &shape, &[1037], Affine::new(&w, &b), 1e-5).unwrap();
    let (mut dx, mut dw, mut db) = grads(n, 1037);
    let g = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    layer_norm_backward(g, &dy, &x, &shape, &[1037], Some(&w), &st).unwrap();
    out.extend([
        y.clone(),
        dx.clone(),
        dw.clone(),
        db.clone(),
        st.mean,
        st.rstd,
    ]);
    let st = rms_norm_forward(&mut y, &x, &shape, &[1037], Some(&w), 1e-6).unwrap();
    let g = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: None,
    };
    rms_norm_backward(g, &dy, &x, &shape, &[1037], Some(&w), &st).unwrap();
    out.extend([y.clone(), dx.clone(), dw.clone(), st.rstd]);
    dyt_forward(
        &mut y,
        &x,
        &shape,
        0.7,
        Affine::new(&w, &b),
        ChannelAxis::Last,
    )
    .unwrap();
    let g = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    let da = dyt_backward(g, &dy, &x, &shape, 0.7, Some(&w), ChannelAxis::Last).unwrap();
    out.extend([y.clone(), dx.clone(), dw.clone(), db.clone(), vec![da]]);

    // Long rows: chunks of several rows keep their parameter sums in f32,
    // and the merge runs over blocks of channels.
    let (x, dy, w) = long_rows_inputs(&mut rng);
    out.extend(long_rows_grads(&x, &dy, &w));

    // bf16 and f16, converted in registers: LayerNorm and DyT forward and
    // backward (rows with a tail).
    {
        let shape = [37, 301];
        let n = 37 * 301;
        let xs = rng.normals(n, 2.0, 3.0);
        let dys = rng.normals(n, 0.0, 1.0);
        let w = rng.normals(301, 1.0, 0.3);
        let b = rng.normals(301, 0.0, 0.3);
        fn half_run<E: Elem>(
            xs: &[f32],
            dys: &[f32],
            w: &[f32],
            b: &[f32],
            shape: [usize; 2],
        ) -> Vec<Vec<f32>> {
            let n = xs.len();
            let x: Vec<E> = xs.iter().map(|&v| E::from_f32(v)).collect();
            let dy: Vec<E> = dys.iter().map(|&v| E::from_f32(v)).collect();
            let mut y = vec![E::from_f32(0.0); n];
            let mut dx = vec![E::from_f32(0.0); n];
            let (mut dw, mut db) = (vec![0.0f32; shape[1]], vec![0.0f32; shape[1]]);
            let st = layer_norm_forward(&mut y, &x, &shape, &shape[1..], Affine::new(w, b), 1e-5)
                .unwrap();
            let g = Grads {
                dx: &mut dx,
                dweight: Some(&mut dw),
                dbias: Some(&mut db),
            };
            layer_norm_backward(g, &dy, &x, &shape, &shape[1..], Some(w), &st).unwrap();
            let wide = |v: &[E]| v.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
            let mut out = vec![
                wide(&y),
                wide(&dx),
                dw.clone(),
                db.clone(),
                st.mean,
                st.rstd,
            ];
            dyt_forward(
                &mut y,
                &x,
                &shape,
                0.8,
                Affine::new(w, b),
                ChannelAxis::Last,
            )
            .unwrap();
            let g = Grads {
                dx: &mut dx,
                dweight: Some(&mut dw),
                dbias: Some(&mut db),
            };
            let da = dyt_backward(g, &dy, &x, &shape, 0.8, Some(w), ChannelAxis::Last).unwrap();
            out.extend([wide(&y), wide(&dx), dw, db, vec![da]]);
            out
        }
        out.extend(half_run::<bf16>(&xs, &dys, &w, &b, shape));
        out.extend(half_run::<f16>(&xs, &dys, &w, &b, shape));
    }

    // BatchNorm, GroupNorm, InstanceNorm, DyT, channels first and last.
    for (shape, axis) in [
        ([6, 24, 37, 41], ChannelAxis::First),
        ([6, 37, 41, 24], ChannelAxis::Last),
    ] {
        let n: usize = shape.iter().product();
        let x = rng.normals(n, -1.0, 3.0);
        let dy = rng.normals(n, 0.0, 1.0);
        let w = rng.normals(24, 1.0, 0.3);
        let b = rng.normals(24, 0.0, 0.3);
        let mut y = vec![0.0f32; n];
        let (mut rm, mut rv) = (vec![0.0f32; 24], vec![1.0f32; 24]);
        let cfg = BatchNormConfig {
            channel_axis: axis,
            ..Default::default()
        };
        let running = RunningStats {
            mean: &mut rm,
            var: &mut rv,
        };
        let st =
            batch_norm_forward_train(&mut y, &x, &shape, Affine::new(&w, &b), Some(running), &cfg)
                .unwrap();
        let (mut dx, mut dw, mut db) = grads(n, 24);
        let g = Grads {
            dx: &mut dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        batch_norm_backward_train(g, &dy, &x, &shape, Some(&w), &st, &cfg).unwrap();
        out.extend([
            y.clone(),
            dx.clone(),
            dw.clone(),
            db.clone(),
            st.mean,
            st.rstd,
            rm.clone(),
            rv.clone(),
        ]);
        let st = batch_norm_forward_eval(&mut y, &x, &shape, Affine::new(&w, &b), &rm, &rv, &cfg)
            .unwrap();
        let g = Grads {
            dx: &mut dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        batch_norm_backward_eval(g, &dy, &x, &shape, Some(&w), &st, &cfg).unwrap();
        out.extend([y.clone(), dx.clone(), dw.clone(), db.clone()]);

        let gcfg = GroupNormConfig {
            num_groups: 6,
            eps: 1e-5,
            channel_axis: axis,
        };
        let st = group_norm_forward(&mut y, &x, &shape, Affine::new(&w, &b), &gcfg).unwrap();
        let g = Grads {
            dx: &mut dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        group_norm_backward(g, &dy, &x, &shape, Some(&w), &st, &gcfg).unwrap();
        out.extend([
            y.clone(),
            dx.clone(),
            dw.clone(),
            db.clone(),
            st.mean,
            st.rstd,
        ]);

        let icfg = InstanceNormConfig {
            channel_axis: axis,
            ..Default::default()
        };
        let st = instance_norm_forward_train(&mut y, &x, &shape, Affine::new(&w, &b), None, &icfg)
            .unwrap();
        let g = Grads {
            dx: &mut dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        instance_norm_backward_train(g, &dy, &x, &shape, Some(&w), &st, &icfg).unwrap();
        out.extend([y.clone(), dx.clone(), dw.clone(), db.clone()]);

        dyt_forward(&mut y, &x, &shape, 0.5, Affine::new(&w, &b), axis).unwrap();
        let g = Grads {
            dx: &mut dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        let da = dyt_backward(g, &dy, &x, &shape, 0.5, Some(&w), axis).unwrap();
        out.extend([y, dx, dw, db, vec![da]]);
    }
    out
}

/// Rows long enough that a chunk holds several of them (its parameter sums
/// would otherwise outweigh its data), with enough channels for the merge of
/// the chunks' sums to be split into blocks.
const LONG: (usize, usize) = (70, 9000);

fn long_rows_inputs(rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (rows, d) = LONG;
    let x = rng.normals(rows * d, 1.0, 2.0);
    let dy = rng.normals(rows * d, 0.0, 1.0);
    let w = rng.normals(d, 1.0, 0.3);
    (x, dy, w)
}

/// LayerNorm's backward on long rows (`dx`, `dweight`, `dbias`), then DyT's
/// (`dx`, `dweight`, `dbias`, `[dalpha]`).
fn long_rows_grads(x: &[f32], dy: &[f32], w: &[f32]) -> [Vec<f32>; 7] {
    let (rows, d) = LONG;
    let shape = [rows, d];
    let (mut dx, mut dw, mut db) = (vec![0.0f32; rows * d], vec![0.0f32; d], vec![0.0f32; d]);
    let mut y = vec![0.0f32; rows * d];
    let affine = Affine {
        weight: Some(w),
        bias: None,
    };
    let st = layer_norm_forward(&mut y, x, &shape, &[d], affine, 1e-5).unwrap();
    let g = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    layer_norm_backward(g, dy, x, &shape, &[d], Some(w), &st).unwrap();
    let ln = [dx.clone(), dw.clone(), db.clone()];
    let g = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    let da = dyt_backward(g, dy, x, &shape, 0.7, Some(w), ChannelAxis::Last).unwrap();
    let [ln_dx, ln_dw, ln_db] = ln;
    [ln_dx, ln_dw, ln_db, dx, dw, db, vec![da]]
}

/// `got` against the `f64` sums `expected`, each within `f32` accumulation
/// error of the sum of its terms' magnitudes `size`.
fn assert_sums_close(what: &str, got: &[f32], expected: &[f64], size: &[f64]) {
    for (ch, ((&g, &e), &m)) in got.iter().zip(expected).zip(size).enumerate() {
        let tol = 64.0 * f32::EPSILON as f64 * m;
        assert!(
            (g as f64 - e).abs() <= tol,
            "{what}[{ch}]: {g} vs {e} (tolerance {tol:e})"
        );
    }
}

/// The parameter sums of long rows, merged from several chunks on several
/// threads, are the sums over all rows.
#[test]
fn long_rows_merge_every_chunk_into_the_parameter_sums() {
    set_parallel_min(1 << 12);
    let (rows, d) = LONG;
    let (x, dy, w) = long_rows_inputs(&mut Rng::new(3));
    let (x64, dy64, w64) = (wide(&x), wide(&dy), wide(&w));
    let [_, ln_dw, ln_db, _, dyt_dw, dyt_db, _] = in_pool(3, || long_rows_grads(&x, &dy, &w));
    let exp = reference::layer_norm_backward(&dy64, &x64, rows, d, Some(&w64), 1e-5);
    let xhat = reference::layer_norm(&x64, rows, d, None, None, 1e-5).y;
    // The magnitudes of each sum's terms: Σ|dy·x̂| and Σ|dy|.
    let mut sum_dw = vec![0.0f64; d];
    let mut sum_db = vec![0.0f64; d];
    for r in 0..rows {
        for ch in 0..d {
            let k = r * d + ch;
            sum_dw[ch] += (dy64[k] * xhat[k]).abs();
            sum_db[ch] += dy64[k].abs();
        }
    }
    assert_sums_close("layer_norm dweight", &ln_dw, &exp.dweight, &sum_dw);
    assert_sums_close("layer_norm dbias", &ln_db, &exp.dbias, &sum_db);

    let dims = reference::Dims::new(rows, d, 1, ChannelAxis::Last);
    let exp = reference::dyt_backward(&dy64, &x64, dims, 0.7, Some(&w64));
    // |tanh| ≤ 1, so Σ|dy| bounds both sums' terms.
    assert_sums_close("dyt dweight", &dyt_dw, &exp.dweight, &sum_db);
    assert_sums_close("dyt dbias", &dyt_db, &exp.dbias, &sum_db);
}

pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|t| t.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn bitwise_identical_whatever_the_thread_count() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Every input here is split over several threads, whatever the
    // default threshold (results never depend on it).
    set_parallel_min(1 << 12);
    let one = bits(&in_pool(1, || run_all(7)));
    for threads in [2, 3, 5] {
        let many = bits(&in_pool(threads, || run_all(7)));
        assert_eq!(one.len(), many.len());
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            assert!(a == b, "output {i} differs between 1 and {threads} threads");
        }
    }
}

#[test]
fn every_simd_level_computes_the_same_bits() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let best = simd_level();
    let mut results = Vec::new();
    for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
        if set_simd_level(level) == level {
            results.push((level, run_all(11)));
        }
    }
    set_simd_level(best);
    assert!(!results.is_empty());
    let (first, base) = &results[0];
    for (level, other) in &results[1..] {
        for (i, (a, b)) in base.iter().zip(other).enumerate() {
            // Every level has the same 16 lanes, fuses the same
            // multiply-adds and reduces in the same order.
            assert!(
                bits(std::slice::from_ref(a)) == bits(std::slice::from_ref(b)),
                "output {i}: {first:?} and {level:?} differ"
            );
        }
    }
}

/// `run_all` gives the same result on 1, 2 and 3 threads and at every
/// instruction set this CPU has: for the ops' own test areas, which take
/// their turn with the tests above.
pub fn same_bits_everywhere<R: PartialEq + Send>(run_all: fn() -> R) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let one = in_pool(1, run_all);
    for threads in [2, 3] {
        assert!(
            in_pool(threads, run_all) == one,
            "1 and {threads} threads differ"
        );
    }
    let best = simd_level();
    for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
        if set_simd_level(level) == level {
            let other = run_all();
            set_simd_level(best);
            assert!(other == one, "{level:?} differs from {best:?}");
        }
    }
    set_simd_level(best);
}
