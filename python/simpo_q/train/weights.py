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
        self._held: tuple[str, torch.Tensor] | None = None  # the tensor whose rows are being served

    def _gather(self, name: str) -> torch.Tensor:
        """The whole tensor, where the model lives, in its own dtype (all ranks take part)."""
        i = self._index[name]
        if self._distributed:
            dist.broadcast(torch.tensor([i], dtype=torch.long, device=self._dev), src=0)
        return full(self._sd[self._keys[i]]).detach()

    def load(self, name: str) -> np.ndarray:
        self._held = None
        # a CPU float32 weight is handed over as a view: no copy at all in one process
        return np.ascontiguousarray(self._gather(name).float().cpu().numpy(), dtype=np.float32)

    def load_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) widened to float32 on the host. The tensor is gathered once, when
        its first block is asked for, and held where the model lives (on a GPU, device memory)
        until its last block is served; the host holds one block in float32, never the whole
        tensor (gemma-2-9b's embedding would be 3.7 GB). The writer asks for a tensor's blocks
        in order, from one thread, and never interleaves two tensors."""
        if self._held is None or self._held[0] != name:
            self._held = None  # the previous tensor's memory before the next one's
            self._held = (name, self._gather(name))
        whole = self._held[1]
        block = whole.reshape(whole.shape[0], -1)[start:stop]
        out = np.ascontiguousarray(block.float().cpu().numpy(), dtype=np.float32)
        if stop >= whole.shape[0]:
            self._held = None
        return out

    def close(self) -> None:
        self._held = None
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
