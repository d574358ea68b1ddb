"""Llama (`llama`; Hugging Face's LlamaForCausalLM and MistralForCausalLM, which share its
layout): tensor names, the rotary permutation of the query and key rows, and the metadata
llama.cpp's converter writes, in its order (docs/conversion.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simpo_q._native import SimpoQError
from simpo_q.arch.base import (
    EMBED,
    LAYER_PREFIX,
    LM_HEAD,
    TinyTokenizer,
    kv_heads,
    layout_gguf_name,
    positive_floats,
    positive_ints,
)

ARCH = "llama"
HF_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM")

_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
LINEARS = {k: v for k, v in _LAYER.items() if k.startswith(("self_attn.", "mlp."))}


def tied(cfg: dict) -> bool:
    """Llama-3.2's small models share the head with the embedding; Llama-3-8B does not.
    HF's default for LlamaConfig is untied."""
    return bool(cfg.get("tie_word_embeddings", False))


def gguf_name(hf: str) -> str | None:
    """The GGUF name of an HF tensor (lm_head is `output`; of a tied model it is dropped by
    the caller's `tied` check before this is asked)."""
    if hf == LM_HEAD:
        return "output.weight"
    return layout_gguf_name(hf, _LAYER, "Llama")


_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _rope_type(cfg: dict) -> str | None:
    """The config's RoPE scaling type as the converter reads it (rope_parameters, else
    rope_scaling; `type` is the older spelling)."""
    rp = cfg.get("rope_parameters", cfg.get("rope_scaling")) or {}
    if not isinstance(rp, dict):
        return None
    return rp.get("rope_type", rp.get("type"))


