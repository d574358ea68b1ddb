"""The SimPO trainer under FSDP2 with gemma-2-9b's shapes at reduced depth: tokens/s and peak
memory per rank, against what `simpo-q plan` predicts for the same recipe.

Launch it with torchrun; every rank runs this file. The model is generated (deterministic
random weights, gemma-2-9b's width, heads and 256000 vocabulary, `--layers` deep, the tiny
model's tokenizer, whose ids all fit the vocabulary) and so is the data: every pair is long
enough to be truncated to exactly `--max-length` tokens, so the measured tokens are the
plan's padded upper bound.

    # one GPU: FSDP2 on one rank, bf16 compute, eager attention, gradient checkpointing, as
    # the 9B recipe (without --fsdp-always one rank trains without FSDP, under autocast)
    torchrun --nproc_per_node=1 benches/bench_fsdp.py --layers 2 --fsdp-always
    # this CPU machine (gloo), scaled down, fp32:
    .venv/bin/python -m torch.distributed.run --nproc_per_node=2 benches/bench_fsdp.py \\
        --hidden 1024 --intermediate 4096 --heads 8 --kv-heads 4 --head-dim 128 --vocab 32000 \\
        --layers 4 --max-length 512 --no-bf16 --threads 1

Peak memory: on a GPU `torch.cuda.max_memory_allocated` (tensors only) and the reserved
peak (what the caching allocator holds); on CPU the growth of the process's VmHWM over its
resident size just before training (so the interpreter and libraries are not counted, but
allocator slack is). Time: the mean of the steps after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).parent.parent


def vm(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def build_model(out: Path, a) -> None:
    from simpo_q.safetensors_out import write_weights
    from simpo_q.tiny import TinyConfig, cached_tiny_model
    from simpo_q.tiny.builder import f32_to_bf16_bytes, hf_config, init_tensor, tensor_specs

    if (out / ".complete").exists():
        return
    tiny = cached_tiny_model(REPO / ".cache", pretrain_steps=0, quiet=True)
    out.mkdir(parents=True, exist_ok=True)
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "added_tokens", "chat_template", "generation")):
            shutil.copy2(f, out / f.name)
    cfg = TinyConfig(
        layers=a.layers,
        hidden=a.hidden,
        intermediate=a.intermediate,
        heads=a.heads,
        kv_heads=a.kv_heads,
        head_dim=a.head_dim,
        vocab=a.vocab,
    )
    c = hf_config(cfg)
    c["query_pre_attn_scalar"] = a.query_pre_attn_scalar or a.head_dim
    (out / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    specs = tensor_specs(cfg)
    write_weights(out, specs, ((n, f32_to_bf16_bytes(init_tensor(0, n, s, k))) for n, s, k in specs), 1)
    (out / ".complete").write_text("ok\n")


def build_data(out: Path, pairs: int, chars: int) -> None:
    from simpo_q.tiny.builder import bundled_text

    text = bundled_text("calibration.txt")
    rows = []
    for i in range(pairs):

        def piece(k: int, n: int, i=i) -> str:
            s = (i * 7919 + k * 104729) % (len(text) - n)
            return text[s : s + n]

        prompt = piece(0, chars)
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": piece(1, chars)}],
                "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": piece(2, chars)}],
            }
        )
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=256)
    ap.add_argument("--query-pre-attn-scalar", type=int, default=0, help="0: head_dim (9B: 256, its head_dim)")
    ap.add_argument("--vocab", type=int, default=256000)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--max-prompt-length", type=int, default=0, help="0: the 9B recipe's 1800/2048 of it")
    ap.add_argument("--batch", type=int, default=2, help="pairs per device per micro-batch")
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--chunk-tokens", type=int, default=1024)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--fsdp-always", action="store_true", help="FSDP2 even with one rank (one GPU)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--gpu-mem", type=float, default=80.0)
    ap.add_argument("--work", default=str(REPO / ".cache" / "bench-fsdp"))
    ap.add_argument("--json", default="", help="also write the result here (rank 0)")
    a = ap.parse_args()

    import torch
    import torch.distributed as dist
    from simpo_q.train.distributed import start
    from simpo_q.train.loop import train
    from simpo_q.train.recipe import Recipe

    if a.steps < 2:
        ap.error("--steps must be at least 2 (the first step is not timed)")
    a.max_prompt_length = a.max_prompt_length or a.max_length * 1800 // 2048
    rank, world = start(force=a.fsdp_always)
    shape = shape_name(a)
    work = Path(a.work)
    model, data = work / f"gemma2-{shape}", work / f"pairs-{a.max_length}.jsonl"
    if rank == 0:
        build_model(model, a)
        pairs_needed = world * a.batch * a.accum * (a.steps + 1)
        build_data(data, max(pairs_needed, 8), chars=a.max_length * 6)
    if world > 1:
        dist.barrier()
    run = work / f"run-{shape}-w{world}"
    if rank == 0:
        shutil.rmtree(run, ignore_errors=True)
    if world > 1:
        dist.barrier()
    r = Recipe(
        model=str(model),
        data=str(data),
        eval_fraction=0.0,
        output_dir=str(run),
        beta=10.0,
        gamma_beta_ratio=0.5,
        max_length=a.max_length,
        max_prompt_length=a.max_prompt_length,
        learning_rate=8e-7,
        warmup_ratio=0.1,
        max_steps=a.steps + 1,
        stop_after_steps=a.steps,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=a.accum,
        bf16=not a.no_bf16,
        gradient_checkpointing=not a.no_checkpointing,
        chunk_tokens=a.chunk_tokens,
        threads=a.threads,
        fsdp="always" if a.fsdp_always else "auto",
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = vm("VmRSS")
    t0 = time.perf_counter()
    train(r, quiet=True)
    wall = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.max_memory_reserved()
    else:
        peak = vm("VmHWM") - base
        reserved = peak
    mine = torch.tensor([peak, reserved], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
    if rank == 0:
        report(a, r, run, mine, world, wall, cuda)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shape_name(a) -> str:
    return f"L{a.layers}-H{a.hidden}-I{a.intermediate}-A{a.heads}x{a.head_dim}-KV{a.kv_heads}-V{a.vocab}"


def report(a, r, run: Path, mine, world: int, wall: float, cuda: bool) -> None:
    import torch
    from simpo_q.train.plan import plan, render

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if "step_seconds" in x][1:]
    tokens = sum(x["tokens"] for x in steps)
    seconds = sum(x["step_seconds"] for x in steps)
    p = plan(r, world, a.gpu_mem)
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    result = {
        "device": device,
        "world": world,
        "shape": shape_name(a),
        "params": p["params"],
        "bf16": r.bf16,
        "gradient_checkpointing": r.gradient_checkpointing,
        "fsdp": r.fsdp,
        "max_length": r.max_length,
        "pairs_per_micro_batch": r.per_device_train_batch_size,
        "accum": r.gradient_accumulation_steps,
        "steps_timed": len(steps),
        "tokens_per_s": tokens / seconds,
        "step_seconds": seconds / len(steps),
        "tokens_per_step": tokens / len(steps),
        "plan_tokens_per_step": p["tokens_per_step"],
        "peak_gib": float(mine[0]) / 2**30,
        "peak_reserved_gib": float(mine[1]) / 2**30,
        "plan_gib": p["total"] / 2**30,
        "plan_step_seconds": p["step_seconds"],
        "wall_s": wall,
    }
    result["plan_memory_error"] = result["plan_gib"] / result["peak_gib"] - 1
    result["plan_time_error"] = result["plan_step_seconds"] / result["step_seconds"] - 1
    print(render(p, world, a.gpu_mem), file=sys.stderr)
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
