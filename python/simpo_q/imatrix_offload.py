"""The importance matrix one decoder layer at a time (`imatrix --offload`): for a model that
does not fit in memory, or on a device that cannot hold it.

The Hugging Face model is built with its weights on the meta device (no memory), so that its
own code prepares what every layer receives (scaled embeddings, rotary tables, causal and
sliding-window masks). The embedding rows of the tokens in the calibration text are read from
the safetensors files; then, layer after layer, the layer's weights are loaded from the files,
every chunk's hidden states pass through it (the accumulator collecting each linear weight's
inputs, as in the in-memory path), and the weights are freed. Peak memory is about one layer
plus the hidden states of the chunks in flight. Each chunk runs alone through each layer, with
the same operations as the in-memory forward, so the sums and counts are the same.

Not computed here: the running perplexity (it needs the whole output head)."""

from __future__ import annotations

import gc
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from simpo_q._native import Imatrix, SimpoQError
from simpo_q.arch import adapter_for
from simpo_q.arch.base import EMBED, LAYER_PREFIX
from simpo_q.imatrix import chunk_tokens, onednn_linears, read_text

HIDDEN_BUDGET = 1 << 30  # bytes of hidden states held at once; more chunks run in several passes


class _Captured(Exception):
    """Raised by the last layer's stand-in: everything the layers receive has been seen."""


def model_bytes(src, dtype_bytes: int) -> int:
    """Bytes of every weight at `dtype_bytes` per value (the in-memory path's footprint)."""
    import math

    return sum(math.prod(src.shape(n)) for n in src.names()) * dtype_bytes


def available_bytes(device: str) -> int:
    """Free memory of the device: MemAvailable on the CPU, the driver's free memory on a GPU."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def needs_offload(model_dir: str | os.PathLike, device: str, dtype: str) -> str | None:
    """Why the model must run layer by layer (it does not fit the device's free memory with
    room for activations), or None."""
    from simpo_q.sources import HFDirectory

    need = model_bytes(HFDirectory(model_dir), 4 if dtype == "float32" else 2)
    free = available_bytes(device)
    if need * 5 // 4 > free:
        return (
            f"the model needs {need / 2**30:.1f} GiB in {dtype}, {device} has {free / 2**30:.1f} GiB free; "
            f"pass --offload to choose it yourself"
        )
    return None


def _skeleton(src, dtype):
    """The model with every parameter on the meta device and real buffers (rotary tables,
    embedding scale), copied from a one-layer, one-token-vocabulary build of the same config."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(src.path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="eager")
    small_cfg = copy.deepcopy(cfg)
    small_cfg.num_hidden_layers, small_cfg.vocab_size, small_cfg.intermediate_size = 1, 8, 8
    if hasattr(small_cfg, "layer_types"):
        small_cfg.layer_types = list(cfg.layer_types)[:1]
    small = AutoModelForCausalLM.from_config(small_cfg, dtype=dtype, attn_implementation="eager")
    buffers = dict(small.named_buffers())
    for name, _ in list(model.named_buffers()):
        parts = name.split(".")
        # a layer's buffer comes from the small model's layer 0
        key = ".".join("0" if i > 0 and parts[i - 1] == "layers" and p.isdigit() else p for i, p in enumerate(parts))
        if key not in buffers:
            raise SimpoQError(f"{src.path}: cannot rebuild buffer {name} for the layer-by-layer importance matrix")
        mod = model.get_submodule(".".join(parts[:-1]))
        persistent = parts[-1] not in mod._non_persistent_buffers_set
        mod.register_buffer(parts[-1], buffers[key].clone(), persistent=persistent)
    del small
    model.eval()
    return model


def _embedding_rows(src, ids, dtype):
    """(sorted unique ids, their embedding rows) read from the files, not the whole table."""
    import numpy as np
    import torch

    uniq = np.unique(np.asarray(ids, dtype=np.int64))
    rows = []
    start = 0
    while start < len(uniq):  # runs of consecutive ids are read at once
        end = start + 1
        while end < len(uniq) and uniq[end] == uniq[end - 1] + 1:
            end += 1
        rows.append(src.load_rows(EMBED, int(uniq[start]), int(uniq[end - 1]) + 1))
        start = end
    return uniq, torch.from_numpy(np.concatenate(rows)).to(dtype)


@contextmanager
def _stand_ins(layers, calls: list):
    """Every decoder layer replaced by a stand-in that records its inputs and passes the
    hidden states on; the last one ends the forward."""
    n = len(layers)

    def make(i):
        def forward(hidden_states, *args, **kwargs):
            calls.append((i, hidden_states, args, kwargs))
            if i == n - 1:
                raise _Captured
            return hidden_states

        return forward

    for i, layer in enumerate(layers):
        layer.forward = make(i)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _load_layer(layer, src, prefix: str, device, buffers: dict) -> None:
    """The layer's weights from the files into freshly allocated parameters (its buffers,
    if it has any, restored from `buffers`)."""
    import torch

    layer.to_empty(device=device)
    with torch.no_grad():
        for name, b in layer.named_buffers():
            b.copy_(buffers[name])
        for name, p in layer.named_parameters():
            hf = f"{prefix}{name}"
            try:
                x = torch.from_numpy(src.load(hf))
            except KeyError as e:
                raise SimpoQError(f"{src.path}: no tensor {hf!r}") from e
            if not torch.isfinite(x).all():
                raise SimpoQError(
                    f"{src.path}: weight {hf} has non-finite values (NaN or infinity); the model is "
                    f"broken, not the calibration text"
                )
            p.copy_(x)


