//! GGUF reader and streaming writer for Python. Metadata values travel as
//! (key, type, value) with type one of u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 bool str, or
//! "array[<type>]" with a list value.

use crate::errors::{bad_arg, to_py};
use crate::run::run_core;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use simpo_q_core::gguf::{ggml_type_name, GgufFile, GgufWriter, TensorInfo, Value, ValueType};
use std::path::PathBuf;

fn scalar_from_py(t: ValueType, key: &str, v: &Bound<'_, PyAny>) -> PyResult<Value> {
    let bad = |e: PyErr| {
        bad_arg(format!(
            "metadata {key:?}: expected {} value: {e}",
            t.name()
        ))
    };
    Ok(match t {
        ValueType::U8 => Value::U8(v.extract().map_err(bad)?),
        ValueType::I8 => Value::I8(v.extract().map_err(bad)?),
        ValueType::U16 => Value::U16(v.extract().map_err(bad)?),
        ValueType::I16 => Value::I16(v.extract().map_err(bad)?),
        ValueType::U32 => Value::U32(v.extract().map_err(bad)?),
        ValueType::I32 => Value::I32(v.extract().map_err(bad)?),
        ValueType::U64 => Value::U64(v.extract().map_err(bad)?),
        ValueType::I64 => Value::I64(v.extract().map_err(bad)?),
        ValueType::F32 => Value::F32(v.extract::<f64>().map_err(bad)? as f32),
        ValueType::F64 => Value::F64(v.extract().map_err(bad)?),
        ValueType::Bool => Value::Bool(v.extract().map_err(bad)?),
        ValueType::String => Value::String(v.extract().map_err(bad)?),
        ValueType::Array => {
            return Err(bad_arg(format!(
                "metadata {key:?}: nested arrays are not allowed"
            )))
        }
    })
}

fn value_from_py(key: &str, tname: &str, v: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Some(inner) = tname
        .strip_prefix("array[")
        .and_then(|s| s.strip_suffix(']'))
    {
        let et = ValueType::from_name(inner).ok_or_else(|| {
            bad_arg(format!(
                "metadata {key:?}: unknown array element type {inner:?}"
            ))
        })?;
        let mut items = Vec::new();
        for it in v.try_iter()? {
            items.push(scalar_from_py(et, key, &it?)?);
        }
        return Ok(Value::Array(et, items));
    }
    let t = ValueType::from_name(tname)
        .ok_or_else(|| bad_arg(format!("metadata {key:?}: unknown type {tname:?}")))?;
    scalar_from_py(t, key, v)
}

fn scalar_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::U8(x) => x.into_pyobject(py)?.into_any(),
        Value::I8(x) => x.into_pyobject(py)?.into_any(),
        Value::U16(x) => x.into_pyobject(py)?.into_any(),
        Value::I16(x) => x.into_pyobject(py)?.into_any(),
        Value::U32(x) => x.into_pyobject(py)?.into_any(),
        Value::I32(x) => x.into_pyobject(py)?.into_any(),
        Value::U64(x) => x.into_pyobject(py)?.into_any(),
        Value::I64(x) => x.into_pyobject(py)?.into_any(),
        Value::F32(x) => x.into_pyobject(py)?.into_any(),
        Value::F64(x) => x.into_pyobject(py)?.into_any(),
        Value::Bool(x) => x.into_pyobject(py)?.to_owned().into_any(),
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(_, items) => {
            let list = PyList::empty(py);
            for it in items {
                list.append(scalar_to_py(py, it)?)?;
            }
            list.into_any()
        }
    })
}

fn type_to_str(v: &Value) -> String {
    match v {
        Value::Array(t, _) => format!("array[{}]", t.name()),
        other => other.value_type().name().to_string(),
    }
}

