"""safetensors files written one tensor at a time: the header (names, shapes, dtype) is
known up front, so only the tensor being written is ever in memory. Used for the tiny
model's weights and for the trainer's final model."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np


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

    def write(self, name: str, data: bytes) -> None:
        if name != self.order[self.next] or len(data) != self.sizes[name]:
            raise ValueError(f"{self.path}: tensor {name} out of order or of the wrong size")
        self.f.write(data)
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
        raise ValueError(f"--shards {shards}: more shards than the model has tensors to fill them")
    return groups


def write_weights(out: Path, specs, tensors: Iterator[tuple[str, bytes]], shards: int, dtype: str = "BF16") -> None:
    """Writes `tensors` (HF name, bytes of `dtype`, in `specs` order) as one file or `shards`
    files with Hugging Face's index."""
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
            total += len(data)
        w.close()
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
