//! The seeded generator of the fuzz cases: constructor arguments, dims,
//! dtypes and tensors in random layouts.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use normkit_candle::ChannelAxis;

/// Largest number of values of a generated input.
pub const MAX_VALUES: usize = 2_048;

pub const CPU: Device = Device::Cpu;

/// SplitMix64, seeded per case.
pub struct Gen(pub u64);

impl Gen {
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }

    /// An extent of an input: mostly small, sometimes zero.
    pub fn extent(&mut self) -> usize {
        match self.below(10) {
            0 => 0,
            1 => 1,
            2..=7 => 2 + self.below(3),
            _ => 5 + self.below(6),
        }
    }

    /// A count of features for a constructor: `allocates` says whether the
    /// layer allocates a tensor of that many values (huge counts only
    /// where it does not: allocation failure is the allocator's abort).
    pub fn features(&mut self, allocates: bool) -> usize {
        if !allocates && self.chance(0.15) {
            return self.pick(&[1 << 20, 1 << 40, usize::MAX / 2, usize::MAX]);
        }
        match self.below(8) {
            0 => 0,
            1 => 1,
            _ => 2 + self.below(5),
        }
    }

    pub fn eps(&mut self) -> f64 {
        if self.chance(0.8) {
            return self.pick(&[1e-5, 1e-6, 1e-3]);
        }
        self.pick(&[0.0, -1.0, 1e-30, 1e30, f64::MAX, f64::NAN, f64::INFINITY])
    }

    pub fn momentum(&mut self) -> Option<f64> {
        if self.chance(0.5) {
            return Some(0.1);
        }
        self.pick(&[
            None,
            Some(0.0),
            Some(1.0),
            Some(-0.5),
            Some(2.0),
            Some(f64::NAN),
        ])
    }

    pub fn axis(&mut self) -> ChannelAxis {
        if self.chance(0.5) {
            ChannelAxis::First
        } else {
            ChannelAxis::Last
        }
    }

    /// An input's dtype: mostly those with kernels.
    pub fn dtype(&mut self) -> DType {
        if self.chance(0.8) {
            return self.pick(&[DType::F32, DType::F32, DType::BF16, DType::F16]);
        }
        self.pick(&[DType::F64, DType::U8, DType::I64, DType::U32])
    }

    /// A parameter's dtype: any float, sometimes an integer.
    pub fn param_dtype(&mut self) -> DType {
        if self.chance(0.8) {
            return DType::F32;
        }
        self.pick(&[DType::BF16, DType::F16, DType::F64, DType::U8, DType::I64])
    }

    /// Dims of rank `rank`, at most [`MAX_VALUES`] values; now and then a
    /// huge extent beside a zero one (no values, an overflowing count of
    /// rows for a careless kernel).
    pub fn dims(&mut self, rank: usize) -> Vec<usize> {
        let mut dims: Vec<usize> = (0..rank).map(|_| self.extent()).collect();
        while dims.iter().product::<usize>() > MAX_VALUES {
            let i = self.below(rank);
            dims[i] = (dims[i] / 2).max(1);
        }
        if rank >= 2 && self.chance(0.04) {
            let (i, j) = (self.below(rank), self.below(rank));
            if i != j {
                dims[i] = 0;
                dims[j] = self.pick(&[1 << 20, 1 << 40]);
            }
        }
        dims
    }

    /// Dims of a random rank below `n`.
    pub fn dims_below(&mut self, n: usize) -> Vec<usize> {
        let rank = self.below(n);
        self.dims(rank)
    }

    pub fn rank(&mut self) -> usize {
        self.pick(&[0, 1, 2, 2, 3, 3, 3, 4, 4, 5])
    }

    /// Values of an input: ordinary, or with specials mixed in.
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        let special = self.chance(0.1);
        (0..n)
            .map(|_| {
                if special && self.chance(0.2) {
                    self.pick(&[f32::NAN, f32::INFINITY, -f32::INFINITY, 3e38, 0.0])
                } else {
                    (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                }
            })
            .collect()
    }

    /// A tensor of `dims` (and, when `grad` and its dtype allow, the
    /// variable it is a view of), of a random dtype and layout: contiguous,
    /// transposed, narrowed or broadcast.
    pub fn input_of(&mut self, dims: &[usize], dtype: DType, grad: bool) -> (Tensor, Option<Var>) {
        let rank = dims.len();
        let layout = if rank == 0 { 0 } else { self.below(5) };
        let mut base = dims.to_vec();
        let (mut a, mut b) = (0, 0);
        match layout {
            1 if rank >= 2 => {
                a = self.below(rank);
                b = self.below(rank);
                base.swap(a, b);
            }
            2 => {
                a = self.below(rank);
                b = 1 + self.below(3);
                base[a] += b;
            }
            3 => {
                a = self.below(rank);
                base[a] = 1;
            }
            _ => {}
        }
        // Widening a zero extent beside a huge one would allocate it all.
        let n = base.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let n = match n {
            Some(n) if n <= 4 * MAX_VALUES => n,
            _ => return self.input_of_contiguous(dims, dtype, grad),
        };
        let t = Tensor::from_vec(self.values(n), base.as_slice(), &CPU)
            .and_then(|t| t.to_dtype(dtype))
            .expect("a tensor of at most a few thousand values");
        let var = (grad && dtype.is_float()).then(|| Var::from_tensor(&t).unwrap());
        let t = var.as_ref().map_or(t, |v| v.as_tensor().clone());
        let view = match layout {
            1 if rank >= 2 => t.transpose(a, b),
            2 => t.narrow(a, self.below(b + 1), dims[a]),
            3 => t.broadcast_as(dims),
            _ => Ok(t),
        }
        .expect("a view within bounds");
        assert_eq!(view.dims(), dims);
        (view, var)
    }

    fn input_of_contiguous(
        &mut self,
        dims: &[usize],
        dtype: DType,
        grad: bool,
    ) -> (Tensor, Option<Var>) {
        let n = dims.iter().product();
        let t = Tensor::from_vec(self.values(n), dims, &CPU)
            .and_then(|t| t.to_dtype(dtype))
            .expect("a tensor of no values");
        let var = (grad && dtype.is_float()).then(|| Var::from_tensor(&t).unwrap());
        let t = var.as_ref().map_or(t, |v| v.as_tensor().clone());
        (t, var)
    }

    pub fn input(&mut self, dims: &[usize]) -> (Tensor, Option<Var>) {
        let dtype = self.dtype();
        let grad = self.chance(0.6);
        self.input_of(dims, dtype, grad)
    }

    /// A parameter-like tensor: `len` values, or a wrong count now and then.
    pub fn param(&mut self, len: usize) -> Tensor {
        // A huge count (of an input with no values) would be allocated.
        let len = len.min(MAX_VALUES + 1);
        let len = if self.chance(0.1) {
            self.below(len + 3)
        } else {
            len
        };
        let dtype = self.param_dtype();
        self.input_of(&[len], dtype, true).0
    }

    /// A `VarBuilder` over a fresh map, of a random parameter dtype.
    pub fn vb(&mut self) -> (VarMap, DType) {
        (VarMap::new(), self.param_dtype())
    }
}