fn ggml_type_id(name: &str) -> PyResult<u32> {
    (0..64u32)
        .find(|&id| ggml_type_name(id).is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .ok_or_else(|| bad_arg(format!("unknown ggml type {name:?}")))
}

/// GgufWriter(path, metadata, tensors): streaming GGUF writer. `tensors` lists
/// (name, dims with ne0 first, ggml type name) in file order; `write_tensor` appends each
/// tensor's bytes in that order; `finish` renames the temporary file to `path`.
#[pyclass(module = "simpo_q._native", name = "GgufWriter")]
pub struct GgufWriterPy {
    inner: Option<GgufWriter>,
}

#[pymethods]
impl GgufWriterPy {
    #[new]
    fn new(
        path: PathBuf,
        metadata: &Bound<'_, PyAny>,
        tensors: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let mut kvs = Vec::new();
        for item in metadata.try_iter()? {
            let item = item?;
            let (key, tname, value): (String, String, Bound<'_, PyAny>) = item.extract()?;
            let v = value_from_py(&key, &tname, &value)?;
            kvs.push((key, v));
        }
        let mut infos = Vec::new();
        for item in tensors.try_iter()? {
            let (name, dims, tname): (String, Vec<u64>, String) = item?.extract()?;
            infos.push(TensorInfo {
                name,
                dims,
                ggml_type: ggml_type_id(&tname)?,
            });
        }
        let w = GgufWriter::create(&path, &kvs, infos).map_err(to_py)?;
        Ok(GgufWriterPy { inner: Some(w) })
    }

    /// The name of the tensor expected next, or None when all are written.
    fn next_tensor(&self) -> Option<String> {
        self.inner
            .as_ref()
            .and_then(|w| w.next_tensor().map(|t| t.name.clone()))
    }

    fn write_tensor(
        &mut self,
        py: Python<'_>,
        name: &str,
        data: &Bound<'_, PyArray1<u8>>,
    ) -> PyResult<()> {
        self.write_with(py, name, data, GgufWriter::write_tensor)
    }

    /// The next piece of the next tensor (blocks of rows of a large tensor, in order).
    fn write_tensor_part(
        &mut self,
        py: Python<'_>,
        name: &str,
        data: &Bound<'_, PyArray1<u8>>,
    ) -> PyResult<()> {
        self.write_with(py, name, data, GgufWriter::write_tensor_part)
    }

    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        let w = self
            .inner
            .take()
            .ok_or_else(|| bad_arg("writer is closed"))?;
        run_core(py, None, || w.finish())
    }

    /// Drops the temporary file; nothing is left at the destination.
    fn abort(&mut self) {
        self.inner.take();
    }
}

impl GgufWriterPy {
    /// The open writer's `write` on the array's bytes, with the GIL released.
    fn write_with(
        &mut self,
        py: Python<'_>,
        name: &str,
        data: &Bound<'_, PyArray1<u8>>,
        write: fn(&mut GgufWriter, &str, &[u8]) -> simpo_q_core::Result<()>,
    ) -> PyResult<()> {
        let w = self
            .inner
            .as_mut()
            .ok_or_else(|| bad_arg("writer is closed"))?;
        let data = data.readonly();
        let bytes = data.as_slice()?;
        run_core(py, None, || write(w, name, bytes))
    }
}

/// GgufReader(path): metadata, tensor infos and zero-copy tensor data over a memory map.
#[pyclass(module = "simpo_q._native", name = "GgufReader", frozen)]
pub struct GgufReaderPy {
    file: GgufFile,
}

#[pymethods]
impl GgufReaderPy {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let file = run_core(py, None, || GgufFile::open(&path))?;
        Ok(GgufReaderPy { file })
    }

    #[getter]
    fn version(&self) -> u32 {
        self.file.version
    }

    #[getter]
    fn alignment(&self) -> u64 {
        self.file.alignment
    }

    #[getter]
    fn data_offset(&self) -> u64 {
        self.file.data_offset
    }

    /// [(key, type, value)] in file order.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for (k, v) in &self.file.metadata {
            list.append(PyTuple::new(
                py,
                [
                    k.into_pyobject(py)?.into_any(),
                    type_to_str(v).into_pyobject(py)?.into_any(),
                    scalar_to_py(py, v)?,
                ],
            )?)?;
        }
        Ok(list)
    }

    /// [(name, dims ne0 first, ggml type name, absolute offset, nbytes)] in file order.
    #[getter]
    fn tensors(&self) -> Vec<(String, Vec<u64>, String, u64, u64)> {
        self.file
            .tensors
            .iter()
            .map(|t| {
                let tn = ggml_type_name(t.ggml_type).unwrap_or("?").to_string();
                (t.name.clone(), t.dims.clone(), tn, t.offset, t.nbytes)
            })
            .collect()
    }

    /// The bytes of one tensor as a read-only uint8 view of the map (no copy).
    fn tensor_bytes<'py>(slf: Bound<'py, Self>, name: &str) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let me = slf.get();
        let t = me
            .file
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| bad_arg(format!("{}: no tensor {name:?}", me.file.path.display())))?;
        let data = me.file.tensor_data(t);
        let view = numpy::ndarray::ArrayView1::from(data);
        // SAFETY: the array borrows the map owned by `slf`, which it keeps alive as its base;
        // the GgufReader is frozen, so the map is never replaced or dropped before the array.
        let arr = unsafe { PyArray1::borrow_from_array(&view, slf.clone().into_any()) };
        arr.readwrite().make_nonwriteable();
        Ok(arr)
    }
}

/// write_file(path, data): the whole file through the guarded writer (temporary name, synced,
/// renamed; a directory or device at `path` is refused; stale temporaries of dead processes
/// are removed). Every file simpo-q writes goes this way or through GgufWriter.
#[pyfunction]
fn write_file(py: Python<'_>, path: PathBuf, data: &[u8]) -> PyResult<()> {
    run_core(py, None, || simpo_q_core::files::write_file(&path, data))
}

/// remove_stale_temporaries(path) -> paths removed: temporaries of `path` whose process is gone.
#[pyfunction]
fn remove_stale_temporaries(path: PathBuf) -> Vec<PathBuf> {
    simpo_q_core::files::remove_stale_temporaries(&path)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(write_file, m)?)?;
    m.add_function(wrap_pyfunction!(remove_stale_temporaries, m)?)?;
    m.add_class::<GgufWriterPy>()?;
    m.add_class::<GgufReaderPy>()?;
    Ok(())
}
