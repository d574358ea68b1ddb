"""`simpo-q plan` against measured runs on this CPU machine: bench_fsdp.py under torchrun for a
few scaled-down Gemma-2 shapes (one process, with and without FSDP2, and two FSDP2 ranks on
gloo, fp32 and bf16, with and without gradient checkpointing), printed as a Markdown table
for BENCHMARKS.md.

    .venv/bin/python benches/bench_fsdp_matrix.py

Each run sets MALLOC_MMAP_THRESHOLD_=65536 so that glibc returns freed tensor memory at once
and the resident size follows the live tensors (CPU peak = VmHWM growth, see bench_fsdp.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
W1024 = [
    "--hidden",
    "1024",
    "--intermediate",
    "4096",
    "--heads",
    "8",
    "--kv-heads",
    "4",
    "--head-dim",
    "128",
    "--vocab",
    "32000",
    "--layers",
    "4",
]
W768 = [
    "--hidden",
    "768",
    "--intermediate",
    "3072",
    "--heads",
    "12",
    "--kv-heads",
    "4",
    "--head-dim",
    "64",
    "--vocab",
    "50000",
    "--layers",
    "6",
    "--chunk-tokens",
    "512",
]
RUNS = [
    (2, [*W1024, "--max-length", "512", "--batch", "2", "--no-bf16"]),
    (2, [*W1024, "--max-length", "512", "--batch", "2", "--no-bf16", "--no-checkpointing"]),
    (2, [*W1024, "--max-length", "1024", "--batch", "1", "--no-bf16"]),
    (1, [*W1024, "--max-length", "512", "--batch", "2", "--no-bf16"]),
    (2, [*W768, "--max-length", "512", "--batch", "2", "--no-bf16"]),
    (2, [*W1024, "--max-length", "512", "--batch", "2"]),
    (1, [*W1024, "--max-length", "512", "--batch", "2", "--fsdp-always"]),
]


def main() -> None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    print(
        "| ranks | FSDP2 | shape | tokens/seq x seqs | dtype | checkpointing | measured peak (GiB) | plan (GiB) "
        "| plan error | tokens/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (ranks, args) in enumerate(RUNS):
            out = Path(tmp) / f"{k}.json"
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={ranks}",
                "--master_port=29551",
                str(HERE / "bench_fsdp.py"),
                "--threads",
                "1",
                "--steps",
                "3",
                *args,
                "--json",
                str(out),
            ]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-20000:]}")
            r = json.loads(out.read_text())
            fsdp = "yes" if ranks > 1 or r["fsdp"] == "always" else "no"
            print(
                f"| {ranks} | {fsdp} | {r['shape']} | {r['max_length']} x {2 * r['pairs_per_micro_batch']} | "
                f"{'bf16' if r['bf16'] else 'fp32'} | {'yes' if r['gradient_checkpointing'] else 'no'} | "
                f"{r['peak_gib']:.3f} | {r['plan_gib']:.3f} | {r['plan_memory_error']:+.1%} | "
                f"{r['tokens_per_s']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
