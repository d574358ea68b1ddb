"""Importance matrices: collected by running the Hugging Face model over calibration text as
llama-imatrix does (chunks of `ctx` tokens, BOS first in each, every token of every chunk
counted), with forward pre-hooks handing each activation batch to the native accumulator;
read, written and merged in both of llama.cpp's formats."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from simpo_q._native import Imatrix, SimpoQError

# HF module (inside model.layers.N) → GGUF weight name (inside blk.N): every linear weight of
# every block, the ones llama-imatrix collects (token_embd, also the tied output, never is).
LINEARS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def read_text(path: str | os.PathLike) -> str:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SimpoQError(f"{p}: cannot read calibration text ({e.strerror})") from e
    if not raw.strip():
        raise SimpoQError(f"{p}: calibration text is empty")
    if b"\x00" in raw[:65536]:
        raise SimpoQError(f"{p}: calibration text looks binary (NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SimpoQError(f"{p}: calibration text is not UTF-8 (byte {e.start})") from e


def chunk_tokens(tok, text: str, ctx: int, chunks: int | None, where: str) -> list[list[int]]:
    """llama-imatrix's chunking: one trailing newline stripped, tokenized with BOS, at least
    2·ctx tokens, chunk i = tokens[i·ctx:(i+1)·ctx] with its first token replaced by BOS."""
    if text.endswith("\n"):
        text = text[:-1]
    ids = tok(text).input_ids
    if len(ids) < 2 * ctx:
        raise SimpoQError(f"{where}: calibration text has {len(ids)} tokens; --ctx {ctx} needs at least "
                          f"{2 * ctx} (two chunks, as llama-imatrix requires)")
    n = len(ids) // ctx
    if chunks is not None and chunks > 0:
        n = min(n, chunks)
    out = []
    for i in range(n):
        c = list(ids[i * ctx:(i + 1) * ctx])
        c[0] = tok.bos_token_id
        out.append(c)
    return out


def collect(model_dir: str | os.PathLike, text_file: str | os.PathLike, *, ctx: int = 512,
            chunks: int | None = None, device: str = "cpu", dtype: str = "float32",
            quiet: bool = False, into: Imatrix | None = None) -> Imatrix:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from simpo_q.sources import HFDirectory

    src = HFDirectory(model_dir)  # clear errors for a bad directory before loading torch state
    text = read_text(text_file)
    if quiet:
        hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(src.path))
    batches = chunk_tokens(tok, text, ctx, chunks, str(text_file))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(str(src.path), dtype=torch_dtype, attn_implementation="eager")
    model.to(device).eval()
    acc = into if into is not None else Imatrix(ctx)
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for hf_name, gguf in LINEARS.items():
            mod = layer.get_submodule(hf_name)
            name = f"blk.{i}.{gguf}.weight"

            def hook(_m, args, name=name):
                x = args[0].detach().reshape(-1, args[0].shape[-1])
                x = x.to(device="cpu", dtype=torch.float32).contiguous()
                acc.add(name, x.numpy())  # a view of x: no copy; Rust reads it with the GIL released

            hooks.append(mod.register_forward_pre_hook(hook))
    nll, count = 0.0, 0
    t0 = time.perf_counter()
    bar = tqdm(batches, desc="imatrix", unit="chunk", disable=quiet, file=sys.stderr)
    try:
        with torch.no_grad():
            for n, ids in enumerate(bar, 1):
                x = torch.tensor([ids], device=device)
                logits = model(x).logits[0].float()
                # llama-imatrix's running perplexity: the second half of each chunk
                first = ctx // 2
                lp = torch.log_softmax(logits[first:-1], dim=-1)
                tgt = x[0, first + 1:]
                nll -= float(lp.gather(1, tgt[:, None]).sum())
                count += len(tgt)
                rate = n * ctx / (time.perf_counter() - t0)
                bar.set_postfix(ppl=f"{math.exp(nll / count):.3f}", tok_s=f"{rate:.0f}")
    finally:
        for h in hooks:
            h.remove()
    acc.chunk_count = acc.chunk_count + len(batches)
    acc.datasets = [*acc.datasets, str(text_file)]
    return acc


def load(path: str | os.PathLike) -> Imatrix:
    return Imatrix.load(os.fspath(path))


def save(m: Imatrix, path: str | os.PathLike) -> None:
    fmt = "dat" if str(path).endswith(".dat") else "gguf"
    m.save(os.fspath(path), fmt)


def stats(m: Imatrix) -> list[dict]:
    rows = []
    for name in m.names():
        s, c = m.entry(name)
        rows.append({"name": name, "columns": len(s), "count": c, "sum": float(s.sum()), "min": float(s.min()),
                     "max": float(s.max()), "mean": float(s.mean()), "zero_fraction": float((s == 0).mean())})
    return rows


def is_imatrix_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.suffix in (".gguf", ".dat"):
        return True
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False
