"""The one path into a GGUF: a planned list of tensors (name, shape, type, a way to get
float32 data) streamed through the native quantizer into the native writer. `convert`,
`quantize` and the trained-model `pipeline` differ only in their plan and metadata."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import simpo_q
from simpo_q._native import SimpoQError
from simpo_q.gguf import GGUFOutput
from simpo_q.policy import ggml_type_name


@dataclass
class Planned:
    name: str
    shape: tuple[int, ...]  # numpy order (rows first)
    qtype: str
    load: Callable[[], np.ndarray]  # float32 data, or raw bytes (uint8) when `raw` is set
    imatrix: np.ndarray | None = None
    raw: bool = False
    refine: bool = False  # the refined encoder (same format; see quants/refine.rs)
    # float32 rows [start, stop) of a 2-D tensor, when the source can read part of one: a large
    # tensor then goes through in blocks of rows and is never whole in memory
    rows: Callable[[int, int], np.ndarray] | None = None
    src_type: str | None = None  # the input's type, for llama-quantize's log (None: not a quantizer's input)


ALIGNMENT = 32  # GGUF's default data alignment, which simpo-q's writer uses

# float32 bytes of one block of rows: k-quants quantize rows independently, so the bytes are the
# same whatever the block. 16 MiB: below glibc's largest mmap threshold (32 MiB), so the
# buffers of one block are recycled from the heap for the next instead of being fresh pages
# the kernel zeroes (with 64 MiB blocks, first touches of new pages cost half the wall time
# at 9B on 2 cores, benches/bench_9b.py: 64.7 s with 64 MiB blocks, 31.6 s now, with the write thread)
BLOCK_BYTES = 16 << 20


def shape_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of `shape` (numpy order) in `qtype`, without padding."""
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * simpo_q.row_size(qtype, shape[-1])


def tensor_bytes(p: Planned) -> int:
    return shape_bytes(p.qtype, p.shape)


def format_tensor_shape(shape: tuple[int, ...]) -> str:
    """llama_format_tensor_shape: the four ggml dimensions, innermost first, %6d each."""
    ne = [*reversed(shape), *[1] * (4 - len(shape))]
    return ", ".join(f"{d:6d}" for d in ne)


def log_line(i: int, n: int, p: Planned) -> str:
    """llama-quantize's line for one tensor (src/llama-quant.cpp): the input's type, the
    conversion and the sizes in MiB (a plan without an input type gets the short form)."""
    head = f"[{i:4d}/{n:4d}] {p.name:<36s} - [{format_tensor_shape(p.shape)}], type = "
    if p.src_type is None:
        return head + f"{ggml_type_name(p.qtype):>6s}"
    src = ggml_type_name(p.src_type)
    new = tensor_bytes(p) / 2**20
    if p.src_type == p.qtype:
        return head + f"{src:>6s}, size = {new:8.3f} MiB"
    old = shape_bytes(p.src_type, p.shape) / 2**20
    return head + f"{src:>6s}, converting to {ggml_type_name(p.qtype)} .. size = {old:8.2f} MiB -> {new:8.2f} MiB"


def size_summary(plan: list[Planned]) -> list[str]:
    """llama-quantize's closing lines: the input's and the output's tensor sizes, in MiB and
    bits per weight."""
    n = sum(int(np.prod(p.shape)) for p in plan)
    org = sum(shape_bytes(p.src_type or p.qtype, p.shape) for p in plan)
    new = sum(tensor_bytes(p) for p in plan)
    return [
        f"quantize: model size  = {org / 2**20:8.2f} MiB ({org * 8.0 / n:.2f} BPW)",
        f"quantize: quant size  = {new / 2**20:8.2f} MiB ({new * 8.0 / n:.2f} BPW)",
    ]


def encode(p: Planned, threads: int | None = None) -> np.ndarray:
    data = p.load()
    if p.raw:
        return data
    return _quantize_rows(p, data.reshape(-1, p.shape[-1]), 0, threads)


def _quantize_rows(p: Planned, rows: np.ndarray, first_row: int, threads: int | None) -> np.ndarray:
    # every type, F32 included, goes through the core, which checks each value as it
    # converts it (no float32 temporary of a whole tensor for a finiteness scan)
    try:
        return simpo_q.quantize(
            np.ascontiguousarray(rows, dtype=np.float32), p.qtype, p.imatrix, threads=threads, refine=p.refine
        )
    except SimpoQError as e:  # the core names the row and column; the tensor and block are known here
        msg = str(e)
        if first_row:
            msg = re.sub(r"at row (\d+)", lambda m: f"at row {int(m.group(1)) + first_row}", msg)
        raise SimpoQError(f"tensor {p.name}: {msg}") from e


