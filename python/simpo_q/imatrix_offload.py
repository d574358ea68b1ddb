"""The importance matrix one decoder layer at a time (`imatrix --offload`): for a model that
does not fit in memory, or on a device that cannot hold it.

The Hugging Face model is built with its weights on the meta device (no memory), so that its
own code prepares what every layer receives (scaled embeddings, rotary tables, causal and
sliding-window masks). The embedding rows of the tokens in the calibration text are read from
the safetensors files; then, layer after layer, the layer's weights are loaded from the files
(read by a thread while the previous layer computes), every chunk's hidden states pass
through it (the accumulator collecting each linear weight's inputs, as in the in-memory path),
and its storage passes to the next layer. Peak memory is about one layer, the next one's
stored bytes and the hidden states of the chunks in flight. Chunks go through each layer in
the batches the in-memory forward would use, with the same operations, so the sums and counts
are the same.

Not computed here: the running perplexity (it needs the whole output head)."""

from __future__ import annotations

import gc
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from simpo_q._native import Imatrix, SimpoQError
from simpo_q.arch import adapter_for
from simpo_q.arch.base import EMBED, LAYER_PREFIX
from simpo_q.imatrix import chunk_tokens, onednn_linears, read_text

HIDDEN_BUDGET = 1 << 30  # bytes of hidden states held at once; more chunks run in several passes
_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # stored dtypes read raw


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


def _read_layer(src, prefix: str, names: list[str], buffers: dict | None = None) -> dict:
    """A layer's weights as stored in the files (bf16 stays bf16, half the bytes of float32),
    not yet in the layer: what the reading thread fetches while the previous layer computes
    (the file reads release the GIL). Bytes go into `buffers` (by parameter name) when given,
    so that the same memory serves every layer."""
    import torch

    stored = {}
    for name in names:
        hf = f"{prefix}{name}"
        try:
            dtype, shape = src.stored_type(hf), src.shape(hf)
        except KeyError as e:
            raise SimpoQError(f"{src.path}: no tensor {hf!r}") from e
        if dtype in _TORCH_DTYPES:
            raw = src.read_raw(hf, into=None if buffers is None else buffers.get(name))
            if buffers is not None:
                buffers[name] = raw
            stored[name] = torch.frombuffer(raw, dtype=getattr(torch, _TORCH_DTYPES[dtype])).reshape(shape)
        else:
            stored[name] = torch.from_numpy(src.load(hf))
    return stored


def _load_layer(layer, stored: dict, src, prefix: str, device, buffers: dict, spare: dict | None = None) -> None:
    """The layer's weights, read by `_read_layer`, into its parameters: in the storage the
    previous layer handed back to `spare` (same name, shape and dtype) or in new memory. Its
    buffers, if it has any, come from `buffers`. The copy widens bf16 and f16 exactly, as the
    quantizer's reader does. Reusing the storage matters: a fresh float32 layer's page faults
    cost 0.45 s of every 9B layer's load, and glibc kept some of each freed layer."""
    import torch

    spare = {} if spare is None else spare
    with torch.no_grad():
        for mod_name, mod in layer.named_modules():
            for pname, p in list(mod._parameters.items()):
                if p is None:
                    continue
                key = f"{mod_name}.{pname}" if mod_name else pname
                t = spare.pop(key, None)
                if t is None or t.shape != p.shape or t.dtype != p.dtype:
                    t = torch.empty(p.shape, dtype=p.dtype, device=device)
                t.copy_(stored.pop(key))
                # a reduction, not an elementwise isfinite (no boolean copy of the layer): NaN
                # propagates into both, an infinity shows as one of them
                lo, hi = torch.aminmax(t)
                if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
                    raise SimpoQError(
                        f"{src.path}: weight {prefix}{key} has non-finite values (NaN or infinity); the model "
                        f"is broken, not the calibration text"
                    )
                mod._parameters[pname] = torch.nn.Parameter(t, requires_grad=False)
            for bname, b in list(mod._buffers.items()):
                if b is not None:
                    key = f"{mod_name}.{bname}" if mod_name else bname
                    mod._buffers[bname] = buffers[key].to(device, copy=True)


