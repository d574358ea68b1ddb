"""Checkpoints that resume exactly and load without executing anything, and the final model
as a Hugging Face directory gathered tensor by tensor.

A checkpoint is a directory: one safetensors file per rank with that rank's local shard of
every weight and optimizer tensor (`model/NAME`, `optim/NAME/KEY`), and `trainer_state.json`
(step, scheduler, optimizer hyperparameters, world size, the rank files and their sizes).
Neither format can run code when read (torch's pickled formats can). The JSON is written
last: a directory without it, or whose files do not match it, is incomplete.

Saving never touches the last complete checkpoint until the new one is complete: the new
one is written to `checkpoint.next`, then the old one is moved to `checkpoint.prev`, the new
one to `checkpoint`, and the old one removed. A process killed anywhere in between leaves
one complete checkpoint among the three names; `settle` (run before every load and save)
keeps the newest complete one as `checkpoint` and removes the rest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from simpo_q._native import SimpoQError, write_file
from simpo_q.train.distributed import full, rank_world

STATE_FILE = "trainer_state.json"
FORMAT = "simpo-q checkpoint 1"


def _rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.safetensors"


def _stage(name: str) -> None:
    """Marks a point of a save between two file operations. Does nothing; tests replace it
    to kill the process there and prove that every such point is recoverable."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_state(path: Path) -> dict | None:
    """The checkpoint's state if the directory is complete, else None."""
    f = path / STATE_FILE
    try:
        if not f.is_file() or f.stat().st_size > 64 << 20:
            return None
        state = json.loads(f.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if (
        not isinstance(state, dict)
        or state.get("format") != FORMAT
        or not isinstance(state.get("files"), dict)
        or type(state.get("step")) is not int
    ):
        return None
    for name, size in state["files"].items():
        p = path / name
        if Path(name).name != name or not p.is_file() or p.stat().st_size != size:
            return None
    return state


def _is_old_format(path: Path) -> bool:
    return (path / ".metadata").exists() or (path / "trainer_state.pt").exists()


def settle(path: Path) -> dict | None:
    """Rank 0 only: after a save that may have been killed, keeps the newest complete
    checkpoint at `path` and removes the other candidates. Returns its state, or None."""
    cands = [path.with_name(path.name + ".next"), path, path.with_name(path.name + ".prev")]
    found = [(s["step"], -i, p, s) for i, p in enumerate(cands) if p.is_dir() and (s := _read_state(p))]
    if not found:
        for p in cands[0], cands[2]:  # incomplete: nothing to lose
            if p.exists():
                shutil.rmtree(p)
        if path.is_dir() and _is_old_format(path):
            raise SimpoQError(
                f"{path}: a checkpoint in the old torch-pickle format, which simpo-q no longer loads "
                f"(unpickling can run code); remove it to start again, or use another output_dir"
            )
        if path.exists():
            shutil.rmtree(path)
        return None
    _, _, best, state = max(found, key=lambda t: (t[0], t[1]))
    if best != path:
        if path.exists():
            shutil.rmtree(path)  # older or incomplete; `best` is complete and newer
        best.rename(path)
    for p in cands[0], cands[2]:
        if p.exists():
            shutil.rmtree(p)
    return state


def _flatten(msd: dict, osd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors by file key, JSON-able rest) of the model and optimizer state dicts; tensors
    that share storage (the tied embedding and head) are stored once, with an alias."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    scalars: dict[str, object] = {}

    def put(key: str, t: torch.Tensor) -> None:
        loc = _local(t).detach()
        ident = (loc.untyped_storage().data_ptr(), loc.storage_offset(), tuple(loc.shape))
        if loc.numel() and ident in seen:
            aliases[key] = seen[ident]
            return
        seen[ident] = key
        tensors[key] = loc.to("cpu").contiguous()

    for k, v in msd.items():
        put(f"model/{k}", v)
    for k, st in osd["state"].items():
        for kk, v in st.items():
            if isinstance(v, torch.Tensor):
                put(f"optim/{k}/{kk}", v)
            else:
                scalars[f"optim/{k}/{kk}"] = v
    return tensors, {"aliases": aliases, "scalars": scalars, "param_groups": osd["param_groups"]}


def save_checkpoint(path: Path, model, opt, sched, step: int, recipe: dict | None = None) -> None:
    """Every rank writes its shard into `path.next`; rank 0 then writes the state (the mark
    of a complete checkpoint, with the recipe's settings) and switches it into place."""
    from safetensors.torch import save_file

    rank, world = rank_world()
    nxt = path.with_name(path.name + ".next")
    if rank == 0:
        settle(path)
        nxt.mkdir(parents=True)
    _barrier()
    msd, osd = get_state_dict(model, opt)
    tensors, rest = _flatten(msd, osd)
    save_file(tensors, str(nxt / _rank_file(rank)))
    _fsync(nxt / _rank_file(rank))
    del tensors
    _barrier()
    _stage("rank files written")
    if rank == 0:
        files = {_rank_file(r): (nxt / _rank_file(r)).stat().st_size for r in range(world)}
        state = {
            "format": FORMAT,
            "step": step,
            "world_size": world,
            "files": files,
            "scheduler": sched.state_dict(),
            **({"recipe": recipe} if recipe is not None else {}),
            **rest,
        }
        write_file(str(nxt / STATE_FILE), json.dumps(state, indent=1).encode())
        _fsync(nxt)
        _stage("state written")
        prev = path.with_name(path.name + ".prev")
        if path.exists():
            path.rename(prev)
            _stage("old checkpoint moved aside")
        nxt.rename(path)
        _fsync(path.parent)
        _stage("new checkpoint in place")
        if prev.exists():
            shutil.rmtree(prev)
    _barrier()


def _fill(dst: torch.Tensor, src: torch.Tensor, key: str, path: Path) -> None:
    loc = _local(dst)
    if tuple(loc.shape) != tuple(src.shape) or loc.dtype != src.dtype:
        raise SimpoQError(
            f"{path}: {key} is {src.dtype} {list(src.shape)} in the checkpoint and {loc.dtype} "
            f"{list(loc.shape)} in this run: it was written by a run of another model or shape"
        )
    with torch.no_grad():
        loc.copy_(src)


def changed_settings(path: Path, recipe: dict) -> list[str]:
    """`key old -> new` for each recipe setting that differs from the one the checkpoint at
    `path` was saved with (nothing when it records none)."""
    state = _read_state(path)
    saved = state.get("recipe") if state is not None else None
    if not isinstance(saved, dict):
        return []
    return [f"{k} {saved[k]!r} -> {v!r}" for k, v in recipe.items() if k in saved and saved[k] != v]


def load_checkpoint(path: Path, model, opt, sched) -> int:
    """Resumes from the newest complete checkpoint at `path`; returns its step (0 if none)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    rank, world = rank_world()
    if rank == 0:
        settle(path)
    _barrier()
    state = _read_state(path)
    if state is None:
        return 0
    if state.get("world_size") != world:
        raise SimpoQError(
            f"{path}: written by {state.get('world_size')} processes, resumed with {world}; resume "
            f"with the same number (torchrun --nproc_per_node={state.get('world_size')})"
        )
    try:
        stored = load_file(str(path / _rank_file(rank)))
    except (SafetensorError, OSError) as e:
        raise SimpoQError(f"{path / _rank_file(rank)}: unreadable checkpoint shard ({e})") from e
    aliases, scalars = state.get("aliases", {}), state.get("scalars", {})

    def get(key: str) -> torch.Tensor:
        src = stored.get(aliases.get(key, key))
        if src is None:
            raise SimpoQError(f"{path}: no {key} in the checkpoint: it was written by a run of another model")
        return src

    msd, osd = get_state_dict(model, opt)
    for k, v in msd.items():
        _fill(v, get(f"model/{k}"), f"model/{k}", path)
    for k, st in osd["state"].items():
        for kk, v in st.items():
            key = f"optim/{k}/{kk}"
            if isinstance(v, torch.Tensor):
                _fill(v, get(key), key, path)
            elif key in scalars:
                st[kk] = scalars[key]
    groups = state.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(osd["param_groups"]):
        raise SimpoQError(f"{path}: optimizer groups do not match this run")
    for mine, saved in zip(osd["param_groups"], groups, strict=True):
        for k, v in saved.items():
            mine[k] = tuple(v) if isinstance(mine.get(k), tuple) else v
    set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
    sched.load_state_dict(state["scheduler"])
    return int(state["step"])


def iter_full_state_dict(model):
    """(HF name, full CPU tensor) one tensor at a time, for the quantizer or a final save.

    Under FSDP2 every rank must iterate (each tensor is an all-gather); rank 0 receives the
    tensors and the other ranks get None. Only one unsharded tensor exists at a time."""
    rank, _ = rank_world()
    for name, t in model.state_dict().items():
        whole = full(t)
        yield name.removeprefix("hf."), (whole.detach().to("cpu", copy=True) if rank == 0 else None)
        del whole


TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


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
        raise SimpoQError(f"save_dtype: {dtype!r} is not one of {', '.join(_SAFETENSORS_DTYPE)}")
    td = getattr(torch, dtype)
    gathered = iter_full_state_dict(model)  # one all-gather per tensor, in this order, on every rank
    if rank != 0:
        for _ in gathered:
            pass
        dist.barrier()
        return
    hf = model.hf if hasattr(model, "hf") else model
    from simpo_q.arch import adapter_for
    from simpo_q.arch.base import LM_HEAD

    hf_cfg = hf.config.to_dict()
    tied = adapter_for(hf_cfg, "the trained model's config").tied(hf_cfg)

    def kept(name: str) -> bool:  # a tied head is the embedding: not stored twice
        return not (tied and name == LM_HEAD)

    specs = [
        (k.removeprefix("hf."), tuple(v.shape), "")
        for k, v in model.state_dict().items()
        if kept(k.removeprefix("hf."))
    ]
    total = sum(int(np.prod(sh)) for _, sh, _ in specs) * td.itemsize
    shards = max(1, -(-total // SHARD_BYTES))
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():  # left by an earlier killed save
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        tensors = ((n, _tensor_bytes(t.to(td))) for n, t in gathered if kept(n))
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
