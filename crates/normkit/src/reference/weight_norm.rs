//! WeightNorm's twin: the weight `g · v / ||v||` and its backward.

use super::check_len;

/// `shape` as `(outer, kept, inner)` around dimension `dim` (negative counts
/// from the end), or `(1, 1, numel)` for `None`: one norm for everything.
fn around_dim(shape: &[usize], dim: Option<isize>) -> (usize, usize, usize) {
    let total: usize = shape.iter().product();
    let Some(dim) = dim else {
        return (1, 1, total);
    };
    let rank = shape.len() as isize;
    let k = if dim < 0 { dim + rank } else { dim };
    assert!(
        (0..rank).contains(&k),
        "dim {dim} out of range for rank {rank}"
    );
    let k = k as usize;
    (
        shape[..k].iter().product(),
        shape[k],
        shape[k + 1..].iter().product(),
    )
}

/// WeightNorm: `w = g · v / ‖v‖`, one Euclidean norm per index along `dim`
/// over all the other dimensions (or one over everything for `None`).
/// Returns `(w, norms)`.
pub fn weight_norm(
    v: &[f64],
    shape: &[usize],
    g: &[f64],
    dim: Option<isize>,
) -> (Vec<f64>, Vec<f64>) {
    let (outer, kept, inner) = around_dim(shape, dim);
    check_len("v", v.len(), outer * kept * inner);
    check_len("g", g.len(), kept);
    let mut w = vec![0.0; v.len()];
    let mut norms = Vec::new();
    for j in 0..kept {
        let mut sq = 0.0;
        for o in 0..outer {
            for i in 0..inner {
                let e = v[(o * kept + j) * inner + i];
                sq += e * e;
            }
        }
        let norm = sq.sqrt();
        for o in 0..outer {
            for i in 0..inner {
                let at = (o * kept + j) * inner + i;
                w[at] = g[j] * v[at] / norm;
            }
        }
        norms.push(norm);
    }
    (w, norms)
}

/// Backward of [`weight_norm`], differentiating `w_i = g · v_i / N` with
/// `N = sqrt(Σ v²)` directly:
/// `dv_i = g / N · dw_i - g · v_i / N³ · Σ dw · v` and `dg = Σ dw · v / N`.
/// Returns `(dv, dg)`.
pub fn weight_norm_backward(
    dw: &[f64],
    v: &[f64],
    shape: &[usize],
    g: &[f64],
    dim: Option<isize>,
) -> (Vec<f64>, Vec<f64>) {
    let (outer, kept, inner) = around_dim(shape, dim);
    check_len("v", v.len(), outer * kept * inner);
    check_len("dw", dw.len(), outer * kept * inner);
    check_len("g", g.len(), kept);
    let mut dv = vec![0.0; v.len()];
    let mut dg = Vec::new();
    for (j, &gj) in g.iter().enumerate() {
        let (mut sq, mut dot) = (0.0, 0.0);
        for o in 0..outer {
            for i in 0..inner {
                let at = (o * kept + j) * inner + i;
                sq += v[at] * v[at];
                dot += dw[at] * v[at];
            }
        }
        let norm = sq.sqrt();
        for o in 0..outer {
            for i in 0..inner {
                let at = (o * kept + j) * inner + i;
                dv[at] = gj / norm * dw[at] - gj * v[at] / (norm * norm * norm) * dot;
            }
        }
        dg.push(dot / norm);
    }
    (dv, dg)
}
