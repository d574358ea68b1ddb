"""The trained model's full weights for the quantizer, one tensor at a time.

Under FSDP2 each weight is sharded over the ranks and gathering one is a collective, so every
rank must gather the same tensor at the same moment. Rank 0 (the one writing the GGUF) drives:
for each tensor the quantizer asks for, it broadcasts the tensor's index and all ranks gather
it; a broadcast of -1 ends the exchange. Only one unsharded weight exists at a time, in
whatever order the writer needs, and an error on rank 0 still releases the other ranks."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from simpo_q.sources import StateDictSource
from simpo_q.train.distributed import full, is_distributed

STOP = -1


def _device(model) -> torch.device:
    return next(model.parameters()).device


class ModelWeights(StateDictSource):
    """A StateDictSource over a live (possibly FSDP2-sharded) model, on rank 0: shapes are the
    global ones, and each load gathers that one tensor. Use as a context manager, so that the
    other ranks (in `serve_weights`) are released however the quantizer ends."""

    def __init__(self, model_dir: str | os.PathLike, model):
        self._model = model
        self._sd = model.state_dict()
        self._keys = list(self._sd)
        self._distributed = is_distributed()
        self._dev = _device(model)
        hf = {k.removeprefix("hf."): v for k, v in self._sd.items()}
        super().__init__(model_dir, hf)
        self._index = {k.removeprefix("hf."): i for i, k in enumerate(self._keys)}

    def load(self, name: str) -> np.ndarray:
        i = self._index[name]
        if self._distributed:
            dist.broadcast(torch.tensor([i], dtype=torch.long, device=self._dev), src=0)
        whole = full(self._sd[self._keys[i]]).detach()
        # a CPU float32 weight is handed over as a view: no copy at all in one process
        return np.ascontiguousarray(whole.float().cpu().numpy(), dtype=np.float32)

    def close(self) -> None:
        if self._distributed:
            dist.broadcast(torch.tensor([STOP], dtype=torch.long, device=self._dev), src=0)
            self._distributed = False

    def __enter__(self) -> ModelWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_weights(model) -> int:
    """On ranks other than 0: take part in every gather rank 0 asks for, until it says stop.
    Returns the number of tensors gathered."""
    sd = model.state_dict()
    keys, dev = list(sd), _device(model)
    n = 0
    while True:
        msg = torch.empty(1, dtype=torch.long, device=dev)
        dist.broadcast(msg, src=0)
        i = int(msg.item())
        if i == STOP:
            return n
        full(sd[keys[i]])
        n += 1
