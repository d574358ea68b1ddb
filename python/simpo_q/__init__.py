"""simpo-q: SimPO preference fine-tuning to an importance-weighted k-quant GGUF.

The numeric core (k-quants byte-identical to llama.cpp's ggml, dequantization) is native
Rust; this package is its typed Python face.
"""

from __future__ import annotations

from simpo_q._native import (
    MAX_IMPORTANCE_WEIGHT2,
    QUANT_TYPES,
    REFINABLE_TYPES,
    SimpoQError,
    __version__,
    dequantize,
    quantize,
    row_size,
    type_info,
)

__all__ = [
    "MAX_IMPORTANCE_WEIGHT2",
    "QUANT_TYPES",
    "REFINABLE_TYPES",
    "SimpoQError",
    "__version__",
    "dequantize",
    "quantize",
    "row_size",
    "type_info",
]
