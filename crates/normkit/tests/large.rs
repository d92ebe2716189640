//! Outputs large enough to be written with streaming stores (8 MiB of
//! `f32`, 20 MiB of 2-byte values; every case here is above both), at every
//! alignment: the values never depend on how they are
//! stored, where the buffers lie, or which loop schedule (alone, or skewed
//! with the next group) computed them.

use crate::common::Rng;
use normkit::*;

/// Rows of 1024 `f32`: 5200 rows make a 21.3 MB output.
const ROWS: usize = 5200;
const D: usize = 1024;

/// `len` zeros in a buffer that starts `offset` values past a fresh
/// allocation, so that each offset gives another alignment.
fn shifted<T: Elem>(len: usize, offset: usize) -> (Vec<T>, usize) {
    (vec![T::default(); len + offset], offset)
}

fn bits<T: Elem>(v: &[T]) -> Vec<u32> {
    v.iter().map(|e| e.to_f32().to_bits()).collect()
}

/// LayerNorm forward and backward over `[ROWS, D]` at output offsets 0–3;
/// every offset gives the same bits, and so do the first rows computed in
/// a call of their own (too small to stream, and in batches of groups
/// rather than skewed).
fn layer_norm_case<T: Elem>(rows: usize) {
    let mut rng = Rng::new(41);
    let n = rows * D;
    let xs = rng.normals(n, 5.0, 2.0);
    let dys = rng.normals(n, 0.0, 1.0);
    let x: Vec<T> = xs.iter().map(|&v| T::from_f32(v)).collect();
    let dy: Vec<T> = dys.iter().map(|&v| T::from_f32(v)).collect();
    let w = rng.normals(D, 1.0, 0.2);
    let b = rng.normals(D, 0.0, 0.2);
    let shape = [rows, D];
    let mut first: Option<(Vec<u32>, Vec<u32>, Vec<u32>)> = None;
    for offset in 0..4 {
        let (mut ybuf, o) = shifted::<T>(n, offset);
        let y = &mut ybuf[o..];
        let st = layer_norm_forward(y, &x, &shape, &[D], Affine::new(&w, &b), 1e-5).unwrap();
        let (mut dxbuf, o) = shifted::<T>(n, offset);
        let dx = &mut dxbuf[o..];
        let (mut dw, mut db) = (vec![0.0f32; D], vec![0.0f32; D]);
        let g = Grads {
            dx: &mut *dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        layer_norm_backward(g, &dy, &x, &shape, &[D], Some(&w), &st).unwrap();
        let got = (bits(y), bits(dx), bits(&dw));
        match &first {
            None => first = Some(got),
            Some(f) => assert!(
                *f == got,
                "{} output offset {offset} changed the result",
                T::NAME
            ),
        }
    }
    // The first 3 rows alone: the same values (rows are independent).
    let (y_all, dx_all, _) = first.unwrap();
    let small = [3, D];
    let mut y = vec![T::default(); 3 * D];
    let st =
        layer_norm_forward(&mut y, &x[..3 * D], &small, &[D], Affine::new(&w, &b), 1e-5).unwrap();
    let mut dx = vec![T::default(); 3 * D];
    layer_norm_backward(
        Grads::dx(&mut dx),
        &dy[..3 * D],
        &x[..3 * D],
        &small,
        &[D],
        Some(&w),
        &st,
    )
    .unwrap();
    assert!(
        bits(&y) == y_all[..3 * D],
        "{}: streamed rows differ from a small call",
        T::NAME
    );
    assert!(
        bits(&dx) == dx_all[..3 * D],
        "{}: streamed dx rows differ",
        T::NAME
    );
    // And close to the f64 reference.
    let x64: Vec<f64> = x[..3 * D].iter().map(|e| e.to_f64()).collect();
    let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    let r = reference::layer_norm(&x64, 3, D, Some(&w64), Some(&b64), 1e-5);
    let tol = if T::NAME == "f32" { 1e-5 } else { 1e-2 };
    for (i, (got, want)) in y.iter().zip(&r.y).enumerate() {
        let err = (got.to_f64() - want).abs();
        assert!(
            err <= tol * want.abs().max(1.0),
            "{} y[{i}]: {} vs {want}",
            T::NAME,
            got.to_f32()
        );
    }
}

#[test]
fn layer_norm_f32_streams_the_same_values() {
    layer_norm_case::<f32>(ROWS);
}

#[test]
fn layer_norm_bf16_streams_the_same_values() {
    // Twice the rows: the same output bytes in 2-byte values.
    layer_norm_case::<bf16>(2 * ROWS);
}

/// BatchNorm on `[8, 64, 104, 100]` NCHW (21.3 MB out): runs of one
/// channel, skewed across channels; the output offset changes nothing.
#[test]
fn batch_norm_nchw_streams_the_same_values() {
    let mut rng = Rng::new(43);
    let shape = [8, 64, 104, 100];
    let n: usize = shape.iter().product();
    let x = rng.normals(n, -3.0, 2.0);
    let dy = rng.normals(n, 0.0, 1.0);
    let w = rng.normals(64, 1.0, 0.2);
    let b = rng.normals(64, 0.0, 0.2);
    let cfg = BatchNormConfig::default();
    let mut first = None;
    for offset in [0, 1, 5] {
        let (mut ybuf, o) = shifted::<f32>(n, offset);
        let y = &mut ybuf[o..];
        let st = batch_norm_forward_train(y, &x, &shape, Affine::new(&w, &b), None, &cfg).unwrap();
        let (mut dxbuf, o) = shifted::<f32>(n, offset);
        let dx = &mut dxbuf[o..];
        let (mut dw, mut db) = (vec![0.0f32; 64], vec![0.0f32; 64]);
        let g = Grads {
            dx: &mut *dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        batch_norm_backward_train(g, &dy, &x, &shape, Some(&w), &st, &cfg).unwrap();
        let got = (bits(y), bits(dx), bits(&dw), bits(&db), bits(&st.rstd));
        match &first {
            None => first = Some(got),
            Some(f) => assert!(*f == got, "output offset {offset} changed the result"),
        }
    }
    // Normalized per channel: mean 0 and variance 1 before the affine map.
    let (y, ..) = first.unwrap();
    let y: Vec<f32> = y.into_iter().map(f32::from_bits).collect();
    for ch in [0, 17, 63] {
        let vals: Vec<f64> = (0..8)
            .flat_map(|s| {
                let start = (s * 64 + ch) * 10_400;
                y[start..start + 10_400].iter().map(|&v| v as f64)
            })
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let v = vals.iter().map(|&t| (t - m).powi(2)).sum::<f64>() / vals.len() as f64;
        let (wc, bc) = (w[ch] as f64, b[ch] as f64);
        assert!((m - bc).abs() < 1e-4, "channel {ch}: mean {m} vs {bc}");
        assert!(
            (v.sqrt() - wc.abs()).abs() < 1e-4,
            "channel {ch}: std {} vs {wc}",
            v.sqrt()
        );
    }
}

/// DyT over channels-last rows (one flat loop per chunk): streamed and
/// small calls agree bit for bit.
#[test]
fn dyt_streams_the_same_values() {
    let mut rng = Rng::new(47);
    let n = ROWS * D;
    let x = rng.normals(n, 0.0, 3.0);
    let w = rng.normals(D, 1.0, 0.2);
    let b = rng.normals(D, 0.0, 0.2);
    let shape = [ROWS, D];
    let mut first = None;
    for offset in [0, 3] {
        let (mut ybuf, o) = shifted::<f32>(n, offset);
        let y = &mut ybuf[o..];
        dyt_forward(y, &x, &shape, 0.7, Affine::new(&w, &b), ChannelAxis::Last).unwrap();
        let got = bits(y);
        match &first {
            None => first = Some(got),
            Some(f) => assert!(*f == got, "output offset {offset} changed the result"),
        }
    }
    let mut y = vec![0.0f32; 2 * D];
    dyt_forward(
        &mut y,
        &x[..2 * D],
        &[2, D],
        0.7,
        Affine::new(&w, &b),
        ChannelAxis::Last,
    )
    .unwrap();
    assert!(bits(&y) == first.unwrap()[..2 * D]);
}
