//! Sums of the statistics sweeps over a contiguous run.

use super::drivers::{reduce, Sums};
use super::io::{load, load_part};
use crate::elem::Elem;
use crate::simd::{Isa, LANES};

const L: usize = LANES;

/// `[Σd, Σd²]` with `d = x - shift`: the one sweep of the statistics (see
/// [`crate::moments`]).
#[inline(always)]
pub(crate) fn shifted_sums<S: Isa, T: Elem>(s: S, x: &[T], shift: f32) -> [f64; 2] {
    struct F<'a, S: Isa, T> {
        x: &'a [T],
        k: S::V,
    }
    impl<S: Isa, T: Elem> Sums<S, 2> for F<'_, S, T> {
        #[inline(always)]
        fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 2]) {
            let d = s.sub(load(s, self.x, i), self.k);
            acc[0] = s.add(acc[0], d);
            acc[1] = s.fma(d, d, acc[1]);
        }
        #[inline(always)]
        fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 2]) {
            let d = s.keep_first(s.sub(load_part(s, self.x, i, n), self.k), n);
            acc[0] = s.add(acc[0], d);
            acc[1] = s.fma(d, d, acc[1]);
        }
    }
    reduce(
        s,
        x.len(),
        &mut F {
            x,
            k: s.splat(shift),
        },
    )
}

/// `max|x|`, NaN skipped (the fallback's scale).
#[inline(always)]
pub(crate) fn max_abs<S: Isa, T: Elem>(s: S, x: &[T]) -> f32 {
    let (mut a, mut b) = (s.splat(0.0), s.splat(0.0));
    let n = x.len();
    let mut i = 0;
    while i + 2 * L <= n {
        a = s.max(s.abs(load(s, x, i)), a);
        b = s.max(s.abs(load(s, x, i + L)), b);
        i += 2 * L;
    }
    while i < n {
        let m = (n - i).min(L);
        a = s.max(s.abs(load_part(s, x, i, m)), a);
        i += m;
    }
    s.max_lane(s.max(a, b))
}

/// The mean of the first `min(16, x.len())` values, in `f64`.
#[inline(always)]
pub(crate) fn head_mean<S: Isa, T: Elem>(s: S, x: &[T]) -> f64 {
    let n = x.len().min(L);
    let v = if n == L {
        load(s, x, 0)
    } else {
        load_part(s, x, 0, n)
    };
    s.sum_f64(v) / n.max(1) as f64
}

/// `[Σd, Σd²]` with `d = x · scale - shift` (the two-pass fallback's
/// second sweep, on data in cache).
#[inline(always)]
pub(crate) fn dev_sums<S: Isa, T: Elem>(s: S, x: &[T], scale: f32, shift: f32) -> [f64; 2] {
    struct F<'a, S: Isa, T> {
        x: &'a [T],
        scale: S::V,
        shift: S::V,
    }
    impl<S: Isa, T: Elem> F<'_, S, T> {
        #[inline(always)]
        fn acc(&self, s: S, d: S::V, acc: &mut [S::V; 2]) {
            acc[0] = s.add(acc[0], d);
            acc[1] = s.fma(d, d, acc[1]);
        }
    }
    impl<S: Isa, T: Elem> Sums<S, 2> for F<'_, S, T> {
        #[inline(always)]
        fn add(&mut self, s: S, i: usize, acc: &mut [S::V; 2]) {
            let v = load(s, self.x, i);
            let d = s.sub(s.mul(v, self.scale), self.shift);
            self.acc(s, d, acc);
        }
        #[inline(always)]
        fn add_part(&mut self, s: S, i: usize, n: usize, acc: &mut [S::V; 2]) {
            let v = load_part(s, self.x, i, n);
            let d = s.keep_first(s.sub(s.mul(v, self.scale), self.shift), n);
            self.acc(s, d, acc);
        }
    }
    let mut f = F {
        x,
        scale: s.splat(scale),
        shift: s.splat(shift),
    };
    reduce(s, x.len(), &mut f)
}
