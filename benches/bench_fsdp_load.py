"""Host memory of building the FSDP2 model (before training): each rank's peak resident
growth while `build_model` runs, for a generated checkpoint (build it first with
bench_fsdp.py, which caches it under .cache/bench-fsdp/).

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run \\
        --nproc_per_node=2 benches/bench_fsdp_load.py .cache/bench-fsdp/gemma2-L4-H1024-I4096-A8x128-KV4-V128000
"""

from __future__ import annotations

import sys


def mib(key: str) -> float:
    from bench_fsdp import vm  # this folder is on sys.path when run as a script

    return vm(key) / 2**20


def main() -> None:
    import torch
    import torch.distributed as dist
    import transformers  # noqa: F401  (imported before the baseline is read)
    from simpo_q.train.distributed import start
    from simpo_q.train.loop import build_model
    from simpo_q.train.recipe import Recipe

    rank, world = start()
    base = mib("VmRSS")
    build_model(Recipe(model=sys.argv[1]), torch.device("cpu"), world)
    line = (
        f"rank {rank} of {world}: peak during build +{mib('VmHWM') - base:.0f} MiB, "
        f"after +{mib('VmRSS') - base:.0f} MiB"
    )
    out = [None] * world
    dist.all_gather_object(out, line)
    if rank == 0:
        print("\n".join(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
