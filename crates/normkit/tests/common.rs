//! Deterministic random inputs and error measures shared by the test areas.

use normkit::op::{NormOp, OpGrads};
use normkit::Elem;

/// SplitMix64 (Steele, Lea & Flood, 2014): a tiny seeded generator, so
/// every failure reproduces from its case number.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.between(0, items.len() - 1)]
    }

    /// Standard normal, by Box–Muller.
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // in (0, 1]: ln stays finite
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// `len` values `mean + std · N(0, 1)`, rounded to f32.
    pub fn normals(&mut self, len: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..len)
            .map(|_| (mean + std * self.normal()) as f32)
            .collect()
    }

    /// `len` values uniform in `[lo, hi)`, rounded to f32.
    pub fn uniforms(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi) as f32).collect()
    }

    /// Half the time `None`, else `len` values uniform in `[-2, 2)`.
    pub fn maybe_param(&mut self, len: usize) -> Option<Vec<f32>> {
        self.chance(0.5).then(|| self.uniforms(len, -2.0, 2.0))
    }
}

/// Rounds f32 values to the element type.
pub fn cast<T: Elem>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// Widens to f64, exactly.
pub fn wide<T: Elem>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

pub fn wide_opt(v: &Option<Vec<f32>>) -> Option<Vec<f64>> {
    v.as_ref().map(|v| wide(v))
}

pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `max |got - expected|`; NaN when any difference is NaN.
pub fn max_abs_err(got: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(got.len(), expected.len());
    got.iter().zip(expected).fold(0.0, |m: f64, (g, e)| {
        let d = (g - e).abs();
        if d.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(d)
        }
    })
}

pub fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.abs()).collect()
}

/// Largest magnitude of an optional parameter; a missing weight acts as 1,
/// a missing bias as 0, which `missing` says.
pub fn param_max(v: &Option<Vec<f64>>, missing: f64) -> f64 {
    v.as_ref().map_or(missing, |v| max_abs(v))
}

/// The error of rounding a value to a storage type: at most `unit · |v|`
/// for normal values, and half the subnormal spacing, `unit · min_normal`,
/// below the normal range.
#[derive(Clone, Copy)]
pub struct Rounding {
    pub unit: f64,
    pub min_normal: f64,
}

impl Rounding {
    /// No final rounding beyond what the f32 tolerances already cover.
    pub const NONE: Rounding = Rounding {
        unit: 0.0,
        min_normal: 0.0,
    };

    pub fn bound(self, v: f64) -> f64 {
        self.unit * v.abs().max(self.min_normal)
    }
}

/// The final rounding of a kernel's output to `T`: none extra for f32, whose
/// rounding the absolute tolerances cover; unit roundoff 2⁻⁸ for bf16 (8
/// significant bits, f32's exponent range) and 2⁻¹¹ for f16 (11 bits,
/// smallest normal 2⁻¹⁴).
pub fn rounding<T: Elem>() -> Rounding {
    match T::NAME {
        "f32" => Rounding::NONE,
        "bf16" => Rounding {
            unit: 2f64.powi(-8),
            min_normal: f32::MIN_POSITIVE as f64,
        },
        "f16" => Rounding {
            unit: 2f64.powi(-11),
            min_normal: 2f64.powi(-14),
        },
        other => panic!("no rounding known for {other}"),
    }
}

/// The magnitude an error is measured against: one for the whole vector or
/// one per element.
#[derive(Clone, Copy)]
pub enum Scale<'a> {
    All(f64),
    Each(&'a [f64]),
}

/// Asserts `|got[i] - expected[i]| ≤ tol · scale[i] + round.bound(expected[i])`
/// for every `i`: a computation error of at most `tol` relative to the size
/// of the operands, plus one final rounding to a storage type. NaN anywhere in `got` where `expected` is finite fails.
pub fn assert_close(
    what: &str,
    got: &[f64],
    expected: &[f64],
    scale: Scale<'_>,
    tol: f64,
    round: Rounding,
) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let s = match scale {
            Scale::All(s) => s,
            Scale::Each(s) => s[i],
        };
        let bound = tol * s + round.bound(*e);
        assert!(
            (g - e).abs() <= bound,
            "{what}[{i}]: got {g}, expected {e}, error {:e} > bound {bound:e} (scale {s:e})",
            (g - e).abs()
        );
    }
}

/// Forward and backward of `op` on `x` with packed `p`: `(y, dx, dparams)`.
pub fn through<O: NormOp>(
    op: &O,
    x: &[f32],
    dy: &[f32],
    shape: &[usize],
    p: &[f32],
) -> [Vec<f32>; 3] {
    let mut y = vec![f32::NAN; x.len()];
    let saved = op.forward(&mut y, x, shape, p, None).unwrap();
    let (mut dx, mut dp) = (vec![f32::NAN; x.len()], vec![f32::NAN; p.len()]);
    let grads = OpGrads {
        dx: &mut dx,
        dparams: Some(&mut dp),
    };
    op.backward(grads, dy, x, shape, p, &saved).unwrap();
    [y, dx, dp]
}
