"""The float32 matrix product a linear layer runs, PyTorch's default (MKL's sgemm on x86)
against oneDNN's (what imatrix.onednn_linears routes CPU linear layers to), in GFLOP/s:

    .venv/bin/python benches/bench_gemm.py [--rows 512 --cols 1024 --out 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--out", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    x, w = torch.randn(a.rows, a.cols), torch.randn(a.out, a.cols)
    flops = 2 * a.rows * a.cols * a.out

    def rate(f) -> float:
        f()
        t = time.perf_counter()
        for _ in range(a.repeat):
            f()
        return flops * a.repeat / (time.perf_counter() - t) / 1e9

    default = rate(lambda: torch.nn.functional.linear(x, w))
    onednn = rate(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
    print(
        f"# [{a.rows} x {a.cols}] . [{a.cols} x {a.out}] float32, {a.threads} threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| product | GFLOP/s |")
    print("|---|---|")
    print(f"| PyTorch default (F.linear) | {default:.0f} |")
    print(f"| oneDNN (_linear_pointwise) | {onednn:.0f} |")


if __name__ == "__main__":
    main()
