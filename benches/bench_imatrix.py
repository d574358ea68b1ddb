"""Importance-matrix collection: tokens/s of the tiny-model forward with and without the
collection hooks (the overhead of collecting), and the native accumulator against a plain
torch `(x*x).sum(0)` accumulation on the same activation batches.

    .venv/bin/python benches/bench_imatrix.py [--ctx 512] [--chunks 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    from simpo_q import imatrix as im
    from simpo_q._native import Imatrix
    from simpo_q.tiny import cached_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=0, help="use an untrained model of this width instead")
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    if args.hidden:
        from simpo_q.tiny import TinyConfig, build_tiny_model

        model_dir = REPO / ".cache" / f"bench-imatrix-h{args.hidden}-l{args.layers}"
        if not (model_dir / "config.json").exists():
            build_tiny_model(
                model_dir,
                TinyConfig(
                    hidden=args.hidden,
                    intermediate=4 * args.hidden,
                    layers=args.layers,
                    heads=args.hidden // 128,
                    kv_heads=args.hidden // 256,
                    head_dim=128,
                ),
            )
    else:
        model_dir = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    tok = AutoTokenizer.from_pretrained(model_dir)
    chunks = im.chunk_tokens(tok, calib.read_text(), args.ctx, args.chunks, str(calib))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    n_tok = len(chunks) * args.ctx

    def forward() -> None:
        with torch.no_grad():
            for c in chunks:
                model(torch.tensor([c]))

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    batches: list[tuple[str, torch.Tensor]] = []

    def install(kind: str):
        acc = Imatrix(args.ctx)
        sums: dict[str, torch.Tensor] = {}
        hooks = []
        for i, layer in enumerate(model.model.layers):
            for hf_name, g in im.LINEARS.items():
                name = f"blk.{i}.{g}.weight"

                def hook(_m, a, name=name):
                    x = a[0].reshape(-1, a[0].shape[-1]).float().contiguous()
                    if kind == "native":
                        acc.add(name, x.numpy())
                    elif kind == "torch":
                        sums[name] = sums.get(name, 0) + (x * x).sum(0)
                    else:
                        batches.append((name, x.clone()))

                hooks.append(layer.get_submodule(hf_name).register_forward_pre_hook(hook))
        return hooks

    t_plain = timed(forward)
    hooks = install("native")
    t_native = timed(forward)
    for h in hooks:
        h.remove()
    hooks = install("torch")
    t_torch = timed(forward)
    for h in hooks:
        h.remove()
    hooks = install("record")
    forward()
    for h in hooks:
        h.remove()
    acc = Imatrix(args.ctx)
    t0 = time.perf_counter()
    for name, x in batches:
        acc.add(name, x.numpy())
    t_acc_native = time.perf_counter() - t0
    sums: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    for name, x in batches:
        sums[name] = sums.get(name, 0) + (x * x).sum(0)
    t_acc_torch = time.perf_counter() - t0
    floats = sum(x.numel() for _, x in batches)
    cfg = model.config
    print(
        f"# Gemma-2 ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, intermediate "
        f"{cfg.intermediate_size}), {len(chunks)} chunks x {args.ctx} tokens, float32, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| run | tokens/s | overhead vs plain forward |")
    print("|---|---|---|")
    print(f"| forward, no hooks | {n_tok / t_plain:.0f} | - |")
    print(f"| forward + native accumulator hooks | {n_tok / t_native:.0f} | {t_native / t_plain - 1:+.1%} |")
    print(f"| forward + torch (x*x).sum(0) hooks | {n_tok / t_torch:.0f} | {t_torch / t_plain - 1:+.1%} |")
    print()
    print(
        f"Accumulation alone over the same {len(batches)} batches ({floats / 1e6:.1f} M floats): native "
        f"{t_acc_native * 1e3:.1f} ms ({floats / t_acc_native / 1e9:.2f} G floats/s), torch "
        f"{t_acc_torch * 1e3:.1f} ms ({floats / t_acc_torch / 1e9:.2f} G floats/s)."
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
