//! The two imatrix file formats, written as llama.cpp writes them and read as it reads them.

use super::accumulate::{Entry, Imatrix};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufWriter, TensorInfo, Value, ValueType};
use std::path::Path;

/// GGUF imatrix: general.type = "imatrix", imatrix.datasets, imatrix.chunk_count,
/// imatrix.chunk_size, then per weight (sorted) `W.in_sum2` (F32 [n_cols]) and `W.counts`
/// (F32 [1]).
pub fn write_imatrix_gguf(path: &Path, m: &Imatrix) -> Result<()> {
    let kvs = vec![
        ("general.type".to_string(), Value::String("imatrix".into())),
        (
            "imatrix.datasets".to_string(),
            Value::Array(
                ValueType::String,
                m.datasets
                    .iter()
                    .map(|d| Value::String(d.clone()))
                    .collect(),
            ),
        ),
        ("imatrix.chunk_count".to_string(), Value::U32(m.chunk_count)),
        ("imatrix.chunk_size".to_string(), Value::U32(m.chunk_size)),
    ];
    let mut infos = Vec::new();
    for (name, e) in &m.entries {
        infos.push(TensorInfo {
            name: format!("{name}.in_sum2"),
            dims: vec![e.in_sum2.len() as u64],
            ggml_type: 0,
        });
        infos.push(TensorInfo {
            name: format!("{name}.counts"),
            dims: vec![1],
            ggml_type: 0,
        });
    }
    let mut w = GgufWriter::create(path, &kvs, infos)?;
    for (name, e) in &m.entries {
        let b: Vec<u8> = e.in_sum2.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor(&format!("{name}.in_sum2"), &b)?;
        w.write_tensor(&format!("{name}.counts"), &(e.count as f32).to_le_bytes())?;
    }
    w.finish()
}

/// Legacy `imatrix.dat`: entries sorted by name; ncall = ceil(count / chunk_size);
/// values = (sum / count) · ncall; then the chunk count and the first dataset.
pub fn write_imatrix_dat(path: &Path, m: &Imatrix) -> Result<()> {
    // chunk_size 0 marks sums read from a legacy file, kept as (value, ncall) pairs.
    let legacy = m.chunk_size == 0;
    let chunk = m.chunk_size.max(1) as u64;
    let mut b = Vec::new();
    b.extend_from_slice(&(m.entries.len() as i32).to_le_bytes());
    for (name, e) in &m.entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        let ncall = if legacy {
            e.count
        } else {
            e.count.div_ceil(chunk).max(1)
        };
        b.extend_from_slice(&(ncall as i32).to_le_bytes());
        b.extend_from_slice(&(e.in_sum2.len() as i32).to_le_bytes());
        for &s in &e.in_sum2 {
            let v = if legacy {
                s
            } else if e.count > 0 {
                (s / e.count as f32) * ncall as f32
            } else {
                1.0
            };
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b.extend_from_slice(&(m.chunk_count as i32).to_le_bytes());
    let ds = m.datasets.first().map(String::as_str).unwrap_or("");
    b.extend_from_slice(&(ds.len() as i32).to_le_bytes());
    b.extend_from_slice(ds.as_bytes());
    crate::files::write_file(path, &b)
}

/// An importance matrix holds one float per input column of every linear layer: about
/// 2 MB for a 9B model, 0.2 GB for the largest open models. Anything larger is not one.
pub const MAX_IMATRIX_BYTES: u64 = 4 << 30;

/// Reads either format (GGUF first, as llama-quantize tries it, then the legacy layout).
pub fn read_imatrix(path: &Path) -> Result<Imatrix> {
    let head = crate::files::read_capped(path, "imatrix file", MAX_IMATRIX_BYTES)?;
    if head.starts_with(b"GGUF") {
        return read_gguf(path, GgufFile::from_bytes(path, head)?);
    }
    read_dat(path, &head)
}

fn read_gguf(path: &Path, f: GgufFile) -> Result<Imatrix> {
    let mut m = Imatrix::default();
    match f.get("general.type") {
        Some(Value::String(s)) if s == "imatrix" => {}
        _ => {
            return Err(Error::file(
                path,
                "a GGUF, but not an imatrix (general.type is not \"imatrix\")",
            ))
        }
    }
    match f.get("imatrix.datasets") {
        Some(Value::Array(_, v)) => {
            for d in v {
                if let Value::String(s) = d {
                    m.datasets.push(s.clone());
                }
            }
        }
        _ => return Err(Error::file(path, "imatrix.datasets missing")),
    }
    m.chunk_count = match f.get("imatrix.chunk_count") {
        Some(Value::U32(v)) => *v,
        _ => return Err(Error::file(path, "imatrix.chunk_count missing")),
    };
    m.chunk_size = match f.get("imatrix.chunk_size") {
        Some(Value::U32(v)) => *v,
        _ => return Err(Error::file(path, "imatrix.chunk_size missing")),
    };
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for t in &f.tensors {
        let Some(name) = t.name.strip_suffix(".in_sum2") else {
            continue;
        };
        if t.ggml_type != 0 {
            return Err(Error::file(path, format!("{}: not F32", t.name)));
        }
        let counts_name = format!("{name}.counts");
        let c = f
            .tensors
            .iter()
            .find(|u| u.name == counts_name)
            .ok_or_else(|| {
                Error::file(path, format!("{} has no matching {counts_name}", t.name))
            })?;
        if c.ggml_type != 0 || c.nbytes != 4 {
            return Err(Error::file(
                path,
                format!("{counts_name}: expected one F32 (dense weights only)"),
            ));
        }
        let in_sum2 = f32s(f.tensor_data(t));
        let count = f32s(f.tensor_data(c))[0];
        if !count.is_finite() || count < 0.0 {
            return Err(Error::file(
                path,
                format!("{counts_name}: invalid count {count}"),
            ));
        }
        check_values(path, name, &in_sum2)?;
        m.entries.insert(
            name.to_string(),
            Entry {
                in_sum2,
                count: count.round() as u64,
            },
        );
    }
    for t in &f.tensors {
        if let Some(name) = t.name.strip_suffix(".counts") {
            if !m.entries.contains_key(name) {
                return Err(Error::file(
                    path,
                    format!("{} has no matching {name}.in_sum2", t.name),
                ));
            }
        }
    }
    Ok(m)
}

fn check_values(path: &Path, name: &str, v: &[f32]) -> Result<()> {
    if let Some((j, x)) = v
        .iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite() || **x < 0.0)
    {
        return Err(Error::file(
            path,
            format!("{name}: invalid value {x} at column {j} (NaN, infinite or negative)"),
        ));
    }
    Ok(())
}

