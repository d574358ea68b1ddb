//! simpo_q._native: the thin PyO3 layer over simpo-q-core. Each function checks its
//! arguments, releases the GIL for the work and maps core errors to `SimpoQError`
//! (a `ValueError`), so nothing panics across the boundary.

mod errors;
mod gguf;
mod imatrix;
mod quants;
mod run;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SimpoQError", m.py().get_type::<errors::SimpoQError>())?;
    quants::register(m)?;
    gguf::register(m)?;
    imatrix::register(m)?;
    Ok(())
}
