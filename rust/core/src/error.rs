//! The one error type of the core. Every variant names the argument or the place at fault,
//! because the Python layer turns the message into the user's exception text as it is.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    #[error("unknown quantization type {0:?}; supported: {1}")]
    UnknownType(String, String),

    #[error("{arg}: n_per_row {n_per_row} is not a multiple of the block size {block} of {qtype}")]
    BadRowLength {
        arg: &'static str,
        qtype: &'static str,
        n_per_row: usize,
        block: usize,
    },

    #[error("{arg}: length {len} is not a multiple of the row length {expected}")]
    BadLength {
        arg: &'static str,
        len: usize,
        expected: usize,
    },

    #[error("{arg}: length {len} does not match n_per_row {n_per_row}")]
    ImatrixLength {
        arg: &'static str,
        len: usize,
        n_per_row: usize,
    },

    #[error("{arg}: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        arg: &'static str,
        value: f32,
        row: usize,
        col: usize,
    },

    #[error("{arg}: negative value {value} at column {col}; importances are sums of squares")]
    Negative {
        arg: &'static str,
        value: f32,
        col: usize,
    },

    #[error("{arg}: {msg}")]
    Invalid { arg: &'static str, msg: String },

    /// A problem with a file: what could not be read or written, or what is wrong in it.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

impl Error {
    pub fn file(path: &std::path::Path, msg: impl std::fmt::Display) -> Error {
        Error::File {
            path: path.display().to_string(),
            msg: msg.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
