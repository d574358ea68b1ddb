//! Importance matrices as llama.cpp's llama-imatrix collects them: per weight, the sum of
//! squared input activations of every column and the number of token rows, plus both file
//! formats (the GGUF imatrix and the legacy `imatrix.dat`). Facts: ggml-quants.md §5.

mod accumulate;
mod files;

pub use accumulate::{Entry, Imatrix};
pub use files::{read_imatrix, write_imatrix_dat, write_imatrix_gguf};