struct Dat<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Dat<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.left() < n {
            return Err(Error::file(
                self.path,
                format!("truncated imatrix.dat: {what} at byte {}", self.pos),
            ));
        }
        self.pos += n;
        Ok(&self.b[self.pos - n..self.pos])
    }
    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
}

fn read_dat(path: &Path, b: &[u8]) -> Result<Imatrix> {
    let mut d = Dat { b, pos: 0, path };
    let n = d.i32("entry count")?;
    if n < 0 || n as usize > b.len() / 16 {
        return Err(Error::file(
            path,
            format!("not an imatrix file (claims {n} entries)"),
        ));
    }
    let mut m = Imatrix::default();
    let mut max_ncall = 0i64;
    for _ in 0..n {
        let len = d.i32("name length")?;
        if len <= 0 || len > 4096 {
            return Err(Error::file(
                path,
                format!("not an imatrix file (name length {len})"),
            ));
        }
        let name = String::from_utf8(d.take(len as usize, "name")?.to_vec())
            .map_err(|_| Error::file(path, "entry name is not UTF-8"))?;
        let ncall = d.i32("ncall")?;
        let nval = d.i32("value count")?;
        if nval <= 0 || nval as usize > d.left() / 4 {
            return Err(Error::file(
                path,
                format!("truncated or corrupt entry {name:?} ({nval} values)"),
            ));
        }
        let raw = d.take(4 * nval as usize, "values")?;
        let vals: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        check_values(path, &name, &vals)?;
        max_ncall = max_ncall.max(ncall as i64);
        // llama-quantize reads importance = value / ncall; keeping the values as sums over
        // `ncall` rows makes importance() = in_sum2 / count give exactly that division.
        m.entries.insert(
            name,
            Entry {
                in_sum2: vals,
                count: ncall.max(0) as u64,
            },
        );
    }
    if d.left() >= 4 {
        m.chunk_count = d.i32("chunk count")?.max(0) as u32;
        if d.left() >= 4 {
            let dl = d.i32("dataset length")?;
            if dl > 0 && (dl as usize) <= d.left() {
                m.datasets
                    .push(String::from_utf8_lossy(d.take(dl as usize, "dataset")?).to_string());
            }
        }
    } else {
        m.chunk_count = max_ncall as u32;
    }
    m.chunk_size = 0;
    Ok(m)
}
