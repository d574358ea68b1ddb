"""Importance matrices: collected by running the Hugging Face model over calibration text as
llama-imatrix does (chunks of `ctx` tokens, BOS first in each, every token of every chunk
counted), with forward pre-hooks handing each activation batch to the native accumulator;
read, written and merged in both of llama.cpp's formats."""

from __future__ import annotations

import math
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from simpo_q import textfile
from simpo_q._native import Imatrix, SimpoQError


def read_text(path: str | os.PathLike) -> str:
    return textfile.read_text(path, "calibration text")


def chunk_tokens(tok, text: str, ctx: int, chunks: int | None, where: str, skip: int = 0) -> list[list[int]]:
    """llama-imatrix's chunking: one trailing newline stripped, tokenized with BOS, the first
    `skip` chunks' tokens dropped (its --chunk), at least 2·ctx tokens, chunk i =
    tokens[i·ctx:(i+1)·ctx] with its first token replaced by BOS."""
    if text.endswith("\n"):
        text = text[:-1]
    ids = tok(text).input_ids
    if skip > 0:
        if (skip + 2) * ctx >= len(ids):
            raise SimpoQError(f"{where}: {len(ids)} tokens; not enough left after skipping {skip} chunks of {ctx}")
        ids = ids[skip * ctx :]
    if len(ids) < 2 * ctx:
        raise SimpoQError(
            f"{where}: calibration text has {len(ids)} tokens; --ctx {ctx} needs at least "
            f"{2 * ctx} (two chunks, as llama-imatrix requires)"
        )
    n = len(ids) // ctx
    if chunks is not None and chunks > 0:
        n = min(n, chunks)
    out = []
    for i in range(n):
        c = list(ids[i * ctx : (i + 1) * ctx])
        c[0] = tok.bos_token_id
        out.append(c)
    return out


def collect(
    model_dir: str | os.PathLike,
    text_file: str | os.PathLike,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    quiet: bool = False,
    into: Imatrix | None = None,
    batch: int = 1,
    skip: int = 0,
    ppl: bool = True,
    process_output: bool = False,
    checkpoint=None,
) -> Imatrix:
    """Loads a Hugging Face directory and collects its importance matrix over `text_file`,
    `batch` chunks per forward."""
    text = read_text(text_file)
    tok, model = load_model(model_dir, device=device, dtype=dtype, quiet=quiet)
    return collect_from_model(
        model,
        tok,
        text_file,
        ctx=ctx,
        chunks=chunks,
        quiet=quiet,
        into=into,
        text=text,
        batch=batch,
        skip=skip,
        ppl=ppl,
        process_output=process_output,
        checkpoint=checkpoint,
    )


