"""Builds the tiny Gemma-2 checkpoint that simpo-q uses as its embedded default.

A real Hugging Face directory (config.json, bf16 safetensors, a SentencePiece tokenizer
trained on the bundled text with Gemma's special-token layout, Gemma's chat template), so
the real loading and conversion code runs on it. Same arguments, same bytes. Weights are
written one tensor at a time, so a ~1B-parameter variant never holds more than one tensor.
See docs/tiny-model.md for the pitfalls this avoids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from simpo_q._native import SimpoQError
from simpo_q.safetensors_out import write_weights

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Gemma's id layout: <pad> 0, <eos> 1, <bos> 2, <unk> 3, then these from id 4 on.
USER_SYMBOLS = (
    ["<mask>", "[multimodal]"]
    + [f"<unused{i}>" for i in range(100)]
    + ["<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "\n\n\n", "\t", "\t\t", "\t\t\t"]
)
# Bumped whenever the builder's output changes, so cached models are rebuilt.
BUILDER_VERSION = 2
SPECIAL_PIECES = {"<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"}


@dataclass(frozen=True)
class TinyConfig:
    seed: int = 0
    layers: int = 2
    hidden: int = 256
    intermediate: int = 512
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    vocab: int = 3072
    shards: int = 1

    def key(self, pretrain_steps: int = 0) -> str:
        blob = json.dumps({**asdict(self), "pretrain_steps": pretrain_steps, "builder": BUILDER_VERSION},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def bundled_text(name: str) -> str:
    return resources.files("simpo_q").joinpath("data", name).read_text(encoding="utf-8")


def hf_config(cfg: TinyConfig) -> dict:
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
        "head_dim": cfg.head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": cfg.hidden,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate,
        "max_position_embeddings": 8192,
        "num_attention_heads": cfg.heads,
        "num_hidden_layers": cfg.layers,
        "num_key_value_heads": cfg.kv_heads,
        # llama.cpp scales attention by 1/sqrt(head_dim) and ignores this key; keep them equal.
        "query_pre_attn_scalar": cfg.head_dim,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "cache_implementation": "hybrid",
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": cfg.vocab,
    }


def tensor_specs(cfg: TinyConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, init kind) for every tensor, in a fixed order."""
    specs: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (cfg.vocab, cfg.hidden), "embed")]
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (cfg.hidden,), "norm"),
            (p + "self_attn.q_proj.weight", (q, cfg.hidden), "linear"),
            (p + "self_attn.k_proj.weight", (kv, cfg.hidden), "linear"),
            (p + "self_attn.v_proj.weight", (kv, cfg.hidden), "linear"),
            (p + "self_attn.o_proj.weight", (cfg.hidden, q), "linear"),
            (p + "post_attention_layernorm.weight", (cfg.hidden,), "norm"),
            (p + "pre_feedforward_layernorm.weight", (cfg.hidden,), "norm"),
            (p + "mlp.gate_proj.weight", (cfg.intermediate, cfg.hidden), "linear"),
            (p + "mlp.up_proj.weight", (cfg.intermediate, cfg.hidden), "linear"),
            (p + "mlp.down_proj.weight", (cfg.hidden, cfg.intermediate), "linear"),
            (p + "post_feedforward_layernorm.weight", (cfg.hidden,), "norm"),
        ]
    specs.append(("model.norm.weight", (cfg.hidden,), "norm"))
    return specs


def init_tensor(seed: int, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Float32 values of one tensor, seeded by (seed, name) so the order of writing is free.

    Norm weights are randomised around 0 (Gemma multiplies by 1 + w), so the converter's +1
    is exercised.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    std = {"embed": 0.02, "linear": 0.02, "norm": 0.1}[kind]
    return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)


def init_tensor_bf16_blocks(seed: int, name: str, shape: tuple[int, ...], kind: str,
                            block_elems: int = 1 << 24) -> Iterator[bytes]:
    """`init_tensor`'s values as bf16 bytes, generated and converted in blocks of rows (the
    generator's stream is the same in pieces): a 256000 × 3584 embedding costs one block."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    std = {"embed": 0.02, "linear": 0.02, "norm": 0.1}[kind]
    rows = shape[0] if shape else 1
    per_row = int(np.prod(shape[1:])) if len(shape) > 1 else (shape[0] if shape else 1)
    if len(shape) <= 1:
        yield f32_to_bf16_bytes((rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32))
        return
    step = max(1, block_elems // max(1, per_row))
    for r0 in range(0, rows, step):
        block = rng.standard_normal((min(step, rows - r0), *shape[1:]), dtype=np.float32)
        yield f32_to_bf16_bytes((block * std).astype(np.float32))


def f32_to_bf16_bytes(x: np.ndarray) -> bytes:
    """Round to nearest even, as torch's .to(bfloat16) does (NaN never occurs here)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")
    return r.tobytes()


