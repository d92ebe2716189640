//! Random arguments for the fuzz cases, and the checks every case ends
//! with: Ok with every output written, or a typed error naming the op with
//! every output untouched.

use std::time::{Duration, Instant};

use normkit::{bf16, f16, ChannelAxis, Elem, Momentum, NormError};

use crate::common::Rng;

/// Buffers are allocated only up to this many values: a shape with more
/// gets buffers of a few values (wrong lengths, which must be refused).
pub const CAP: usize = 1 << 12;

/// A case slower than this walks an extent it should not (an empty input
/// with huge extents answers at once).
pub const SLOW: Duration = Duration::from_secs(3);

/// Extents far beyond any allocation, most of them overflowing once
/// multiplied by one another.
const HUGE: [usize; 10] = [
    1 << 24,
    1 << 31,
    (1 << 32) + 1,
    1 << 33,
    1 << 40,
    1 << 62,
    1 << 63,
    usize::MAX / 2,
    usize::MAX - 1,
    usize::MAX,
];

/// An element type whose buffers can be filled with a value no kernel
/// writes: a signalling NaN (arithmetic and conversions only produce quiet
/// ones, and the inputs never hold it).
pub trait Sent: Elem {
    fn sentinel() -> Self;
    fn bits(self) -> u32;
}

impl Sent for f32 {
    fn sentinel() -> Self {
        f32::from_bits(0x7fa5_a5a5)
    }
    fn bits(self) -> u32 {
        self.to_bits()
    }
}

impl Sent for bf16 {
    fn sentinel() -> Self {
        bf16::from_bits(0x7fa5)
    }
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
}

impl Sent for f16 {
    fn sentinel() -> Self {
        f16::from_bits(0x7d5a)
    }
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
}

/// A buffer of `len` sentinels.
pub fn fresh<T: Sent>(len: usize) -> Vec<T> {
    vec![T::sentinel(); len]
}

/// `Some(fresh)` or `None`.
pub fn fresh_opt(g: &mut Gen, len: usize) -> Option<Vec<f32>> {
    g.rng.chance(0.7).then(|| fresh(len))
}

/// The arguments of one case, for its failure message.
pub struct Case {
    pub desc: String,
}

/// One output buffer as a verdict sees it.
pub struct Out {
    name: &'static str,
    len: usize,
    sentinels: usize,
}

pub fn out<T: Sent>(name: &'static str, v: &[T]) -> Out {
    let s = T::sentinel().bits();
    Out {
        name,
        len: v.len(),
        sentinels: v.iter().filter(|x| x.bits() == s).count(),
    }
}

pub fn out_opt(name: &'static str, v: &Option<Vec<f32>>) -> Option<Out> {
    v.as_ref().map(|v| out(name, v))
}

/// An in-out buffer (running statistics): its value before the call.
pub struct Kept<'a> {
    pub name: &'static str,
    pub before: Vec<u32>,
    pub after: &'a [f32],
}

pub fn kept<'a>(name: &'static str, before: &[f32], after: &'a [f32]) -> Kept<'a> {
    Kept {
        name,
        before: before.iter().map(|v| v.to_bits()).collect(),
        after,
    }
}

/// One call of a case: what its verdict needs besides the result.
pub struct Call<'a> {
    pub case: &'a Case,
    /// The name the op's errors carry.
    pub op: &'static str,
    /// The case's own checked arithmetic found the buffers to match the
    /// shape (an `Ok` is only right then).
    pub consistent: bool,
    /// Shapes the case passed: any shape an error prints is one of them.
    pub shapes: Vec<&'a [usize]>,
    pub started: Instant,
}

