//! Inner loops over contiguous slices, written once against [`Isa`](crate::simd::Isa) so
//! they compile to 512-bit, 256-bit or scalar code inside a
//! [`multiversion!`] entry point.
//!
//! Two drivers walk a slice 16 values at a time and fix the order of every
//! operation, whatever the instruction set:
//!
//! - [`write_lanewise`] for elementwise outputs: an optional unaligned
//!   head, full vectors, a partial tail. When asked to stream, the head
//!   brings the output to the alignment of streaming stores, which then
//!   write past the cache (for outputs larger than it: no read for
//!   ownership, no eviction of the input).
//! - [`reduce`] for sums: two accumulator vectors, alternating by vector,
//!   summed in `f32` within blocks of [`BLOCK`](drivers::BLOCK) values (32 terms per lane)
//!   and in `f64` across blocks ([`Isa::sum_f64`](crate::simd::Isa::sum_f64)), so the rounding error
//!   grows with 32 rather than n. Lane `l` of block `b` always holds the
//!   same values, so the result does not depend on the instruction set, the
//!   thread count, or where the slice lies in memory.
//!
//! Values are read as `f32`, `bf16` or `f16` ([`Elem`](crate::Elem)) and widened in
//! registers; outputs are rounded once when stored.
//!
//! [`multiversion!`]: crate::simd::multiversion

mod column;
mod drivers;
mod io;
mod row_backward;
mod row_forward;
mod stats;

pub(crate) use column::{
    apply_channels, bwd_dx_channels, col_bwd_sums, col_dev_sums, col_max_abs, col_shifted_sums,
    DxChannels, Periodic, ROWS_PER_FLUSH,
};
pub(crate) use drivers::{reduce, write_lanewise, Lanewise, Sums};
pub(crate) use io::{load, load_m, load_part, store, store_m, store_part, Ahead};
pub(crate) use row_backward::{
    bwd_dx_scalar, bwd_dx_vec, bwd_skewed_scalar, bwd_skewed_vec, bwd_sums_scalar, bwd_sums_vec,
    DxCoef, Skewed,
};
pub(crate) use row_forward::{
    apply_scalar, apply_vec, fwd_skewed_scalar, fwd_skewed_vec, SkewedFwd,
};
pub(crate) use stats::{dev_sums, head_mean, max_abs, shifted_sums};
