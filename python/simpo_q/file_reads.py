"""Reading a range of a large file without paying for the page cache twice.

A checkpoint's blocks are read once and widened at once. A block the page cache already holds
whole (mincore) is copied from it; any other is read with O_DIRECT, the disk writing straight
into our buffer instead of into the page cache and then again, by the CPU, into our buffer.
On the development VM that copy cost the two cores about 20 s of system time for a 17 GB
checkpoint read from the disk, and quantizing it from a cold disk went from 43–45 s to 33 s
(BENCHMARKS.md, issue 15). A file system that refuses O_DIRECT (tmpfs, some network file
systems) is read buffered, as is everything where residency cannot be asked (not Linux).

The buffer is this thread's own, page-aligned as O_DIRECT needs, and reused: what
`read_range` returns is valid until the thread's next call."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from pathlib import Path

from simpo_q._native import SimpoQError

ALIGN = 4096  # O_DIRECT's alignment of offsets, lengths and memory on common devices
_local = threading.local()
_buffered_only: set[str] = set()  # files whose file system refused O_DIRECT
_lock = threading.Lock()


def _buffer(size: int) -> mmap.mmap:
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = mmap.mmap(-1, size)  # anonymous: page-aligned
    return buf


def _resident(fd: int, offset: int, length: int) -> bool:
    """Whether every page of the file's range is in the page cache (True where that cannot
    be asked, so that such systems keep the plain buffered read). A private mapping of the
    range is made and dropped without touching a page: nothing is read."""
    if not hasattr(os, "O_DIRECT") or length <= 0:
        return True
    page = mmap.PAGESIZE
    p0 = offset - offset % page
    span = offset + length - p0
    try:
        libc = _libc()
        mm = mmap.mmap(fd, span, offset=p0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError, AttributeError):
        return True
    try:
        anchor = ctypes.c_char.from_buffer(mm)
        pages = -(-span // page)
        vec = (ctypes.c_ubyte * pages)()
        rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(span), vec)
        del anchor
        return rc != 0 or all(v & 1 for v in bytes(vec))
    finally:
        mm.close()


def _libc():
    lib = getattr(_libc, "lib", None)
    if lib is None:
        lib = _libc.lib = ctypes.CDLL(None, use_errno=True)
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        lib.mincore.restype = ctypes.c_int
    return lib


def _direct_read(path: Path, buf: mmap.mmap, at: int, file_offset: int, need: int) -> bool:
    """Reads at least `need` bytes of the file from `file_offset` (aligned) into `buf` from
    `at` (aligned) with O_DIRECT; False when the file system refuses it."""
    if not hasattr(os, "O_DIRECT") or str(path) in _buffered_only:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        with _lock:
            _buffered_only.add(str(path))
        return False
    try:
        length = -(-need // ALIGN) * ALIGN
        dst = memoryview(buf)[at : at + length]
        done = 0
        while done < need:
            try:
                got = os.preadv(fd, [dst[done:]], file_offset + done)
            except OSError as e:
                if e.errno != errno.EINVAL or done:
                    raise
                with _lock:  # an alignment this device does not take: buffered from now on
                    _buffered_only.add(str(path))
                return False
            if got == 0:
                break
            done += got
            if got % ALIGN:
                break  # the end of the file
        return done >= need
    finally:
        os.close(fd)


def read_range(path: Path, offset: int, n: int, what: str) -> memoryview:
    """`n` bytes of `path` from `offset`: copied from the page cache when it holds them all,
    read directly otherwise. `what` names the data in errors (a tensor)."""
    a0 = offset - offset % ALIGN
    a1 = -(-(offset + n) // ALIGN) * ALIGN
    buf = _buffer(a1 - a0)
    view = memoryview(buf)[offset - a0 : offset - a0 + n]
    try:
        with open(path, "rb", buffering=0) as fh:
            got = 0
            if n and not _resident(fh.fileno(), offset, n) and _direct_read(path, buf, 0, a0, offset + n - a0):
                got = n
            while got < n:  # from the page cache, or what O_DIRECT could not read
                fh.seek(offset + got)
                r = fh.readinto(view[got:])
                if not r:
                    break
                got += r
    except OSError as e:
        raise SimpoQError(f"{path}: cannot read {what}: {e.strerror}") from e
    if got != n:
        raise SimpoQError(f"{path}: truncated while reading {what}")
    return view