impl<'a> Call<'a> {
    pub fn new(case: &'a Case, op: &'static str, consistent: bool, shapes: &[&'a [usize]]) -> Self {
        Call {
            case,
            op,
            consistent,
            shapes: shapes.to_vec(),
            started: Instant::now(),
        }
    }

    /// Checks the call's result.
    ///
    /// - `Ok`: no output holds a sentinel, and the buffers were consistent.
    /// - `Err`: the error names the op, any shape it prints is one the case
    ///   passed, every output is all sentinels and every kept buffer is
    ///   unchanged.
    ///
    /// Returns whether the call succeeded.
    pub fn verdict<R>(
        &self,
        result: &normkit::Result<R>,
        outs: &[Option<Out>],
        kept: &[Kept<'_>],
    ) -> bool {
        let (op, case) = (self.op, self.case);
        let spent = self.started.elapsed();
        assert!(spent < SLOW, "{op}: {spent:?} for {}", case.desc);
        match result {
            Ok(_) => {
                let names: Vec<&str> = outs.iter().flatten().map(|o| o.name).collect();
                assert!(
                    self.consistent,
                    "{op}: Ok for inconsistent buffers (writing {names:?}): {}",
                    case.desc
                );
                for o in outs.iter().flatten() {
                    assert!(
                        o.sentinels == 0,
                        "{op}: Ok but {} of {} values of `{}` unwritten: {}",
                        o.sentinels,
                        o.len,
                        o.name,
                        case.desc
                    );
                }
                true
            }
            Err(e) => {
                assert_eq!(e.op(), op, "{e}: {}", case.desc);
                let msg = e.to_string();
                if let Some(shape) = error_shape(e) {
                    assert!(
                        self.shapes.contains(&shape),
                        "{op}: message shape {shape:?} is none of {:?}: {msg}",
                        self.shapes
                    );
                }
                for o in outs.iter().flatten() {
                    assert!(
                        o.sentinels == o.len,
                        "{op}: error `{msg}` but `{}` was written: {}",
                        o.name,
                        case.desc
                    );
                }
                for k in kept {
                    let after: Vec<u32> = k.after.iter().map(|v| v.to_bits()).collect();
                    assert!(
                        after == k.before,
                        "{op}: error `{msg}` but `{}` changed: {}",
                        k.name,
                        case.desc
                    );
                }
                false
            }
        }
    }
}

/// The shape an error prints, if it prints one.
fn error_shape(e: &NormError) -> Option<&[usize]> {
    match e {
        NormError::Length { shape, .. }
        | NormError::Rank { shape, .. }
        | NormError::NormalizedShape { shape, .. }
        | NormError::Groups { shape, .. }
        | NormError::TooFewValues { shape, .. }
        | NormError::Empty { shape, .. }
        | NormError::Dim { shape, .. }
        | NormError::TooLarge { shape, .. } => Some(shape),
        _ => None,
    }
}

/// The number of values of `shape`, or `None` when it overflows.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The random source of a batch of cases.
pub struct Gen {
    pub rng: Rng,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen {
            rng: Rng::new(seed),
        }
    }

    /// An extent: mostly small, sometimes 0, sometimes huge.
    pub fn extent(&mut self) -> usize {
        let r = self.rng.unit();
        if r < 0.08 {
            0
        } else if r < 0.16 {
            self.rng.pick(&HUGE)
        } else if r < 0.2 {
            self.rng.between(7, 70)
        } else {
            self.rng.between(1, 6)
        }
    }

    /// A shape of rank `lo..=hi`: half the time a small one that buffers
    /// can hold, otherwise any extents.
    pub fn shape(&mut self, lo: usize, hi: usize) -> Vec<usize> {
        let rank = self.rng.between(lo, hi);
        if self.rng.chance(0.5) {
            return (0..rank).map(|_| self.rng.between(1, 5)).collect();
        }
        (0..rank).map(|_| self.extent()).collect()
    }

    /// A `normalized_shape` for `shape`: mostly a trailing part of it.
    pub fn trailing(&mut self, shape: &[usize]) -> Vec<usize> {
        if self.rng.chance(0.1) || shape.is_empty() {
            return self.shape(0, 2);
        }
        let k = self.rng.between(0, shape.len());
        shape[shape.len() - k..].to_vec()
    }

    /// A buffer length for a slice whose right length is `right` (`None`
    /// when it overflows): usually right when that fits, else a few values.
    pub fn len(&mut self, right: Option<usize>) -> usize {
        match right {
            Some(n) if n <= CAP && self.rng.chance(0.93) => n,
            Some(n) if n <= CAP && n > 0 && self.rng.chance(0.5) => n - 1,
            Some(n) if n < CAP && self.rng.chance(0.5) => n + 1,
            _ => self.rng.between(0, 3),
        }
    }

    /// eps: mostly valid, sometimes out of the domain.
    pub fn eps(&mut self) -> f32 {
        self.rng.pick(&[
            1e-5,
            1e-5,
            1e-5,
            0.0,
            1e-3,
            1e-45,
            -1e-5,
            f32::NAN,
            f32::INFINITY,
            3.0e38,
        ])
    }

    pub fn momentum(&mut self) -> Momentum {
        if self.rng.chance(0.2) {
            return Momentum::CumulativeAverage {
                num_batches_tracked: self.rng.pick(&[0, 1, 7, u64::MAX]),
            };
        }
        Momentum::Exponential(self.rng.pick(&[
            0.1,
            0.1,
            0.0,
            1.0,
            5.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
        ]))
    }

    pub fn axis(&mut self) -> ChannelAxis {
        if self.rng.chance(0.5) {
            ChannelAxis::First
        } else {
            ChannelAxis::Last
        }
    }

    /// A hyperparameter count (groups): small, 0, or huge.
    pub fn count(&mut self) -> usize {
        match self.rng.between(0, 9) {
            0 => 0,
            1 => self.rng.pick(&HUGE),
            _ => self.rng.between(1, 6),
        }
    }

    /// Input values: normal at a random scale, with the odd NaN, infinity,
    /// `f32::MAX` or subnormal.
    pub fn values<T: Elem>(&mut self, len: usize) -> Vec<T> {
        let scale = self
            .rng
            .pick(&[1.0, 1.0, 1.0, 1e-3, 1e3, 1e20, 1e-30, 1e-40, 1e38]);
        let mean = self.rng.pick(&[0.0, 0.0, 1.0, 1e4]);
        let specials = self.rng.chance(0.15);
        (0..len)
            .map(|_| {
                let v = if specials && self.rng.chance(0.1) {
                    self.rng.pick(&[
                        f32::NAN,
                        f32::INFINITY,
                        f32::NEG_INFINITY,
                        f32::MAX,
                        -f32::MAX,
                        1e-45,
                        0.0,
                    ])
                } else {
                    (mean + scale * self.rng.normal()) as f32
                };
                T::from_f32(v)
            })
            .collect()
    }

    /// Parameter values: moderate, now and then a special.
    pub fn params(&mut self, len: usize) -> Vec<f32> {
        let specials = self.rng.chance(0.05);
        (0..len)
            .map(|_| {
                if specials && self.rng.chance(0.2) {
                    self.rng.pick(&[f32::NAN, f32::INFINITY, f32::MAX, 0.0])
                } else {
                    self.rng.uniform(-2.0, 2.0) as f32
                }
            })
            .collect()
    }

    /// Parameters for a slice whose right length is `right`.
    pub fn params_for(&mut self, right: Option<usize>) -> Vec<f32> {
        let len = self.len(right);
        self.params(len)
    }

    pub fn maybe_params(&mut self, len: usize) -> Option<Vec<f32>> {
        self.rng.chance(0.7).then(|| self.params(len))
    }

    /// Running statistics: plausible, or with specials.
    pub fn running(&mut self, len: usize) -> (Vec<f32>, Vec<f32>) {
        let mean = self.params(len);
        let var = (0..len)
            .map(|_| {
                if self.rng.chance(0.03) {
                    self.rng.pick(&[-1.0, 0.0, f32::NAN, f32::INFINITY])
                } else {
                    self.rng.uniform(0.1, 3.0) as f32
                }
            })
            .collect();
        (mean, var)
    }

    /// A saved statistic handed to a backward pass: the forward's (usually)
    /// or a damaged one.
    pub fn damage(&mut self, v: &mut Vec<f32>) {
        match self.rng.between(0, 19) {
            0 => {
                v.pop();
            }
            1 => v.push(1.0),
            2 => {
                if let Some(x) = v.first_mut() {
                    *x = self.rng.pick(&[f32::NAN, 0.0, f32::INFINITY, -1.0]);
                }
            }
            _ => {}
        }
    }
}
