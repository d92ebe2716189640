//! Which implementation a layer runs: the fused normkit kernels or composed
//! tensor operations.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::backend::DispatchDevice;
use burn::tensor::{DType, Device};

/// How the layers of this crate compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// The fused normkit kernels where the tensor lives on the `flex`
    /// backend (with or without autodiff) and holds `f32`, `f16` or `bf16`;
    /// composed tensor operations everywhere else.
    #[default]
    Auto,
    /// Composed tensor operations on every backend: the portable path,
    /// differentiated by burn's generic autodiff.
    Composed,
}

thread_local! {
    static ROUTE: Cell<Route> = const { Cell::new(Route::Auto) };
}

/// Runs `f` with the layers of this crate taking `route` on this thread,
/// then restores the previous route (also when `f` unwinds).
///
/// The route is chosen at each forward call; a backward pass follows the
/// route its forward took.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use normkit_burn::{with_route, LayerNormConfig, Route};
///
/// let device = Device::flex();
/// let norm = LayerNormConfig::new(vec![4]).init(&device);
/// let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0, 5.0]], &device);
/// let fused = norm.forward(x.clone());
/// let composed = with_route(Route::Composed, || norm.forward(x));
/// fused.into_data().assert_approx_eq::<f32>(&composed.into_data(), Default::default());
/// ```
pub fn with_route<R>(route: Route, f: impl FnOnce() -> R) -> R {
    struct Restore(Route);
    impl Drop for Restore {
        fn drop(&mut self) {
            ROUTE.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(ROUTE.with(|r| r.replace(route)));
    f()
}

/// The route the layers take on this thread.
pub fn current_route() -> Route {
    ROUTE.with(Cell::get)
}

/// Whether `device` is the flex backend, possibly wrapped by autodiff.
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// Whether an op on a tensor of `dtype` on `device` runs the fused kernels.
pub(crate) fn fused(device: &Device, dtype: DType) -> bool {
    current_route() == Route::Auto
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && is_flex(device)
}

static FORWARD: AtomicU64 = AtomicU64::new(0);
static BACKWARD: AtomicU64 = AtomicU64::new(0);

/// How many times the fused kernels have run in this process, all ops and
/// threads together. The counts only grow; compare two readings to see
/// whether a piece of code took the fused path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FusedCalls {
    /// Fused forward kernel calls.
    pub forward: u64,
    /// Fused backward kernel calls (each from a custom autodiff node).
    pub backward: u64,
}

/// Reads the fused-kernel counters.
pub fn fused_calls() -> FusedCalls {
    FusedCalls {
        forward: FORWARD.load(Ordering::Relaxed),
        backward: BACKWARD.load(Ordering::Relaxed),
    }
}

pub(crate) fn count_forward() {
    FORWARD.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_backward() {
    BACKWARD.fetch_add(1, Ordering::Relaxed);
}
