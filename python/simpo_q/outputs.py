"""Where simpo-q may write, checked before any long work starts.

Every command names its inputs and its outputs here first. An output may never be an input
(the same path, a link to it, a hard link, or a file of an input model directory): writing
it would destroy what is being read. The main output (the GGUF, the imatrix file) is
replaced when it exists, as llama.cpp's tools do; files written beside it (Modelfile,
NOTICE, OUT.imatrix.gguf) are refused when they exist, unless the user passes --force.
The bytes themselves always go through the native guarded writer (`write_file`,
`GgufWriter`): temporary name, synced, renamed; never a directory or a device."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from simpo_q._native import SimpoQError, write_file


def input_files(paths: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The files behind the given inputs: a file as it is, a model directory as every
    regular file in it but GGUFs (earlier outputs, never read from a directory)."""
    out: list[Path] = []
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        if p.is_dir():
            out.append(p)
            out += [f for f in sorted(p.iterdir()) if f.is_file() and f.suffix != ".gguf"]
        elif p.exists():
            out.append(p)
    return out


def _same(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, side_file: bool = False, force: bool = False
) -> Path:
    """Refuses an output that is an input, a directory, a device, an existing side file
    (without `force`) or a file in a folder that is missing or not writable."""
    out = Path(out)
    for i in input_files(inputs):
        if _same(out, i):
            what = "a file of the input" if i.parent != out.parent or i.is_dir() else "an input"
            raise SimpoQError(
                f"{out}: is {what} ({i}); writing it would destroy what is read. Choose another output name"
            )
    if out.is_dir():
        raise SimpoQError(f"{out}: is a directory; give a file name")
    if out.exists() and not out.is_file():
        raise SimpoQError(f"{out}: exists and is not a regular file")
    if side_file and out.exists() and not force:
        raise SimpoQError(f"{out}: exists; pass --force to replace it")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise SimpoQError(f"{out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SimpoQError(f"{out}: cannot write in {folder} (permission denied)")
    return out


def check_space(out: str | os.PathLike, nbytes: int, what: str = "the file") -> None:
    """Refuses, before any work, an output the folder has no room for (the temporary file
    is written whole before it replaces an old one, so the old one's space does not count)."""
    import shutil

    folder = Path(out).parent if str(Path(out).parent) else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise SimpoQError(
            f"{out}: {what} needs {nbytes / 2**30:.2f} GiB ({nbytes} bytes); {folder} has {free / 2**30:.2f} GiB free"
        )


def write_text(path: str | os.PathLike, text: str) -> Path:
    """A text file through the guarded native writer."""
    write_file(os.fspath(path), text.encode("utf-8"))
    return Path(path)


def imatrix_beside(out: str | os.PathLike) -> Path:
    """Where an importance matrix computed for OUT.gguf is kept: OUT.imatrix.gguf."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".gguf") + ".imatrix.gguf")