def block_rows(p: Planned, block_bytes: int) -> int | None:
    """Rows per block for a tensor read in blocks, or None when it goes through whole."""
    if p.raw or p.rows is None or len(p.shape) != 2:
        return None
    per_row = p.shape[1] * 4
    if p.shape[0] * per_row <= block_bytes:
        return None
    return max(1, block_bytes // per_row)


def encode_blocks(p: Planned, step: int, threads: int | None, pool) -> Iterator[np.ndarray]:
    """The quantized bytes of `p` in blocks of `step` rows, the next block read (on `pool`)
    while this one is quantized: reading and widening overlap the quantizer."""
    assert p.rows is not None
    n = p.shape[0]
    starts = list(range(0, n, step))
    ahead = pool.submit(p.rows, 0, min(step, n))
    for k, r0 in enumerate(starts):
        rows = ahead.result()
        if k + 1 < len(starts):
            r1 = starts[k + 1]
            ahead = pool.submit(p.rows, r1, min(r1 + step, n))
        yield _quantize_rows(p, rows, r0, threads)
        del rows


def write_gguf(
    out: str | os.PathLike,
    metadata: list[tuple[str, str, object]],
    plan: list[Planned],
    *,
    quiet: bool = False,
    threads: int | None = None,
    log=None,
    block_bytes: int | None = None,
) -> Path:
    """Writes the file (temporary name, renamed at the end). Prints llama-quantize's
    `[ i/ n] name - [shape], type = ...` line per tensor unless quiet. Tensors larger than
    `block_bytes` of float32 whose source reads rows go through in blocks of rows."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    log = log or (lambda s: print(s, file=sys.stderr))
    out = Path(out)
    w = GGUFOutput(out, metadata, [(p.name, p.shape, p.qtype) for p in plan])
    try:
        # three stages at once: the next block is read, this one quantized, the previous one
        # written (the writer keeps the order; at most one write is in flight)
        with (
            ThreadPoolExecutor(1, thread_name_prefix="simpo-q-read") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="simpo-q-write") as writer,
        ):
            pending = None

            def put(write, name: str, data) -> None:
                nonlocal pending
                if pending is not None:
                    pending.result()  # raises the write's error, if any
                pending = writer.submit(write, name, data)

            bar = tqdm(
                plan, desc=f"writing {out.name}", unit="tensor", disable=True if quiet else None, file=sys.stderr
            )
            for i, p in enumerate(bar, 1):
                if not quiet:
                    bar.write(log_line(i, len(plan), p), file=sys.stderr)
                step = block_rows(p, block_bytes or BLOCK_BYTES)
                if step is None:
                    put(w.write, p.name, encode(p, threads))
                else:
                    for part in encode_blocks(p, step, threads, pool):
                        put(w.write_part, p.name, part)
            if pending is not None:
                pending.result()
        w.finish()
    except BaseException:
        w.abort()
        raise
    return out


def write_split_gguf(
    out: Path,
    prefix: str,
    metadata: list[tuple[str, str, object]],
    parts: list[list[Planned]],
    *,
    quiet: bool = False,
    threads: int | None = None,
    always_split_names: bool = False,
    inputs: list = (),
) -> list[Path]:
    """Writes `parts` as the files of a split GGUF (gguf_split's layout), PREFIX-0000i-of-0000N.gguf.
    One part is the plain file `out`, unless `always_split_names` (llama-quantize --keep-split
    names even a single file PREFIX-00001-of-00001.gguf, without split keys). If any file
    fails, the ones already written are removed: the output is all the files or none. Every
    split name is checked against `inputs` (outputs.check_output) before the first is written."""
    from simpo_q.gguf_split import split_keys, split_name
    from simpo_q.outputs import check_output

    n, total = len(parts), sum(len(p) for p in parts)
    if n == 1 and not always_split_names:
        return [write_gguf(out, metadata, parts[0], quiet=quiet, threads=threads)]
    for i in range(n):
        check_output(split_name(prefix, i, n), inputs)
    done: list[Path] = []
    try:
        for i, part in enumerate(parts):
            md = [*(metadata if i == 0 else []), *(split_keys(i, n, total) if n > 1 else [])]
            done.append(write_gguf(split_name(prefix, i, n), md, part, quiet=quiet, threads=threads))
    except BaseException:
        for f in done:
            f.unlink(missing_ok=True)
        raise
    return done


def size_label(n_params: int) -> str:
    """gguf-py's rounded parameter-count label (e.g. 2.0M, 9.2B)."""
    scale, suffix = next(
        ((sc, sx) for sc, sx in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")) if n_params >= sc), (1.0, "")
    )
    scaled = n_params / scale
    digits = max(0, 2 - len(str(int(scaled))))
    return f"{scaled:.{digits}f}{suffix}"
