//! Elementwise passes whose coefficients are per (sample, channel): the
//! small final steps of the ops built from several statistics (AdaIN's
//! style gradient, Switchable Normalization's backward).

use crate::elem::Elem;
use crate::layout::{ChannelAxis, Geometry};

/// `out = a + b · (v - mean) + c · w` for one (sample, channel), in `f64`:
/// a large mean costs no digits, and `v - mean` cannot overflow for values
/// near `f32::MAX`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstanceCoef {
    a: f64,
    b: f64,
    c: f64,
    mean: f64,
}

impl InstanceCoef {
    pub(crate) fn new(mean: f64, a: f64, b: f64, c: f64) -> Self {
        InstanceCoef { a, b, c, mean }
    }

    #[inline(always)]
    fn centered(&self, v: f64) -> f64 {
        v - self.mean
    }
}

/// Calls `f(instance, flat index)` for every value of `g`, in memory order.
#[inline(always)]
fn walk(g: &Geometry, mut f: impl FnMut(usize, usize)) {
    let (c, s) = (g.c, g.s);
    match g.axis {
        ChannelAxis::First => {
            for k in 0..g.n * c {
                for i in k * s..(k + 1) * s {
                    f(k, i);
                }
            }
        }
        ChannelAxis::Last => {
            for r in 0..g.n * s {
                let k0 = (r / s.max(1)) * c;
                for ch in 0..c {
                    f(k0 + ch, r * c + ch);
                }
            }
        }
    }
}

/// `out[i] = a + b · (v[i] - mean) + c · w[i]` with the coefficients of the
/// (sample, channel) that value `i` belongs to (`w` absent: `c` unused).
pub(crate) fn apply_per_instance<T: Elem>(
    out: &mut [T],
    v: &[T],
    w: Option<&[T]>,
    g: &Geometry,
    coefs: &[InstanceCoef],
) {
    walk(g, |k, i| {
        let co = &coefs[k];
        let mut o = co.a + co.b * co.centered(v[i].to_f64());
        if let Some(w) = w {
            o += co.c * w[i].to_f64();
        }
        out[i] = T::from_f64(o);
    });
}

/// Per (sample, channel): `[Σ w, Σ w · b · (v - mean)]` (the `a` and `c`
/// coefficients are unused).
pub(crate) fn sums_per_instance<T: Elem>(
    w: &[T],
    v: &[T],
    g: &Geometry,
    coefs: &[InstanceCoef],
) -> Vec<[f64; 2]> {
    let mut out = vec![[0.0f64; 2]; coefs.len()];
    walk(g, |k, i| {
        let co = &coefs[k];
        let wi = w[i].to_f64();
        out[k][0] += wi;
        out[k][1] += wi * co.b * co.centered(v[i].to_f64());
    });
    out
}
