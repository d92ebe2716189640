//! The x86-64 levels: AVX-512 and AVX2, each with FMA and F16C.

mod avx2;
mod avx512;

pub(crate) use avx2::Avx2;
pub(crate) use avx512::Avx512;
