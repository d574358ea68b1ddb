"""`simpo-q plan`: per-GPU memory of a recipe under FSDP2, and a step-time estimate.

Memory is the larger of the two phases of a step's backward:
- the head: the chunked log-softmax over the vocabulary runs first, next to everything that
  lives through the step (fp32 sharded master weights, gradients and AdamW state; the root's
  unsharded compute copy of the tied embedding/head and its unsharded gradient; the
  activations saved for backward);
- one decoder layer: its backward (after recomputing its forward under gradient
  checkpointing) needs all it saved, the attention-score gradients, the unsharded weights of
  it and of the prefetched next layer, and its unsharded gradient.
What the layers save for backward is not estimated by hand: the model family's real Hugging
Face code (Gemma-2, Llama) runs on the meta device (shapes only, no memory, milliseconds even at 9B) with a
saved-tensors hook counting the distinct storages autograd keeps, at one and at two layers.

The step time is 6·N FLOPs per token plus eager attention's, with one more forward under
checkpointing, at an assumed fraction of the GPU's peak: an estimate until calibrated.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from simpo_q._native import SimpoQError
from simpo_q.train.recipe import Recipe

GIB = 2**30
H100_BF16_TFLOPS = 989.0  # dense peak of an H100 SXM


def model_shape(model: str) -> dict:
    from simpo_q import hub

    p = Path(model) / "config.json"
    if not p.is_file() and hub.hub_id(model):
        try:
            p = hub.local(model, "model", files=["config.json"]) / "config.json"
        except SimpoQError:
            if "gemma-2-9b" not in model:
                raise
    if p.is_file():
        return json.loads(p.read_text())
    if "gemma-2-9b" in model:
        return {
            "architectures": ["Gemma2ForCausalLM"],
            "model_type": "gemma2",
            "max_position_embeddings": 8192,
            "sliding_window": 4096,
            "rms_norm_eps": 1e-06,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "hidden_size": 3584,
            "intermediate_size": 14336,
            "num_hidden_layers": 42,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 256,
            "vocab_size": 256000,
            "query_pre_attn_scalar": 256,
        }
    raise SimpoQError(f"{model}: no config.json to plan from")


@lru_cache(maxsize=32)
def saved_bytes(config_json: str, seqs: int, t: int, bf16: bool, checkpointing: bool, layers: int) -> int:
    """Bytes autograd keeps for backward in a `layers`-deep model of this config (its family's
    Hugging Face code, a vocabulary of 8) over [seqs, t] tokens (parameters excluded), counted
    on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    c = json.loads(config_json)
    c.update(num_hidden_layers=layers, vocab_size=8)
    if c.get("sliding_window"):
        c["sliding_window"] = max(t, 1)  # a window that covers the sequence: every layer attends to all of it
    c.pop("architectures", None)
    cfg = AutoConfig.for_model(c.pop("model_type"), **c)
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        m = m.to(torch.bfloat16 if bf16 else torch.float32)
    m.train()
    if checkpointing:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = {p.untyped_storage()._cdata for p in m.parameters()}
    seen: dict[int, int] = {}

    def pack(x):
        s = x.untyped_storage()
        if s._cdata not in params:
            seen[s._cdata] = s.nbytes()
        return x

    ids = torch.zeros((seqs, t), dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        m.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return sum(seen.values())


def plan(r: Recipe, gpus: int, gpu_mem_gb: float, tflops: float = H100_BF16_TFLOPS, mfu: float = 0.35) -> dict:
    c = model_shape(r.model)
    h, n = c["hidden_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    q = heads * c.get("head_dim", h // heads)
    # every tensor the family's adapter expects: one layer's, and the rest (embedding, final
    # norm, an untied head), which FSDP2 keeps in the root
    from math import prod

    from simpo_q.arch import adapter_for
    from simpo_q.arch.base import LAYER_PREFIX

    shapes = adapter_for(c, f"{r.model}/config.json").expected_shapes(c, f"{r.model}/config.json")
    per_layer = sum(prod(sh) for name, sh in shapes.items() if name.startswith(f"{LAYER_PREFIX}0."))
    params = sum(prod(sh) for sh in shapes.values())
    root = params - n * per_layer
    v = c["vocab_size"]
    b = 2 if r.bf16 else 4  # compute dtype: FSDP2's bf16 parameters (autocast in one process)
    seqs, t = 2 * r.per_device_train_batch_size, r.max_length
    shape = (json.dumps(c, sort_keys=True), seqs, t, r.bf16)
    full1, full2 = saved_bytes(*shape, False, 1), saved_bytes(*shape, False, 2)
    layer_saved, outside = full2 - full1, 2 * full1 - full2
    if r.gradient_checkpointing:
        ck1, ck2 = saved_bytes(*shape, True, 1), saved_bytes(*shape, True, 2)
        kept = n * (ck2 - ck1) + (2 * ck1 - ck2)
        recompute = layer_saved
    else:
        kept, recompute = n * layer_saved + outside, 0
    # softmax backward in fp32: the incoming gradient and the outgoing one, plus the gradient
    # of the bf16 copy of the probabilities
    scores = seqs * heads * t * t
    attn_grads = scores * (4 + 4 + b)
    sharded = gpus > 1 or r.fsdp == "always"
    always = {
        "parameters (fp32 shard)": 4 * params / gpus,
        "gradients (fp32 shard)": 4 * params / gpus,
        "optimizer AdamW m, v (fp32 shard)": 8 * params / gpus,
        "root weights, unsharded (embedding, head)": b * root if sharded else (b * params if r.bf16 else 0),
        "root gradient, unsharded": b * root if sharded else 0,
        "activations kept for backward": kept,
    }
    head = {"logits chunk (fp32, forward + backward)": 3 * 4 * min(r.chunk_tokens, seqs * t) * v}
    layer = {
        "one layer's recomputed activations": recompute,
        "attention-score gradients (one layer)": attn_grads,
        "unsharded layer weights + gradient (2 layers + 1)": (3 * b * per_layer + 4 * per_layer) if sharded else 0,
    }
    base = sum(always.values())
    head_total, layer_total = base + sum(head.values()), base + sum(layer.values())
    out = {**always, **(head if head_total >= layer_total else layer)}
    total = max(head_total, layer_total)
    tokens_step = seqs * t * r.gradient_accumulation_steps * gpus
    attn_flops = 12 * n * q * t  # per token: QK^T and PV, forward + backward, eager (no causal skipping)
    per_token = 6 * params + attn_flops
    if r.gradient_checkpointing:
        per_token += 2 * params + attn_flops / 3  # the recomputed forward
    step_s = per_token * tokens_step / (gpus * tflops * 1e12 * mfu)
    return {
        "params": params,
        "bytes": out,
        "total": total,
        "phase": "head" if head_total >= layer_total else "layer",
        "fits": total < gpu_mem_gb * 1e9 * 0.9,
        "tokens_per_step": tokens_step,
        "step_seconds": step_s,
        "tflops": tflops,
        "mfu": mfu,
    }


def _count(n: int) -> str:
    """A parameter count that stays readable at every size (2.0M, not 0.00B)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def render(p: dict, gpus: int, gpu_mem_gb: float) -> str:
    lines = [
        f"model: {_count(p['params'])} parameters, {gpus} GPU{'s' if gpus != 1 else ''} of {gpu_mem_gb:g} GB",
        f"per GPU at the peak (the backward of {'the chunked head' if p['phase'] == 'head' else 'a layer'}):",
    ]
    for k, v in p["bytes"].items():
        lines.append(f"  {k:50s} {v / GIB:8.2f} GiB")
    lines.append(
        f"  {'total per GPU':50s} {p['total'] / GIB:8.2f} GiB -> "
        f"{'fits' if p['fits'] else 'does NOT fit'} (90% of {gpu_mem_gb:g} GB)"
    )
    lines.append(f"tokens per optimizer step (padded upper bound): {p['tokens_per_step']}")
    lines.append(
        f"estimated step time: {p['step_seconds']:.1f} s (FLOPs at {p['mfu']:.0%} of {p['tflops']:g} "
        f"TFLOP/s per GPU; an estimate, not a measurement)"
    )
    return "\n".join(lines)
