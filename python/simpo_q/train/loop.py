"""The SimPO training loop: one process, or FSDP2 over every rank under torchrun (world size
> 1), from the same recipe. AdamW with fp32 master weights, cosine schedule with warmup,
gradient accumulation, clipping, optional bf16 compute, gradient checkpointing, eager
attention; sharded checkpoints that resume with the same data order; metrics reduced over
all ranks, to a progress bar and a JSON-lines file."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from simpo_q._native import SimpoQError
from simpo_q.train.data import collate, epoch_batches, read_rows, tokenize_pairs
from simpo_q.train.distributed import full, rank_world, start
from simpo_q.train.loss import average_logps, model_token_logps, simpo_loss
from simpo_q.train.recipe import Recipe


class SimPOModel(torch.nn.Module):
    """The HF model with the chunked SimPO head as its forward, so that under FSDP2 the root's
    parameters (the tied embedding/head, the final norm) are unsharded while the head runs."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(
        self, input_ids, attention_mask, labels, chunk_tokens: int = 1024, per_token: bool = False, logits: bool = False
    ):
        """Each sequence's average log-probability of its labels; with `per_token`, the
        (log-probabilities, batch rows) of every scored token (for a perplexity's error); with
        `logits`, the whole logits (sensitivity.py, which samples from them)."""
        if logits:
            return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits
        lp, rows = model_token_logps(self.hf, input_ids, attention_mask, labels, chunk_tokens=chunk_tokens)
        if per_token:
            return lp, rows
        return average_logps(lp, rows, input_ids.shape[0])


def _device() -> torch.device:
    if torch.cuda.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        d = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(d)
        return d
    return torch.device("cuda" if torch.cuda.is_available() and not dist.is_initialized() else "cpu")


