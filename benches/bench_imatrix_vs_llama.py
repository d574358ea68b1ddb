"""Importance-matrix throughput against llama-imatrix on the same model, text, chunks and
threads, on CPU in float32: tokens per second of the collection itself (model loading
excluded on both sides: llama-imatrix's log timestamps from "computing over" to the save,
and simpo-q's collection loop timed in-process), for one chunk per forward and for llama-imatrix's -b 2048 batching.

    .venv/bin/python benches/bench_imatrix_vs_llama.py [--hidden 1024 --layers 4 --intermediate 4096
        --heads 8 --kv-heads 4 --head-dim 128] [--ctx 512 --chunks 8] [--threads 2] [--no-onednn]

The defaults are a 66M-parameter Gemma-2 (the model of issue 15's measurement).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument(
        "--no-onednn", action="store_true", help="also time PyTorch's default float32 product (no oneDNN linears)"
    )
    a = ap.parse_args()

    import torch
    from llama_cpp_tree import llama_cpp_tools
    from simpo_q import imatrix as im
    from simpo_q.convert import convert
    from simpo_q.sources import HFDirectory
    from simpo_q.tiny import TinyConfig, build_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    cfg = TinyConfig(
        layers=a.layers,
        hidden=a.hidden,
        intermediate=a.intermediate,
        heads=a.heads,
        kv_heads=a.kv_heads,
        head_dim=a.head_dim,
    )
    work = REPO / ".cache" / "bench-imatrix-vs-llama"
    model = work / f"gemma2-{cfg.key()}"
    if not (model / ".complete").exists():
        build_tiny_model(model, cfg)
        (model / ".complete").write_text("ok\n")
    src = HFDirectory(model)
    n_params = sum(int(__import__("numpy").prod(src.shape(n))) for n in src.names())
    f32 = work / f"{model.name}-f32.gguf"
    if not f32.exists():
        convert(model, f32, "f32", quiet=True)
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"

    tools = llama_cpp_tools()
    r = subprocess.run(
        [
            str(tools / "llama-imatrix"),
            "-m",
            str(f32),
            "-f",
            str(calib),
            "-o",
            str(work / "ref.dat"),
            "-c",
            str(a.ctx),
            "--chunks",
            str(a.chunks),
            "-t",
            str(a.threads),
            "-b",
            "2048",
        ],
        capture_output=True,
        text=True,
    )  # both compute the perplexity
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])

    # its log's timestamps (minutes.seconds.ms.us): from "computing over" to the save after the last chunk
    def stamp(line: str) -> float:
        mins, secs, ms, us = (int(x) for x in line.split()[0].split("."))
        return mins * 60 + secs + ms / 1e3 + us / 1e6

    lines = r.stderr.splitlines()
    start = next(stamp(x) for x in lines if "computing over" in x)
    end = next(stamp(x) for x in lines if "save_imatrix" in x and re.match(r"^\d+\.\d+\.\d+\.\d+ ", x))
    llama_tps = a.chunks * a.ctx / (end - start)

    tok = AutoTokenizer.from_pretrained(str(model))
    hf = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32, attn_implementation="eager").eval()
    import contextlib

    rows = []
    variants = [("oneDNN linears", im.onednn_linears)]
    if a.no_onednn:
        variants.append(("PyTorch's default product", lambda modules: contextlib.nullcontext(0)))
    real = im.onednn_linears
    for label, ctx in variants:
        im.onednn_linears = ctx  # what collect_from_model calls
        try:
            for batch in (1, max(1, 2048 // a.ctx)):
                im.collect_from_model(hf, tok, calib, ctx=a.ctx, chunks=2, quiet=True, batch=batch)  # warm-up
                best = 0.0
                for _ in range(3):
                    t0 = time.perf_counter()
                    im.collect_from_model(hf, tok, calib, ctx=a.ctx, chunks=a.chunks, quiet=True, batch=batch)
                    best = max(best, a.chunks * a.ctx / (time.perf_counter() - t0))
                rows.append((label, batch, best))
        finally:
            im.onednn_linears = real
    print(
        f"# Gemma-2 ({n_params / 1e6:.0f}M parameters: {a.layers} layers, hidden {a.hidden}, intermediate "
        f"{a.intermediate}), {a.chunks} chunks x {a.ctx} tokens, float32, {a.threads} threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| collector | chunks per forward | tokens/s | vs llama-imatrix |")
    print("|---|---|---|---|")
    print(
        f"| llama-imatrix (pinned llama.cpp, -b 2048, from its log's timestamps) | {max(1, 2048 // a.ctx)} | "
        f"{llama_tps:.0f} | 1.00x |"
    )
    for label, batch, tps in rows:
        print(f"| simpo-q imatrix (collection loop, {label}) | {batch} | {tps:.0f} | {tps / llama_tps:.2f}x |")


if __name__ == "__main__":
    main()
