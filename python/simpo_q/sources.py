"""Hugging Face checkpoint directories as a lazy stream of named float32 tensors.

Tensors are read through safetensors' memory maps one at a time, in the order llama.cpp's
converter visits them (files sorted by name, keys sorted within a file), and widened from
their stored dtype straight to float32 (bf16 and f16 widen exactly)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from simpo_q._native import SimpoQError
from simpo_q.arch import adapter_for, check_tensors
from simpo_q.arch.base import LM_HEAD


class HFDirectory:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        cfg = self.path / "config.json"
        if not self.path.exists():
            raise SimpoQError(f"{self.path}: no such model directory")
        if not self.path.is_dir():
            raise SimpoQError(f"{self.path}: not a directory (expected a Hugging Face model directory)")
        if not cfg.is_file():
            raise SimpoQError(f"{cfg}: missing; a Hugging Face model directory needs config.json")
        self.config = read_config(cfg)
        self.files = self._weight_files()
        self._where: dict[str, Path] = {}
        self._dtype: dict[str, str] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._offset: dict[str, int] = {}  # of the tensor's first byte in its file
        for f in self.files:
            for name, (dtype, shape, offset) in _header(f).items():
                if name in self._where:
                    raise SimpoQError(f"{f}: tensor {name!r} is also in {self._where[name]}")
                self._where[name] = f
                self._dtype[name] = dtype
                self._shape[name] = shape
                self._offset[name] = offset
        # every tensor present with the shape the config implies, before anything is written
        check_tensors(adapter_for(self.config, str(cfg)), self.config, self._shape, str(self.path))
        from simpo_q.file_reads import direct_reads_for

        # blocks of rows bypass the page cache only when it could not keep the checkpoint
        self.direct_reads = direct_reads_for(sum(f.stat().st_size for f in self.files))

    def _weight_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            wm = _read_json(index, "safetensors index", MAX_JSON_BYTES)
            if not isinstance(wm, dict) or not isinstance(wm.get("weight_map"), dict):
                raise SimpoQError(f'{index}: not a valid safetensors index (no "weight_map" object)')
            names = set()
            for tensor, f in wm["weight_map"].items():
                # only files of this directory: a name with a path in it could reach any file
                if not isinstance(f, str) or not f or f in (".", "..") or "/" in f or "\\" in f or Path(f).name != f:
                    raise SimpoQError(
                        f"{index}: tensor {tensor!r}: shard {f!r} is not a file name in "
                        f"{self.path} (shards must lie in the model directory)"
                    )
                names.add(f)
            files = sorted(self.path / f for f in names)
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

    def dtypes(self) -> set[str]:
        """The stored dtypes (BF16, F16, F32...), for the model card."""
        return set(self._dtype.values())

    def stored_type(self, name: str) -> str:
        """The tensor's stored dtype (BF16, F16, F32), for the quantizer's log."""
        return self._dtype[name]

    def load(self, name: str) -> np.ndarray:
        """The tensor widened to float32 (C order)."""
        shape = self._shape[name]
        if self._dtype[name] in _WIDEN and len(shape) >= 1:
            rows = self.load_rows(name, 0, shape[0] if len(shape) > 1 else 1)
            return rows.reshape(shape)
        return self._load_safetensors(name)

    def load_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a 2-D tensor (of a 1-D one: the whole of it as one row),
        read from the file into memory of their own size (a checkpoint larger than memory:
        into the thread's block buffer, file_reads.py) and widened to float32: a block of a
        large tensor costs its block alone (no memory map kept resident, no torch)."""
        shape = self._shape[name]
        dtype = self._dtype[name]
        cols = shape[-1] if shape else 1
        if dtype not in _WIDEN:
            return self._load_safetensors(name).reshape(-1, cols)[start:stop]
        import simpo_q

        if self.direct_reads:
            from simpo_q.file_reads import read_range

            raw = read_range(self._where[name], *self._byte_range(name, start, stop), f"tensor {name!r}")
        else:
            raw = self.read_raw(name, start, stop)
        # widened into an array of its own before the thread's read buffer is used again
        return simpo_q.dequantize(np.frombuffer(raw, dtype=np.uint8), dtype, cols).reshape(stop - start, cols)

    def _byte_range(self, name: str, start: int, stop: int) -> tuple[int, int]:
        """(offset in its file, length) of rows [start, stop) of a tensor."""
        shape = self._shape[name]
        row = (shape[-1] if shape else 1) * _DTYPE_SIZES[self._dtype[name]]
        return self._offset[name] + start * row, (stop - start) * row

    def read_raw(self, name: str, start: int = 0, stop: int | None = None, into: bytearray | None = None) -> bytearray:
        """The stored bytes of rows [start, stop) (all rows by default) of a tensor whose
        dtype is one of `_WIDEN`, unconverted, in `into` when it has their size (a buffer
        reused from tensor to tensor) or in a new one; the GIL is released while the file is
        read."""
        shape = self._shape[name]
        dtype = self._dtype[name]
        if dtype not in _WIDEN:
            raise SimpoQError(f"{self._where[name]}: tensor {name!r} is stored as {dtype}, not as raw floats")
        if stop is None:
            stop = math.prod(shape[:-1]) if len(shape) > 1 else 1
        f = self._where[name]
        first, n = self._byte_range(name, start, stop)
        raw = into if into is not None and len(into) == n else bytearray(n)  # read into, not read and copied
        try:
            with open(f, "rb") as fh:
                fh.seek(first)
                got = fh.readinto(raw)
        except OSError as e:
            raise SimpoQError(f"{f}: cannot read tensor {name!r}: {e.strerror}") from e
        if got != n:
            raise SimpoQError(f"{f}: truncated while reading tensor {name!r}")
        return raw

    def _load_safetensors(self, name: str) -> np.ndarray:
        from safetensors import SafetensorError, safe_open

        f = self._where[name]
        try:
            with safe_open(str(f), framework="pt") as st:
                t = st.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise SimpoQError(f"{f}: cannot read tensor {name!r}: {e}") from e
        a = np.ascontiguousarray(t.float().numpy(), dtype=np.float32)
        return a


