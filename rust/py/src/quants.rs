use crate::errors::{bad_arg, to_py};
use crate::run::run_core;
use numpy::{
    PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use simpo_q_core::quants::{self, QuantType};

fn parse_type(qtype: &str) -> PyResult<QuantType> {
    QuantType::from_name(qtype).map_err(to_py)
}

/// A C-contiguous array of the given dtype and rank, or a SimpoQError naming `arg`.
fn checked<'py>(
    arg: &str,
    obj: &Bound<'py, PyAny>,
    dtype_name: &str,
    ndim: Option<usize>,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        bad_arg(format!(
            "{arg}: expected a numpy.ndarray, got {}",
            obj.get_type()
        ))
    })?;
    let dt = arr.dtype();
    let got = dt.str()?.to_string();
    let kind_ok = match dtype_name {
        "float32" => dt.is_equiv_to(&numpy::dtype::<f32>(obj.py())),
        "uint8" => dt.is_equiv_to(&numpy::dtype::<u8>(obj.py())),
        _ => false,
    };
    if !kind_ok {
        return Err(bad_arg(format!(
            "{arg}: dtype must be {dtype_name}, got {got}"
        )));
    }
    if let Some(n) = ndim {
        if arr.ndim() != n {
            return Err(bad_arg(format!(
                "{arg}: expected {n} dimensions, got {}",
                arr.ndim()
            )));
        }
    }
    if !arr.is_c_contiguous() {
        return Err(bad_arg(format!(
            "{arg}: array must be C-contiguous (use numpy.ascontiguousarray)"
        )));
    }
    Ok(arr.clone())
}

/// quantize(x, qtype, imatrix=None, *, threads=None, refine=False) -> uint8 array (rows, row_bytes)
#[pyfunction]
#[pyo3(signature = (x, qtype, imatrix=None, *, threads=None, refine=false))]
fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    qtype: &str,
    imatrix: Option<&Bound<'py, PyAny>>,
    threads: Option<usize>,
    refine: bool,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let qt = parse_type(qtype)?;
    checked("x", x, "float32", Some(2))?;
    let x = x.cast::<PyArray2<f32>>()?.readonly();
    let [rows, n_per_row] = [x.shape()[0], x.shape()[1]];
    let rs = quants::row_size(qt, n_per_row).map_err(|_| {
        bad_arg(format!(
            "x: row length {n_per_row} is not a positive multiple of {}'s block size {}",
            qt.name(),
            qt.block_size()
        ))
    })?;
    let w = match imatrix {
        Some(obj) if !obj.is_none() => {
            checked("imatrix", obj, "float32", Some(1))?;
            Some(obj.cast::<PyArray1<f32>>()?.readonly())
        }
        _ => None,
    };
    let xs = x.as_slice()?;
    let ws = match &w {
        Some(a) => Some(a.as_slice()?),
        None => None,
    };
    let out = run_core(py, threads, || {
        let mut out = vec![0u8; rows * rs];
        let done = if refine {
            quants::quantize_into_refined(qt, xs, n_per_row, ws, &mut out)
        } else {
            quants::quantize_into(qt, xs, n_per_row, ws, &mut out)
        };
        done.map(|_| out)
    })?;
    PyArray1::from_vec(py, out).reshape([rows, rs])
}

/// dequantize(data, qtype, n_per_row) -> float32 array (rows, n_per_row)
#[pyfunction]
#[pyo3(signature = (data, qtype, n_per_row, *, threads=None))]
fn dequantize<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    qtype: &str,
    n_per_row: usize,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let qt = parse_type(qtype)?;
    let rs = quants::row_size(qt, n_per_row).map_err(to_py)?;
    let arr = checked("data", data, "uint8", None)?;
    let n = arr.len();
    if n % rs != 0 {
        return Err(bad_arg(format!(
            "data: {n} bytes is not a whole number of {} rows of {n_per_row} values ({rs} bytes each)",
            qt.name()
        )));
    }
    let flat = arr.call_method1("reshape", (n,))?;
    let bytes = flat.cast::<PyArray1<u8>>()?.readonly();
    let bs = bytes.as_slice()?;
    let rows = n / rs;
    let out = run_core(py, threads, || {
        let mut out = vec![0f32; rows * n_per_row];
        quants::dequantize_into(qt, bs, n_per_row, &mut out).map(|_| out)
    })?;
    PyArray1::from_vec(py, out).reshape([rows, n_per_row])
}

/// row_size(qtype, n_per_row) -> bytes of one quantized row
#[pyfunction]
fn row_size(qtype: &str, n_per_row: usize) -> PyResult<usize> {
    quants::row_size(parse_type(qtype)?, n_per_row).map_err(to_py)
}

/// type_info(qtype) -> (ggml_type_id, block_size, type_size)
#[pyfunction]
fn type_info(qtype: &str) -> PyResult<(u32, usize, usize)> {
    let t = parse_type(qtype)?;
    Ok((t.ggml_id(), t.block_size(), t.type_size()))
}

/// simd() -> the instruction set the quantizers run with ("avx512", "avx2" or "plain")
#[pyfunction]
fn simd() -> &'static str {
    quants::fast::Simd::chosen().name()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(simd, m)?)?;
    let levels: Vec<&str> = quants::fast::Simd::ALL.iter().map(|s| s.name()).collect();
    m.add("SIMD_LEVELS", PyTuple::new(m.py(), levels)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(row_size, m)?)?;
    m.add_function(wrap_pyfunction!(type_info, m)?)?;
    let names: Vec<&str> = QuantType::ALL.iter().map(|t| t.name()).collect();
    m.add("QUANT_TYPES", PyTuple::new(m.py(), names)?)?;
    m.add("MAX_IMPORTANCE_WEIGHT2", quants::MAX_IMPORTANCE_WEIGHT2)?;
    let refinable: Vec<&str> = QuantType::ALL
        .iter()
        .filter(|t| quants::refine::is_refinable(**t))
        .map(|t| t.name())
        .collect();
    m.add("REFINABLE_TYPES", PyTuple::new(m.py(), refinable)?)?;
    Ok(())
}
