"""Brief next-token pretraining of the tiny model on the bundled text, so it is a small but
real language model: a random network says little about quantization quality."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from simpo_q._native import SimpoQError


def pretrain(
    model_dir: Path,
    text: str,
    *,
    steps: int,
    seed: int,
    quiet: bool = False,
    seq_len: int = 128,
    batch: int = 16,
    lr: float = 3e-3,
) -> dict[str, np.ndarray]:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok(text, add_special_tokens=False).input_ids
    span = seq_len - 1
    n_chunks = len(ids) // span
    if n_chunks < batch:
        raise SimpoQError(f"pretraining text has {len(ids)} tokens, fewer than one batch of {batch}x{seq_len}")
    data = torch.tensor(ids[: n_chunks * span], dtype=torch.long).view(n_chunks, span)
    bos = torch.full((n_chunks, 1), tok.bos_token_id, dtype=torch.long)
    data = torch.cat([bos, data], dim=1)

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="pretrain", disable=True if quiet else None)
    for _ in bar:
        idx = torch.randint(0, n_chunks, (batch,), generator=gen)
        x = data[idx]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    from simpo_q.arch import adapter_for
    from simpo_q.arch.base import LM_HEAD

    cfg = model.config.to_dict()
    tied = adapter_for(cfg, str(model_dir / "config.json")).tied(cfg)
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items() if not (tied and k == LM_HEAD)}
