"""The llama.cpp source tree of the pinned reference, from the llama-cpp-python 0.3.36 sdist
on PyPI (it vendors the whole tree: convert_hf_to_gguf.py, gguf-py, the tools). Downloaded
once through PyPI's simple index, checked against the index's sha256, and cached outside
the clone (SIMPO_Q_REF_CACHE, default ~/.cache/simpo-q)."""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import tarfile
import urllib.request
from pathlib import Path

VERSION = "0.3.36"
INDEX = "https://pypi.org/simple/llama-cpp-python/"


def cache_dir() -> Path:
    return Path(os.environ.get("SIMPO_Q_REF_CACHE", Path.home() / ".cache" / "simpo-q"))


def _download(dest: Path) -> None:
    cafile = os.environ.get("PIP_CERT") or None
    ctx = ssl.create_default_context(cafile=cafile)
    html = urllib.request.urlopen(INDEX, context=ctx, timeout=120).read().decode()
    m = re.search(rf'href="([^"]+llama_cpp_python-{re.escape(VERSION)}\.tar\.gz)#sha256=([0-9a-f]+)"', html)
    if not m:
        raise RuntimeError(f"llama-cpp-python {VERSION} sdist not on {INDEX}")
    data = urllib.request.urlopen(m.group(1), context=ctx, timeout=600).read()
    if hashlib.sha256(data).hexdigest() != m.group(2):
        raise RuntimeError("sdist sha256 mismatch")
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(dest)


def llama_cpp_tree() -> Path:
    """Path of the extracted `vendor/llama.cpp` tree (downloaded and extracted on first use)."""
    root = cache_dir() / f"llama-cpp-python-{VERSION}"
    tree = root / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").exists():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.exists():
        _download(sdist)
    with tarfile.open(sdist) as tf:
        tf.extractall(root, filter="data")
    return tree


if __name__ == "__main__":
    print(llama_cpp_tree())


TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity")


def llama_cpp_tools() -> Path:
    """bin/ with llama-imatrix, llama-quantize and llama-perplexity, built once from the tree
    with cmake (pip's cmake and ninja) into the cache: several minutes on 2 cores the first
    time."""
    import shutil
    import subprocess
    import sys

    build = cache_dir() / f"llama-cpp-{VERSION}-build"
    bins = build / "bin"
    if all((bins / t).exists() for t in TOOLS):
        return bins
    tree = llama_cpp_tree()
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    cmake = shutil.which("cmake", path=env["PATH"])
    if cmake is None:
        raise RuntimeError("cmake not found (pip install cmake ninja)")
    gen = ["-G", "Ninja"] if shutil.which("ninja", path=env["PATH"]) else []
    subprocess.run(
        [
            cmake,
            "-S",
            str(tree),
            "-B",
            str(build),
            *gen,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_OPENSSL=OFF",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run(
        [cmake, "--build", str(build), "--target", *TOOLS, "-j", str(os.cpu_count() or 2)],
        check=True,
        env=env,
        capture_output=True,
    )
    return bins


# A destructor that runs during the tool's exit() and waits a little: llama.cpp's log worker
# thread, leaked on purpose, is still alive then and writes out the lines it has queued.
_DRAIN_C = """#include <unistd.h>
__attribute__((destructor)) static void simpo_q_drain_llama_log(void) { usleep(300000); }
"""


def drain_preload() -> Path | None:
    """A tiny shared library (built once with the C compiler into the cache) to LD_PRELOAD into
    a llama.cpp tool so that its log is not cut off at exit; None where none can be built."""
    import shutil
    import subprocess

    lib = cache_dir() / "drain-llama-log.so"
    if lib.exists():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = lib.with_suffix(".c")
    lib.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(_DRAIN_C)
    tmp = lib.with_suffix(".part.so")
    try:
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    tmp.replace(lib)
    return lib


def run_logged(cmd: list[str], done, tries: int = 30, **kw):
    """Runs a llama.cpp tool whose results are in its log, again (at most `tries` times) when
    `done(text)` says its last lines are missing: llama.cpp's log is written by a worker
    thread that common_log_main leaks on purpose (upstream issue 22142), and lines still queued
    when the process exits are lost: measured on this 2-core VM (2026-11-30), 9 runs in 40 of
    llama-imatrix --show-statistics lost some or all of its table; with `drain_preload()`'s
    library, which holds the exit until the log thread has written its queue, none in 40. The
    retries stay as a second line (a good run ends the loop)."""
    import subprocess

    env = kw.pop("env", None) or dict(os.environ)
    lib = drain_preload()
    if lib is not None:
        env["LD_PRELOAD"] = " ".join(x for x in (env.get("LD_PRELOAD"), str(lib)) if x)
    for _ in range(tries):
        r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, **kw)
        if done(r.stdout + r.stderr):
            break
    return r
