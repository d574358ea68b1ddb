"""safetensors files written one tensor at a time: the header (names, shapes, dtype) is
known up front, so only the tensor being written is ever in memory. Used for the tiny
model's weights and for the trainer's final model."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from simpo_q._native import SimpoQError


class SafetensorsStreamWriter:
    """Writes a safetensors file whose header is known up front (shapes and dtype), then
    the tensors one at a time, so nothing but the current tensor is ever in memory."""

    def __init__(self, path: Path, entries: list[tuple[str, tuple[int, ...]]], dtype: str = "BF16"):
        self.path = path
        self.itemsize = {"BF16": 2, "F32": 4, "F16": 2}[dtype]
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        self.sizes: dict[str, int] = {}
        for name, shape in entries:
            n = int(np.prod(shape)) * self.itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            self.sizes[name] = n
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.order = [n for n, _ in entries]
        self.next = 0
        self.tmp = path.with_name(path.name + ".tmp")
        self.f = open(self.tmp, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)

    def write(self, name: str, data: bytes | Iterable[bytes]) -> None:
        """The tensor's bytes, whole or as pieces (blocks of rows), so that a large tensor
        never has to be in memory at once."""
        if name != self.order[self.next]:
            raise ValueError(f"{self.path}: tensor {name} out of order")
        n = 0
        for piece in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            n += len(piece)
            if n > self.sizes[name]:
                break
            self.f.write(piece)
        if n != self.sizes[name]:
            raise ValueError(f"{self.path}: tensor {name}: {n} bytes, {self.sizes[name]} expected")
        self.next += 1

    def close(self) -> None:
        self.f.close()
        if self.next != len(self.order):
            raise ValueError(f"{self.path}: {len(self.order) - self.next} tensors never written")
        os.replace(self.tmp, self.path)


def shard_plan(specs: list[tuple[str, tuple[int, ...], str]], shards: int) -> list[list[int]]:
    """Contiguous groups of tensor indices of roughly equal byte size."""
    sizes = [int(np.prod(s)) for _, s, _ in specs]
    total = sum(sizes)
    groups: list[list[int]] = [[] for _ in range(shards)]
    acc = 0
    for i, n in enumerate(sizes):
        g = min(shards - 1, acc * shards // total)
        groups[g].append(i)
        acc += n
    if any(not g for g in groups):
        raise SimpoQError(f"--shards {shards}: more shards than the model has tensors to fill them")
    return groups


def write_weights(
    out: Path, specs, tensors: Iterator[tuple[str, bytes | Iterable[bytes]]], shards: int, dtype: str = "BF16"
) -> None:
    """Writes `tensors` (HF name, bytes of `dtype` or an iterable of pieces of them, in
    `specs` order) as one file or `shards` files with Hugging Face's index."""
    if shards == 1:
        files = [("model.safetensors", list(range(len(specs))))]
    else:
        plan = shard_plan(specs, shards)
        files = [(f"model-{k + 1:05d}-of-{shards:05d}.safetensors", g) for k, g in enumerate(plan)]
    it = iter(tensors)
    weight_map = {}
    total = 0
    for fname, idxs in files:
        w = SafetensorsStreamWriter(out / fname, [(specs[i][0], specs[i][1]) for i in idxs], dtype)
        for i in idxs:
            name, data = next(it)
            assert name == specs[i][0]
            w.write(name, data)
            weight_map[name] = fname
            total += w.sizes[name]
        w.close()
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
