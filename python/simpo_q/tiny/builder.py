"""Builds the tiny checkpoints simpo-q tests itself on: Gemma-2 (its embedded default) and
Llama, each family's specifics from its adapter (`simpo_q.arch`).

A real Hugging Face directory (config.json, bf16 safetensors, a SentencePiece tokenizer
trained on the bundled text with the family's special-token layout and chat template), so
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

# Bumped whenever the builder's output changes, so cached models are rebuilt.
BUILDER_VERSION = 2


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
    arch: str = "gemma2"  # the GGUF architecture name of the family (simpo_q.arch)

    def key(self, pretrain_steps: int = 0) -> str:
        fields = asdict(self)
        if fields["arch"] == "gemma2":
            del fields["arch"]  # the key the Gemma-2 caches had before other families came
        blob = json.dumps({**fields, "pretrain_steps": pretrain_steps, "builder": BUILDER_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def bundled_text(name: str) -> str:
    return resources.files("simpo_q").joinpath("data", name).read_text(encoding="utf-8")


def adapter(cfg: TinyConfig):
    from simpo_q.arch import adapter_by_arch

    return adapter_by_arch(cfg.arch, "--arch")


def hf_config(cfg: TinyConfig) -> dict:
    """config.json of the family's tiny model (its adapter's `tiny_config`)."""
    return adapter(cfg).tiny_config(cfg)


def tensor_specs(cfg: TinyConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, init kind) for every tensor the family's config implies (its
    adapter's expected_shapes): the embedding, each layer's tensors, then the rest (final
    norm, an untied head). The order is the file's, so it is fixed."""
    from simpo_q.arch.base import EMBED, LAYER_PREFIX, LM_HEAD

    a = adapter(cfg)
    shapes = a.expected_shapes(a.tiny_config(cfg), "the tiny model's config")
    layers = [n for n in shapes if n.startswith(LAYER_PREFIX)]
    rest = [n for n in shapes if not n.startswith(LAYER_PREFIX) and n != EMBED]
    norm = "norm1" if a.TINY_NORM_CENTRE else "norm"

    def kind(name: str) -> str:
        if name in (EMBED, LM_HEAD):
            return "embed"
        return norm if name.endswith("norm.weight") else "linear"

    return [(n, shapes[n], kind(n)) for n in [EMBED, *layers, *rest]]


# init kinds: standard deviation and centre ("norm": around 0, as Gemma's (1 + w) norms store
# them; "norm1": around 1, as the norms of the families that multiply by w)
_INIT = {"embed": (0.02, 0.0), "linear": (0.02, 0.0), "norm": (0.1, 0.0), "norm1": (0.1, 1.0)}


def _centred(x: np.ndarray, centre: float) -> np.ndarray:
    """x + centre in float32; x itself for 0 (adding 0.0 would turn −0.0 into +0.0 and change
    the bytes of models built before other families came)."""
    return (x + np.float32(centre) if centre else x).astype(np.float32)


