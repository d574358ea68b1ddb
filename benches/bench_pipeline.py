"""End to end on a generated ~1B-parameter Gemma-2-shaped checkpoint (bf16 safetensors):
wall time and peak RSS of `simpo-q quantize --type Q3_K_S` straight from safetensors, against
llama.cpp's two-step route in the same run (convert_hf_to_gguf.py to an f32 GGUF, then
llama_model_quantize), each step in its own process. Also checks that the two outputs have
identical tensor data. Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python benches/bench_pipeline.py [--layers 16 --hidden 2048 --intermediate 8192]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(REPO / "tests"))


def run(cmd: list[str], env=None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process. Keep the calling process small:
    Linux starts the child's high-water mark at the caller's (the child is vforked from it),
    so a caller that once mapped a large file makes every later child look that large."""
    import tempfile

    # stderr to a file, not a pipe: a chatty child (llama-quantize logs every tensor) would
    # fill a pipe nobody reads until it exits, and block forever
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        log.seek(0)
        err = log.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{err[-3000:]}")
    return wall, ru.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=256)
    ap.add_argument("--work", default=str(REPO / ".cache" / "bench-pipeline"))
    args = ap.parse_args()
    work = Path(args.work)
    model = work / f"gemma2-L{args.layers}-H{args.hidden}-I{args.intermediate}"
    if not (model / "config.json").exists():
        from simpo_q.tiny import TinyConfig, build_tiny_model

        build_tiny_model(
            model,
            TinyConfig(
                layers=args.layers,
                hidden=args.hidden,
                intermediate=args.intermediate,
                heads=args.heads,
                kv_heads=args.kv_heads,
                head_dim=args.head_dim,
            ),
        )
    from simpo_q.sources import HFDirectory

    src = HFDirectory(model)
    n_params = sum(int(__import__("numpy").prod(src.shape(n))) for n in src.names())
    size = sum(f.stat().st_size for f in src.files)
    from llama_cpp_tree import llama_cpp_tree

    tree = llama_cpp_tree()
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    py = sys.executable
    ours = run([py, "-m", "simpo_q", "--quiet", "quantize", str(model), str(out / "ours.gguf"), "--type", "Q3_K_S"])
    conv = run(
        [py, str(tree / "convert_hf_to_gguf.py"), str(model), "--outtype", "f32", "--outfile", str(out / "f32.gguf")]
    )
    quant = run(
        [
            py,
            "-c",
            (
                "import ctypes, llama_cpp, os, sys; p = llama_cpp.llama_model_quantize_default_params(); "
                "p.ftype = 11; p.nthread = os.cpu_count(); "
                f"sys.exit(llama_cpp.llama_model_quantize(b'{out / 'f32.gguf'}', b'{out / 'ref.gguf'}', "
                "ctypes.byref(p)))"
            ),
        ]
    )
    from simpo_q.gguf import open_gguf

    a, b = open_gguf(out / "ours.gguf"), open_gguf(out / "ref.gguf")
    same = [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors] and all(
        (a.tensor_bytes(t[0]) == b.tensor_bytes(t[0])).all() for t in b.tensors
    )
    print(
        f"# {n_params / 1e9:.2f}B parameters ({size / 2**30:.2f} GiB bf16 safetensors), "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; identical tensor data: {same}"
    )
    print()
    print("| route | step | wall (s) | peak RSS (MiB) |")
    print("|---|---|---|---|")
    print(f"| simpo-q | quantize --type Q3_K_S (from safetensors) | {ours[0]:.1f} | {ours[1]:.0f} |")
    print(f"| llama.cpp | convert_hf_to_gguf.py --outtype f32 | {conv[0]:.1f} | {conv[1]:.0f} |")
    print(f"| llama.cpp | llama_model_quantize Q3_K_S | {quant[0]:.1f} | {quant[1]:.0f} |")
    total = conv[0] + quant[0]
    print(f"| llama.cpp | total | {total:.1f} | {max(conv[1], quant[1]):.0f} |")
    print()
    print(
        f"simpo-q is {total / ours[0]:.2f}x faster end to end; intermediate f32 file: "
        f"{(out / 'f32.gguf').stat().st_size / 2**30:.2f} GiB (simpo-q writes none)."
    )


if __name__ == "__main__":
    main()
