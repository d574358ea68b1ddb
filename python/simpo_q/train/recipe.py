"""Training recipes: YAML files with `--set key=value` overrides, one config for one process
and for FSDP2 under torchrun."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from simpo_q._native import SimpoQError


@dataclass
class Recipe:
    model: str = ""
    data: str = ""
    eval_data: str | None = None
    eval_fraction: float = 0.1
    output_dir: str = "out/simpo"
    beta: float = 2.0
    gamma_beta_ratio: float = 0.25
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    sft_weight: float = 0.0
    max_length: int = 2048
    max_prompt_length: int = 1800
    learning_rate: float = 8e-7
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    bf16: bool = False
    gradient_checkpointing: bool = False
    chunk_tokens: int = 1024
    seed: int = 42
    logging_steps: int = 1
    save_steps: int = 0
    eval_steps: int = 0
    stop_after_steps: int = -1  # end the run (as if killed) after this many steps; for tests
    threads: int = 0
    save_dtype: str = "bfloat16"  # of the final HF directory (the checkpoint keeps fp32)
    fsdp: str = "auto"  # "auto": FSDP2 when torchrun starts several ranks; "always": also for one

    @property
    def gamma(self) -> float:
        return self.beta * self.gamma_beta_ratio


def _coerce(field: dataclasses.Field, raw, where: str):
    t = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null") and "None" in t):
            return None
        if t.startswith("bool"):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as e:
        raise SimpoQError(f"{where}: {field.name}: cannot use {raw!r} ({e})") from e


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SimpoQError(f"{p}: cannot read recipe ({e})") from e
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    values = {}
    for k, v in raw.items():
        if k not in fields:
            raise SimpoQError(f"{p}: unknown recipe key {k!r}")
        values[k] = _coerce(fields[k], v, str(p))
    for o in overrides:
        if "=" not in o:
            raise SimpoQError(f"--set {o!r}: expected key=value")
        k, v = o.split("=", 1)
        if k not in fields:
            raise SimpoQError(f"--set {k}: unknown recipe key")
        values[k] = _coerce(fields[k], v, "--set")
    r = Recipe(**values)
    # checked now, not after hours of training
    for key, allowed in (("loss_type", ("sigmoid", "hinge")), ("save_dtype", ("bfloat16", "float16", "float32")),
                         ("fsdp", ("auto", "always"))):
        if getattr(r, key) not in allowed:
            raise SimpoQError(f"{p}: {key}: {getattr(r, key)!r} is not one of {', '.join(allowed)}")
    base = p.parent
    for k in ("model", "data", "eval_data"):
        v = getattr(r, k)
        if v and not Path(v).is_absolute() and not Path(v).exists() and (base / v).exists():
            setattr(r, k, str(base / v))
    return r