def load_model(model_dir: str | os.PathLike, *, device: str = "cpu", dtype: str = "float32", quiet: bool = False):
    """(tokenizer, model) of a Hugging Face directory or cached hub id, in eval mode, after a
    check that every weight is finite."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from simpo_q.hub import local
    from simpo_q.sources import HFDirectory

    model_dir = local(model_dir)  # a hub id is read from its cached snapshot
    src = HFDirectory(model_dir)  # clear errors for a bad directory before loading torch state
    if quiet:
        hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(src.path))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(str(src.path), dtype=torch_dtype, attn_implementation="eager")
    for name, p in model.named_parameters():
        # a broken weight would surface as "activations no longer finite": name the weight
        if not torch.isfinite(p).all():
            raise SimpoQError(
                f"{src.path}: weight {name} has non-finite values (NaN or infinity); the model is "
                f"broken, not the calibration text"
            )
    return tok, model.to(device).eval()


@contextmanager
def onednn_linears(modules):
    """Runs these nn.Linear modules through oneDNN's float32 matrix product (on the weights as
    they are: no copy) for as long as the context lasts; call it under torch.no_grad(). The
    hooks see the same inputs; only the product's rounding differs (last bits). Why: PyTorch's
    default float32 product (MKL's sgemm) reaches 200 GFLOP/s on this project's AMD EPYC VM's
    two cores, oneDNN's 448 (benches/bench_gemm.py; benches/bench_imatrix_vs_llama.py measures
    the collection). Weights on another device, of another dtype or sharded (FSDP2), and a
    PyTorch without the operator, are left as they are."""
    import torch

    patched = []
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is not None and torch.backends.mkldnn.is_available():
        for mod in modules:
            w = mod.weight
            if w.device.type != "cpu" or w.dtype != torch.float32 or hasattr(w, "full_tensor"):
                continue

            def forward(x, mod=mod):
                if x.dtype != torch.float32 or x.device.type != "cpu":
                    return torch.nn.functional.linear(x, mod.weight, mod.bias)
                return op(x, mod.weight, mod.bias, "none", [], "")

            mod.forward = forward
            patched.append(mod)
    try:
        yield len(patched)
    finally:
        for mod in patched:
            del mod.forward


class Checkpoint:
    """llama-imatrix's periodic saves: the statistics so far written to `path` every `every`
    chunks (a killed run resumes from it, `imatrix --resume`), and, every `copy_every` chunks
    (0: never), a copy named PATH.at_N. Each write is whole or absent (temporary name, then
    rename)."""

    def __init__(self, path: str | os.PathLike, every: int, copy_every: int = 0, quiet: bool = False):
        self.path, self.every, self.copy_every, self.quiet = str(path), every, copy_every, quiet

    def __call__(self, m: Imatrix, before: int, after: int) -> None:
        """Called when the chunks done went from `before` to `after` (m holds `after`)."""
        for n, path in ((self.every, self.path), (self.copy_every, None)):
            if n > 0 and after // n > before // n:
                # a copy keeps the output's format (llama-imatrix: x.dat.at_20 is a .dat file too)
                m.save(path or f"{self.path}.at_{m.chunk_count}", "dat" if self.path.endswith(".dat") else "gguf")


def collect_from_model(
    model,
    tok,
    text_file: str | os.PathLike,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    quiet: bool = False,
    into: Imatrix | None = None,
    text: str | None = None,
    batch: int = 1,
    skip: int = 0,
    ppl: bool = True,
    process_output: bool = False,
    checkpoint=None,
) -> Imatrix | None:
    """The importance matrix of a model already in memory: a Hugging Face causal LM, or the
    trainer's SimPOModel, sharded by FSDP2 or not. Under torch.distributed every rank must
    call this: rank r runs chunks r, r+world, …, and the sums and counts are added across
    ranks onto rank 0, which gets the Imatrix (the other ranks get None). The running
    perplexity is llama-imatrix's: each chunk's second half. `text`: the file's contents, when
    the caller has read them already. `batch` chunks go through each forward together (fewer,
    larger matrix products and hook calls; the rows reach the accumulator in the same order,
    the products may round differently in the last bit). `skip`: llama-imatrix's --chunk;
    `ppl` False: no output head (its --no-ppl). With the perplexity, ends with llama-imatrix's
    "Final estimate: PPL = x +/- y" line unless quiet. `process_output`: an untied head's
    input too (output.weight, its --process-output). `checkpoint(m, before, after)` is called
    after each forward in one process, with `m` holding the chunks done so far
    (`Checkpoint`: llama-imatrix's periodic saves)."""
    import torch
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from simpo_q.train.distributed import rank_world
    from simpo_q.train.loop import SimPOModel

    if text is None:
        text = read_text(text_file)
    run = model if isinstance(model, SimPOModel) else SimPOModel(model)
    hf = run.hf
    rank, world = rank_world()
    device = next(hf.parameters()).device
    batches = chunk_tokens(tok, text, ctx, chunks, str(text_file), skip)
    # one process adds straight into `into`, row after row, as llama-imatrix continues a file
    local = into if into is not None and world == 1 else Imatrix(ctx)
    active = [batch]  # chunks of this forward that count: fewer for the padding that keeps ranks in step
    hooks, widths = [], {}
    # the linear layers llama-imatrix collects, as the architecture adapter names them
    from simpo_q.arch import adapter_for

    linears = adapter_for(hf.config.to_dict(), "the model's config").LINEARS
    for i, layer in enumerate(hf.model.layers):
        for hf_name, gguf in linears.items():
            mod = layer.get_submodule(hf_name)
            name = f"blk.{i}.{gguf}.weight"
            widths[name] = mod.in_features

            def hook(_m, args, name=name):
                if active[0]:
                    x = args[0].detach()[: active[0]].reshape(-1, args[0].shape[-1])
                    x = x.to(device="cpu", dtype=torch.float32).contiguous()
                    local.add(name, x.numpy())  # a view of x: no copy; Rust reads it with the GIL released

            hooks.append(mod.register_forward_pre_hook(hook))
    adapter = adapter_for(hf.config.to_dict(), "the model's config")
    if process_output and not adapter.tied(hf.config.to_dict()):
        # the head's input is the final norm's output (the trainer's chunked head never calls
        # lm_head as a module, so the norm is hooked)
        widths["output.weight"] = hf.config.hidden_size

        def head_input(_m, _args, out):
            if active[0]:
                x = out.detach()[: active[0]].reshape(-1, out.shape[-1])
                local.add("output.weight", x.to(device="cpu", dtype=torch.float32).contiguous().numpy())

        hooks.append(hf.model.norm.register_forward_hook(head_input))
    base_chunks, base_datasets = local.chunk_count, list(local.datasets)
    first = ctx // 2
    labels = torch.full((1, ctx), -100, dtype=torch.long)
    was_training = run.training
    run.eval()
    nll = torch.zeros(3, dtype=torch.float64)  # Σ -log p, Σ (log p)², tokens scored
    steps = -(-len(batches) // (world * batch))
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="imatrix", unit="step", disable=True if quiet or rank != 0 else None, file=sys.stderr)
    linear_modules = [m for m in hf.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad(), onednn_linears(linear_modules):
            for s in bar:
                first_k = (s * world + rank) * batch
                active[0] = max(0, min(batch, len(batches) - first_k))
                x = torch.tensor([batches[min(first_k + j, len(batches) - 1)] for j in range(batch)])
                lab = labels.expand(batch, -1).clone()
                if ppl:
                    lab[:, first + 1 :] = x[:, first + 1 :]
                lp, rows = run(x.to(device), torch.ones_like(x).to(device), lab.to(device), ctx, per_token=True)
                mine = (rows < active[0]).cpu()
                lp = lp.detach().double().cpu()[mine]
                nll += torch.stack([-lp.sum(), (lp * lp).sum(), torch.tensor(float(lp.numel()), dtype=torch.float64)])
                done = min(len(batches), (s + 1) * world * batch)
                if checkpoint is not None and world == 1:
                    local.chunk_count = base_chunks + done
                    local.datasets = [*base_datasets, str(text_file)]
                    checkpoint(local, base_chunks + done - active[0], base_chunks + done)
                bar.set_postfix(
                    ppl=f"{math.exp(nll[0] / nll[2]):.3f}" if nll[2] else "-",
                    tok_s=f"{done * ctx / (time.perf_counter() - t0):.0f}",
                )
    finally:
        for h in hooks:
            h.remove()
        run.train(was_training)
    if world > 1:
        dist.all_reduce(nll_dev := nll.to(device))
        nll = nll_dev.cpu()
    if ppl and rank == 0 and not quiet and nll[2] > 1:
        # llama-imatrix's closing line: exp(mean nll) and its standard error
        mean, sq, n = float(nll[0] / nll[2]), float(nll[1] / nll[2]), float(nll[2])
        var = sq - mean * mean
        err = math.sqrt(var / (n - 1)) if var > 0 else 0.0
        print(f"Final estimate: PPL = {math.exp(mean):.4f} +/- {err * math.exp(mean):.5f}", file=sys.stderr)
    if world == 1:
        local.chunk_count = base_chunks + len(batches)
        local.datasets = [*base_datasets, str(text_file)]
        return local
    acc = _reduce_ranks(local, widths, device)
    if acc is None:
        return None
    acc.chunk_count = len(batches)
    acc.datasets = [str(text_file)]
    if into is not None:
        into.merge(acc)
        return into
    return acc


def _reduce_ranks(local: Imatrix, widths: dict[str, int], device) -> Imatrix | None:
    """Adds every rank's sums and counts onto rank 0 in one flat all-reduce each."""
    import numpy as np
    import torch
    import torch.distributed as dist

    names = sorted(widths)
    have = set(local.names())
    sums = np.concatenate([local.entry(n)[0] if n in have else np.zeros(widths[n], np.float32) for n in names])
    counts = [local.entry(n)[1] if n in have else 0 for n in names]
    s = torch.from_numpy(sums).to(device)
    c = torch.tensor(counts, dtype=torch.float64, device=device)  # exact for any real token count
    dist.reduce(s, dst=0)
    dist.reduce(c, dst=0)
    if dist.get_rank() != 0:
        return None
    out = Imatrix(local.chunk_size)
    s_np, c_np, at = s.cpu().numpy(), c.cpu().numpy(), 0
    for n, cnt in zip(names, c_np, strict=True):
        if cnt > 0:
            out.set_entry(n, np.ascontiguousarray(s_np[at : at + widths[n]]), int(cnt))
        at += widths[n]
    return out


def load(path: str | os.PathLike) -> Imatrix:
    return Imatrix.load(os.fspath(path))


def save(m: Imatrix, path: str | os.PathLike) -> None:
    fmt = "dat" if str(path).endswith(".dat") else "gguf"
    m.save(os.fspath(path), fmt)


def stats(m: Imatrix) -> list[dict]:
    rows = []
    for name in m.names():
        s, c = m.entry(name)
        rows.append(
            {
                "name": name,
                "columns": len(s),
                "count": c,
                "sum": float(s.sum()),
                "min": float(s.min()),
                "max": float(s.max()),
                "mean": float(s.mean()),
                "zero_fraction": float((s == 0).mean()),
            }
        )
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


def _seq_sum(x) -> float:
    """A float32 sum in order, as std::accumulate over floats (numpy's own sum is pairwise)."""
    import numpy as np

    return float(np.add.accumulate(np.asarray(x, dtype=np.float32), dtype=np.float32)[-1]) if len(x) else 0.0


def _layer_and_name(tensor: str) -> tuple[str, str]:
    """llama-imatrix's process_tensor_name: ("N", "attn_q") of "blk.N.attn_q.weight"."""
    parts = tensor.split(".")
    layer = next((parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "blk"), "-")
    name = next((parts[i - 1] for i in range(1, len(parts)) if parts[i] == "weight"), tensor)
    return layer, name


def show_statistics(m: Imatrix, where: str) -> str:
    """llama-imatrix --show-statistics, ported from its compute_statistics, compute_cossim and
    show_statistics: per tensor Σ(Act²), min, max, μ, σ, % active, N, entropy (and its share of
    the maximum), ZD score and cosine similarity with the same tensor of the previous layer;
    then per layer the element-weighted means. float32 arithmetic in llama's order."""
    import numpy as np

    f32 = np.float32
    stats = []
    for name in m.names():
        values, count = m.entry(name)
        if count == 0:
            continue
        act = (values / f32(count)).astype(f32)
        total = f32(_seq_sum(act))
        mean = f32(total / f32(len(act)))
        sq = f32(_seq_sum(act * act))
        var = f32(sq / f32(len(act)) - mean * mean)
        dev = f32(np.sqrt(max(f32(0), var)))
        active = f32(1) - f32(np.count_nonzero(np.abs(act) <= f32(1e-5))) / f32(len(act))
        entropy = f32(0)
        if total > 0:
            p = (act / total).astype(f32)
            p = p[p > 0]
            entropy = f32(-_seq_sum((p * np.log2(p).astype(f32)).astype(f32)))
        zd = f32(np.count_nonzero(((act - mean) / dev) > 1)) / f32(len(act)) if dev > 0 else f32(0)
        stats.append(
            {
                "tensor": name,
                "values": values.astype(f32),
                "total": total,
                "min": float(act.min()),
                "max": float(act.max()),
                "mean": mean,
                "dev": dev,
                "active": active,
                "n": len(act),
                "entropy": entropy,
                "zd": zd,
                "cossim": f32(0),
            }
        )
    by_name = {s["tensor"]: s for s in stats}
    for s in stats:
        mt = re.search(r"blk\.(\d+)\.", s["tensor"])
        if not mt:
            continue
        prev = by_name.get(s["tensor"][: mt.start(1)] + str(int(mt.group(1)) - 1) + s["tensor"][mt.end(1) :])
        if prev is not None:
            a, b = s["values"], prev["values"]
            dp = f32(_seq_sum((a * b).astype(f32)))
            s["cossim"] = f32(dp / (f32(np.sqrt(f32(_seq_sum(a * a)))) * f32(np.sqrt(f32(_seq_sum(b * b))))))
    stats.sort(key=lambda s: (_layer_and_name(s["tensor"])[1], -float(s["total"])))
    out = [
        f"\nComputing statistics for {where} ({len(stats)} tensors)",
        "\n"
        + "\t".join(
            [
                " Layer",
                "       Tensor",
                "          Σ(Act²)",
                "  Min",
                "            Max",
                "           μ",
                "   σ",
                " % Active",
                "N",
                "   Entropy",
                "E (norm)",
                "ZD",
                "  CosSim",
            ]
        ),
        "=" * 173,
    ]
    layers: dict[int, list[float]] = {}
    for s in stats:
        layer, name = _layer_and_name(s["tensor"])
        norm = f32(100) * (s["entropy"] / f32(np.log2(s["n"]))) if s["n"] > 0 else f32(0)
        out.append(
            f"{layer:>5s}\t{name:<20s}\t{s['total']:10.2f}\t{s['min']:8.4f}\t{s['max']:11.4f}\t"
            f"{s['mean']:6.2f}\t{s['dev']:6.2f}\t{s['active'] * 100:8.2f}%\t{s['n']:6d}\t{s['entropy']:10.4f}\t"
            f"{norm:6.2f}%\t{100 * s['zd']:10.2f}%\t{s['cossim']:8.4f}"
        )
        blk = int(layer) if layer.isdigit() else -1
        w = layers.setdefault(blk, [f32(0), f32(0), f32(0), 0])
        w[0] += f32(s["n"]) * s["total"]
        w[1] += f32(s["n"]) * s["zd"]
        w[2] += f32(s["n"]) * s["cossim"]
        w[3] += s["n"]
    out.append(f"\nComputing weighted average statistics per layer ({sum(1 for k in layers if k >= 0)} layers)")
    out.append("\n" + "\t".join(["  Layer", "     μΣ(Act²)", "      μZD", "μCosSim"]))
    out.append("=" * 48)
    for blk in sorted(layers):
        bias, zd, cos, n = layers[blk]
        if n == 0 or blk < 0:
            continue
        out.append(f"{blk:5d}\t{bias / f32(n):14.2f}\t{100 * zd / f32(n):10.4f}%\t{cos / f32(n):6.4f}")
    return "\n".join(out) + "\n"
