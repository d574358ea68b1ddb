"""Quantization throughput: simpo-q against ggml's `ggml_quantize_chunk` (libggml-base from
llama-cpp-python 0.3.36) in the same process, both on one thread, then simpo-q on every
core. Input: a 4096x3584 float32 matrix (a Gemma-2 9B attn_q) and a random positive
importance vector. Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python benches/bench_quantize.py [--rows 4096] [--cols 3584] [--repeat 3] [--simd avx2]

`--simd` runs simpo-q's kernels at that instruction set instead of the widest the CPU has
(SIMPO_Q_SIMD, read once per process).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import simpo_q  # noqa: E402
from ggml_ref import ggml  # noqa: E402


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=3584)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default="Q3_K,Q4_K,Q5_K,Q6_K,Q8_0,Q4_0,IQ4_NL")
    ap.add_argument("--simd", choices=simpo_q._native.SIMD_LEVELS, help="simpo-q's kernels at this instruction set")
    args = ap.parse_args()
    if args.simd:
        os.environ["SIMPO_Q_SIMD"] = args.simd  # before the first quantization reads it
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    w = rng.uniform(0.01, 10.0, args.cols).astype(np.float32)
    n = x.size / 1e6
    cores = os.cpu_count() or 1
    print(
        f"# {args.rows}x{args.cols} float32, best of {args.repeat}; {platform.processor() or platform.machine()}, "
        f"{cores} cores; simpo-q kernels: {simpo_q._native.simd()}; {time.strftime('%Y-%m-%d')}"
    )
    print()
    print(
        f"| type | imatrix | ggml 1 thread (Mw/s) | simpo-q 1 thread (Mw/s) | per-core ratio "
        f"| simpo-q {cores} threads (Mw/s) | 1→{cores} scaling |"
    )
    print("|---|---|---|---|---|---|---|")
    g = ggml()
    for qtype in args.types.split(","):
        for imat in (None, w):
            if imat is not None and qtype == "Q8_0":
                continue
            ours = simpo_q.quantize(x, qtype, imat, threads=1)
            ref = g.quantize(x, qtype, imat)
            assert np.array_equal(ours, ref), f"{qtype}: bytes differ from ggml"
            t_g = best_time(lambda q=qtype, w=imat: g.quantize(x, q, w), args.repeat)
            t_1 = best_time(lambda q=qtype, w=imat: simpo_q.quantize(x, q, w, threads=1), args.repeat)
            t_n = best_time(lambda q=qtype, w=imat: simpo_q.quantize(x, q, w, threads=cores), args.repeat)
            print(
                f"| {qtype} | {'yes' if imat is not None else 'no'} | {n / t_g:.1f} | {n / t_1:.1f} "
                f"| {t_g / t_1:.2f}x | {n / t_n:.1f} | {t_1 / t_n:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
