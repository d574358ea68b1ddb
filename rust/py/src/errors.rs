use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

create_exception!(
    simpo_q._native,
    SimpoQError,
    PyValueError,
    "Bad input to simpo-q: the message names the argument, file or tensor at fault."
);

pub fn to_py(err: simpo_q_core::Error) -> PyErr {
    SimpoQError::new_err(err.to_string())
}

pub fn bad_arg(msg: impl Into<String>) -> PyErr {
    SimpoQError::new_err(msg.into())
}
