"""Sharded checkpoints (torch.distributed.checkpoint) that resume exactly, and the final
model as a Hugging Face directory gathered tensor by tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_state_dict,
    set_state_dict,
)


def save_checkpoint(path: Path, model, opt, sched, step: int) -> None:
    import warnings

    msd, osd = get_state_dict(model, opt)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save({"step": step, "scheduler": sched.state_dict()}, path / "trainer_state.pt")
    if dist.is_initialized():
        dist.barrier()


def load_checkpoint(path: Path, model, opt, sched) -> int:
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    ts = torch.load(path / "trainer_state.pt", weights_only=False)
    sched.load_state_dict(ts["scheduler"])
    return int(ts["step"])


def iter_full_state_dict(model):
    """(HF name, full CPU tensor) one tensor at a time, for the quantizer or a final save.

    Under FSDP2 every rank must iterate (each tensor is an all-gather); rank 0 receives the
    tensors and the other ranks get None. Only one unsharded tensor exists at a time."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    for name, t in model.state_dict().items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        yield name.removeprefix("hf."), (full.detach().to("cpu", copy=True) if rank == 0 else None)
        del full


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")


SHARD_BYTES = 5_000_000_000  # per safetensors file, as Hugging Face's default shards
_SAFETENSORS_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)  # numpy has no bfloat16; the bytes are what matter
    return t.numpy().tobytes()


def _write_tokenizer(tok, source: str | None, out: Path) -> None:
    """The tokenizer files copied from the source model as they are (save_pretrained would
    drop tokenizer.model and the typed added tokens that llama.cpp's conversion relies on)."""
    import shutil

    src = Path(source) if source else None
    if src is not None and (src / "tokenizer_config.json").exists():
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, out / name)
    else:
        tok.save_pretrained(str(out))


def save_final(model, tok, out: Path, rank: int, dtype: str = "bfloat16", source: str | None = None) -> None:
    """The trained model as a Hugging Face directory, streamed: each weight is gathered (every
    rank takes part), converted to `dtype` and written to the safetensors file(s) before the
    next, so rank 0 never holds the whole model. Written under `OUT.partial` and renamed at
    the end, so a killed save never leaves a directory that looks finished."""
    import copy
    import shutil

    from simpo_q.safetensors_out import write_weights

    if dtype not in _SAFETENSORS_DTYPE:
        raise ValueError(f"save_dtype: {dtype!r} is not one of {', '.join(_SAFETENSORS_DTYPE)}")
    td = getattr(torch, dtype)
    gathered = iter_full_state_dict(model)  # one all-gather per tensor, in this order, on every rank
    if rank != 0:
        for _ in gathered:
            pass
        dist.barrier()
        return
    specs = [(k.removeprefix("hf."), tuple(v.shape), "") for k, v in model.state_dict().items()
             if k.removeprefix("hf.") != "lm_head.weight"]
    total = sum(int(np.prod(sh)) for _, sh, _ in specs) * td.itemsize
    shards = max(1, -(-total // SHARD_BYTES))
    hf = model.hf if hasattr(model, "hf") else model
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():  # left by an earlier killed save
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        tensors = ((n, _tensor_bytes(t.to(td))) for n, t in gathered if n != "lm_head.weight")
        write_weights(tmp, specs, tensors, shards, _SAFETENSORS_DTYPE[dtype])
        for _ in gathered:  # the tied head, if it comes last: the other ranks gather it too
            pass
        cfg = copy.deepcopy(hf.config)
        cfg.use_cache = True
        cfg.dtype = td
        cfg.save_pretrained(str(tmp))
        if getattr(hf, "generation_config", None) is not None:
            hf.generation_config.save_pretrained(str(tmp))
        _write_tokenizer(tok, source, tmp)
        if out.exists():
            old = out.with_name(out.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dist.is_initialized():
        dist.barrier()