def head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def expected_shapes(cfg: dict, where: str) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama checkpoint must hold, with the shape its config implies. What this
    adapter does not convert yet is refused here, by name, before any work: RoPE scaling
    (Llama-3.1's `llama3` needs a rope_freqs tensor), biases, experts."""
    vals = positive_ints(cfg, _SIZES, where)
    positive_floats(cfg, ("rms_norm_eps",), where)
    if cfg.get("head_dim") is not None:
        positive_ints(cfg, ("head_dim",), where)
    rope = _rope_type(cfg)
    if rope not in (None, "default"):
        raise SimpoQError(f"{where}: RoPE scaling {rope!r} is not supported yet (only unscaled RoPE)")
    for k in ("attention_bias", "mlp_bias"):
        if cfg.get(k):
            raise SimpoQError(f"{where}: {k} is true; biased Llama layers are not supported yet")
    if cfg.get("num_local_experts"):
        raise SimpoQError(f"{where}: a mixture of experts (num_local_experts) is not supported yet")
    h, inter, heads = vals["hidden_size"], vals["intermediate_size"], vals["num_attention_heads"]
    kv, hd = kv_heads(cfg), head_dim(cfg)
    if kv < 1 or heads % kv:
        raise SimpoQError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if hd % 2:
        raise SimpoQError(f"{where}: head size {hd} is odd; rotary embeddings need an even one")
    shapes = {EMBED: (vals["vocab_size"], h), "model.norm.weight": (h,)}
    if not tied(cfg):
        shapes[LM_HEAD] = (vals["vocab_size"], h)
    per_layer = {
        "input_layernorm": (h,),
        "self_attn.q_proj": (heads * hd, h),
        "self_attn.k_proj": (kv * hd, h),
        "self_attn.v_proj": (kv * hd, h),
        "self_attn.o_proj": (h, heads * hd),
        "post_attention_layernorm": (h,),
        "mlp.gate_proj": (inter, h),
        "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }
    for i in range(vals["num_hidden_layers"]):
        for k, sh in per_layer.items():
            shapes[f"{LAYER_PREFIX}{i}.{k}.weight"] = sh
    return shapes


def _heads_of(cfg: dict, hf: str) -> int | None:
    """How many heads the rows of a query or key projection hold (None: not permuted)."""
    if hf.endswith("self_attn.q_proj.weight"):
        return int(cfg["num_attention_heads"])
    if hf.endswith("self_attn.k_proj.weight"):
        return kv_heads(cfg)
    return None


def permute(x: np.ndarray, n_head: int) -> np.ndarray:
    """The converter's LlamaModel.permute: HF stores each head's rotary pairs as two halves
    (rotate_half); llama.cpp rotates interleaved pairs, so each head's rows are interleaved."""
    return np.ascontiguousarray(
        x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    )


def unpermute(x: np.ndarray, n_head: int) -> np.ndarray:
    """`permute` undone."""
    return np.ascontiguousarray(
        x.reshape(n_head, x.shape[0] // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    )


def transform(cfg: dict, hf: str, x: np.ndarray) -> np.ndarray:
    n = _heads_of(cfg, hf)
    return permute(x, n) if n is not None else x


def untransform(cfg: dict, hf: str, x: np.ndarray) -> np.ndarray:
    n = _heads_of(cfg, hf)
    return unpermute(x, n) if n is not None else x


def row_local(cfg: dict, hf: str) -> bool:
    """The permuted projections move rows within each head: read them whole (at most
    hidden × hidden, 64 MiB in float32 for Llama-3-8B)."""
    return _heads_of(cfg, hf) is None


def hparams_metadata(cfg: dict, file_type: int) -> list[tuple[str, str, object]]:
    """TextModel.set_gguf_parameters, then LlamaModel's additions, for the configs
    `expected_shapes` accepts. The converter reads the config through transformers'
    LlamaConfig, which fills what config.json leaves out: its defaults are filled in here."""
    rp = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rp.get("rope_theta") if isinstance(rp, dict) else None)
    return [
        ("llama.block_count", "u32", cfg["num_hidden_layers"]),
        ("llama.context_length", "u32", cfg.get("max_position_embeddings", 2048)),
        ("llama.embedding_length", "u32", cfg["hidden_size"]),
        ("llama.feed_forward_length", "u32", cfg["intermediate_size"]),
        ("llama.attention.head_count", "u32", cfg["num_attention_heads"]),
        ("llama.attention.head_count_kv", "u32", kv_heads(cfg)),
        ("llama.rope.freq_base", "f32", 10000.0 if theta is None else theta),
        ("llama.attention.layer_norm_rms_epsilon", "f32", cfg["rms_norm_eps"]),
        ("llama.attention.key_length", "u32", head_dim(cfg)),
        ("llama.attention.value_length", "u32", head_dim(cfg)),
        ("general.file_type", "u32", file_type),
        ("llama.vocab_size", "u32", cfg["vocab_size"]),
        ("llama.rope.dimension_count", "u32", head_dim(cfg)),
    ]


def vocab_metadata(model_dir: Path, cfg: dict) -> list[tuple[str, str, object]]:
    """The converter's Llama vocabulary: the tokenizer's add_prefix_space first, when it says,
    then SentencePiece (a tokenizer.json-only Llama-3 BPE vocabulary is not supported yet)."""
    from simpo_q.tokenizer import read_json, tokenizer_metadata

    md: list[tuple[str, str, object]] = []
    tc = read_json(model_dir / "tokenizer_config.json") or {}
    if (space := tc.get("add_prefix_space")) is not None:
        md.append(("tokenizer.ggml.add_space_prefix", "bool", bool(space)))
    if not (model_dir / "tokenizer.model").is_file():
        raise SimpoQError(
            f"{model_dir / 'tokenizer.model'}: missing; simpo-q converts SentencePiece Llama "
            f"vocabularies (Llama-2, Mistral); a BPE-only tokenizer.json (Llama-3) is not supported yet"
        )
    return md + tokenizer_metadata(model_dir, cfg)


# ---- what a published Llama file carries (the Ollama page and the model card) ----

# Ollama's TEMPLATE over .Messages, rendering what Llama-3's chat template renders after its
# generation prompt, less the leading <|begin_of_text|> (llama.cpp adds it). Every role has
# its own header; the last assistant turn is left open (no <|eot_id|>) so Ollama continues it.
OLLAMA_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}
{{- if or (ne .Role "assistant") (not $last) }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""

# Ollama's llama3 page: its context and the three markers that end a turn
OLLAMA_PARAMETERS = {"num_ctx": 8192, "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}

# Llama models come under Meta's licences, Mistral's under Apache-2.0: the architecture does not
# say which, so the user does (--license, --license-file)
LICENSE = None

CITATION = """@article{llama3_2024,
    title={The Llama 3 Herd of Models},
    url={https://arxiv.org/abs/2407.21783},
    author={Llama Team, AI @ Meta},
    year={2024}
}"""


# ---- the tiny Llama simpo-q builds for its tests (simpo_q.tiny.builder) ----

# Meta-Llama-3-8B-Instruct's chat template
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Llama's SentencePiece layout (<unk> 0, bos 1, eos 2, no pad) with Llama-3's turn markers
_MARKERS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_USER_SYMBOLS = (
    *_MARKERS,
    *(f"<|reserved_special_token_{i}|>" for i in range(8)),
    "\n",
    "\n\n",
    "\n\n\n",
    "\t",
    "\t\t",
    "\t\t\t",
)
_EOT = 3 + _USER_SYMBOLS.index("<|eot_id|>")
TINY_TOKENIZER = TinyTokenizer(
    pad=None,
    eos="<|end_of_text|>",
    bos="<|begin_of_text|>",
    unk="<unk>",
    ids={"unk": 0, "bos": 1, "eos": 2, "pad": -1},
    user_symbols=_USER_SYMBOLS,
    special=frozenset(
        {
            "<unk>",
            "<|begin_of_text|>",
            "<|end_of_text|>",
            *_MARKERS,
            *(f"<|reserved_special_token_{i}|>" for i in range(8)),
        }
    ),
    chat_template=CHAT_TEMPLATE,
    tokenizer_class="LlamaTokenizer",
    eos_token="<|eot_id|>",
    extra_config={"add_prefix_space": False, "legacy": False},
    generation_config={"bos_token_id": 1, "eos_token_id": [2, _EOT]},
)


def tiny_config(tc) -> dict:
    """config.json as Meta-Llama-3-8B-Instruct's in every field that matters, at small sizes."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": _EOT,
        "hidden_act": "silu",
        "hidden_size": tc.hidden,
        "initializer_range": 0.02,
        "intermediate_size": tc.intermediate,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "num_attention_heads": tc.heads,
        "num_hidden_layers": tc.layers,
        "num_key_value_heads": tc.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": tc.vocab,
    }
    if tc.head_dim * tc.heads != tc.hidden:
        cfg["head_dim"] = tc.head_dim
    return cfg


# the tiny model's norm weights are random around 1, where Llama's trained norms sit
TINY_NORM_CENTRE = 1.0
