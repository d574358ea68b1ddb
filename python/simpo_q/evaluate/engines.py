"""The models `eval` compares, each behind one small interface: the logits of a chunk of
tokens at the positions that are scored.

- `TorchModel`: a Hugging Face directory run with transformers (the full-precision
  reference; any device and dtype).
- `LlamaCppModel`: a GGUF run with llama.cpp (llama-cpp-python), as users run it.
- `TorchModel.from_gguf`: a GGUF's weights dequantized by simpo-q's native dequantizer and
  run in the Hugging Face model, which separates the weights' error from llama.cpp's own
  activation rounding and runs at the reference's speed on a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from simpo_q._native import SimpoQError


class TorchModel:
    engine = "torch"

    def __init__(self, model, tokenizer, name: str, vocabulary: list[str], arch: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.vocabulary = vocabulary
        self.arch = arch
        self.n_vocab = int(model.config.vocab_size)
        self.device = next(model.parameters()).device

    @classmethod
    def from_directory(cls, path: str | os.PathLike, device: str = "cpu", dtype: str = "float32") -> TorchModel:
        from simpo_q.arch import adapter_for
        from simpo_q.sources import HFDirectory
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = HFDirectory(path)  # config and every tensor checked before transformers loads it
        arch = adapter_for(src.config, str(src.path / "config.json")).ARCH
        tok = AutoTokenizer.from_pretrained(str(src.path))
        model = AutoModelForCausalLM.from_pretrained(
            str(src.path), dtype=_torch_dtype(dtype), attn_implementation="eager"
        )
        model.to(device).eval()
        model.requires_grad_(False)  # only this model: evaluation never needs its gradients
        return cls(model, tok, str(path), _hf_vocabulary(tok, src.config["vocab_size"]), arch)

    @classmethod
    def from_gguf(cls, gguf: str | os.PathLike, like: TorchModel, dtype: str = "float32") -> TorchModel:
        """The GGUF's weights, dequantized, in a copy of `like`'s architecture."""
        import simpo_q
        import torch
        from simpo_q.arch import adapter_for
        from transformers import AutoModelForCausalLM

        r = _open(gguf)
        cfg = like.model.config
        from simpo_q.arch.base import converted_name

        hf_cfg = cfg.to_dict()
        arch = adapter_for(hf_cfg, "the reference's config")
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
        tensors = {n: (d, t) for n, d, t, _, _ in r.tensors}
        state = {}
        for hf, shape in arch.expected_shapes(hf_cfg, "the reference's config").items():
            g = converted_name(arch, hf_cfg, hf)
            if g is None:
                continue
            if g not in tensors:
                raise SimpoQError(f"{gguf}: no tensor {g} (a GGUF of another model?)")
            dims, qtype = tensors[g]
            if tuple(reversed(dims)) != shape:
                raise SimpoQError(f"{gguf}: tensor {g} is {list(reversed(dims))}, the reference's is {list(shape)}")
            x = simpo_q.dequantize(r.tensor_bytes(g), qtype, shape[-1]).reshape(shape)
            state[hf] = torch.from_numpy(arch.untransform(hf_cfg, hf, x))
        missing, _ = model.load_state_dict(state, strict=False)
        if [m for m in missing if converted_name(arch, hf_cfg, m) is not None]:  # a tied head comes from tie_weights
            raise SimpoQError(f"{gguf}: no weights for {missing[:3]}")
        model.tie_weights()
        model.to(like.device, dtype=_torch_dtype(dtype)).eval()
        md = {k: v for k, _, v in r.metadata}
        # the file's own tokenizer and architecture, so that a GGUF of another model is refused
        return cls(
            model,
            like.tokenizer,
            str(gguf),
            list(md.get("tokenizer.ggml.tokens") or []),
            str(md.get("general.architecture", "")),
        )

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    @property
    def bos(self) -> int | None:
        return self.tokenizer.bos_token_id if getattr(self.tokenizer, "add_bos_token", True) else None

    def logits(self, tokens: list[int], first: int) -> np.ndarray:
        """float32 [len(tokens) − 1 − first, n_vocab]: the logits at positions first … n−2."""
        import torch

        x = torch.tensor([tokens], device=self.device)
        keep = len(tokens) - first
        with torch.no_grad():
            out = self.model(input_ids=x, use_cache=False, logits_to_keep=keep)
        return out.logits[0, :-1].float().cpu().numpy()


class LlamaCppModel:
    engine = "llama.cpp"

    def __init__(self, path: str | os.PathLike, ctx: int, threads: int | None = None, flash_attn: bool = True):
        try:
            import llama_cpp
        except ImportError as e:
            raise SimpoQError("running a GGUF needs llama-cpp-python (pip install 'simpo-q[eval]')") from e
        r = _open(path)
        md = {k: v for k, _, v in r.metadata}
        self.name = str(path)
        self.arch = str(md.get("general.architecture", ""))
        self.vocabulary = list(md.get("tokenizer.ggml.tokens") or [])
        from llama_cpp._utils import suppress_stdout_stderr

        try:
            # llama.cpp prints notes from C while it builds the context; the errors reach us
            # as the exception below
            with suppress_stdout_stderr(disable=False):
                self.llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=ctx,
                    n_batch=ctx,
                    n_ubatch=min(ctx, 512),
                    verbose=False,
                    n_threads=threads or os.cpu_count(),
                    flash_attn=flash_attn,
                )
        except (ValueError, RuntimeError) as e:
            raise SimpoQError(f"{path}: llama.cpp cannot load it ({e})") from e
        self.n_vocab = self.llm.n_vocab()
        self._add_bos = bool(md.get("tokenizer.ggml.add_bos_token", True))
        self._bos = md.get("tokenizer.ggml.bos_token_id")

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=False))

    @property
    def bos(self) -> int | None:
        return int(self._bos) if self._add_bos and self._bos is not None else None

    def logits(self, tokens: list[int], first: int) -> np.ndarray:
        """As llama-perplexity decodes a chunk: one batch, a fresh cache, outputs requested only
        for positions first … n−1 (llama.cpp then computes the last layer's feed-forward for
        those rows alone, which changes kernel shapes and so the last bits of the logits)."""
        ctx, batch = self.llm._ctx, self.llm._batch
        ctx.kv_cache_clear()
        batch.set_batch(tokens, n_past=0, logits_all=False)
        for i in range(len(tokens)):
            batch.batch.logits[i] = i >= first
        ctx.decode(batch)
        n_out = len(tokens) - first
        out = np.ctypeslib.as_array(ctx.get_logits(), shape=(n_out * self.n_vocab,))
        return out.reshape(n_out, self.n_vocab)[:-1].copy()


def _torch_dtype(dtype: str):
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise SimpoQError(f"--dtype: {dtype!r} is not one of {', '.join(table)}")
    return table[dtype]


def _open(path: str | os.PathLike):
    from simpo_q.gguf import open_gguf

    p = Path(path)
    if not p.exists():
        raise SimpoQError(f"{p}: no such GGUF file")
    return open_gguf(p)


def _hf_vocabulary(tok, vocab_size: int) -> list[str]:
    """The tokenizer's pieces by id, padded as llama.cpp's converter pads them ([PAD<i>])."""
    n = len(tok)
    pieces = tok.convert_ids_to_tokens(list(range(min(n, vocab_size))))
    return [*pieces, *(f"[PAD{i}]" for i in range(len(pieces), vocab_size))]


def is_gguf(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def load_reference(
    path: str | os.PathLike, *, ctx: int, device: str, dtype: str, threads: int | None, flash_attn: bool = True
):
    """The full-precision model: a Hugging Face directory (torch) or an F32/F16/BF16/Q8_0
    GGUF (llama.cpp)."""
    from simpo_q.hub import local

    p = local(path)  # a hub id is read from its cached snapshot
    if p.is_dir():
        return TorchModel.from_directory(p, device=device, dtype=dtype)
    if not is_gguf(p):
        raise SimpoQError(f"{p}: neither a Hugging Face model directory nor a GGUF file")
    r = _open(p)
    types = {t for _, d, t, _, _ in r.tensors if len(d) > 1}
    if not types <= {"F32", "F16", "BF16", "Q8_0"}:
        raise SimpoQError(f"{p}: a reference GGUF must be F32, F16, BF16 or Q8_0; it holds {', '.join(sorted(types))}")
    return LlamaCppModel(p, ctx, threads, flash_attn)


def check_same_model(ref, other) -> None:
    """A clear error before any work when two files are not the same model."""
    if ref.arch != other.arch:
        raise SimpoQError(f"{other.name}: architecture {other.arch!r}, the reference {ref.name} is {ref.arch!r}")
    if ref.n_vocab != other.n_vocab:
        raise SimpoQError(
            f"{other.name}: vocabulary of {other.n_vocab} tokens, the reference {ref.name} has {ref.n_vocab}"
        )
    if ref.vocabulary and other.vocabulary and ref.vocabulary != other.vocabulary:
        i = next(i for i, (a, b) in enumerate(zip(ref.vocabulary, other.vocabulary, strict=False)) if a != b)
        raise SimpoQError(
            f"{other.name}: another tokenizer than the reference {ref.name} (token {i} is "
            f"{other.vocabulary[i]!r} there, {ref.vocabulary[i]!r} in the reference)"
        )
