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


def run_logged(cmd: list[str], done, tries: int = 30, **kw):
    """Runs a llama.cpp tool whose results are in its log, again (at most `tries` times) when
    `done(text)` says its last lines are missing: llama.cpp's log is written by a worker
    thread that common_log_main leaks on purpose (upstream issue 22142), and lines still queued
    when the process exits are lost: measured on this 2-core VM, 1 to 8 runs in 20 of
    llama-imatrix --show-statistics printed nothing at all, and a loaded machine lost several
    in a row, so the budget is generous (a good run ends the loop)."""
    import subprocess

    for _ in range(tries):
        r = subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)
        if done(r.stdout + r.stderr):
            break
    return r
