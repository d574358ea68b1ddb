"""Gemma-2 (`gemma2`): tensor names, the norm +1, and the metadata llama.cpp's converter
writes, in its order (docs/conversion.md)."""

from __future__ import annotations

import re

import numpy as np

from simpo_q._native import SimpoQError

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
    raise SimpoQError(f"unexpected Gemma-2 tensor {hf!r}")


# what hparams_metadata writes besides the sizes: checked with them, so that a config without
# them fails before any work
_METADATA_INTS = ("max_position_embeddings", "sliding_window")
_METADATA_FLOATS = ("rms_norm_eps", "attn_logit_softcapping", "final_logit_softcapping")
_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim",
          "vocab_size")


def expected_shapes(cfg: dict, where: str) -> dict[str, tuple[int, ...]]:
    """Every tensor a Gemma-2 checkpoint must hold, with the shape its config implies."""
    vals = {}
    for k in (*_SIZES, "num_key_value_heads", *_METADATA_INTS):
        v = cfg.get(k, cfg.get("num_attention_heads") if k == "num_key_value_heads" else None)
        if type(v) is not int or v < 1:
            raise SimpoQError(f"{where}: config {k} is {v!r}; expected a positive integer")
        vals[k] = v
    for k in _METADATA_FLOATS:
        v = cfg.get(k)
        if type(v) not in (int, float) or not np.isfinite(v) or v <= 0:
            raise SimpoQError(f"{where}: config {k} is {v!r}; expected a positive number")
    h, inter, heads, kv, hd = (vals["hidden_size"], vals["intermediate_size"], vals["num_attention_heads"],
                               vals["num_key_value_heads"], vals["head_dim"])
    if heads % kv:
        raise SimpoQError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    shapes = {"model.embed_tokens.weight": (vals["vocab_size"], h), "model.norm.weight": (h,)}
    per_layer = {
        "input_layernorm": (h,), "self_attn.q_proj": (heads * hd, h), "self_attn.k_proj": (kv * hd, h),
        "self_attn.v_proj": (kv * hd, h), "self_attn.o_proj": (h, heads * hd), "post_attention_layernorm": (h,),
        "pre_feedforward_layernorm": (h,), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter), "post_feedforward_layernorm": (h,),
    }
    for i in range(vals["num_hidden_layers"]):
        for k, sh in per_layer.items():
            shapes[f"model.layers.{i}.{k}.weight"] = sh
    return shapes


def check_tensors(cfg: dict, stored: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuses a checkpoint whose tensors do not match its config: a missing or unexpected
    tensor, or one of another shape (llama.cpp would refuse the GGUF; transformers would
    fill a missing weight with random values)."""
    want = expected_shapes(cfg, f"{where}/config.json")
    for name, shape in want.items():
        if name not in stored:
            raise SimpoQError(f"{where}: tensor {name!r} is missing (config.json has "
                              f"{cfg['num_hidden_layers']} layers)")
        if tuple(stored[name]) != shape:
            raise SimpoQError(f"{where}: tensor {name!r} has shape {list(stored[name])}, config.json implies "
                              f"{list(shape)}")
    tied = want["model.embed_tokens.weight"]
    for name, shape in stored.items():
        if name == "lm_head.weight" and tuple(shape) == tied:
            continue
        if name not in want:
            raise SimpoQError(f"{where}: unexpected tensor {name!r} {list(shape)} for a Gemma-2 model of this config")


def transform(hf: str, x: np.ndarray) -> np.ndarray:
    """Gemma multiplies by (1 + w) in its RMS norms; llama.cpp by w. Added in float32."""
    if hf.endswith("norm.weight"):
        return (x + np.float32(1.0)).astype(np.float32)
    return x


def untransform(hf: str, x: np.ndarray) -> np.ndarray:
    """`transform` undone: GGUF values back to Hugging Face's (for running a GGUF's weights in
    the Hugging Face model)."""
    if hf.endswith("norm.weight"):
        return (x - np.float32(1.0)).astype(np.float32)
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


# ---- what a published Gemma-2 file carries (the Ollama page and the model card) ----

# Ollama's TEMPLATE over .Messages (Go text/template), rendering what Gemma's Hugging Face
# chat template renders after its generation prompt, less the leading <bos> (llama.cpp adds
# that token itself). Gemma has no system role: a system message is put at the start of the
# next user turn, followed by a space, as Ollama's own gemma2 page does. The last assistant
# turn is left open (no <end_of_turn>), so that Ollama can continue it.
OLLAMA_TEMPLATE = """{{- $system := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}{{ $system = .Content }}
{{- else if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }} {{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

# the parameters of Ollama's page for gemma-2-9b-it-SimPO; both turn markers stop generation
OLLAMA_PARAMETERS = {"num_ctx": 4096, "num_predict": 4096, "repeat_penalty": 1,
                     "stop": ["<start_of_turn>", "<end_of_turn>"]}

LICENSE = "gemma"  # the Gemma Terms of Use (simpo_q.publish.LICENSES)

CITATION = """@article{gemma_2024,
    title={Gemma 2: Improving Open Language Models at a Practical Size},
    url={https://arxiv.org/abs/2408.00118},
    publisher={Google DeepMind},
    author={Gemma Team},
    year={2024}
}"""