def bf16_bytes_to_f32(b: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return (np.frombuffer(b, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)


def train_tokenizer(out: Path, vocab: int, text: str) -> None:
    """Trains from an in-memory iterator into an in-memory writer: a file-based run records
    its (temporary) input path in the model, and the bytes would differ from run to run."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=0.9995,
        max_sentence_length=16384,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=USER_SYMBOLS,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())


def write_hf_tokenizer(out: Path) -> None:
    """The Hugging Face tokenizer files, with the special pieces typed as real Gemma
    repositories have them (so llama.cpp's converter marks them CONTROL/USER_DEFINED)."""
    import sentencepiece as spm
    from transformers import AddedToken, GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tok = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab), chat_template=GEMMA_CHAT_TEMPLATE,
                         add_bos_token=True, add_eos_token=False)
    added = []
    decoder = {}
    for i in range(4 + len(USER_SYMBOLS)):
        piece = sp.id_to_piece(i)
        special = piece in SPECIAL_PIECES or piece.startswith("<unused") or piece == "[multimodal]"
        added.append(AddedToken(piece, normalized=False, special=special))
        decoder[str(i)] = {
            "content": piece, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special,
        }
    tok.add_tokens(added)
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({
        "added_tokens_decoder": decoder,
        "chat_template": GEMMA_CHAT_TEMPLATE,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "tokenizer_class": "GemmaTokenizer",
        "spaces_between_special_tokens": False,
        "clean_up_tokenization_spaces": False,
    })
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)


def write_generation_config(out: Path) -> None:
    gen = {"bos_token_id": 2, "eos_token_id": [1, 107], "pad_token_id": 0, "cache_implementation": "hybrid"}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def build_tiny_model(out_dir: str | os.PathLike, cfg: TinyConfig = TinyConfig(), pretrain_steps: int = 0,
                     quiet: bool = False) -> Path:
    """Writes the checkpoint to `out_dir` (created; replaced files are overwritten)."""
    for name, v in [("layers", cfg.layers), ("hidden", cfg.hidden), ("intermediate", cfg.intermediate),
                    ("heads", cfg.heads), ("kv-heads", cfg.kv_heads), ("head-dim", cfg.head_dim),
                    ("shards", cfg.shards)]:
        if v < 1:
            raise SimpoQError(f"--{name} must be at least 1, got {v}")
    if cfg.heads % cfg.kv_heads:
        raise SimpoQError(f"--heads {cfg.heads} must be a multiple of --kv-heads {cfg.kv_heads}")
    if cfg.vocab < 4 + len(USER_SYMBOLS) + 256 + 64:
        raise SimpoQError(f"--vocab {cfg.vocab} is too small for Gemma's special tokens and byte fallback")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = bundled_text("calibration.txt")
    train_tokenizer(out, cfg.vocab, text + "\n" + _preference_text())
    write_hf_tokenizer(out)
    (out / "config.json").write_text(json.dumps(hf_config(cfg), indent=2, sort_keys=True) + "\n")
    write_generation_config(out)
    specs = tensor_specs(cfg)
    gen = ((n, init_tensor_bf16_blocks(cfg.seed, n, s, k)) for n, s, k in specs)
    write_weights(out, specs, gen, cfg.shards)
    if pretrain_steps > 0:
        from simpo_q.tiny.pretrain import pretrain

        state = pretrain(out, text, steps=pretrain_steps, seed=cfg.seed, quiet=quiet)
        gen = ((n, f32_to_bf16_bytes(state[n])) for n, _, _ in specs)
        write_weights(out, specs, gen, cfg.shards)
    return out


def _preference_text() -> str:
    rows = [json.loads(line) for line in bundled_text("preferences.jsonl").splitlines() if line.strip()]
    return "\n".join(m["content"] for r in rows for m in r["chosen"] + r["rejected"][1:])


def cached_tiny_model(cache_root: str | os.PathLike = ".cache", cfg: TinyConfig = TinyConfig(),
                      pretrain_steps: int = 200, quiet: bool = False) -> Path:
    """The pretrained tiny model, built once under `cache_root` and reused."""
    out = Path(cache_root) / f"tiny-gemma2-{cfg.key(pretrain_steps)}"
    if (out / ".complete").exists():
        return out
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=cache_root))
    build_tiny_model(tmp, cfg, pretrain_steps, quiet=quiet)
    (tmp / ".complete").write_text("ok\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