def _release_memory() -> None:
    """Frees what one layer left before the next is loaded: buffers in reference cycles, and
    the heap pages glibc keeps after large frees (its arenas; which threads freed what varies
    from run to run: without the trim the 9B checkpoint's peak varied between 2.1 and 4.2 GB,
    with it 2.1 GB; BENCHMARKS.md)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def collect_offloaded(
    model_dir: str | os.PathLike,
    text_file: str | os.PathLike,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    quiet: bool = False,
    into: Imatrix | None = None,
    hidden_budget: int | None = None,
    skip: int = 0,
    process_output: bool = False,
    checkpoint=None,
) -> Imatrix:
    """`imatrix.collect`'s result, computed one decoder layer at a time (`process_output` and
    `checkpoint` as there; saves fall after each group of chunks has passed every layer)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from simpo_q.hub import local
    from simpo_q.sources import HFDirectory

    src = HFDirectory(local(model_dir))
    text = read_text(text_file)
    tok = AutoTokenizer.from_pretrained(str(src.path))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    batches = chunk_tokens(tok, text, ctx, chunks, str(text_file), skip)
    adapter = adapter_for(src.config, str(src.path / "config.json"))
    linears = adapter.LINEARS
    head = process_output and not adapter.tied(src.config)
    model = _skeleton(src, torch_dtype)
    body = model.model
    layers = list(body.layers)
    layer_buffers = [{n: b.clone() for n, b in layer.named_buffers()} for layer in layers]
    hidden = int(model.config.hidden_size)
    per_chunk = ctx * hidden * torch.tensor([], dtype=torch_dtype).element_size()
    group = max(1, (hidden_budget or HIDDEN_BUDGET) // per_chunk)
    out = into if into is not None else Imatrix(ctx)
    base_chunks, base_datasets = out.chunk_count, list(out.datasets)
    passes = -(-len(batches) // group)
    bar = tqdm(
        total=len(layers) * passes,
        desc="imatrix (by layer)",
        unit="layer",
        disable=True if quiet else None,
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    with torch.no_grad():
        for g0 in range(0, len(batches), group):
            chunk_ids = batches[g0 : g0 + group]
            uniq, rows = _embedding_rows(src, [i for c in chunk_ids for i in c], torch_dtype)
            body.embed_tokens.weight = torch.nn.Parameter(rows.to(device), requires_grad=False)
            for mod in body.children():  # the embedding and the rotary tables, not the meta layers
                if all(p.device.type != "meta" for p in mod.parameters(recurse=True)):
                    mod.to(device)
            # what each layer receives, for each chunk, from the model's own forward
            inputs = []
            for c in chunk_ids:
                ids = torch.searchsorted(torch.from_numpy(uniq), torch.tensor([c]))
                calls: list = []
                with _stand_ins(layers, calls):
                    try:
                        body(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), use_cache=False)
                    except _Captured:
                        pass
                inputs.append(calls)
            states = [calls[0][1] for calls in inputs]
            for i, layer in enumerate(layers):
                _load_layer(layer, src, f"{LAYER_PREFIX}{i}.", device, layer_buffers[i])
                hooks = []
                for hf_name, gguf in linears.items():

                    def hook(_m, args, name=f"blk.{i}.{gguf}.weight"):
                        x = args[0].detach().reshape(-1, args[0].shape[-1])
                        out.add(name, x.to(device="cpu", dtype=torch.float32).contiguous().numpy())

                    hooks.append(layer.get_submodule(hf_name).register_forward_pre_hook(hook))
                try:
                    with onednn_linears([m for m in layer.modules() if isinstance(m, torch.nn.Linear)]):
                        for k, calls in enumerate(inputs):
                            _, _, args, kwargs = calls[i]
                            states[k] = layer(states[k], *args, **kwargs)
                finally:
                    for h in hooks:
                        h.remove()
                    layer.to("meta")  # the weights are freed; the next layer is loaded
                    _release_memory()
                bar.update(1)
                done = g0 + len(chunk_ids) * (i + 1) / len(layers)
                bar.set_postfix(tok_s=f"{done * ctx / (time.perf_counter() - t0):.0f}")
            if head:  # the untied head's input: the final norm of the last layer's output
                _load_layer(body.norm, src, "model.norm.", device, {})
                for st in states:
                    x = body.norm(st).reshape(-1, hidden)
                    out.add("output.weight", x.to(device="cpu", dtype=torch.float32).contiguous().numpy())
                body.norm.to("meta")
            del states, inputs
            done = g0 + len(chunk_ids)
            out.chunk_count = base_chunks + done
            out.datasets = [*base_datasets, str(text_file)]
            if checkpoint is not None:
                checkpoint(out, base_chunks + g0, base_chunks + done)
    bar.close()
    out.chunk_count = base_chunks + len(batches)
    out.datasets = [*base_datasets, str(text_file)]
    return out
