"""`simpo-q plan`: per-GPU memory of a recipe under FSDP2 (fp32 sharded master weights,
gradients and AdamW state; bf16 unsharded layers while computing; checkpointed activations;
one chunk of the head's logits), and a step-time estimate from the model FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

from simpo_q.train.recipe import Recipe

GIB = 2**30


def model_shape(model: str) -> dict:
    p = Path(model) / "config.json"
    if p.is_file():
        return json.loads(p.read_text())
    if "gemma-2-9b" in model:
        return {"hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000}
    raise ValueError(f"{model}: no config.json to plan from")


def plan(r: Recipe, gpus: int, gpu_mem_gb: float, tflops: float = 400.0, mfu: float = 0.35) -> dict:
    c = model_shape(r.model)
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    q = c["num_attention_heads"] * c["head_dim"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 4 * h
    params = n * per_layer + v * h + h
    act_b = 2 if r.bf16 else 4
    seqs = 2 * r.per_device_train_batch_size
    t = r.max_length
    out = {
        "parameters (fp32 shard)": 4 * params / gpus,
        "gradients (fp32 shard)": 4 * params / gpus,
        "optimizer AdamW m, v (fp32 shard)": 8 * params / gpus,
        "unsharded compute weights (2 layers + root)": act_b * (2 * per_layer + v * h),
        "root gradient (unsharded, fp32)": 4 * v * h,
        "activations": (seqs * t * h * act_b * n if r.gradient_checkpointing
                        else seqs * t * (10 * h + 2 * i + 2 * q) * act_b * n),
        "logits chunk (fp32, forward + backward)": 3 * 4 * r.chunk_tokens * v,
    }
    total = sum(out.values())
    tokens_step = seqs * t * r.gradient_accumulation_steps * gpus
    flops = 6 * params * tokens_step * (4 / 3 if r.gradient_checkpointing else 1)
    step_s = flops / (gpus * tflops * 1e12 * mfu)
    return {"params": params, "bytes": out, "total": total, "fits": total < gpu_mem_gb * 1e9 * 0.9,
            "tokens_per_step": tokens_step, "step_seconds": step_s}


def render(p: dict, gpus: int, gpu_mem_gb: float) -> str:
    lines = [f"model: {p['params'] / 1e9:.2f}B parameters, {gpus} GPUs of {gpu_mem_gb:g} GB"]
    for k, v in p["bytes"].items():
        lines.append(f"  {k:45s} {v / GIB:8.2f} GiB")
    lines.append(f"  {'total per GPU':45s} {p['total'] / GIB:8.2f} GiB -> "
                 f"{'fits' if p['fits'] else 'does NOT fit'} (90% of {gpu_mem_gb:g} GB)")
    lines.append(f"tokens per optimizer step (padded upper bound): {p['tokens_per_step']}")
    lines.append(f"estimated step time: {p['step_seconds']:.1f} s (6·N·tokens FLOPs at 35% of 400 TFLOP/s; "
                 f"an estimate, not a measurement)")
    return "\n".join(lines)
