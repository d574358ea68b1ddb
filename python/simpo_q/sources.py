"""Hugging Face checkpoint directories as a lazy stream of named float32 tensors.

Tensors are read through safetensors' memory maps one at a time, in the order llama.cpp's
converter visits them (files sorted by name, keys sorted within a file), and widened from
their stored dtype straight to float32 (bf16 and f16 widen exactly)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from simpo_q._native import SimpoQError


class HFDirectory:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        cfg = self.path / "config.json"
        if not self.path.is_dir():
            raise SimpoQError(f"{self.path}: not a directory (expected a Hugging Face model directory)")
        if not cfg.is_file():
            raise SimpoQError(f"{cfg}: missing; a Hugging Face model directory needs config.json")
        try:
            self.config = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SimpoQError(f"{cfg}: not valid JSON ({e})") from e
        self.files = self._weight_files()
        self._where: dict[str, Path] = {}
        self._dtype: dict[str, str] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        for f in self.files:
            for name, (dtype, shape) in _header(f).items():
                self._where[name] = f
                self._dtype[name] = dtype
                self._shape[name] = shape

    def _weight_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise SimpoQError(f"{index}: not a valid safetensors index ({e})") from e
            files = sorted({self.path / f for f in wm.values()})
            for f in files:
                if not f.is_file():
                    raise SimpoQError(f"{f}: missing shard (listed in {index.name})")
            return files
        files = sorted(self.path.glob("model*.safetensors"))
        if not files:
            raise SimpoQError(f"{self.path}: no model*.safetensors weights found")
        return files

    def names(self) -> list[str]:
        return [n for f in self.files for n in sorted(k for k, v in self._where.items() if v == f)]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape[name]

    def load(self, name: str) -> np.ndarray:
        """The tensor widened to float32 (C order)."""
        from safetensors import SafetensorError, safe_open

        f = self._where[name]
        try:
            with safe_open(str(f), framework="pt") as st:
                t = st.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise SimpoQError(f"{f}: cannot read tensor {name!r}: {e}") from e
        a = np.ascontiguousarray(t.float().numpy(), dtype=np.float32)
        return a


_DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Reads and checks a safetensors header without loading data: truncated or corrupt
    files are reported here, naming the file, before anything is written."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise SimpoQError(f"{path}: truncated safetensors file (no header)")
        n = int.from_bytes(raw, "little")
        if n > size - 8 or n > 100_000_000:
            raise SimpoQError(f"{path}: corrupt safetensors header (claims {n} bytes, file has {size})")
        try:
            header = json.loads(fh.read(n))
        except ValueError as e:
            raise SimpoQError(f"{path}: corrupt safetensors header ({e})") from e
    out = {}
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise SimpoQError(f"{path}: corrupt safetensors entry for {name!r}") from e
        if b > data_len:
            raise SimpoQError(f"{path}: truncated: tensor {name!r} ends at byte {b} of a {data_len}-byte data section")
        count = int(np.prod(shape)) if shape else 1
        if dtype in _DTYPE_SIZES and (b - a) != count * _DTYPE_SIZES[dtype]:
            raise SimpoQError(f"{path}: corrupt entry for {name!r}: {b - a} bytes for {dtype} {list(shape)}")
        out[name] = (dtype, shape)
    return out


class StateDictSource:
    """An in-memory model (HF tensor names → tensors, e.g. the trained weights) with the
    config and tokenizer of a Hugging Face directory: the same interface as HFDirectory, so
    trained weights go straight to the quantizer without an intermediate file."""

    def __init__(self, model_dir: str | os.PathLike, tensors: dict):
        self.path = Path(model_dir)
        self.config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        self._t = {k: v for k, v in tensors.items() if k != "lm_head.weight"}

    def names(self) -> list[str]:
        return sorted(self._t)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[name].shape)

    def load(self, name: str) -> np.ndarray:
        t = self._t[name]
        if hasattr(t, "detach"):
            t = t.detach().float().cpu().numpy()
        return np.ascontiguousarray(t, dtype=np.float32)
