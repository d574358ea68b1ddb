"""The whole job: SimPO training, an importance matrix on calibration text, and a k-quant
GGUF (+ Ollama Modelfile and NOTICE) written from the trained weights as they are in memory
— tensor by tensor into the native quantizer, with no intermediate F32/F16 file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from simpo_q._native import SimpoQError


def run_pipeline(recipe, out: str | os.PathLike, *, ftype: str = "Q3_K_S", imatrix=None, imatrix_ctx: int = 512,
                 imatrix_chunks: int | None = None, ollama: bool = True, quiet: bool = False) -> Path | None:
    import torch.distributed as dist

    from simpo_q.quantize_model import quantize_model
    from simpo_q.sources import StateDictSource
    from simpo_q.train.checkpoint import iter_full_state_dict
    from simpo_q.train.loop import train

    run_dir, model = train(recipe, quiet=quiet, keep_model=True)
    final = Path(run_dir) / "final"
    if not (final / "config.json").exists():
        raise SimpoQError(f"{final}: the training run did not finish (stop_after_steps?)")
    # Under FSDP2 every rank takes part in gathering; rank 0 holds the full fp32 weights.
    weights = {k: v for k, v in iter_full_state_dict(model) if v is not None}
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank != 0:
        return None
    src = StateDictSource(final, weights)
    path = quantize_model(src, out, ftype, imatrix=imatrix, imatrix_ctx=imatrix_ctx, imatrix_chunks=imatrix_chunks,
                          ollama=ollama, quiet=quiet)
    if not quiet:
        print(f"pipeline: trained {final}, wrote {path}", file=sys.stderr)
    return path
