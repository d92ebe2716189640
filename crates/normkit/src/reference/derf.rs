//! Twins of Derf and of the error function it is made of.
//!
//! The error function is written from its two textbook expansions, each
//! where it converges without cancellation (Abramowitz & Stegun 7.1.6 and
//! 7.1.14):
//!
//! ```text
//! erf(a)  = 2/√π · e^(-a²) · Σₙ 2ⁿ a^(2n+1) / (1·3·…·(2n+1))     all terms positive
//! erfc(a) = e^(-a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + 2/(a + …)))))
//! ```
//!
//! the series below `a = 2.5` and `erf = 1 - erfc` from the continued
//! fraction above it, so both parts stay within a few `f64` roundings of
//! the exact value (`1e-15` relative): far below the `f32` ulps the
//! kernels are measured in.

use super::{bias_at, check_len, check_params, weight_at, Dims};

/// `2/√π`.
const TWO_OVER_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;

/// The error function in `f64`.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let v = if a < 2.5 {
        erf_series(a)
    } else {
        1.0 - erfc_fraction(a)
    };
    v.copysign(x)
}

/// `erf'(u) = 2/√π · e^(-u²)`.
pub fn erf_slope(u: f64) -> f64 {
    TWO_OVER_SQRT_PI * (-u * u).exp()
}

fn erf_series(a: f64) -> f64 {
    let a2 = a * a;
    let (mut term, mut sum) = (a, a);
    let mut n = 0u32;
    while term > sum * 1e-18 {
        n += 1;
        term *= 2.0 * a2 / (2 * n + 1) as f64;
        sum += term;
    }
    TWO_OVER_SQRT_PI * (-a2).exp() * sum
}

/// `erfc(a)` for `a ≥ 2.5`, the fraction evaluated from its 200th level up
/// (more than enough: at `a = 2.5` it has converged to `f64` by level 60).
fn erfc_fraction(a: f64) -> f64 {
    let mut t = a;
    for k in (1..=200).rev() {
        t = a + (k as f64 / 2.0) / t;
    }
    (-a * a).exp() / (std::f64::consts::PI.sqrt() * t)
}

/// Dynamic erf: `y = weight · erf(alpha · x + shift) + bias`, per channel.
pub fn derf(
    x: &[f64],
    d: Dims,
    alpha: f64,
    shift: f64,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
) -> Vec<f64> {
    check_len("x", x.len(), d.numel());
    check_params(weight, bias, d.c);
    let mut y = vec![0.0; x.len()];
    for n in 0..d.n {
        for c in 0..d.c {
            for s in 0..d.s {
                let i = d.at(n, c, s);
                y[i] = weight_at(weight, c) * erf(alpha * x[i] + shift) + bias_at(bias, c);
            }
        }
    }
    y
}

/// Gradients of Derf's `sum(y · dy)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DerfGradients {
    pub dx: Vec<f64>,
    pub dalpha: f64,
    pub dshift: f64,
    pub dweight: Vec<f64>,
    pub dbias: Vec<f64>,
}

/// Backward of [`derf`], with `u = alpha · x + shift`.
pub fn derf_backward(
    dy: &[f64],
    x: &[f64],
    d: Dims,
    alpha: f64,
    shift: f64,
    weight: Option<&[f64]>,
) -> DerfGradients {
    check_len("x", x.len(), d.numel());
    check_len("dy", dy.len(), d.numel());
    check_params(weight, None, d.c);
    let mut out = DerfGradients {
        dx: vec![0.0; x.len()],
        dalpha: 0.0,
        dshift: 0.0,
        dweight: vec![0.0; d.c],
        dbias: vec![0.0; d.c],
    };
    for n in 0..d.n {
        for c in 0..d.c {
            for s in 0..d.s {
                let i = d.at(n, c, s);
                let u = alpha * x[i] + shift;
                let dt = dy[i] * weight_at(weight, c) * erf_slope(u);
                out.dx[i] = dt * alpha;
                out.dalpha += dt * x[i];
                out.dshift += dt;
                out.dweight[c] += dy[i] * erf(u);
                out.dbias[c] += dy[i];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_grad, loss, numeric_grad, Lcg};
    use super::*;
    use crate::ChannelAxis;

    #[test]
    fn erf_known_values() {
        // Values from mpmath's erf and erfc at 40 digits, rounded to 19.
        let cases = [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (2.4, 0.999_311_486_103_354_9),
            (2.6, 0.999_763_965_583_470_7),
            (3.0, 0.999_977_909_503_001_4),
        ];
        for (x, e) in cases {
            assert!((erf(x) - e).abs() <= 4e-16, "erf({x}) = {} vs {e}", erf(x));
            assert_eq!(erf(-x), -erf(x));
        }
        // erfc itself, where 1 - erf has no digits left.
        let erfc = [
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_035e-12),
        ];
        for (x, e) in erfc {
            let got = erfc_fraction(x);
            assert!((got - e).abs() <= 1e-14 * e, "erfc({x}) = {got} vs {e}");
        }
        // The two expansions agree where they meet.
        assert!((erf_series(2.5) - (1.0 - erfc_fraction(2.5))).abs() < 1e-15);
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(f64::NAN).is_nan());
        assert_eq!(erf(f64::INFINITY), 1.0);
    }

    #[test]
    fn erf_slope_is_the_derivative() {
        let xs: Vec<f64> = (0..40).map(|i| i as f64 * 0.1 - 2.0).collect();
        let analytic: Vec<f64> = xs.iter().map(|&x| erf_slope(x)).collect();
        let numeric: Vec<f64> = xs
            .iter()
            .map(|&x| numeric_grad(&[x], |v| erf(v[0]))[0])
            .collect();
        assert_grad("erf'", &analytic, &numeric);
    }

    #[test]
    fn derf_backward_matches_finite_differences() {
        let mut rng = Lcg(6);
        for axis in [ChannelAxis::First, ChannelAxis::Last] {
            let d = Dims::new(2, 3, 2, axis);
            let (x, dy, w, b) = (rng.vec(12), rng.vec(12), rng.vec(3), rng.vec(3));
            let (alpha, shift) = (0.8, -0.3);
            let grads = derf_backward(&dy, &x, d, alpha, shift, Some(&w));
            let y = |x: &[f64], a: f64, s: f64, w: &[f64], b: &[f64]| {
                derf(x, d, a, s, Some(w), Some(b))
            };
            let f = |x: &[f64]| loss(&y(x, alpha, shift, &w, &b), &dy);
            assert_grad("dx", &grads.dx, &numeric_grad(&x, f));
            let f = |w: &[f64]| loss(&y(&x, alpha, shift, w, &b), &dy);
            assert_grad("dweight", &grads.dweight, &numeric_grad(&w, f));
            let f = |b: &[f64]| loss(&y(&x, alpha, shift, &w, b), &dy);
            assert_grad("dbias", &grads.dbias, &numeric_grad(&b, f));
            let f = |a: &[f64]| loss(&y(&x, a[0], shift, &w, &b), &dy);
            assert_grad("dalpha", &[grads.dalpha], &numeric_grad(&[alpha], f));
            let f = |s: &[f64]| loss(&y(&x, alpha, s[0], &w, &b), &dy);
            assert_grad("dshift", &[grads.dshift], &numeric_grad(&[shift], f));
        }
    }
}
