//! Deterministic inputs: the same values on every run and every machine.

use super::shapes::Case;

/// SplitMix64 (Steele, Lea & Flood, 2014): a tiny generator with good
/// statistical quality, enough for benchmark inputs.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 24 bits.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn fill(&mut self, len: usize, f: impl Fn(f32) -> f32) -> Vec<f32> {
        (0..len).map(|_| f(self.unit())).collect()
    }
}

/// Every tensor a case needs, in `f32`; each implementation converts them
/// to its own types before timing.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Centered near 0.5 with spread about 1, like an activation.
    pub x: Vec<f32>,
    /// Upstream gradient, uniform in `[-0.5, 0.5)`.
    pub dy: Vec<f32>,
    /// Near 1.
    pub weight: Vec<f32>,
    /// Near 0.
    pub bias: Vec<f32>,
    pub running_mean: Vec<f32>,
    /// Positive.
    pub running_var: Vec<f32>,
    /// DyT's and Derf's scale; DyT's paper's initial value.
    pub alpha: f32,
    /// Derf's shift (its paper starts it at 0; a non-zero one exercises
    /// the term).
    pub shift: f32,
    /// The residual-add norms' second input, like `x`; empty for other
    /// ops.
    pub residual: Vec<f32>,
    /// The gradient of their `sum` output, like `dy`; empty for other ops.
    pub dsum: Vec<f32>,
}

impl Inputs {
    pub fn new(case: &Case) -> Inputs {
        let e = case.extents();
        // One stream per case, so a case's inputs do not depend on which
        // other cases run.
        let seed = e.numel as u64 ^ ((case.op as u64) << 56) ^ ((case.layout as u64) << 60);
        let mut rng = SplitMix64::new(seed);
        let activation = |rng: &mut SplitMix64| 0.5 + (rng.unit() + rng.unit() - 1.0) * 1.5;
        let x = (0..e.numel).map(|_| activation(&mut rng)).collect();
        let mut inputs = Inputs {
            x,
            dy: rng.fill(e.numel, |u| u - 0.5),
            weight: rng.fill(e.c, |u| 0.75 + 0.5 * u),
            bias: rng.fill(e.c, |u| 0.2 * (u - 0.5)),
            running_mean: rng.fill(e.c, |u| 0.2 * (u - 0.5)),
            running_var: rng.fill(e.c, |u| 0.5 + u),
            alpha: 0.5,
            shift: 0.1,
            residual: Vec::new(),
            dsum: Vec::new(),
        };
        // Drawn last, so the other ops' inputs stay as they were.
        if case.op.is_residual() {
            inputs.residual = (0..e.numel).map(|_| activation(&mut rng)).collect();
            inputs.dsum = rng.fill(e.numel, |u| u - 0.5);
        }
        inputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::shapes::{Layout, Op};

    #[test]
    fn same_case_same_inputs() {
        let case = Case::new(Op::LayerNorm, &[3, 5], Layout::Rows);
        let (a, b) = (Inputs::new(&case), Inputs::new(&case));
        assert_eq!(a.x, b.x);
        assert_eq!(a.dy, b.dy);
        assert_eq!((a.x.len(), a.weight.len()), (15, 5));
    }

    #[test]
    fn unit_is_in_range_and_varies() {
        let mut rng = SplitMix64::new(7);
        let v: Vec<f32> = (0..1000).map(|_| rng.unit()).collect();
        assert!(v.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = v.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
    }
}
