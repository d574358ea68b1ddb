"""What an architecture adapter owns, written down once: the only place where a model
family's Hugging Face names, GGUF names, weight transforms, metadata keys, chat and Ollama
templates, licence and tiny test model live. `gemma2.py` and `llama.py` are modules that
satisfy `Adapter`; everything else reaches them through `simpo_q.arch.adapter_for`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from simpo_q._native import SimpoQError

if TYPE_CHECKING:
    import numpy as np

    from simpo_q.tiny.builder import TinyConfig

Metadata = list[tuple[str, str, object]]

# Hugging Face names every adapter so far shares (LlamaForCausalLM's layout, which Gemma-2 and
# Mistral keep): the imatrix's layer-by-layer path and the embedding-row reader use them.
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
LAYER_PREFIX = "model.layers."


@dataclass(frozen=True)
class TinyTokenizer:
    """The special-token layout of a family's tiny SentencePiece tokenizer: pieces at fixed
    ids (the trainer's pad/eos/bos/unk; None: that id is not reserved), then user symbols in
    order from the next id, the chat template and the Hugging Face tokenizer class."""

    pad: str | None
    eos: str
    bos: str
    unk: str
    ids: dict[str, int]  # "pad"/"eos"/"bos"/"unk" -> id (the trainer needs all four; -1 = none)
    user_symbols: tuple[str, ...]
    special: frozenset[str]  # pieces marked special (CONTROL in the GGUF)
    chat_template: str
    tokenizer_class: str
    eos_token: str  # what tokenizer_config.json names as eos (an instruct model's end of turn)
    extra_config: dict = field(default_factory=dict)  # more tokenizer_config.json fields
    generation_config: dict = field(default_factory=dict)


class Adapter(Protocol):
    ARCH: str  # GGUF general.architecture
    HF_ARCHS: tuple[str, ...]  # config.json "architectures" it reads
    # module inside model.layers.N -> weight inside blk.N: every linear layer llama-imatrix
    # collects (the embedding and a tied output never are)
    LINEARS: dict[str, str]
    OLLAMA_TEMPLATE: str
    OLLAMA_PARAMETERS: dict[str, object]
    LICENSE: str | None  # a key of simpo_q.publish.LICENSES, or None: the user names one
    CITATION: str
    TINY_TOKENIZER: TinyTokenizer
    TINY_NORM_CENTRE: float  # where the tiny model's random norm weights are centred

    def gguf_name(self, hf: str) -> str | None: ...

    def expected_shapes(self, cfg: dict, where: str) -> dict[str, tuple[int, ...]]: ...

    def tied(self, cfg: dict) -> bool: ...

    def transform(self, cfg: dict, hf: str, x: np.ndarray) -> np.ndarray: ...

    def untransform(self, cfg: dict, hf: str, x: np.ndarray) -> np.ndarray: ...

    def row_local(self, cfg: dict, hf: str) -> bool: ...

    def hparams_metadata(self, cfg: dict, file_type: int) -> Metadata: ...

    def vocab_metadata(self, model_dir: Path, cfg: dict) -> Metadata: ...

    def tiny_config(self, tc: TinyConfig) -> dict: ...


_LAYER_TENSOR = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


def layout_gguf_name(hf: str, layer: dict[str, str], family: str) -> str:
    """The GGUF name of a tensor of LlamaForCausalLM's layout (the embedding, the final norm,
    and `layer`'s HF module -> GGUF name inside each block), as the converter's tensor map."""
    if hf == EMBED:
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    m = _LAYER_TENSOR.match(hf)
    if m and m.group(2) in layer:
        return f"blk.{m.group(1)}.{layer[m.group(2)]}.weight"
    raise SimpoQError(f"unexpected {family} tensor {hf!r}")


def converted_name(adapter: Adapter, cfg: dict, hf: str) -> str | None:
    """The GGUF name of an HF tensor, None for one the converter drops (a tied head)."""
    if hf == LM_HEAD and adapter.tied(cfg):
        return None
    return adapter.gguf_name(hf)


def check_tensors(adapter: Adapter, cfg: dict, stored: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuses a checkpoint whose tensors do not match its config: a missing or unexpected
    tensor, or one of another shape (llama.cpp would refuse the GGUF; transformers would
    fill a missing weight with random values). A tied model may still carry a copy of its
    embedding as lm_head (some exports do): it is accepted and dropped."""
    want = adapter.expected_shapes(cfg, f"{where}/config.json")
    for name, shape in want.items():
        if name not in stored:
            raise SimpoQError(
                f"{where}: tensor {name!r} is missing (config.json has {cfg['num_hidden_layers']} layers)"
            )
        if tuple(stored[name]) != shape:
            raise SimpoQError(
                f"{where}: tensor {name!r} has shape {list(stored[name])}, config.json implies {list(shape)}"
            )
    for name, shape in stored.items():
        if name == LM_HEAD and adapter.tied(cfg) and tuple(shape) == want[EMBED]:
            continue
        if name not in want:
            raise SimpoQError(
                f"{where}: unexpected tensor {name!r} {list(shape)} for a {adapter.ARCH} model of this config"
            )


def positive_ints(cfg: dict, keys: tuple[str, ...], where: str, defaults: dict | None = None) -> dict[str, int]:
    """The config's integer sizes, each checked: a config without them fails before any work."""
    vals = {}
    for k in keys:
        v = cfg.get(k, (defaults or {}).get(k))
        if type(v) is not int or v < 1:
            raise SimpoQError(f"{where}: config {k} is {v!r}; expected a positive integer")
        vals[k] = v
    return vals


def positive_floats(cfg: dict, keys: tuple[str, ...], where: str) -> None:
    import math

    for k in keys:
        v = cfg.get(k)
        if type(v) not in (int, float) or not math.isfinite(v) or v <= 0:
            raise SimpoQError(f"{where}: config {k} is {v!r}; expected a positive number")


def kv_heads(cfg: dict) -> int:
    """num_key_value_heads, which defaults to num_attention_heads in every HF config."""
    return int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
