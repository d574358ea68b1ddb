"""The pipeline's final write at gemma-2-9b's widths: the model in memory → a Q3_K_S GGUF
through `ModelWeights`, as `pipeline` writes the trained weights, and the host memory this
adds above the model's own.

The model: a generated checkpoint with gemma-2-9b's hidden size, intermediate size, heads and
256000-token vocabulary, and 2 decoder layers (its embedding, 256000 × 3584, is the real
model's largest tensor; more layers only repeat tensors 16× smaller), loaded with
transformers in bfloat16 or float32 and copied into memory of its own (trained weights are
not pages of a mapped file). Each run in its own process: load the model, reset the
process's high-water mark (/proc/self/clear_refs), write the file, and report the peak above
the resident size before the write. "blocks": large tensors read from the model in blocks of
rows (the default); "whole": every tensor widened whole, as before. Both files must be
byte-identical.

    .venv/bin/python benches/bench_final_write.py [--layers 2] [--work .cache/bench-final-write]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(REPO / "benches"))
MIB = 1 << 20


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(model: Path, out: Path, dtype: str, mode: str) -> None:
    import simpo_q.gguf_out as gguf_out
    import torch
    from simpo_q.quantize_model import quantize_model
    from simpo_q.train.weights import ModelWeights
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
    with torch.no_grad():
        for prm in hf.parameters():  # resident, as trained weights are (not pages of a mapped file)
            prm.data = prm.data.clone()
    if mode == "whole":
        gguf_out.BLOCK_BYTES = 1 << 62
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from here
    t0 = time.perf_counter()
    with ModelWeights(model, hf) as src:
        quantize_model(src, out, "Q3_K_S", quiet=True, threads=os.cpu_count())
    wall = time.perf_counter() - t0
    print(json.dumps({"before_kib": before, "peak_kib": _status_kib("VmHWM"), "wall": wall}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--work", default=str(REPO / ".cache" / "bench-final-write"))
    ap.add_argument("--child", nargs=4, metavar=("MODEL", "OUT", "DTYPE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, out, dtype, mode = args.child
        child(Path(model), Path(out), dtype, mode)
        return
    from bench_9b import SHAPE, build

    work = Path(args.work)
    model = work / f"gemma2-9b-widths-L{args.layers}"
    if not (model / ".complete").exists():
        build(model, shards=1, shape={**SHAPE, "layers": args.layers})
    rows = []
    for dtype in ("bfloat16", "float32"):
        files = {}
        for mode in ("whole", "blocks"):
            files[mode] = work / f"{dtype}-{mode}.gguf"
            files[mode].unlink(missing_ok=True)
            r = subprocess.run(
                [sys.executable, __file__, "--child", str(model), str(files[mode]), dtype, mode],
                capture_output=True,
                text=True,
            )
            if r.returncode:
                raise SystemExit(f"{dtype} {mode} failed:\n{r.stderr[-3000:]}")
            m = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append((dtype, mode, m["before_kib"] / 1024, (m["peak_kib"] - m["before_kib"]) / 1024, m["wall"]))
        if not filecmp.cmp(files["whole"], files["blocks"], shallow=False):
            raise SystemExit(f"{dtype}: the two files differ")
        for f in files.values():
            f.unlink()
    import torch

    print(
        f"# Q3_K_S of a {args.layers}-layer model with gemma-2-9b's widths and vocabulary, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
        "each pair of files byte-identical"
    )
    print()
    print("| model in memory | tensors read | resident before (MiB) | peak added by the write (MiB) | wall (s) |")
    print("|---|---|---|---|---|")
    for dtype, mode, before, added, wall in rows:
        print(f"| {dtype} | {mode} | {before:.0f} | {added:.0f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
