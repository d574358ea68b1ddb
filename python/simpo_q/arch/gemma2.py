"""Gemma-2 (`gemma2`): tensor names, the norm +1, and the metadata llama.cpp's converter
writes (shared/docs/ggml-quants.md §6), in its order."""

from __future__ import annotations

import re

import numpy as np

ARCH = "gemma2"

_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
}
_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


def gguf_name(hf: str) -> str | None:
    """The GGUF name of an HF tensor, or None for tensors the converter drops (lm_head: the
    embeddings are tied)."""
    if hf == "lm_head.weight":
        return None
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    m = _RE.match(hf)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}.weight"
    raise ValueError(f"unexpected Gemma-2 tensor {hf!r}")


def transform(hf: str, x: np.ndarray) -> np.ndarray:
    """Gemma multiplies by (1 + w) in its RMS norms; llama.cpp by w. Added in float32."""
    if hf.endswith("norm.weight"):
        return (x + np.float32(1.0)).astype(np.float32)
    return x


def hparams_metadata(cfg: dict, file_type: int) -> list[tuple[str, str, object]]:
    return [
        ("gemma2.context_length", "u32", cfg["max_position_embeddings"]),
        ("gemma2.embedding_length", "u32", cfg["hidden_size"]),
        ("gemma2.block_count", "u32", cfg["num_hidden_layers"]),
        ("gemma2.feed_forward_length", "u32", cfg["intermediate_size"]),
        ("gemma2.attention.head_count", "u32", cfg["num_attention_heads"]),
        ("gemma2.attention.head_count_kv", "u32", cfg.get("num_key_value_heads", cfg["num_attention_heads"])),
        ("gemma2.attention.layer_norm_rms_epsilon", "f32", cfg["rms_norm_eps"]),
        ("gemma2.attention.key_length", "u32", cfg["head_dim"]),
        ("gemma2.attention.value_length", "u32", cfg["head_dim"]),
        ("general.file_type", "u32", file_type),
        ("gemma2.attn_logit_softcapping", "f32", cfg["attn_logit_softcapping"]),
        ("gemma2.final_logit_softcapping", "f32", cfg["final_logit_softcapping"]),
        ("gemma2.attention.sliding_window", "u32", cfg["sliding_window"]),
    ]