def _unload_layer(layer, spare: dict) -> None:
    """The layer back on the meta device, its parameters' storage kept in `spare` for the next."""
    for key, p in layer.named_parameters():
        spare[key] = p.detach()
    layer.to("meta")


def _release_memory() -> None:
    """Frees what a group of chunks left: objects in reference cycles, and the heap pages
    glibc keeps after large frees (its arenas)."""
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
    batch: int = 1,
    skip: int = 0,
    process_output: bool = False,
    checkpoint=None,
) -> Imatrix:
    """`imatrix.collect`'s result, computed one decoder layer at a time (`batch`,
    `process_output` and `checkpoint` as there: `batch` chunks pass each layer together; saves
    fall after each group of chunks has passed every layer)."""
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
    batch = max(1, batch)
    group = max(batch, (hidden_budget or HIDDEN_BUDGET) // per_chunk // batch * batch)
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
    param_names = [[n for n, _ in layer.named_parameters()] for layer in layers]
    t0 = time.perf_counter()
    # one thread reads the next layer's bytes from the files while this layer computes (it is
    # handed the read buffers only once the last layer's bytes are in the parameters)
    with torch.no_grad(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="simpo-q-read") as reader:
        spare: dict = {}  # the last layer's parameters' storage, for the next
        read_buffers: dict = {}  # the bytes read for a layer, reused for the next
        fetch = reader.submit(_read_layer, src, f"{LAYER_PREFIX}0.", param_names[0], read_buffers)
        for g0 in range(0, len(batches), group):
            chunk_ids = batches[g0 : g0 + group]
            uniq, rows = _embedding_rows(src, [i for c in chunk_ids for i in c], torch_dtype)
            body.embed_tokens.weight = torch.nn.Parameter(rows.to(device), requires_grad=False)
            for mod in body.children():  # the embedding and the rotary tables, not the meta layers
                if all(p.device.type != "meta" for p in mod.parameters(recurse=True)):
                    mod.to(device)
            # what each layer receives, for each chunk, from the model's own forward
            inputs = []
            for b0 in range(0, len(chunk_ids), batch):
                ids = torch.searchsorted(torch.from_numpy(uniq), torch.tensor(chunk_ids[b0 : b0 + batch]))
                calls: list = []
                with _stand_ins(layers, calls):
                    try:
                        body(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), use_cache=False)
                    except _Captured:
                        pass
                inputs.append(calls)
            states = [calls[0][1] for calls in inputs]
            for i, layer in enumerate(layers):
                stored = fetch.result()  # this layer's weights, read while the last one ran
                _load_layer(layer, stored, src, f"{LAYER_PREFIX}{i}.", device, layer_buffers[i], spare)
                del stored
                if i + 1 < len(layers) or g0 + group < len(batches):  # read the next one meanwhile
                    j = (i + 1) % len(layers)
                    fetch = reader.submit(_read_layer, src, f"{LAYER_PREFIX}{j}.", param_names[j], read_buffers)
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
                    _unload_layer(layer, spare)
                bar.update(1)
                done = g0 + len(chunk_ids) * (i + 1) / len(layers)
                bar.set_postfix(tok_s=f"{done * ctx / (time.perf_counter() - t0):.0f}")
            if head:  # the untied head's input: the final norm of the last layer's output
                _load_layer(body.norm, _read_layer(src, "model.norm.", ["weight"]), src, "model.norm.", device, {})
                for st in states:
                    x = body.norm(st).reshape(-1, hidden)
                    out.add("output.weight", x.to(device="cpu", dtype=torch.float32).contiguous().numpy())
                body.norm.to("meta")
            del states, inputs
            _release_memory()
            done = g0 + len(chunk_ids)
            out.chunk_count = base_chunks + done
            out.datasets = [*base_datasets, str(text_file)]
            if checkpoint is not None:
                checkpoint(out, base_chunks + g0, base_chunks + done)
    bar.close()
    out.chunk_count = base_chunks + len(batches)
    out.datasets = [*base_datasets, str(text_file)]
    return out
