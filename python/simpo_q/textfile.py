"""The one reader of users' text files (calibration and evaluation texts, preference data,
task files, tensor-type files): regular files only, capped in size, UTF-8, and one-line
errors that say what the file was meant to be."""

from __future__ import annotations

import json
import os
from pathlib import Path

from simpo_q._native import SimpoQError

MAX_TEXT_BYTES = 1 << 30  # calibration texts are a few MB; preference sets a few hundred


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    p = Path(path)
    try:
        if not p.exists():
            raise SimpoQError(f"{p}: no such {what}")
        if not p.is_file():
            raise SimpoQError(f"{p}: not a regular file (a directory, device or pipe), not a {what}")
        size = p.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise SimpoQError(f"{p}: {size} bytes; a {what} may have at most {MAX_TEXT_BYTES}")
        with open(p, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise SimpoQError(f"{p}: cannot read {what} ({e.strerror})") from e
    if len(raw) > MAX_TEXT_BYTES:
        raise SimpoQError(f"{p}: grew past {MAX_TEXT_BYTES} bytes while being read")
    if not raw.strip():
        raise SimpoQError(f"{p}: {what} is empty")
    if b"\x00" in raw[:65536]:
        raise SimpoQError(f"{p}: {what} looks binary (NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SimpoQError(f"{p}: {what} is not UTF-8 (byte {e.start})") from e


def read_jsonl(path: str | os.PathLike, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is
    an error naming its number."""
    p = Path(path)
    rows = []
    for n, line in enumerate(read_text(p, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise SimpoQError(f"{p}:{n}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise SimpoQError(f"{p}:{n}: expected a JSON object per line")
        rows.append((n, row))
    return rows