def init_tensor(seed: int, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Float32 values of one tensor, seeded by (seed, name) so the order of writing is free."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    std, centre = _INIT[kind]
    return _centred(rng.standard_normal(shape, dtype=np.float32) * std, centre)


def init_tensor_bf16_blocks(
    seed: int, name: str, shape: tuple[int, ...], kind: str, block_elems: int = 1 << 24
) -> Iterator[bytes]:
    """`init_tensor`'s values as bf16 bytes, generated and converted in blocks of rows (the
    generator's stream is the same in pieces): a 256000 × 3584 embedding costs one block."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    std, centre = _INIT[kind]
    rows = shape[0] if shape else 1
    per_row = int(np.prod(shape[1:])) if len(shape) > 1 else (shape[0] if shape else 1)
    if len(shape) <= 1:
        yield f32_to_bf16_bytes(_centred(rng.standard_normal(shape, dtype=np.float32) * std, centre))
        return
    step = max(1, block_elems // max(1, per_row))
    for r0 in range(0, rows, step):
        block = rng.standard_normal((min(step, rows - r0), *shape[1:]), dtype=np.float32)
        yield f32_to_bf16_bytes(_centred(block * std, centre))


def f32_to_bf16_bytes(x: np.ndarray) -> bytes:
    """Round to nearest even, as torch's .to(bfloat16) does (NaN never occurs here)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")
    return r.tobytes()


def bf16_bytes_to_f32(b: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return (np.frombuffer(b, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)


def train_tokenizer(out: Path, vocab: int, text: str, tt) -> None:
    """Trains from an in-memory iterator into an in-memory writer: a file-based run records
    its (temporary) input path in the model, and the bytes would differ from run to run.
    `tt` is the family's `TinyTokenizer` (its special-token layout)."""
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
        pad_id=tt.ids["pad"],
        eos_id=tt.ids["eos"],
        bos_id=tt.ids["bos"],
        unk_id=tt.ids["unk"],
        pad_piece=tt.pad or "<pad>",
        eos_piece=tt.eos,
        bos_piece=tt.bos,
        unk_piece=tt.unk,
        user_defined_symbols=list(tt.user_symbols),
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())


def _reserved(tt) -> int:
    """How many ids the special pieces and user symbols take from id 0."""
    return sum(1 for i in tt.ids.values() if i >= 0) + len(tt.user_symbols)


def write_hf_tokenizer(out: Path, tt) -> None:
    """The Hugging Face tokenizer files, with the special pieces typed as the family's real
    repositories have them (so llama.cpp's converter marks them CONTROL/USER_DEFINED)."""
    import sentencepiece as spm
    import transformers
    from transformers import AddedToken
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    names = {"bos_token": tt.bos, "eos_token": tt.eos_token, "unk_token": tt.unk}
    if tt.pad is not None:
        names["pad_token"] = tt.pad
    tok = getattr(transformers, tt.tokenizer_class)(
        vocab=vocab,
        merges=generate_merges(vocab),
        chat_template=tt.chat_template,
        add_bos_token=True,
        add_eos_token=False,
        **names,
        **({"add_prefix_space": False} if "add_prefix_space" in tt.extra_config else {}),
    )
    added = []
    decoder = {}
    for i in range(_reserved(tt)):
        piece = sp.id_to_piece(i)
        special = piece in tt.special
        added.append(AddedToken(piece, normalized=False, special=special))
        decoder[str(i)] = {
            "content": piece,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
    tok.add_tokens(added)
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        {
            "added_tokens_decoder": decoder,
            "chat_template": tt.chat_template,
            "add_bos_token": True,
            "add_eos_token": False,
            **names,
            **tt.extra_config,
            "tokenizer_class": tt.tokenizer_class,
            "spaces_between_special_tokens": False,
            "clean_up_tokenization_spaces": False,
        }
    )
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)


def write_generation_config(out: Path, tt) -> None:
    (out / "generation_config.json").write_text(json.dumps(tt.generation_config, indent=2) + "\n")


def build_tiny_model(
    out_dir: str | os.PathLike, cfg: TinyConfig = TinyConfig(), pretrain_steps: int = 0, quiet: bool = False
) -> Path:
    """Writes the checkpoint to `out_dir` (created; replaced files are overwritten)."""
    for name, v in [
        ("layers", cfg.layers),
        ("hidden", cfg.hidden),
        ("intermediate", cfg.intermediate),
        ("heads", cfg.heads),
        ("kv-heads", cfg.kv_heads),
        ("head-dim", cfg.head_dim),
        ("shards", cfg.shards),
    ]:
        if v < 1:
            raise SimpoQError(f"--{name} must be at least 1, got {v}")
    if cfg.heads % cfg.kv_heads:
        raise SimpoQError(f"--heads {cfg.heads} must be a multiple of --kv-heads {cfg.kv_heads}")
    tt = adapter(cfg).TINY_TOKENIZER
    if cfg.vocab < _reserved(tt) + 256 + 64:
        raise SimpoQError(f"--vocab {cfg.vocab} is too small for {cfg.arch}'s special tokens and byte fallback")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = bundled_text("calibration.txt")
    train_tokenizer(out, cfg.vocab, text + "\n" + _preference_text(), tt)
    write_hf_tokenizer(out, tt)
    (out / "config.json").write_text(json.dumps(hf_config(cfg), indent=2, sort_keys=True) + "\n")
    write_generation_config(out, tt)
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


def cached_tiny_model(
    cache_root: str | os.PathLike = ".cache",
    cfg: TinyConfig = TinyConfig(),
    pretrain_steps: int = 200,
    quiet: bool = False,
) -> Path:
    """The pretrained tiny model, built once under `cache_root` and reused."""
    out = Path(cache_root) / f"tiny-{cfg.arch}-{cfg.key(pretrain_steps)}"
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
