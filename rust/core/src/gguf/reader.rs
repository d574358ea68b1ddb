//! GGUF reader over a memory map. Every length, count and offset a file claims is checked
//! against what the file can hold before anything is allocated or read, so a truncated or
//! corrupt file gives an error naming the file and the problem, never a crash, a hang or an
//! allocation of whatever size a corrupt header asks for.

use super::value::{Value, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, Result};
use crate::ggml_types::{ggml_type_name, tensor_nbytes};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    pub nbytes: u64,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorEntry>,
    pub alignment: u64,
    pub data_offset: u64,
    map: Map,
}

enum Map {
    Mmap(memmap2::Mmap),
    Bytes(Vec<u8>),
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::file(self.path, format!("{msg} (at byte {})", self.pos))
    }
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }
    fn value(&mut self, t: ValueType, key: &str) -> Result<Value> {
        let b8 = |c: &mut Self| -> Result<[u8; 8]> { Ok(c.take(8, key)?.try_into().unwrap()) };
        let b4 = |c: &mut Self| -> Result<[u8; 4]> { Ok(c.take(4, key)?.try_into().unwrap()) };
        let b2 = |c: &mut Self| -> Result<[u8; 2]> { Ok(c.take(2, key)?.try_into().unwrap()) };
        Ok(match t {
            ValueType::U8 => Value::U8(self.take(1, key)?[0]),
            ValueType::I8 => Value::I8(self.take(1, key)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(b2(self)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(b2(self)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(b4(self)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(b4(self)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(b4(self)?)),
            ValueType::Bool => match self.take(1, key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                v => return Err(self.err(format!("metadata {key:?}: bool byte {v}"))),
            },
            ValueType::String => Value::String(self.string(key)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(b8(self)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(b8(self)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(b8(self)?)),
            ValueType::Array => {
                let et = self.u32(key)?;
                let et = ValueType::from_u32(et).ok_or_else(|| {
                    self.err(format!("metadata {key:?}: unknown array element type {et}"))
                })?;
                if et == ValueType::Array {
                    return Err(
                        self.err(format!("metadata {key:?}: nested arrays are not allowed"))
                    );
                }
                let n = self.u64(key)?;
                if n.saturating_mul(et.min_size()) > self.remaining() {
                    return Err(self.err(format!(
                        "truncated or corrupt: metadata {key:?} claims {n} elements, more than the file holds"
                    )));
                }
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(et, key)?);
                }
                Value::Array(et, items)
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let (f, len) = crate::files::open_regular(path, "GGUF file")?;
        let map = if len == 0 {
            Map::Bytes(Vec::new())
        } else {
            // SAFETY: the map is read-only; a file changed underneath by another process is
            // the same hazard every mmap-based model loader (llama.cpp included) accepts.
            Map::Mmap(
                unsafe { memmap2::Mmap::map(&f) }
                    .map_err(|e| Error::file(path, format!("cannot map: {e}")))?,
            )
        };
        Self::parse(path, map)
    }

    /// Parses a GGUF held in memory (tests, fuzzing).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(path, Map::Bytes(bytes))
    }

    fn parse(path: &Path, map: Map) -> Result<GgufFile> {
        let b: &[u8] = match &map {
            Map::Mmap(m) => m,
            Map::Bytes(v) => v,
        };
        let mut c = Cursor { b, pos: 0, path };
        let magic = c
            .take(4, "magic")
            .map_err(|_| Error::file(path, "not a GGUF file (shorter than its magic)"))?;
        if magic != GGUF_MAGIC {
            return Err(Error::file(
                path,
                format!("not a GGUF file (magic {magic:02x?})"),
            ));
        }
        let version = c.u32("version")?;
        if version == 1 || version > 3 {
            return Err(Error::file(
                path,
                format!("unsupported GGUF version {version} (2 and 3 are read)"),
            ));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Each KV needs at least a key length, a type and one byte; each tensor info at least 28.
        if n_kv.saturating_mul(13) > c.remaining() || n_tensors.saturating_mul(28) > c.remaining() {
            return Err(c.err(format!(
                "truncated or corrupt: header claims {n_kv} metadata entries and {n_tensors} tensors"
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv.min(1 << 16) as usize);
        let mut keys = std::collections::HashSet::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            if !keys.insert(key.clone()) {
                return Err(c.err(format!("metadata key {key:?} appears twice")));
            }
            let t = c.u32("metadata type")?;
            let t = ValueType::from_u32(t)
                .ok_or_else(|| c.err(format!("metadata {key:?}: unknown type {t}")))?;
            let v = c.value(t, &key)?;
            metadata.push((key, v));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => *a as u64,
            Some(_) => {
                return Err(Error::file(
                    path,
                    "general.alignment is not a u32 power of two",
                ))
            }
        };
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            if !names.insert(name.clone()) {
                return Err(c.err(format!("tensor {name:?} appears twice")));
            }
            let nd = c.u32("tensor dims")?;
            if nd == 0 || nd > 4 {
                return Err(c.err(format!("tensor {name:?}: {nd} dimensions (1 to 4 allowed)")));
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(c.u64("tensor dim")?);
            }
            let t = c.u32("tensor type")?;
            let rel = c.u64("tensor offset")?;
            infos.push((name, dims, t, rel));
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, t, rel) in infos {
            let tn = ggml_type_name(t).ok_or_else(|| {
                Error::file(path, format!("tensor {name:?}: unknown ggml type {t}"))
            })?;
            let nbytes = tensor_nbytes(t, &dims).ok_or_else(|| {
                Error::file(
                    path,
                    format!("tensor {name:?}: shape {dims:?} is not valid for {tn}"),
                )
            })?;
            if rel % alignment != 0 {
                return Err(Error::file(
                    path,
                    format!("tensor {name:?}: offset {rel} is not aligned to {alignment}"),
                ));
            }
            let end = data_offset
                .checked_add(rel)
                .and_then(|o| o.checked_add(nbytes))
                .filter(|&e| e <= b.len() as u64);
            if end.is_none() {
                return Err(Error::file(
                    path,
                    format!("truncated: tensor {name:?} ({nbytes} bytes at data offset {rel}) runs past the end of the file"),
                ));
            }
            tensors.push(TensorEntry {
                name,
                dims,
                ggml_type: t,
                offset: data_offset + rel,
                nbytes,
            });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::Mmap(m) => m,
            Map::Bytes(v) => v,
        }
    }

    /// The data of a tensor, borrowed from the map (no copy).
    pub fn tensor_data(&self, t: &TensorEntry) -> &[u8] {
        &self.bytes()[t.offset as usize..(t.offset + t.nbytes) as usize]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}
