"""GGUF files through the native reader and streaming writer.

    with GGUFOutput(path, metadata, tensors) as w:        # tensors: [(name, shape, type)]
        for name, data in produce():                     # in the declared order
            w.write(name, data)
    r = open_gguf(path); r.metadata; r.tensors; r.tensor_bytes(name)

Shapes are given in numpy order (rows first); GGUF stores them reversed (ne0 first). The
file appears at `path` only when every tensor has been written; on any error nothing is left.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from simpo_q._native import GgufReader, GgufWriter

Metadata = Sequence[tuple[str, str, Any]]


class GGUFOutput:
    """A GGUF being written: a context manager that finishes on success, aborts on error."""

    def __init__(self, path: str | os.PathLike, metadata: Metadata, tensors: Iterable[tuple[str, Sequence[int], str]]):
        infos = [(name, [int(d) for d in reversed(tuple(shape))], qtype) for name, shape, qtype in tensors]
        self._w = GgufWriter(os.fspath(path), list(metadata), infos)
        self.path = os.fspath(path)

    def next_tensor(self) -> str | None:
        return self._w.next_tensor()

    def write(self, name: str, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self._w.write_tensor(name, raw)

    def write_part(self, name: str, data: np.ndarray) -> None:
        """The next block of rows of `name` (the tensor is complete with its last byte)."""
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self._w.write_tensor_part(name, raw)

    def finish(self) -> None:
        self._w.finish()

    def abort(self) -> None:
        self._w.abort()

    def __enter__(self) -> GGUFOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def open_gguf(path: str | os.PathLike) -> GgufReader:
    return GgufReader(os.fspath(path))


def metadata_dict(reader: GgufReader) -> dict[str, Any]:
    return {k: v for k, _, v in reader.metadata}
