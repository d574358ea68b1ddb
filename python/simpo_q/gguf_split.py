"""Split GGUF files, in the layout of llama.cpp's gguf-split (which its loader reads, and
which convert_hf_to_gguf.py --split-max-size and llama-quantize --keep-split write): files
PREFIX-00001-of-0000N.gguf; the first holds every metadata key, each holds its own tensors,
and every one ends its keys with split.no (u16), split.count (u16) and split.tensors.count
(i32, the tensors of all files)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from simpo_q._native import SimpoQError
from simpo_q.gguf import open_gguf

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
_NAME = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")


def split_name(prefix: str | os.PathLike, i: int, n: int) -> Path:
    """llama_split_path: the i-th (from 0) of n files of `prefix`."""
    return Path(f"{os.fspath(prefix)}-{i + 1:05d}-of-{n:05d}.gguf")


def split_prefix(out: str | os.PathLike) -> str:
    """What the split names of an output hang off: its path less a .gguf suffix (llama-quantize
    and the converter both drop it)."""
    s = os.fspath(out)
    return s[: -len(".gguf")] if s.endswith(".gguf") else s


def split_keys(i: int, n: int, total_tensors: int) -> list[tuple[str, str, object]]:
    return [("split.no", "u16", i), ("split.count", "u16", n), ("split.tensors.count", "i32", total_tensors)]


def split_by_size(sizes: list[int], max_size: int = 0, max_tensors: int = 0) -> list[int]:
    """The split index of each tensor, as gguf-py's writer decides while tensors are added: a
    new file when the current one has max_tensors tensors, or when the next tensor would take
    its data past max_size bytes (0: no limit); never an empty file."""
    out, current, count, i = [], 0, 0, 0
    for size in sizes:
        if count > 0 and ((max_tensors and count >= max_tensors) or (max_size and current + size > max_size)):
            i, current, count = i + 1, 0, 0
        out.append(i)
        current += size
        count += 1
    return out


class SplitGguf:
    """A GGUF that may be split: open its first file (or an unsplit file) and read the tensors
    of all of them. `metadata` is the first file's, less the split keys; `tensors` lists
    (name, dims, type, offset, bytes) in file order; `split_of(name)` says which file holds a
    tensor."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        first = open_gguf(path)
        md = {k: v for k, _, v in first.metadata}
        n = int(md.get("split.count", 1) or 1)
        readers = [first]
        if n > 1:
            m = _NAME.match(path.name)
            if int(md.get("split.no", -1)) != 0 or m is None or int(m.group(2)) != 1 or int(m.group(3)) != n:
                raise SimpoQError(
                    f"{path}: split {int(md.get('split.no', 0)) + 1} of {n}; give the first file "
                    f"(NAME-00001-of-{n:05d}.gguf)"
                )
            prefix = path.with_name(m.group(1))
            for i in range(1, n):
                p = split_name(prefix, i, n)
                if not p.is_file():
                    raise SimpoQError(f"{p}: missing (split {i + 1} of {n} of {path})")
                r = open_gguf(p)
                rm = {k: v for k, _, v in r.metadata}
                if rm.get("split.no") != i or rm.get("split.count") != n:
                    raise SimpoQError(f"{p}: is not split {i + 1} of {n} of {path}")
                readers.append(r)
            total = sum(len(r.tensors) for r in readers)
            if md.get("split.tensors.count") not in (None, total):
                claimed = md["split.tensors.count"]
                raise SimpoQError(f"{path}: the splits hold {total} tensors, the first says {claimed}")
        self.path = path
        self.n_splits = n
        self.metadata = [(k, t, v) for k, t, v in first.metadata if k not in SPLIT_KEYS]
        self.tensors = [t for r in readers for t in r.tensors]
        self._where = {t[0]: (i, r) for i, r in enumerate(readers) for t in r.tensors}

    def tensor_bytes(self, name: str):
        return self._where[name][1].tensor_bytes(name)

    def split_of(self, name: str) -> int:
        return self._where[name][0]
