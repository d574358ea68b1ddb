"""Gemma-2 (`gemma2`): tensor names, the norm +1, and the metadata llama.cpp's converter
writes, in its order (docs/conversion.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simpo_q._native import SimpoQError
from simpo_q.arch.base import (
    EMBED,
    LAYER_PREFIX,
    LM_HEAD,
    TinyTokenizer,
    layout_gguf_name,
    positive_floats,
    positive_ints,
)

ARCH = "gemma2"
HF_ARCHS = ("Gemma2ForCausalLM",)

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
LINEARS = {k: v for k, v in _LAYER.items() if k.startswith(("self_attn.", "mlp."))}


def gguf_name(hf: str) -> str | None:
    """The GGUF name of an HF tensor, or None for tensors the converter drops (lm_head: the
    embeddings are tied)."""
    if hf == LM_HEAD:
        return None
    return layout_gguf_name(hf, _LAYER, "Gemma-2")


# what hparams_metadata writes besides the sizes: checked with them, so that a config without
# them fails before any work
_METADATA_INTS = ("max_position_embeddings", "sliding_window")
_METADATA_FLOATS = ("rms_norm_eps", "attn_logit_softcapping", "final_logit_softcapping")
_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim", "vocab_size")


def expected_shapes(cfg: dict, where: str) -> dict[str, tuple[int, ...]]:
    """Every tensor a Gemma-2 checkpoint must hold, with the shape its config implies."""
    vals = positive_ints(
        cfg,
        (*_SIZES, "num_key_value_heads", *_METADATA_INTS),
        where,
        {"num_key_value_heads": cfg.get("num_attention_heads")},
    )
    positive_floats(cfg, _METADATA_FLOATS, where)
    h, inter, heads, kv, hd = (
        vals["hidden_size"],
        vals["intermediate_size"],
        vals["num_attention_heads"],
        vals["num_key_value_heads"],
        vals["head_dim"],
    )
    if heads % kv:
        raise SimpoQError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    shapes = {EMBED: (vals["vocab_size"], h), "model.norm.weight": (h,)}
    per_layer = {
        "input_layernorm": (h,),
        "self_attn.q_proj": (heads * hd, h),
        "self_attn.k_proj": (kv * hd, h),
        "self_attn.v_proj": (kv * hd, h),
        "self_attn.o_proj": (h, heads * hd),
        "post_attention_layernorm": (h,),
        "pre_feedforward_layernorm": (h,),
        "mlp.gate_proj": (inter, h),
        "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
        "post_feedforward_layernorm": (h,),
    }
    for i in range(vals["num_hidden_layers"]):
        for k, sh in per_layer.items():
            shapes[f"{LAYER_PREFIX}{i}.{k}.weight"] = sh
    return shapes


def tied(cfg: dict) -> bool:
    """Gemma-2's head is always its embedding (llama.cpp's gemma2 has no output tensor)."""
    return True


def transform(cfg: dict, hf: str, x: np.ndarray) -> np.ndarray:
    """Gemma multiplies by (1 + w) in its RMS norms; llama.cpp by w. Added in float32."""
    if hf.endswith("norm.weight"):
        return (x + np.float32(1.0)).astype(np.float32)
    return x


def untransform(cfg: dict, hf: str, x: np.ndarray) -> np.ndarray:
    """`transform` undone: GGUF values back to Hugging Face's (for running a GGUF's weights in
    the Hugging Face model)."""
    if hf.endswith("norm.weight"):
        return (x - np.float32(1.0)).astype(np.float32)
    return x


def row_local(cfg: dict, hf: str) -> bool:
    """Every row of a converted tensor depends on the same row of the stored one."""
    return True


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


def vocab_metadata(model_dir: Path, cfg: dict) -> list[tuple[str, str, object]]:
    """The converter's Gemma-2 vocabulary: SentencePiece, then no space prefix."""
    from simpo_q.tokenizer import tokenizer_metadata

    return [*tokenizer_metadata(model_dir, cfg), ("tokenizer.ggml.add_space_prefix", "bool", False)]


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
OLLAMA_PARAMETERS = {
    "num_ctx": 4096,
    "num_predict": 4096,
    "repeat_penalty": 1,
    "stop": ["<start_of_turn>", "<end_of_turn>"],
}

LICENSE = "gemma"  # the Gemma Terms of Use (simpo_q.publish.LICENSES)

CITATION = """@article{gemma_2024,
    title={Gemma 2: Improving Open Language Models at a Practical Size},
    url={https://arxiv.org/abs/2408.00118},
    publisher={Google DeepMind},
    author={Gemma Team},
    year={2024}
}"""


# ---- the tiny Gemma-2 simpo-q builds for its tests and demo (simpo_q.tiny.builder) ----

CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Gemma's id layout: <pad> 0, <eos> 1, <bos> 2, <unk> 3, then the user symbols from id 4 on.
_USER_SYMBOLS = (
    ("<mask>", "[multimodal]")
    + tuple(f"<unused{i}>" for i in range(100))
    + ("<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "\n\n\n", "\t", "\t\t", "\t\t\t")
)
TINY_TOKENIZER = TinyTokenizer(
    pad="<pad>",
    eos="<eos>",
    bos="<bos>",
    unk="<unk>",
    ids={"pad": 0, "eos": 1, "bos": 2, "unk": 3},
    user_symbols=_USER_SYMBOLS,
    special=frozenset(
        {
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<mask>",
            "<start_of_turn>",
            "<end_of_turn>",
            "[multimodal]",
            *(f"<unused{i}>" for i in range(100)),
        }
    ),
    chat_template=CHAT_TEMPLATE,
    tokenizer_class="GemmaTokenizer",
    eos_token="<eos>",
    extra_config={"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
    # <end_of_turn> is id 107 in this layout, as in Gemma's own vocabulary
    generation_config={
        "bos_token_id": 2,
        "eos_token_id": [1, 107],
        "pad_token_id": 0,
        "cache_implementation": "hybrid",
    },
)


def tiny_config(tc) -> dict:
    """config.json as gemma-2-9b-it's in every field that matters, at small sizes."""
    return {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "bos_token_id": 2,
        "eos_token_id": [1, 107],
        "pad_token_id": 0,
        "head_dim": tc.head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": tc.hidden,
        "initializer_range": 0.02,
        "intermediate_size": tc.intermediate,
        "max_position_embeddings": 8192,
        "num_attention_heads": tc.heads,
        "num_hidden_layers": tc.layers,
        "num_key_value_heads": tc.kv_heads,
        # llama.cpp scales attention by 1/sqrt(head_dim) and ignores this key; keep them equal.
        "query_pre_attn_scalar": tc.head_dim,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "cache_implementation": "hybrid",
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": tc.vocab,
    }


# the tiny model's norm weights are random around 0: Gemma multiplies by (1 + w), so the
# converter's +1 is exercised
TINY_NORM_CENTRE = 0.0
