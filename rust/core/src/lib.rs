//! simpo-q-core: llama.cpp-compatible quantization in pure Rust.
//!
//! Every quantizer here is a one-to-one port of the function of the same name in ggml's
//! `ggml-quants.c`, so the two can be read side by side; the bytes are identical to ggml's
//! for the same input and importance vector (checked against `ggml_quantize_chunk`).

// Index loops mirror ggml's C one-to-one, which keeps the port reviewable side by side.
#![allow(clippy::needless_range_loop)]

pub mod error;
pub mod files;
pub mod fp16;
pub mod ggml_types;
pub mod gguf;
pub mod imatrix;
pub mod quants;

pub use error::{Error, Result};
pub use quants::{dequantize, quantize, row_size, QuantType};
