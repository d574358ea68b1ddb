//! The one way from a binding into the core's work: the GIL released, the work on the
//! requested number of rayon threads, core errors mapped to `SimpoQError`.

use crate::errors::{bad_arg, to_py};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Pools by thread count, built once: starting threads on every call would cost more than
/// quantizing a small tensor.
fn pool(n: usize) -> PyResult<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&n) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| bad_arg(format!("threads: cannot start {n} threads: {e}")))?;
    let p = Arc::new(p);
    pools.insert(n, p.clone());
    Ok(p)
}

/// Runs `f` on `threads` rayon threads (all cores when None).
fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    match threads {
        None => Ok(f()),
        Some(0) => Err(bad_arg("threads: must be at least 1")),
        Some(n) => Ok(pool(n)?.install(f)),
    }
}

/// `f` with the GIL released, on `threads` rayon threads (all cores when None), its error a
/// `SimpoQError`.
pub fn run_core<T: Send>(
    py: Python<'_>,
    threads: Option<usize>,
    f: impl FnOnce() -> simpo_q_core::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| with_threads(threads, f))?.map_err(to_py)
}
