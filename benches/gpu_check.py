"""The one prepared accelerator check: the trainer, the loss, the importance matrix and the
quantizer on a real GPU, in one call, writing JSON and a Markdown table under --out.

    make gpu-check                                  # = benches/gpu_check.py --out out/gpu-check
    .venv/bin/python benches/gpu_check.py --cpu-smoke --out /tmp/g   # the same code, tiny, on CPU

1. Training: optimizer steps under `torchrun --nproc_per_node=1`, FSDP2, bf16, gradient
   checkpointing, eager attention with softcapping, on a generated Gemma-2 with gemma-2-9b's
   widths (hidden 3584, intermediate 14336, 16 heads, 8 KV heads, head_dim 256, vocabulary
   256000) and 4 layers, sequences of 2048 tokens, 2 pairs per device: tokens/s, step time,
   max_memory_allocated and max_memory_reserved, next to `simpo-q plan` for the same recipe.
2. The chunked log-probabilities against the naive full-logits path at vocabulary 256000:
   peak memory and time.
3. Importance-matrix collection on the trained model (FSDP2, bf16): tokens/s with and
   without the hooks, and the time a 9B collection over 100 chunks of 512 would take.
4. The trained weights to a Q3_K_S GGUF from GPU memory, as `pipeline` does.
5. The importance matrix one decoder layer at a time (`imatrix --offload`, bf16) on a
   generated checkpoint with gemma-2-27b's layer shapes (hidden 4608, intermediate 36864, 32
   heads, 16 KV heads, head_dim 128; 2 layers, the tiny vocabulary: a layer's memory does not
   depend on either): the device's peak memory against one layer's weights and a 24 GiB card,
   and tokens/s.
6. The estimated wall time of the full recipe (gemma-2-9b-it, 42 layers, 59.6k pairs, one
   epoch at 128 pairs a step, 8 GPUs): `plan`'s FLOPs model with the efficiency (MFU) measured
   in step 1, beside plan's default estimate and the model card's 100 minutes.

Each part runs in its own process, so that one failing (out of memory, say) still leaves the
others' numbers; the time each took is recorded. Nothing is downloaded or built: the model
and the data are generated here.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(Path(__file__).parent))

NINE_B = {
    "hidden": 3584,
    "intermediate": 14336,
    "heads": 16,
    "kv_heads": 8,
    "head_dim": 256,
    "vocab": 256000,
    "layers": 4,
    "max_length": 2048,
    "batch": 2,
    "steps": 3,
}
# the same code path at sizes a 2-core CPU runs in seconds (the tiny tokenizer's 3072 ids)
SMOKE = {
    "hidden": 256,
    "intermediate": 512,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 64,
    "vocab": 3072,
    "layers": 2,
    "max_length": 128,
    "batch": 2,
    "steps": 3,
}
# part 5: gemma-2-27b's decoder layer (its 46 layers and 256000-token vocabulary change
# nothing about one layer's memory); the smoke run's is the tiny model's
TWENTY_SEVEN_B_LAYERS = {
    "hidden": 4608,
    "intermediate": 36864,
    "heads": 32,
    "kv_heads": 16,
    "head_dim": 128,
    "vocab": 3072,
    "layers": 2,
}
OFFLOAD_27B = {"shape": TWENTY_SEVEN_B_LAYERS, "query_pre_attn_scalar": 144, "ctx": 512, "chunks": 8}
OFFLOAD_SMOKE = {"shape": {k: SMOKE[k] for k in TWENTY_SEVEN_B_LAYERS}, "ctx": 64, "chunks": 4}
CARD_GIB = 24  # the card the layer-by-layer collection is meant to fit (a 27B model on one 24 GB GPU)
RECIPE_PAIRS = 59_600  # princeton-nlp/gemma2-ultrafeedback-armorm, train split
RECIPE_GLOBAL_BATCH = 128  # 8 GPUs x 2 pairs x 8 accumulation steps
CARD_MINUTES = 100


def shape_args(s: dict) -> argparse.Namespace:
    return argparse.Namespace(
        layers=s["layers"],
        hidden=s["hidden"],
        intermediate=s["intermediate"],
        heads=s["heads"],
        kv_heads=s["kv_heads"],
        head_dim=s["head_dim"],
        vocab=s["vocab"],
        query_pre_attn_scalar=0,
    )


def recipe_for(s: dict, model: Path, data: Path, run: Path, device_is_cuda: bool):
    from simpo_q.train.recipe import Recipe

    return Recipe(
        model=str(model),
        data=str(data),
        eval_fraction=0.0,
        output_dir=str(run),
        beta=10.0,
        gamma_beta_ratio=0.5,
        max_length=s["max_length"],
        max_prompt_length=s["max_length"] * 1800 // 2048,
        learning_rate=8e-7,
        warmup_ratio=0.1,
        max_steps=s["steps"],
        per_device_train_batch_size=s["batch"],
        gradient_accumulation_steps=1,
        bf16=True,
        gradient_checkpointing=True,
        chunk_tokens=1024,
        fsdp="always",
        save_dtype="bfloat16",
        threads=0 if device_is_cuda else 2,
    )


# ---------------------------------------------------------------- part 1, 3, 4 (under torchrun)


def child_train(out: Path, s: dict) -> None:
    import torch
    import torch.distributed as dist
    from bench_fsdp import build_data, build_model
    from simpo_q import imatrix as im
    from simpo_q.quantize_model import quantize_model
    from simpo_q.train.distributed import start
    from simpo_q.train.loop import SimPOModel, train_model
    from simpo_q.train.weights import ModelWeights
    from transformers import AutoTokenizer

    rank, world = start(force=True)
    cuda = torch.cuda.is_available()
    work = out / "work"
    model_dir, data = work / "model", work / "pairs.jsonl"
    a = shape_args(s)
    if rank == 0:
        build_model(model_dir, a)
        build_data(data, max(8, s["batch"] * (s["steps"] + 1) * world), chars=s["max_length"] * 6)
    dist.barrier()
    r = recipe_for(s, model_dir, data, work / "run", cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_dir, model = train_model(r, quiet=True)
    train_wall = time.perf_counter() - t0
    res: dict = {"train_wall_s": train_wall}
    if cuda:
        res["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["max_memory_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if "step_seconds" in x][1:]  # the first step warms up
    res["steps_timed"] = len(steps)
    res["step_seconds"] = sum(x["step_seconds"] for x in steps) / len(steps)
    res["tokens_per_step"] = sum(x["tokens"] for x in steps) / len(steps)
    res["tokens_per_s"] = res["tokens_per_step"] / res["step_seconds"]
    res["peak_memory_gib_trainer"] = max(x["peak_memory_gib"] for x in steps)

    # 3. the importance matrix on the trained model, with and without the hooks
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    ctx = min(512, s["max_length"])
    chunks = 8
    run_model = model if isinstance(model, SimPOModel) else SimPOModel(model)
    batches = im.chunk_tokens(tok, im.read_text(calib), ctx, chunks, str(calib))
    device = next(run_model.hf.parameters()).device

    def plain_forward() -> float:
        labels = torch.full((1, ctx), -100, dtype=torch.long, device=device)
        run_model.eval()
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                x = torch.tensor([b], device=device)
                run_model(x, torch.ones_like(x), labels, ctx)
        sync()
        return time.perf_counter() - t

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    plain_forward()  # warm up
    t_plain = plain_forward()
    sync()
    t = time.perf_counter()
    m = im.collect_from_model(run_model, tok, calib, ctx=ctx, chunks=chunks, quiet=True)
    sync()
    t_hooks = time.perf_counter() - t
    tokens = len(batches) * ctx
    res.update(
        imatrix_tokens=tokens,
        imatrix_tokens_per_s_plain=tokens / t_plain,
        imatrix_tokens_per_s_hooks=tokens / t_hooks,
        imatrix_overhead=t_hooks / t_plain - 1,
    )

    # 4. the trained weights to Q3_K_S straight from (GPU) memory, with that importance matrix
    if rank == 0:
        assert m is not None
        t = time.perf_counter()
        with ModelWeights(Path(run_dir) / "final", model) as src:
            gguf = quantize_model(
                src, out / "work" / "trained-Q3_K_S.gguf", "Q3_K_S", imatrix=m, quiet=True, name="gpu-check"
            )
        res["quantize_wall_s"] = time.perf_counter() - t
        res["gguf_bytes"] = gguf.stat().st_size
        res["weights_device"] = str(device)
        (out / "train.json").write_text(json.dumps(res, indent=1) + "\n")
    else:
        from simpo_q.train.weights import serve_weights

        serve_weights(model)
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------- part 2


def child_logps(out: Path, s: dict) -> None:
    import torch
    from bench_logps import head_logps

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    vocab, hidden, tokens = s["vocab"], s["hidden"], s["max_length"]
    res = {}
    for kind in ("naive", "chunked", "naive", "chunked"):  # the second round is timed warm
        torch.manual_seed(0)
        w = (torch.randn(vocab, hidden, device=dev) * 0.02).requires_grad_()
        h = torch.randn(4, tokens, hidden, device=dev).requires_grad_()  # 2 pairs = 4 sequences
        labels = torch.randint(0, vocab, (4, tokens), device=dev)
        labels[:, : tokens // 4] = -100
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        v = head_logps(kind, h, w, labels, 1024)
        v.sum().backward()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - base) if cuda else 0
        res[kind] = {"seconds": dt, "peak_bytes": peak}
        del w, h, v
        if cuda:
            torch.cuda.empty_cache()
    res["memory_ratio"] = res["chunked"]["peak_bytes"] / res["naive"]["peak_bytes"] if cuda else None
    res["time_ratio"] = res["chunked"]["seconds"] / res["naive"]["seconds"]
    res.update(vocab=vocab, hidden=hidden, sequences=4, tokens=tokens, dtype="float32")
    (out / "logps.json").write_text(json.dumps(res, indent=1) + "\n")


# ---------------------------------------------------------------- part 5


def child_offload(out: Path, o: dict) -> None:
    import resource

    import torch
    from bench_9b import build
    from simpo_q.imatrix_offload import collect_offloaded

    cuda = torch.cuda.is_available()
    model = out / "work" / "offload-model"
    build(model, shards=1, shape=o["shape"], query_pre_attn_scalar=o.get("query_pre_attn_scalar"))
    s = o["shape"]
    h, hd = s["hidden"], s["head_dim"]
    layer_params = 2 * h * s["heads"] * hd + 2 * h * s["kv_heads"] * hd + 3 * h * s["intermediate"] + 4 * h
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    t0 = time.perf_counter()
    m = collect_offloaded(
        model,
        calib,
        ctx=o["ctx"],
        chunks=o["chunks"],
        device="cuda" if cuda else "cpu",
        dtype="bfloat16",
        quiet=True,
        batch=max(1, 2048 // o["ctx"]),
    )
    wall = time.perf_counter() - t0
    res = {
        "layers": s["layers"],
        "layer_weights_gib": layer_params * 2 / 2**30,
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "host_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
        "tokens": o["ctx"] * o["chunks"],
        "wall_s": wall,
        "tokens_per_s_per_layer": o["ctx"] * o["chunks"] * s["layers"] / wall,
        "entries": len(m),
    }
    (out / "offload.json").write_text(json.dumps(res, indent=1) + "\n")


# ---------------------------------------------------------------- part 6 and the report


def forward_params(s: dict) -> int:
    """Weights a token's forward pass multiplies by: the decoder layers and the tied head
    (the embedding lookup costs nothing)."""
    h, hd = s["hidden"], s["head_dim"]
    layer = 2 * h * s["heads"] * hd + 2 * h * s["kv_heads"] * hd + 3 * h * s["intermediate"]
    return s["layers"] * layer + s["vocab"] * h


def estimate(s: dict, train: dict, out: Path, device_is_cuda: bool) -> dict:
    """The full recipe's wall time from plan's FLOPs model at the measured efficiency, and the
    time a 9B importance matrix over 100 chunks of 512 would take at the measured rate."""
    from simpo_q.train.plan import plan
    from simpo_q.train.recipe import Recipe

    here = recipe_for(s, out / "work" / "model", out / "work" / "pairs.jsonl", out / "work" / "run", device_is_cuda)
    p_here = plan(here, 1, 80.0)  # reads the generated model's config.json
    mfu = p_here["step_seconds"] * p_here["mfu"] / train["step_seconds"]
    nine_b = Recipe(
        model="google/gemma-2-9b-it",
        data="d",
        max_length=2048,
        max_prompt_length=1800,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=8,
        bf16=True,
        gradient_checkpointing=True,
    )
    p_default = plan(nine_b, 8, 80.0)
    p_measured = plan(nine_b, 8, 80.0, mfu=mfu)
    steps = RECIPE_PAIRS // RECIPE_GLOBAL_BATCH
    nine_b_shape = {**NINE_B, "layers": 42}
    imatrix_rate_9b = train["imatrix_tokens_per_s_hooks"] * forward_params(s) / forward_params(nine_b_shape)
    return {
        "measured_mfu": mfu,
        "steps": steps,
        "plan_mfu": p_default["mfu"],
        "minutes_at_measured_mfu": p_measured["step_seconds"] * steps / 60,
        "minutes_plan_default": p_default["step_seconds"] * steps / 60,
        "card_minutes": CARD_MINUTES,
        "plan_memory_gib_here": p_here["total"] / 2**30,
        "plan_step_seconds_here": p_here["step_seconds"],
        "imatrix_9b_tokens_per_s": imatrix_rate_9b,
        "imatrix_9b_100x512_minutes": 100 * 512 / imatrix_rate_9b / 60,
    }


def run_part(name: str, cmd: list[str], out: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        ok, tail = p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    except subprocess.TimeoutExpired as e:
        ok, tail = False, f"timed out after {timeout:.0f} s\n{(e.stderr or b'')[-2000:]!r}"
    (out / f"{name}.log").write_text(tail)
    return {"ok": ok, "seconds": time.perf_counter() - t0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(out: Path, s: dict, parts: dict, device: str) -> dict:
    res: dict = {"device": device, "date": time.strftime("%Y-%m-%d"), "shape": s, "parts": parts}
    for name in ("train", "logps", "offload"):
        f = out / f"{name}.json"
        res[name] = json.loads(f.read_text()) if f.exists() else None
    cuda = device.startswith("cuda")
    if res["train"]:
        res["estimate"] = est = estimate(s, res["train"], out, cuda)
        if cuda:
            measured = res["train"]["max_memory_allocated_gib"]
            res["train"]["plan_memory_error"] = est["plan_memory_gib_here"] / measured - 1
    lines = [
        f"# gpu_check on {device}, {res['date']}",
        "",
        f"Shape: hidden {s['hidden']}, intermediate {s['intermediate']}, {s['heads']} heads, {s['kv_heads']} KV "
        f"heads, head_dim {s['head_dim']}, vocabulary {s['vocab']}, {s['layers']} layers; sequences of "
        f"{s['max_length']}, {s['batch']} pairs per device; FSDP2, bf16, gradient checkpointing, eager.",
        "",
        "| part | result |",
        "|---|---|",
    ]
    t = res["train"]
    if t:
        lines.append(
            f"| training | {t['tokens_per_s']:.0f} tokens/s, {t['step_seconds']:.2f} s/step "
            f"({t['steps_timed']} timed steps, {t['tokens_per_step']:.0f} tokens each) |"
        )
        if cuda:
            lines.append(
                f"| memory | max allocated {t['max_memory_allocated_gib']:.2f} GiB, reserved "
                f"{t['max_memory_reserved_gib']:.2f} GiB; plan {res['estimate']['plan_memory_gib_here']:.2f} "
                f"GiB ({100 * t['plan_memory_error']:+.1f}%) |"
            )
        lines.append(
            f"| importance matrix | {t['imatrix_tokens_per_s_hooks']:.0f} tokens/s with hooks, "
            f"{t['imatrix_tokens_per_s_plain']:.0f} without ({100 * t['imatrix_overhead']:+.1f}%); at 9B "
            f"~{res['estimate']['imatrix_9b_tokens_per_s']:.0f} tokens/s, 100 chunks of 512 in "
            f"~{res['estimate']['imatrix_9b_100x512_minutes']:.1f} min |"
        )
        lines.append(
            f"| trained weights → Q3_K_S GGUF from {t['weights_device']} | {t['quantize_wall_s']:.1f} s, "
            f"{t['gguf_bytes'] / 2**20:.1f} MiB |"
        )
        e = res["estimate"]
        lines.append(
            f"| full recipe, 8 GPUs ({e['steps']} steps) | {e['minutes_at_measured_mfu']:.0f} min at the "
            f"measured MFU {e['measured_mfu']:.1%}; plan's default ({e['plan_mfu']:.0%}): "
            f"{e['minutes_plan_default']:.0f} min; model card: {e['card_minutes']} min |"
        )
    else:
        lines.append(f"| training | failed: see {out / 'train.log'} |")
    lp = res["logps"]
    if lp:
        mem = f"memory {lp['memory_ratio']:.1%} of naive, " if lp["memory_ratio"] is not None else ""
        lines.append(
            f"| chunked log-probs vs naive (vocab {lp['vocab']}) | {mem}time "
            f"{lp['time_ratio']:.2f}x ({lp['chunked']['seconds']:.3f} s vs {lp['naive']['seconds']:.3f} s) |"
        )
    else:
        lines.append(f"| chunked log-probs | failed: see {out / 'logps.log'} |")
    of = res["offload"]
    if of:
        mem = (
            f"device peak {of['max_memory_allocated_gib']:.2f} GiB (a {CARD_GIB} GiB card: "
            f"{'fits' if of['max_memory_allocated_gib'] < CARD_GIB else 'does NOT fit'}), "
            if of["max_memory_allocated_gib"] is not None
            else ""
        )
        lines.append(
            f"| importance matrix layer by layer, bf16, {of['layers']} layers of "
            f"{'gemma-2-27b' if s is NINE_B else 'the smoke model'}'s shape | {mem}one layer's weights "
            f"{of['layer_weights_gib']:.2f} GiB, host peak {of['host_peak_rss_gib']:.2f} GiB; "
            f"{of['tokens_per_s_per_layer']:.0f} token-layers/s (a 46-layer model: "
            f"~{of['tokens_per_s_per_layer'] / 46:.0f} tokens/s) |"
        )
    else:
        lines.append(f"| importance matrix layer by layer | failed: see {out / 'offload.log'} |")
    lines.append("")
    lines.append(
        "Part times: "
        + ", ".join(f"{k} {v['seconds']:.0f} s ({'ok' if v['ok'] else 'FAILED'})" for k, v in parts.items())
    )
    md = "\n".join(lines) + "\n"
    (out / "gpu_check.md").write_text(md)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")
    print(md)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and the logs")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (gloo): the same code path")
    ap.add_argument("--budget-s", type=float, default=480, help="the whole check's time limit")
    ap.add_argument(
        "--child",
        choices=["train", "logps", "offload"],
        help="run one part in this process (offload runs on the CPU too, which then stands for the device)",
    )
    a = ap.parse_args()
    out = Path(a.out)
    s = SMOKE if a.cpu_smoke else NINE_B
    if a.child == "train":
        child_train(out, s)
        return
    if a.child == "logps":
        child_logps(out, s)
        return
    if a.child == "offload":
        child_offload(out, OFFLOAD_SMOKE if a.cpu_smoke else OFFLOAD_27B)
        return
    import torch

    if not a.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --cpu-smoke to run the same code on CPU")
    out.mkdir(parents=True, exist_ok=True)
    for f in ("train.json", "logps.json", "offload.json"):
        (out / f).unlink(missing_ok=True)
    device = (
        f"cuda: {torch.cuda.get_device_name()}"
        if torch.cuda.is_available() and not a.cpu_smoke
        else f"cpu ({os.cpu_count()} cores)"
    )
    me = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), *(["--cpu-smoke"] if a.cpu_smoke else [])]
    if a.cpu_smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU path, even on a GPU machine
    t0 = time.perf_counter()
    parts = {}
    parts["train"] = run_part(
        "train",
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=1",
            f"--master_port={free_port()}",
            *me[1:],
            "--child",
            "train",
        ],
        out,
        timeout=a.budget_s * 0.75,
    )
    left = a.budget_s - (time.perf_counter() - t0)
    parts["logps"] = run_part("logps", [*me, "--child", "logps"], out, timeout=max(30.0, left / 3))
    left = a.budget_s - (time.perf_counter() - t0)
    parts["offload"] = run_part("offload", [*me, "--child", "offload"], out, timeout=max(60.0, left))
    report(out, s, parts, device)


if __name__ == "__main__":
    main()
