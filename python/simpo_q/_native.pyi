"""Type stubs for the native core (checked by mypy.stubtest against the built module)."""

import os
from pathlib import Path
from typing import final

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "SimpoQError",
    "quantize",
    "dequantize",
    "row_size",
    "type_info",
    "simd",
    "SIMD_LEVELS",
    "QUANT_TYPES",
    "MAX_IMPORTANCE_WEIGHT2",
    "REFINABLE_TYPES",
    "write_file",
    "remove_stale_temporaries",
    "GgufWriter",
    "GgufReader",
    "Imatrix",
]

__version__: str
QUANT_TYPES: tuple[str, ...]
MAX_IMPORTANCE_WEIGHT2: float
REFINABLE_TYPES: tuple[str, ...]
SIMD_LEVELS: tuple[str, ...]  # the quantizers' instruction sets, widest first

class SimpoQError(ValueError):
    """Bad input to simpo-q: the message names the argument, file or tensor at fault."""

def quantize(
    x: npt.NDArray[np.float32],
    qtype: str,
    imatrix: npt.NDArray[np.float32] | None = None,
    *,
    threads: int | None = None,
    refine: bool = False,
) -> npt.NDArray[np.uint8]:
    """Quantize float32 rows (rows, n_per_row) to ggml's `qtype`; returns (rows, row_bytes).

    Bytes equal ggml's `ggml_quantize_chunk` for the same input and importance vector. With
    `refine`, the k-quants in REFINABLE_TYPES get simpo-q's refined encoder: the same format,
    every block's (importance-)weighted error at most ggml's.
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

def simd() -> str:
    """The instruction set the quantizers run with: "avx512", "avx2" or "plain" (the widest
    this CPU runs, or the one the environment's SIMPO_Q_SIMD names); every one gives the same
    bytes."""

def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """The whole file through the guarded writer: temporary name, synced, renamed; a
    directory or device at `path` is refused."""

def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Removes the temporaries of `path` whose writing process no longer exists."""

@final
class GgufWriter:
    """Streaming GGUF writer: metadata and tensor infos first, then each tensor's bytes in
    order; the file appears at `path` only at `finish`."""

    def __new__(
        cls,
        path: str,
        metadata: list[tuple[str, str, object]],
        tensors: list[tuple[str, list[int], str]],
    ) -> GgufWriter: ...
    def next_tensor(self) -> str | None: ...
    def write_tensor(self, name: str, data: npt.NDArray[np.uint8]) -> None: ...
    def write_tensor_part(self, name: str, data: npt.NDArray[np.uint8]) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...

@final
class GgufReader:
    """Metadata, tensor infos and zero-copy tensor bytes of a GGUF file (memory-mapped)."""

    def __new__(cls, path: str) -> GgufReader: ...
    @property
    def version(self) -> int: ...
    @property
    def alignment(self) -> int: ...
    @property
    def data_offset(self) -> int: ...
    @property
    def metadata(self) -> list[tuple[str, str, object]]: ...
    @property
    def tensors(self) -> list[tuple[str, list[int], str, int, int]]: ...
    def tensor_bytes(self, name: str) -> npt.NDArray[np.uint8]: ...

@final
class Imatrix:
    """Per-weight sums of squared input activations per column and token counts."""

    def __new__(cls, chunk_size: int = 512) -> Imatrix: ...
    def add(self, name: str, x: npt.NDArray[np.float32]) -> None: ...
    def set_entry(self, name: str, in_sum2: npt.NDArray[np.float32], count: int) -> None: ...
    def merge(self, other: Imatrix) -> None: ...
    def names(self) -> list[str]: ...
    def entry(self, name: str) -> tuple[npt.NDArray[np.float32], int]: ...
    def importance(self, name: str) -> npt.NDArray[np.float32] | None: ...
    @property
    def datasets(self) -> list[str]: ...
    @datasets.setter
    def datasets(self, v: list[str]) -> None: ...
    @property
    def chunk_count(self) -> int: ...
    @chunk_count.setter
    def chunk_count(self, v: int) -> None: ...
    @property
    def chunk_size(self) -> int: ...
    def save(self, path: str, format: str = "gguf") -> None: ...
    @staticmethod
    def load(path: str) -> Imatrix: ...
    def __len__(self) -> int: ...
