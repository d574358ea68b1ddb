"""Reading a checkpoint larger than memory without paying for the page cache twice.

Buffered reads from a cold disk cost the CPU twice: the kernel fills its page cache, then
copies each block into our buffer. When the page cache can keep the checkpoint, that is worth
it (a second quantize of the same files reads memory, not the disk); when the checkpoint is
larger than the memory available, it cannot, and it would evict everything else on the way.
Then a block the cache holds whole (mincore) is still copied from it, and any other is read
with O_DIRECT, the disk writing straight into our buffer. On the development VM, with the
9B-shaped checkpoint read from a cold disk, that took quantize from 43–45 s to 31–34 s
(BENCHMARKS.md, issue 15). `SIMPO_Q_DIRECT_READS` = auto (the default: only checkpoints
larger than MemAvailable), always or never. A file system that refuses O_DIRECT (tmpfs, some
network file systems) is read buffered, as is everything where residency cannot be asked.

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
_buffered_only: set[str] = set()  # files whose file system refused O_DIRECT (set.add is atomic)


DIRECT_READS = ("auto", "always", "never")


def direct_reads_for(total_bytes: int) -> bool:
    """Whether a checkpoint of `total_bytes` is read with O_DIRECT (module docstring)."""
    mode = os.environ.get("SIMPO_Q_DIRECT_READS") or "auto"
    if mode == "always":
        return hasattr(os, "O_DIRECT")
    if mode == "never" or not hasattr(os, "O_DIRECT"):
        return False
    available = _mem_available()
    return available is not None and total_bytes > available


def _mem_available() -> int | None:
    """Bytes the kernel says it can give without swapping (page cache included), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _buffer(size: int) -> mmap.mmap:
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = mmap.mmap(-1, size)  # anonymous: page-aligned
    return buf


def _resident(fd: int, offset: int, length: int) -> bool:
    """Whether every page of the file's range is in the page cache (True where that cannot
    be asked, so that such systems keep the plain buffered read). A private mapping of the
    range is made and dropped without touching a page: nothing is read."""
    if length <= 0:
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


def _direct_read(path: Path, buf: mmap.mmap, file_offset: int, need: int) -> bool:
    """Reads at least `need` bytes of the file from `file_offset` (aligned) into the start of
    `buf` with O_DIRECT; False when the file system refuses it."""
    if not hasattr(os, "O_DIRECT") or str(path) in _buffered_only:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        _buffered_only.add(str(path))
        return False
    try:
        length = -(-need // ALIGN) * ALIGN
        dst = memoryview(buf)[:length]
        done = 0
        while done < need:
            try:
                got = os.preadv(fd, [dst[done:]], file_offset + done)
            except OSError as e:
                if e.errno != errno.EINVAL or done:
                    raise
                _buffered_only.add(str(path))  # an alignment this device does not take
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
    buf = _buffer(max(a1 - a0, ALIGN))  # an empty range still gets a (one-page) buffer
    view = memoryview(buf)[offset - a0 : offset - a0 + n]
    try:
        with open(path, "rb", buffering=0) as fh:
            got = 0
            if n and not _resident(fh.fileno(), offset, n) and _direct_read(path, buf, a0, offset + n - a0):
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
