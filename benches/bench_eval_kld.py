"""`simpo-q eval kld` against llama.cpp's two `llama-perplexity` passes (--kl-divergence-base,
then --kl-divergence) on the same files, text and context: wall time, peak RSS, and disk
(llama-perplexity's base file; ours writes none). Each step runs in its own process.
Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python benches/bench_eval_kld.py [--ctx 512] [--hidden 256 --layers 2]

The base file holds, per chunk, ctx token ids and (ctx − 1 − ctx/2) rows of
2·⌈vocab/2⌉ + 4 16-bit values, so it grows with the vocabulary: the formula is printed for
Gemma-2 9B's 256000 tokens.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import run  # noqa: E402  (wall time and peak RSS of one child process)

TEXT = REPO / "python" / "simpo_q" / "data" / "evaluation.txt"


def base_file_bytes(vocab: int, ctx: int, chunks: int) -> int:
    nv = 2 * ((vocab + 1) // 2) + 4
    return 8 + 4 + 4 + 4 + 4 * ctx * chunks + 2 * nv * (ctx - 1 - ctx // 2) * chunks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--work", default=str(REPO / ".cache" / "bench-eval-kld"))
    args = ap.parse_args()
    from llama_cpp_tree import llama_cpp_tools
    from simpo_q.tiny import TinyConfig, cached_tiny_model

    cfg = TinyConfig(hidden=args.hidden, intermediate=2 * args.hidden, layers=args.layers)
    model = cached_tiny_model(REPO / ".cache", cfg, pretrain_steps=200 if args.hidden == 256 else 0, quiet=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py, tool = sys.executable, str(llama_cpp_tools() / "llama-perplexity")
    run([py, "-m", "simpo_q", "--quiet", "convert", str(model), str(work / "f32.gguf"), "--outtype", "f32"])
    run([py, "-m", "simpo_q", "--quiet", "quantize", str(model), str(work / "q.gguf"), "--type", "Q3_K_S"])
    threads = str(os.cpu_count() or 2)
    ours = run(
        [
            py,
            "-m",
            "simpo_q",
            "--quiet",
            "eval",
            "kld",
            str(work / "f32.gguf"),
            str(work / "q.gguf"),
            "-f",
            str(TEXT),
            "--ctx",
            str(args.ctx),
            "--threads",
            threads,
        ]
    )
    common = ["-c", str(args.ctx), "-b", str(args.ctx), "-t", threads]
    base = run(
        [tool, "-m", str(work / "f32.gguf"), "-f", str(TEXT), *common, "--kl-divergence-base", str(work / "base.kld")]
    )
    kld = run(
        [tool, "-m", str(work / "q.gguf"), *common, "--kl-divergence-base", str(work / "base.kld"), "--kl-divergence"]
    )
    size = (work / "base.kld").stat().st_size
    from simpo_q.gguf import metadata_dict, open_gguf

    vocab = len(metadata_dict(open_gguf(work / "f32.gguf"))["tokenizer.ggml.tokens"])
    print(
        f"# {model.name}: vocabulary {vocab}, ctx {args.ctx}, {TEXT.name}, reference F32 GGUF, quant Q3_K_S; "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| route | step | wall (s) | peak RSS (MiB) | disk written |")
    print("|---|---|---|---|---|")
    print(f"| simpo-q | eval kld (reference and quant in lockstep) | {ours[0]:.1f} | {ours[1]:.0f} | none |")
    print(
        f"| llama.cpp | llama-perplexity --kl-divergence-base | {base[0]:.1f} | {base[1]:.0f} | "
        f"{size / 2**20:.1f} MiB |"
    )
    print(f"| llama.cpp | llama-perplexity --kl-divergence | {kld[0]:.1f} | {kld[1]:.0f} | — |")
    print(f"| llama.cpp | total | {base[0] + kld[0]:.1f} | {max(base[1], kld[1]):.0f} | {size / 2**20:.1f} MiB |")
    chunks = round((size - base_file_bytes(vocab, args.ctx, 0)) / (base_file_bytes(vocab, args.ctx, 1) - 20))
    print()
    per_chunk = base_file_bytes(256000, 512, 1) - base_file_bytes(256000, 512, 0)
    print(
        f"base file: {size} bytes, the formula's {base_file_bytes(vocab, args.ctx, chunks)} for {chunks} chunks; "
        f"at Gemma-2's vocabulary of 256000 and ctx 512 each chunk costs {per_chunk / 2**20:.1f} MiB "
        f"({base_file_bytes(256000, 512, 567) / 2**30:.1f} GiB for 567 chunks)."
    )


if __name__ == "__main__":
    main()
