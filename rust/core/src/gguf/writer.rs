//! Streaming GGUF writer. The metadata and every tensor's info are known before any data
//! (the type policy decides types up front), so the header is written first and tensors are
//! appended as they are produced; nothing but the current tensor is ever in memory. Output
//! goes through [`crate::files::AtomicFile`]: a failed or killed run never leaves a partial
//! file at the destination.

use super::value::{encode_str, Value};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
use crate::error::{Error, Result};
use crate::files::AtomicFile;
use crate::ggml_types::{ggml_type_name, tensor_nbytes};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ne0 first (the contiguous row length), as GGUF stores them.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
}

pub struct GgufWriter {
    out: Option<AtomicFile>,
    dest: PathBuf,
    infos: Vec<TensorInfo>,
    sizes: Vec<u64>,
    next: usize,
    /// bytes of the next tensor already written by `write_tensor_part`
    partial: u64,
    alignment: u64,
}

fn pad(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

impl GgufWriter {
    pub fn create(
        dest: &Path,
        kvs: &[(String, Value)],
        infos: Vec<TensorInfo>,
    ) -> Result<GgufWriter> {
        crate::files::check_destination(dest)?;
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut seen = std::collections::HashSet::new();
        for (k, v) in kvs {
            if !seen.insert(k.as_str()) {
                return Err(Error::file(dest, format!("metadata key {k:?} given twice")));
            }
            if k == "general.alignment" {
                match v {
                    Value::U32(a) if a.is_power_of_two() => alignment = *a as u64,
                    _ => {
                        return Err(Error::file(
                            dest,
                            "general.alignment must be a u32 power of two",
                        ))
                    }
                }
            }
        }
        let mut sizes = Vec::with_capacity(infos.len());
        let mut names = std::collections::HashSet::new();
        for t in &infos {
            if t.name.len() >= 64 {
                return Err(Error::file(
                    dest,
                    format!("tensor name {:?} is 64 bytes or longer", t.name),
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(Error::file(
                    dest,
                    format!("tensor {:?} given twice", t.name),
                ));
            }
            if t.dims.is_empty() || t.dims.len() > 4 {
                return Err(Error::file(
                    dest,
                    format!("tensor {:?}: {} dimensions", t.name, t.dims.len()),
                ));
            }
            let n = tensor_nbytes(t.ggml_type, &t.dims).ok_or_else(|| {
                Error::file(
                    dest,
                    format!(
                        "tensor {:?}: type {} cannot hold shape {:?}",
                        t.name,
                        ggml_type_name(t.ggml_type).unwrap_or("unknown"),
                        t.dims
                    ),
                )
            })?;
            sizes.push(n);
        }

        let mut head = Vec::new();
        head.extend_from_slice(GGUF_MAGIC);
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(infos.len() as u64).to_le_bytes());
        head.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            encode_str(k, &mut head);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            v.encode(&mut head)
                .map_err(|e| Error::file(dest, format!("metadata {k:?}: {e}")))?;
        }
        let mut offset = 0u64;
        for (t, &n) in infos.iter().zip(&sizes) {
            encode_str(&t.name, &mut head);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset += pad(n, alignment);
        }
        let padded = pad(head.len() as u64, alignment) as usize;
        head.resize(padded, 0);

        let mut w = GgufWriter {
            out: Some(AtomicFile::create(dest)?),
            dest: dest.to_path_buf(),
            infos,
            sizes,
            next: 0,
            partial: 0,
            alignment,
        };
        w.write_all(&head)?;
        Ok(w)
    }

    fn write_all(&mut self, b: &[u8]) -> Result<()> {
        let dest = self.dest.clone();
        self.out
            .as_mut()
            .ok_or_else(|| Error::file(&dest, "writer already finished"))?
            .write_all(b)
    }

    /// The tensor the writer expects next, if any.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.infos.get(self.next)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    /// Appends the data of the next tensor, which must be `name` with exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if self.partial != 0 {
            return Err(Error::file(
                &self.dest,
                format!("tensor {name:?}: written whole after a part of it"),
            ));
        }
        if let Some(&n) = self.sizes.get(self.next) {
            if self.infos[self.next].name == name && data.len() as u64 != n {
                return Err(Error::file(
                    &self.dest,
                    format!("tensor {name:?}: {} bytes given, {n} expected", data.len()),
                ));
            }
        }
        self.write_tensor_part(name, data)
    }

    /// Appends the next piece of the next tensor, which must be `name`: a tensor may arrive in
    /// several pieces (blocks of rows), so that no caller holds a whole large tensor. The
    /// padding follows its last byte.
    pub fn write_tensor_part(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(info) = self.infos.get(self.next) else {
            return Err(Error::file(
                &self.dest,
                format!("tensor {name:?}: all tensors already written"),
            ));
        };
        if info.name != name {
            return Err(Error::file(
                &self.dest,
                format!(
                    "tensor {name:?} written out of order; expected {:?}",
                    info.name
                ),
            ));
        }
        let n = self.sizes[self.next];
        let end = self.partial + data.len() as u64;
        if end > n {
            return Err(Error::file(
                &self.dest,
                format!("tensor {name:?}: {end} bytes given, {n} expected"),
            ));
        }
        self.write_all(data)?;
        if end < n {
            self.partial = end;
            return Ok(());
        }
        let zeros = vec![0u8; (pad(n, self.alignment) - n) as usize];
        self.write_all(&zeros)?;
        self.partial = 0;
        self.next += 1;
        Ok(())
    }

    /// Flushes, syncs and renames the temporary file to the destination.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.infos.len() {
            return Err(Error::file(
                &self.dest,
                format!(
                    "{} of {} tensors never written (next: {:?})",
                    self.infos.len() - self.next,
                    self.infos.len(),
                    self.infos[self.next].name
                ),
            ));
        }
        self.out
            .take()
            .expect("unfinished writer has its file")
            .commit()
    }
}