def _load_hf(r: Recipe, meta: bool):
    """The Hugging Face model in fp32, in train mode (from_pretrained gives eval mode, in which
    HF skips gradient checkpointing), eager attention, dropout off as the official trainer.
    With `meta`, only its skeleton: shapes, no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if meta:
        cfg = AutoConfig.from_pretrained(r.model)
        with torch.device("meta"):
            hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    else:
        hf = AutoModelForCausalLM.from_pretrained(r.model, dtype=torch.float32, attn_implementation="eager")
    for m in hf.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if r.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hf.train()
    return hf


def computed_buffers(hf) -> dict[str, torch.Tensor]:
    """The values of a meta skeleton's buffers (Gemma-2: the rotary frequencies and the
    embedding scale, computed at construction and absent from checkpoints), on CPU: each
    owning module is copied with its buffers made real and its parameters left on the meta
    device, and Hugging Face's own initializer fills them (on meta parameters it does
    nothing)."""
    import copy

    out = {}
    for mname, m in hf.named_modules():
        own = dict(m.named_buffers(recurse=False))
        if not own:
            continue
        c = copy.deepcopy(m)
        for bname, b in own.items():
            c._buffers[bname] = torch.empty(b.shape, dtype=b.dtype, device="cpu")
        hf._init_weights(c)
        for bname in own:
            out[f"{mname}.{bname}" if mname else bname] = c._buffers[bname]
    return out


def build_model(r: Recipe, device, world: int, fsdp: bool | None = None):
    """One process: the model on `device`. Under FSDP2 every rank builds a meta skeleton and
    shards it, and each tensor reaches its shards from rank 0, which reads the checkpoint one
    tensor at a time (widened exactly to fp32): no rank, host or GPU, ever holds the whole
    unsharded model. Buffers (computed, not stored) are rebuilt on every rank."""
    if not (world > 1 if fsdp is None else fsdp):
        return SimPOModel(_load_hf(r, meta=False)).to(device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor

    from simpo_q.sources import HFDirectory

    rank, _ = rank_world()
    model = SimPOModel(_load_hf(r, meta=True))
    buffers = computed_buffers(model.hf)
    src = HFDirectory(r.model) if rank == 0 else None
    if src is not None:
        stored = set(src.names())
        missing = [n for n, _ in model.named_parameters() if n.removeprefix("hf.") not in stored]
        if missing:
            raise SimpoQError(f"{r.model}: no tensor {missing[0].removeprefix('hf.')!r} in the checkpoint")
    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if r.bf16 else torch.float32, reduce_dtype=torch.float32)
    for layer in model.hf.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # root: embedding = head, final norm
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if src is None:
                t = torch.empty(p.shape, dtype=p.dtype, device=device)
            else:
                t = torch.from_numpy(src.load(name.removeprefix("hf."))).to(device)
            assert isinstance(p, DTensor)
            p.to_local().copy_(distribute_tensor(t, mesh, p.placements, src_data_rank=0).to_local())
            del t
        for name, b in model.named_buffers():
            b.copy_(buffers[name.removeprefix("hf.")].to(device=device, dtype=b.dtype))
    return model


def peak_memory(device: torch.device) -> int:
    """This rank's peak so far: bytes allocated by tensors on a GPU; on CPU the process's
    peak resident size (VmHWM), which includes the interpreter and libraries."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_memory(device: torch.device) -> None:
    """Starts `peak_memory` afresh (after loading, whose transient copies are not training's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # Linux: reset VmHWM to the current resident size
    except OSError:
        pass


def lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup) if warmup else 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _reduce(vals: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return vals
    t = torch.tensor(list(vals.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(vals, t.tolist(), strict=True)}


def run_summary(run_dir: str | os.PathLike) -> dict:
    """The optimizer steps of a finished run and its last held-out evaluation, from the
    metrics.jsonl that `train` writes (for the model card)."""
    steps, last_eval = 0, None
    p = Path(run_dir) / "metrics.jsonl"
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue
            steps = max(steps, int(m.get("step", 0)))
            if "eval_rewards/accuracies" in m:
                last_eval = m
    out: dict = {"steps": steps}
    if last_eval is not None:
        out["eval_step"] = last_eval["step"]
        out["eval_accuracy"] = last_eval["eval_rewards/accuracies"]
        out["eval_margin"] = last_eval.get("eval_rewards/margins")
    return out


def resolve_hub_ids(r: Recipe) -> Recipe:
    """The recipe with its model and data hub ids replaced by their cached snapshot folders."""
    import dataclasses

    from simpo_q import hub

    return dataclasses.replace(
        r,
        model=str(hub.local(r.model, "model")),
        data=str(hub.local(r.data, "dataset")),
        eval_data=None if r.eval_data is None else str(hub.local(r.eval_data, "dataset")),
    )


def _training_pairs(r: Recipe, tok, rank: int, quiet: bool) -> tuple[list, list]:
    """(training pairs, held-out pairs): the data tokenized, unusable rows counted and named,
    the held-out pairs from eval_data or the first eval_fraction of the data."""
    pairs, bad = tokenize_pairs(
        read_rows(r.data, r.data_split), tok, max_length=r.max_length, max_prompt_length=r.max_prompt_length
    )
    skipped = ", ".join(f"{n} {why}" for why, n in bad.items()) or "none"
    if not pairs:
        raise SimpoQError(f"{r.data}: no usable preference pairs (skipped: {skipped})")
    if rank == 0 and not quiet:
        print(f"{r.data}: {len(pairs)} usable pairs; skipped: {skipped}", file=sys.stderr)
    eval_pairs = []
    if r.eval_data:
        eval_pairs, _ = tokenize_pairs(
            read_rows(r.eval_data, r.eval_data_split),
            tok,
            max_length=r.max_length,
            max_prompt_length=r.max_prompt_length,
        )
    elif r.eval_fraction > 0:
        n_eval = max(1, int(len(pairs) * r.eval_fraction))
        pairs, eval_pairs = pairs[n_eval:], pairs[:n_eval]
    return pairs, eval_pairs


def _append_metrics(path: Path, line: dict) -> None:
    """One line of metrics.jsonl (rank 0 only writes it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _backward(model, r: Recipe, mine: list, pad: int, device, fsdp: bool) -> tuple[dict[str, float], int]:
    """This rank's share of one optimizer step: its pairs in micro-batches, SimPO's loss
    backward (gradients accumulate; FSDP2 synchronizes them on the last micro-batch only).
    Returns the summed metrics over this rank's pairs (each divided by their number) and the
    tokens it read."""
    per_rank = len(mine)
    sums: dict[str, float] = {}
    step_tokens = 0
    size = r.per_device_train_batch_size
    for micro in range(r.gradient_accumulation_steps):
        part = mine[micro * size : (micro + 1) * size]
        b = {k: v.to(device) for k, v in collate(part, pad).items()}
        if fsdp:
            model.set_requires_gradient_sync(micro == r.gradient_accumulation_steps - 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=r.bf16 and not fsdp):
            logps = model(b["input_ids"], b["attention_mask"], b["labels"], r.chunk_tokens)
        n = len(part)
        c, rj = logps[:n], logps[n:]
        losses, rc, rr = simpo_loss(
            c,
            rj,
            beta=r.beta,
            gamma_beta_ratio=r.gamma_beta_ratio,
            label_smoothing=r.label_smoothing,
            loss_type=r.loss_type,
        )
        loss = losses.sum() / per_rank
        if r.sft_weight:
            loss = loss + r.sft_weight * (-c.mean()) * n / per_rank
        loss.backward()
        step_tokens += int(b["attention_mask"].sum())
        for key, v in (
            ("loss", losses.sum()),
            ("rewards/chosen", rc.sum()),
            ("rewards/rejected", rr.sum()),
            ("rewards/margins", (rc - rr).sum()),
            ("rewards/accuracies", (rc > rr).float().sum()),
            ("logps/chosen", c.detach().sum()),
            ("logps/rejected", rj.detach().sum()),
        ):
            sums[key] = sums.get(key, 0.0) + float(v.detach()) / per_rank
    return sums, step_tokens


def train(r: Recipe, *, quiet: bool = False) -> Path:
    """Runs the recipe; returns the output directory."""
    return train_model(r, quiet=quiet)[0]


def train_model(r: Recipe, *, quiet: bool = False) -> tuple[Path, torch.nn.Module]:
    """Runs the recipe; returns the output directory and the trained model, still in memory
    (and still sharded under FSDP2), for the pipeline's importance matrix and quantizer."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from simpo_q.sources import HFDirectory
    from simpo_q.train.checkpoint import changed_settings, load_checkpoint, save_checkpoint, save_final

    # hub ids become folders of the Hugging Face cache; then a missing or inconsistent model
    # fails here, in a second, not inside transformers (which would try the network for a
    # path it does not find, or fill a missing weight randomly)
    r = resolve_hub_ids(r)
    HFDirectory(r.model)
    rank, world = start(force=r.fsdp == "always")
    fsdp = world > 1 or r.fsdp == "always"
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if r.threads:
        torch.set_num_threads(r.threads)
    torch.manual_seed(r.seed)
    device = _device()
    out = Path(r.output_dir)
    tok = AutoTokenizer.from_pretrained(r.model)
    pairs, eval_pairs = _training_pairs(r, tok, rank, quiet)
    per_rank = r.per_device_train_batch_size * r.gradient_accumulation_steps
    global_batch = per_rank * world
    lengths = [len(p) for p in pairs]
    steps_per_epoch = len(pairs) // global_batch
    if steps_per_epoch == 0:
        raise SimpoQError(f"{r.data}: {len(pairs)} pairs, fewer than one global batch of {global_batch}")
    total = r.max_steps if r.max_steps > 0 else math.ceil(steps_per_epoch * r.num_train_epochs)
    warmup = math.ceil(total * r.warmup_ratio)

    model = build_model(r, device, world, fsdp)
    opt = torch.optim.AdamW(
        model.parameters(), lr=r.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=r.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, warmup))
    settings = dataclasses.asdict(r)
    changed = changed_settings(out / "checkpoint", settings) if rank == 0 else []
    step = load_checkpoint(out / "checkpoint", model, opt, sched)
    if step and rank == 0 and not quiet:
        print(f"{out / 'checkpoint'}: resuming from step {step}", file=sys.stderr)
        if changed:
            print(f"{out / 'checkpoint'}: settings changed since it was saved: {'; '.join(changed)}", file=sys.stderr)
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if r.eval_steps and eval_pairs and step == 0:
        ev = evaluate(model, eval_pairs, r, device, tok.pad_token_id or 0, world)
        if rank == 0:
            _append_metrics(metrics_path, {"step": 0, **{f"eval_{k}": v for k, v in ev.items()}})
    reset_peak_memory(device)
    # disable=None: no bar in a pipe or a log file (plain lines instead, below)
    bar = tqdm(total=total, initial=step, desc="simpo", disable=True if quiet or rank != 0 else None, file=sys.stderr)
    t0, tokens = time.perf_counter(), 0
    pending: list[dict] = []  # the steps since metrics were last written (every logging_steps)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    while step < total:
        epoch, k = divmod(step, steps_per_epoch)
        batch = epoch_batches(len(pairs), lengths, global_batch, r.seed, epoch)[k]
        mine = batch[rank * per_rank : (rank + 1) * per_rank]
        t_step = time.perf_counter()
        sums, step_tokens = _backward(model, r, [pairs[i] for i in mine], pad, device, fsdp)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), r.max_grad_norm)
        gn = float(full(grad_norm))
        if not math.isfinite(gn) or not math.isfinite(sums["loss"]):
            # the gradient norm is global: every rank stops here, before the update
            last = (
                f"the last good checkpoint is {out / 'checkpoint'}"
                if (out / "checkpoint").exists()
                else "no checkpoint was saved (set save_steps to keep one)"
            )
            raise SimpoQError(
                f"step {step + 1}: the loss ({sums['loss']:.4g}) or its gradient norm ({gn:.4g}) is not "
                f"finite; training stopped before the update, {last}. Lower learning_rate or check "
                f"the data"
            )
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += step_tokens
        m = _reduce({**sums, "tokens": float(step_tokens)}, world)
        m.update(
            step=step,
            lr=sched.get_last_lr()[0],
            grad_norm=gn,
            tokens=round(m["tokens"] * world),
            step_seconds=time.perf_counter() - t_step,
            peak_memory_gib=peak_memory(device) / 2**30,
        )
        if rank == 0:
            pending.append(m)
            rate = tokens * world / (time.perf_counter() - t0)
            if step % r.logging_steps == 0 or step == total:
                line = interval_metrics(pending)
                _append_metrics(metrics_path, line)
                pending.clear()
                if bar.disable and not quiet:  # a log file or a pipe: a plain line, no bar redraws
                    print(
                        f"step {step}/{total} loss {line['loss']:.4f} margin {line['rewards/margins']:.4f} "
                        f"acc {line['rewards/accuracies']:.3f} tokens/s {rate:.0f}",
                        file=sys.stderr,
                    )
            bar.set_postfix(
                loss=f"{m['loss']:.3f}",
                margin=f"{m['rewards/margins']:.3f}",
                acc=f"{m['rewards/accuracies']:.2f}",
                tok_s=f"{rate:.0f}",
            )
            bar.update(1)
        if r.eval_steps and eval_pairs and step % r.eval_steps == 0:
            ev = evaluate(model, eval_pairs, r, device, pad, world)
            if rank == 0:
                _append_metrics(metrics_path, {"step": step, **{f"eval_{k}": v for k, v in ev.items()}})
        if r.save_steps and step % r.save_steps == 0:
            save_checkpoint(out / "checkpoint", model, opt, sched, step, settings)
        if 0 < r.stop_after_steps <= step and step < total:
            bar.close()
            return out, model
    bar.close()
    save_checkpoint(out / "checkpoint", model, opt, sched, step, settings)
    save_final(model, tok, out / "final", rank, r.save_dtype, r.model)
    return out, model


def interval_metrics(steps: list[dict]) -> dict:
    """One metrics line for the steps of a logging interval, as the official trainer logs:
    means of the per-step values; the last step and learning rate; the tokens summed; the
    peak memory's maximum."""
    last = steps[-1]
    out = {
        k: sum(s[k] for s in steps) / len(steps) for k in last if k not in ("step", "lr", "tokens", "peak_memory_gib")
    }
    out.update(
        step=last["step"],
        lr=last["lr"],
        tokens=sum(s["tokens"] for s in steps),
        peak_memory_gib=max(s["peak_memory_gib"] for s in steps),
        steps=len(steps),
    )
    return out


@torch.no_grad()
def evaluate(model, pairs, r: Recipe, device, pad: int, world: int = 1) -> dict[str, float]:
    rank, _ = rank_world()
    was_training = model.training
    model.eval()
    try:
        return _evaluate(model, pairs[rank::world], r, device, pad, world)
    finally:
        model.train(was_training)


def _evaluate(model, mine, r: Recipe, device, pad: int, world: int) -> dict[str, float]:
    sums = {"rewards/accuracies": 0.0, "rewards/margins": 0.0, "loss": 0.0}
    for s in range(0, len(mine), r.per_device_train_batch_size):
        chunk = mine[s : s + r.per_device_train_batch_size]
        b = {k: v.to(device) for k, v in collate(chunk, pad).items()}
        logps = model(b["input_ids"], b["attention_mask"], b["labels"], r.chunk_tokens)
        n = len(chunk)
        losses, rc, rr = simpo_loss(
            logps[:n],
            logps[n:],
            beta=r.beta,
            gamma_beta_ratio=r.gamma_beta_ratio,
            label_smoothing=r.label_smoothing,
            loss_type=r.loss_type,
        )
        sums["rewards/accuracies"] += float((rc > rr).float().sum())
        sums["rewards/margins"] += float((rc - rr).sum())
        sums["loss"] += float(losses.sum())
    n = torch.tensor([float(len(mine))], dtype=torch.float64)
    t = torch.tensor(list(sums.values()), dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
        dist.all_reduce(n)
    return {k: float(v) / float(n) for k, v in zip(sums, t.tolist(), strict=True)}
