//! GGUF v3: value types, a streaming writer (temporary file renamed at the end) and a
//! bounds-checked reader over a memory map. Layout facts: docs/conversion.md.

mod reader;
mod value;
mod writer;

pub use crate::ggml_types::{ggml_type_name, ggml_type_size, tensor_nbytes};
pub use reader::{GgufFile, TensorEntry};
pub use value::{Value, ValueType};
pub use writer::{GgufWriter, TensorInfo};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const GGUF_VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
