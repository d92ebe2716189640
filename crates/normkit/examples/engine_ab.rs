//! A small harness for the engine's own A/B timings and scratch memory:
//! medians of repeated forward and backward passes over memory-sized
//! inputs, and the peak bytes a long-row backward allocates beyond its
//! inputs and outputs. Built against two versions of normkit, it compares
//! them on one machine; `normlab bench` remains the benchmark of record.
//!
//! `cargo run --release -p normkit --example engine_ab [-- reps]`, with
//! `RAYON_NUM_THREADS` for the thread count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use normkit::*;

/// The system allocator, counting live and peak bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as the trait requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes `f` allocates at its peak beyond what was live before it.
fn scratch(f: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed) - before
}

/// Median seconds of `reps` calls of `f` (after one warm-up call).
fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn data<T: Elem>(len: usize, seed: u64) -> Vec<T> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            T::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0 + 0.5)
        })
        .collect()
}

fn layer_norm<T: Elem>(name: &str, rows: usize, d: usize, reps: usize) {
    let shape = [rows, d];
    let (x, dy) = (data::<T>(rows * d, 1), data::<T>(rows * d, 2));
    let (w, b) = (data::<f32>(d, 3), data::<f32>(d, 4));
    let mut y = vec![T::default(); rows * d];
    let mut stats = Stats::default();
    let fwd = median(reps, || {
        stats = layer_norm_forward(&mut y, &x, &shape, &[d], Affine::new(&w, &b), 1e-5).unwrap();
    });
    let (mut dx, mut dw, mut db) = (vec![T::default(); rows * d], vec![0.0; d], vec![0.0; d]);
    let bwd = median(reps, || {
        let grads = Grads {
            dx: &mut dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        layer_norm_backward(grads, &dy, &x, &shape, &[d], Some(&w), &stats).unwrap();
    });
    black_box((&y, &dx));
    println!(
        "{name:<34} fwd {:8.3} ms  bwd {:8.3} ms",
        fwd * 1e3,
        bwd * 1e3
    );
}

/// Times a per-channel op on `[n, c, s]` (or `[n, s, c]`) `f32` data with
/// weight, bias and both gradients: `fwd` and `bwd` call its entry points.
fn channel_op(
    name: &str,
    shape: [usize; 3],
    axis: ChannelAxis,
    reps: usize,
    fwd: impl Fn(&mut [f32], &[f32], &[usize], Affine<'_>) -> Stats,
    bwd: impl Fn(Grads<'_, f32>, &[f32], &[f32], &[usize], &[f32], &Stats),
) {
    let len = shape.iter().product();
    let c = match axis {
        ChannelAxis::First => shape[1],
        ChannelAxis::Last => shape[2],
    };
    let (x, dy) = (data::<f32>(len, 5), data::<f32>(len, 6));
    let (w, b) = (data::<f32>(c, 7), data::<f32>(c, 8));
    let mut y = vec![0.0f32; len];
    let mut stats = Stats::default();
    let f = median(reps, || {
        stats = fwd(&mut y, &x, &shape, Affine::new(&w, &b))
    });
    let (mut dx, mut dw, mut db) = (vec![0.0f32; len], vec![0.0; c], vec![0.0; c]);
    let b = median(reps, || {
        let grads = Grads {
            dx: &mut dx,
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        bwd(grads, &dy, &x, &shape, &w, &stats);
    });
    black_box((&y, &dx));
    println!("{name:<34} fwd {:8.3} ms  bwd {:8.3} ms", f * 1e3, b * 1e3);
}

fn batch_norm(name: &str, shape: [usize; 3], axis: ChannelAxis, reps: usize) {
    let cfg = BatchNormConfig {
        channel_axis: axis,
        ..Default::default()
    };
    channel_op(
        name,
        shape,
        axis,
        reps,
        |y, x, shape, affine| batch_norm_forward_train(y, x, shape, affine, None, &cfg).unwrap(),
        |g, dy, x, shape, w, st| {
            batch_norm_backward_train(g, dy, x, shape, Some(w), st, &cfg).unwrap()
        },
    );
}

fn group_norm(name: &str, shape: [usize; 3], groups: usize, axis: ChannelAxis, reps: usize) {
    let cfg = GroupNormConfig {
        num_groups: groups,
        eps: 1e-5,
        channel_axis: axis,
    };
    channel_op(
        name,
        shape,
        axis,
        reps,
        |y, x, shape, affine| group_norm_forward(y, x, shape, affine, &cfg).unwrap(),
        |g, dy, x, shape, w, st| group_norm_backward(g, dy, x, shape, Some(w), st, &cfg).unwrap(),
    );
}

/// Scratch bytes of a LayerNorm over `rows` rows of `d` values of `T`.
fn long_rows<T: Elem>(rows: usize, d: usize, params: bool) {
    let shape = [rows, d];
    let (x, dy) = (data::<T>(rows * d, 13), data::<T>(rows * d, 14));
    let w = params.then(|| data::<f32>(d, 15));
    let b = params.then(|| data::<f32>(d, 16));
    let mut y = vec![T::default(); rows * d];
    let mut stats = Stats::default();
    let affine = Affine {
        weight: w.as_deref(),
        bias: b.as_deref(),
    };
    let fwd = scratch(|| {
        stats = layer_norm_forward(&mut y, &x, &shape, &[d], affine, 1e-5).unwrap();
    });
    let mut dx = vec![T::default(); rows * d];
    let (mut dw, mut db) = (
        params.then(|| vec![0.0f32; d]),
        params.then(|| vec![0.0f32; d]),
    );
    let bwd = scratch(|| {
        let grads = Grads {
            dx: &mut dx,
            dweight: dw.as_deref_mut(),
            dbias: db.as_deref_mut(),
        };
        layer_norm_backward(grads, &dy, &x, &shape, &[d], w.as_deref(), &stats).unwrap();
    });
    println!(
        "scratch, {rows} {} row(s) of {d}, params {params:<5}: forward {fwd:>11} B ({:.2} B per value of a row), backward {bwd:>11} B ({:.2})",
        T::NAME,
        fwd as f64 / d as f64,
        bwd as f64 / d as f64
    );
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    println!(
        "threads {}, SIMD {:?}, median of {reps}",
        rayon::current_num_threads(),
        simd_level()
    );
    layer_norm::<f32>("layer_norm f32 [4096, 1024]", 4096, 1024, reps);
    layer_norm::<f32>("layer_norm f32 [32768, 64]", 32768, 64, reps);
    layer_norm::<f32>("layer_norm f32 [64, 65536]", 64, 65536, reps);
    layer_norm::<bf16>("layer_norm bf16 [4096, 1024]", 4096, 1024, reps);
    let (first, last) = (ChannelAxis::First, ChannelAxis::Last);
    batch_norm("batch_norm f32 [32, 64, 3136]", [32, 64, 3136], first, reps);
    batch_norm(
        "batch_norm f32 [32, 3136, 64] last",
        [32, 3136, 64],
        last,
        reps,
    );
    group_norm(
        "group_norm f32 [32, 64, 3136] g32",
        [32, 64, 3136],
        32,
        first,
        reps,
    );
    group_norm(
        "group_norm f32 [32, 3136, 64] last",
        [32, 3136, 64],
        32,
        last,
        reps,
    );
    for params in [false, true] {
        long_rows::<f32>(1, 1 << 24, params);
        long_rows::<bf16>(1, 1 << 24, params);
    }
    // One chunk of more than 32 such rows: the sums also flush into f64.
    long_rows::<f32>(40, 1 << 21, true);
}