# stored dtypes widened to float32 by the native core (ggml's exact bf16/f16 conversions, one
# pass, on every core): no torch, no numpy temporaries
_WIDEN = ("F32", "F16", "BF16")

MAX_JSON_BYTES = 64 << 20  # config.json and an index are kilobytes; a larger file is not one


def _read_json(path: Path, what: str, cap: int):
    try:
        if not path.is_file():
            raise SimpoQError(f"{path}: not a regular file (expected the {what})")
        size = path.stat().st_size
        if size > cap:
            raise SimpoQError(f"{path}: {size} bytes, too large for a {what}")
        return json.loads(path.read_bytes())
    except OSError as e:
        raise SimpoQError(f"{path}: cannot read the {what} ({e.strerror})") from e
    except (ValueError, RecursionError) as e:
        raise SimpoQError(f"{path}: the {what} is not valid JSON ({e})") from e


def read_config(path: Path) -> dict:
    """A model's config.json: a JSON object, or a one-line error naming the file."""
    cfg = _read_json(path, "model config", MAX_JSON_BYTES)
    if not isinstance(cfg, dict):
        raise SimpoQError(f"{path}: the model config is a JSON {type(cfg).__name__}, not an object")
    return cfg


_DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _header(path: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
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
        except (ValueError, RecursionError) as e:
            raise SimpoQError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise SimpoQError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    out = {}
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = (
                isinstance(dtype, str)
                and all(type(d) is int and d >= 0 for d in shape)
                and type(a) is int
                and type(b) is int
                and 0 <= a <= b
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise SimpoQError(f"{path}: corrupt safetensors entry for {name!r}")
        if b > data_len:
            raise SimpoQError(f"{path}: truncated: tensor {name!r} ends at byte {b} of a {data_len}-byte data section")
        if dtype not in _DTYPE_SIZES:
            raise SimpoQError(
                f"{path}: tensor {name!r} has dtype {dtype}, which simpo-q cannot read "
                f"(supported: {', '.join(_DTYPE_SIZES)})"
            )
        count = math.prod(shape)
        if (b - a) != count * _DTYPE_SIZES[dtype]:
            raise SimpoQError(f"{path}: corrupt entry for {name!r}: {b - a} bytes for {dtype} {list(shape)}")
        out[name] = (dtype, shape, 8 + n + a)
    return out


class StateDictSource:
    """An in-memory model (HF tensor names → tensors, e.g. the trained weights) with the
    config and tokenizer of a Hugging Face directory: the same interface as HFDirectory, so
    trained weights go straight to the quantizer without an intermediate file."""

    def __init__(self, model_dir: str | os.PathLike, tensors: dict):
        self.path = Path(model_dir)
        self.config = read_config(self.path / "config.json")
        tied = adapter_for(self.config, str(self.path / "config.json")).tied(self.config)
        self._t = {k: v for k, v in tensors.items() if not (tied and k == LM_HEAD)}  # the head is the embedding

    def names(self) -> list[str]:
        return sorted(self._t)

    def stored_type(self, name: str) -> str:
        return "F32"  # handed over widened to float32

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[name].shape)

    def load(self, name: str) -> np.ndarray:
        return _float32(self._t[name])

    def load_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a 2-D tensor, widened to float32: a large bf16 tensor (the
        trained model's embedding) costs the host one block of float32, not the whole."""
        t = self._t[name]
        return _float32(t.reshape(t.shape[0], -1)[start:stop])


def _float32(t) -> np.ndarray:
    """A torch tensor (anywhere, any float dtype) or an array as C-ordered float32 on the host;
    a CPU float32 tensor as a view."""
    if hasattr(t, "detach"):
        t = t.detach().float().cpu().numpy()
    return np.ascontiguousarray(t, dtype=np.float32)
