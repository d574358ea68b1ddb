//! The importance-matrix accumulator and its files for Python.

use crate::errors::{bad_arg, to_py};
use crate::run::run_core;
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use simpo_q_core::imatrix::{read_imatrix, write_imatrix_dat, write_imatrix_gguf, Imatrix};
use std::path::PathBuf;

/// Imatrix(): per-weight Σx² per input column and token counts, as llama-imatrix collects.
#[pyclass(module = "simpo_q._native", name = "Imatrix")]
#[derive(Default)]
pub struct ImatrixPy {
    inner: Imatrix,
}

#[pymethods]
impl ImatrixPy {
    #[new]
    #[pyo3(signature = (chunk_size=512))]
    fn new(chunk_size: u32) -> Self {
        ImatrixPy {
            inner: Imatrix {
                chunk_size,
                ..Default::default()
            },
        }
    }

    /// Adds a batch of activations (tokens × columns, float32, C-contiguous) to `name`.
    fn add(&mut self, py: Python<'_>, name: &str, x: &Bound<'_, PyArray2<f32>>) -> PyResult<()> {
        let x = x.readonly();
        let n_cols = x.shape()[1];
        let xs = x
            .as_slice()
            .map_err(|_| bad_arg("activations: array must be C-contiguous"))?;
        let inner = &mut self.inner;
        run_core(py, None, || inner.add(name, xs, n_cols))
    }

    /// Puts one weight's sums and count in place (replacing any entry): for statistics
    /// reduced elsewhere, as across the ranks of a distributed run.
    fn set_entry(
        &mut self,
        name: &str,
        in_sum2: &Bound<'_, PyArray1<f32>>,
        count: u64,
    ) -> PyResult<()> {
        let sums = in_sum2
            .readonly()
            .as_slice()
            .map_err(|_| bad_arg("in_sum2: array must be contiguous"))?
            .to_vec();
        self.inner.set_entry(name, sums, count).map_err(to_py)
    }

    fn merge(&mut self, other: &ImatrixPy) -> PyResult<()> {
        self.inner.merge(&other.inner).map_err(to_py)
    }

    fn names(&self) -> Vec<String> {
        self.inner.entries.keys().cloned().collect()
    }

    /// (in_sum2 copy, count) of one weight.
    fn entry<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<(Bound<'py, PyArray1<f32>>, u64)> {
        let e = self
            .inner
            .entries
            .get(name)
            .ok_or_else(|| bad_arg(format!("imatrix: no entry {name:?}")))?;
        Ok((PyArray1::from_slice(py, &e.in_sum2), e.count))
    }

    /// The importance vector llama-quantize uses (in_sum2 / count), or None without an entry.
    fn importance<'py>(&self, py: Python<'py>, name: &str) -> Option<Bound<'py, PyArray1<f32>>> {
        self.inner
            .importance(name)
            .map(|v| PyArray1::from_vec(py, v))
    }

    #[getter]
    fn datasets(&self) -> Vec<String> {
        self.inner.datasets.clone()
    }
    #[setter]
    fn set_datasets(&mut self, v: Vec<String>) {
        self.inner.datasets = v;
    }
    #[getter]
    fn chunk_count(&self) -> u32 {
        self.inner.chunk_count
    }
    #[setter]
    fn set_chunk_count(&mut self, v: u32) {
        self.inner.chunk_count = v;
    }
    #[getter]
    fn chunk_size(&self) -> u32 {
        self.inner.chunk_size
    }

    /// Writes the GGUF imatrix (`format="gguf"`) or the legacy `imatrix.dat` (`"dat"`).
    #[pyo3(signature = (path, format="gguf"))]
    fn save(&self, py: Python<'_>, path: PathBuf, format: &str) -> PyResult<()> {
        let m = &self.inner;
        match format {
            "gguf" => run_core(py, None, || write_imatrix_gguf(&path, m)),
            "dat" => run_core(py, None, || write_imatrix_dat(&path, m)),
            other => Err(bad_arg(format!(
                "format: {other:?} is not \"gguf\" or \"dat\""
            ))),
        }
    }

    /// Reads either format (GGUF or legacy .dat).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<ImatrixPy> {
        let inner = run_core(py, None, || read_imatrix(&path))?;
        Ok(ImatrixPy { inner })
    }

    fn __len__(&self) -> usize {
        self.inner.entries.len()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ImatrixPy>()
}
