"""Type stubs for the native core (checked by mypy.stubtest against the built module)."""

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "SimpoQError",
    "quantize",
    "dequantize",
    "row_size",
    "type_info",
    "QUANT_TYPES",
]

__version__: str
QUANT_TYPES: tuple[str, ...]

class SimpoQError(ValueError):
    """Bad input to simpo-q: the message names the argument, file or tensor at fault."""

def quantize(
    x: npt.NDArray[np.float32],
    qtype: str,
    imatrix: npt.NDArray[np.float32] | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.uint8]:
    """Quantize float32 rows (rows, n_per_row) to ggml's `qtype`; returns (rows, row_bytes).

    Bytes equal ggml's `ggml_quantize_chunk` for the same input and importance vector.
    """

def dequantize(
    data: npt.NDArray[np.uint8],
    qtype: str,
    n_per_row: int,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Dequantize ggml `qtype` rows back to float32, shape (rows, n_per_row)."""

def row_size(qtype: str, n_per_row: int) -> int:
    """Bytes of one row of `n_per_row` values in `qtype` (ggml's ggml_row_size)."""

def type_info(qtype: str) -> tuple[int, int, int]:
    """(ggml type id, values per block, bytes per block) of `qtype`."""
