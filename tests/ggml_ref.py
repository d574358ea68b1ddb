"""llama.cpp's own quantizer, `ggml_quantize_chunk` from the libggml-base that
llama-cpp-python ships, called through ctypes: the reference our bytes must equal.

Under CI (CI=true) a missing reference is an error, never a skip.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest

GGML_TYPE_IDS = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 6,
    "Q5_1": 7,
    "Q8_0": 8,
    "Q2_K": 10,
    "Q3_K": 11,
    "Q4_K": 12,
    "Q5_K": 13,
    "Q6_K": 14,
    "IQ4_NL": 20,
    "BF16": 30,
}


def require(what: str, exc: BaseException | None = None) -> None:
    """Skip locally, fail under CI, when a reference implementation is missing."""
    msg = f"reference missing: {what}" + (f" ({exc})" if exc else "")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


def _find_lib() -> Path | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    libdir = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (libdir / name).exists():
            return libdir / name
    return None


class Ggml:
    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        f = self.lib.ggml_quantize_chunk
        f.restype = ctypes.c_size_t
        f.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        r = self.lib.ggml_row_size
        r.restype = ctypes.c_size_t
        r.argtypes = [ctypes.c_int, ctypes.c_int64]

    def row_size(self, qtype: str, n_per_row: int) -> int:
        return int(self.lib.ggml_row_size(GGML_TYPE_IDS[qtype], n_per_row))

    def quantize(self, x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        rs = self.row_size(qtype, n)
        out = np.zeros((rows, rs), dtype=np.uint8)
        w = None
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            w = imatrix.ctypes.data
        written = self.lib.ggml_quantize_chunk(GGML_TYPE_IDS[qtype], x.ctypes.data, out.ctypes.data, 0, rows, n, w)
        assert written == rows * rs
        return out


_GGML: Ggml | None = None


def ggml() -> Ggml:
    global _GGML
    if _GGML is None:
        path = _find_lib()
        if path is None:
            require("libggml-base from llama-cpp-python==0.3.36 (pip install '.[test]')")
        assert path is not None
        _GGML = Ggml(path)
    return _GGML
