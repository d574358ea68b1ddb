"""Architecture adapters: the only place that knows HF names, GGUF names and metadata keys
(`base.Adapter` lists what each owns). Adding a family is one module and one line here."""

from __future__ import annotations

from simpo_q._native import SimpoQError
from simpo_q.arch import gemma2, llama
from simpo_q.arch.base import Adapter, check_tensors

FAMILIES: tuple[Adapter, ...] = (gemma2, llama)  # type: ignore[assignment]  # modules as adapters

ADAPTERS = {hf: a for a in FAMILIES for hf in a.HF_ARCHS}


def adapter_for(config: dict, where: str) -> Adapter:
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs]
    for a in archs:
        if isinstance(a, str) and a in ADAPTERS:
            return ADAPTERS[a]
    raise SimpoQError(
        f"{where}: unsupported architecture {archs or config.get('model_type')!r}; "
        f"supported: {', '.join(sorted(ADAPTERS))}"
    )


def adapter_by_arch(arch: str, where: str) -> Adapter:
    """The adapter of a GGUF's general.architecture."""
    for a in FAMILIES:
        if a.ARCH == arch:
            return a
    raise SimpoQError(
        f"{where}: unsupported architecture {arch!r}; supported: {', '.join(sorted(a.ARCH for a in FAMILIES))}"
    )


__all__ = ["ADAPTERS", "FAMILIES", "Adapter", "adapter_by_arch", "adapter_for", "check_tensors"]
