"""Architecture adapters: the only place that knows HF names, GGUF names and metadata keys."""

from __future__ import annotations

from simpo_q._native import SimpoQError
from simpo_q.arch import gemma2

ADAPTERS = {"Gemma2ForCausalLM": gemma2}


def adapter_for(config: dict, where: str):
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


def adapter_by_arch(arch: str, where: str):
    """The adapter of a GGUF's general.architecture."""
    for a in ADAPTERS.values():
        if a.ARCH == arch:
            return a
    raise SimpoQError(f"{where}: unsupported architecture {arch!r}; supported: "
                      f"{', '.join(sorted(a.ARCH for a in ADAPTERS.values()))}")
