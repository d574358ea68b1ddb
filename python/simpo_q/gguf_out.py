"""The one path into a GGUF: a planned list of tensors (name, shape, type, a way to get
float32 data) streamed through the native quantizer into the native writer. `convert`,
`quantize` and the trained-model `pipeline` differ only in their plan and metadata."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import simpo_q
from simpo_q._native import SimpoQError
from simpo_q.gguf import GGUFOutput


@dataclass
class Planned:
    name: str
    shape: tuple[int, ...]  # numpy order (rows first)
    qtype: str
    load: Callable[[], np.ndarray]  # float32 data, or raw bytes (uint8) when `raw` is set
    imatrix: np.ndarray | None = None
    raw: bool = False
    refine: bool = False  # the refined encoder (same format; see quants/refine.rs)


ALIGNMENT = 32  # GGUF's default data alignment, which simpo-q's writer uses


def shape_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of `shape` (numpy order) in `qtype`, without padding."""
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * simpo_q.row_size(qtype, shape[-1])


def tensor_bytes(p: Planned) -> int:
    return shape_bytes(p.qtype, p.shape)


def encode(p: Planned, threads: int | None = None) -> np.ndarray:
    data = p.load()
    if p.raw:
        return data
    # every type, F32 included, goes through the core, which checks each value as it
    # converts it (no float32 temporary of a whole tensor for a finiteness scan)
    rows = data.reshape(-1, p.shape[-1])
    try:
        return simpo_q.quantize(np.ascontiguousarray(rows, dtype=np.float32), p.qtype, p.imatrix, threads=threads,
                                refine=p.refine)
    except SimpoQError as e:  # the core names the row and column; the tensor is known here
        raise SimpoQError(f"tensor {p.name}: {e}") from e


def write_gguf(out: str | os.PathLike, metadata: list[tuple[str, str, object]], plan: list[Planned], *,
               quiet: bool = False, threads: int | None = None, log=None) -> Path:
    """Writes the file (temporary name, renamed at the end). Prints llama-quantize's
    `[ i/ n] name - [shape], type = ...` line per tensor unless quiet."""
    from tqdm.auto import tqdm

    log = log or (lambda s: print(s, file=sys.stderr))
    out = Path(out)
    w = GGUFOutput(out, metadata, [(p.name, p.shape, p.qtype) for p in plan])
    try:
        bar = tqdm(plan, desc=f"writing {out.name}", unit="tensor", disable=quiet, file=sys.stderr)
        for i, p in enumerate(bar, 1):
            if not quiet:
                shape = ", ".join(str(d) for d in reversed(p.shape))
                bar.write(f"[{i:4d}/{len(plan):4d}] {p.name:36s} - [{shape:>18s}], type = {p.qtype:6s}",
                          file=sys.stderr)
            w.write(p.name, encode(p, threads))
        w.finish()
    except BaseException:
        w.abort()
        raise
    return out


def size_label(n_params: int) -> str:
    """gguf-py's rounded parameter-count label (e.g. 2.0M, 9.2B)."""
    scale, suffix = next(((sc, sx) for sc, sx in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
                          if n_params >= sc), (1.0, ""))
    scaled = n_params / scale
    digits = max(0, 2 - len(str(int(scaled))))
    return f"{scaled:.{digits}f}{suffix}"
