//! Floating-point formats as the adapters' dtypes name them, with the
//! constants PyTorch derives from them.

/// A floating-point format of a framework tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F64,
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// Machine epsilon, `torch.finfo(dtype).eps`: the gap between 1 and the
    /// next representable value. PyTorch's `RMSNorm` uses it when `eps` is
    /// `None`, taken from the input's dtype.
    pub fn machine_eps(self) -> f64 {
        match self {
            Precision::F64 => f64::EPSILON,
            Precision::F32 => f32::EPSILON as f64,
            // 7 explicit mantissa bits: 2^-7.
            Precision::Bf16 => 0.0078125,
            // 10 explicit mantissa bits: 2^-10.
            Precision::F16 => 9.765625e-4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_eps_is_the_gap_above_one() {
        assert_eq!(
            1.0f32 + Precision::F32.machine_eps() as f32,
            f32::from_bits(1.0f32.to_bits() + 1)
        );
        let one = half::bf16::ONE;
        assert_eq!(
            half::bf16::from_bits(one.to_bits() + 1).to_f64() - 1.0,
            Precision::Bf16.machine_eps()
        );
        let one = half::f16::ONE;
        assert_eq!(
            half::f16::from_bits(one.to_bits() + 1).to_f64() - 1.0,
            Precision::F16.machine_eps()
        );
    }
}
