//! Rayon pools sized per call: normkit's kernels run on the pool they are
//! installed in, so a call with `threads = n` (PyTorch's
//! `torch.get_num_threads()`) runs on exactly `n` threads. Pools are built
//! once per size and kept.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;
use rayon::ThreadPool;

static POOLS: LazyLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = LazyLock::new(Default::default);

/// The pool of `threads` threads; `None` for 0, meaning rayon's global pool.
pub fn sized(threads: usize) -> PyResult<Option<Arc<ThreadPool>>> {
    if threads == 0 {
        return Ok(None);
    }
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Ok(Some(p.clone()));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("normkit-{i}"))
        .build()
        .map_err(|e| {
            PyRuntimeError::new_err(format!("normkit: cannot start {threads} threads: {e}"))
        })?;
    let pool = Arc::new(pool);
    pools.insert(threads, pool.clone());
    Ok(Some(pool))
}

/// Runs `f` on the pool of `threads` threads (0: the global pool).
pub fn run<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    Ok(match sized(threads)? {
        Some(pool) => pool.install(f),
        None => f(),
    })
}
