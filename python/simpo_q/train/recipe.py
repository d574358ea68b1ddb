"""Training recipes: YAML files with `--set key=value` overrides, one config for one process
and for FSDP2 under torchrun."""

from __future__ import annotations

import dataclasses
import json
import math
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
    # the GPUs the recipe is written for (its effective batch is per_device × accumulation ×
    # gpus): `plan`'s default. torchrun's rank count is what training uses.
    gpus: int = 1
    bf16: bool = False
    gradient_checkpointing: bool = False
    chunk_tokens: int = 1024
    seed: int = 42
    logging_steps: int = 1  # one metrics line per this many steps (their means)
    save_steps: int = 0
    eval_steps: int = 0
    stop_after_steps: int = -1  # end the run (as if killed) after this many steps; for tests
    threads: int = 0
    save_dtype: str = "bfloat16"  # of the final HF directory (the checkpoint keeps fp32)
    fsdp: str = "auto"  # "auto": FSDP2 when torchrun starts several ranks; "always": also for one
    data_split: str = "train"  # the split of a hub dataset (or a datasets folder) to train on
    eval_data_split: str = "test"  # the split of eval_data, when it is a hub dataset
    ollama_system: str | None = None  # SYSTEM of the Modelfile `pipeline` writes
    ollama_parameters: dict = dataclasses.field(default_factory=dict)  # PARAMETERs over the architecture's

    @property
    def gamma(self) -> float:
        return self.beta * self.gamma_beta_ratio


def _coerce(field: dataclasses.Field, raw, where: str):
    t = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null") and "None" in t):
            return None
        if t.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "0", "false", "no"):
                return str(raw).lower() in ("1", "true", "yes")
            raise ValueError("expected true or false")
        if t.startswith("int"):
            if isinstance(raw, float) or (isinstance(raw, str) and not raw.strip().lstrip("+-").isdigit()):
                raise ValueError("expected an integer")
            return int(raw)
        if t.startswith("float"):
            return float(raw)
        if t.startswith("dict"):
            v = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(v, dict):
                raise ValueError("expected a mapping (in YAML, or as JSON with --set)")
            return v
        return str(raw)
    except (TypeError, ValueError) as e:
        raise SimpoQError(f"{where}: {field.name}: cannot use {raw!r} ({e})") from e


# (key, lowest, highest, lowest allowed itself, highest allowed itself): checked at load, so
# that nonsense fails in a second, not after the model has loaded or hours of training.
_RANGES = [
    ("learning_rate", 0.0, math.inf, False, False),
    ("beta", 0.0, math.inf, False, False),
    ("gamma_beta_ratio", -math.inf, math.inf, False, False),
    ("label_smoothing", 0.0, 0.5, True, True),
    ("sft_weight", 0.0, math.inf, True, False),
    ("warmup_ratio", 0.0, 1.0, True, True),
    ("weight_decay", 0.0, math.inf, True, False),
    ("max_grad_norm", 0.0, math.inf, False, False),
    ("num_train_epochs", 0.0, math.inf, False, False),
    ("eval_fraction", 0.0, 1.0, True, False),
    ("max_length", 2, math.inf, True, False),
    ("max_prompt_length", 1, math.inf, True, False),
    ("per_device_train_batch_size", 1, math.inf, True, False),
    ("gradient_accumulation_steps", 1, math.inf, True, False),
    ("chunk_tokens", 1, math.inf, True, False),
    ("save_steps", 0, math.inf, True, False),
    ("eval_steps", 0, math.inf, True, False),
    ("threads", 0, math.inf, True, False),
    ("logging_steps", 1, math.inf, True, False),
    ("gpus", 1, math.inf, True, False),
]


def _check_ranges(r: Recipe, where: str) -> None:
    for key, lo, hi, lo_ok, hi_ok in _RANGES:
        v = getattr(r, key)
        ok = math.isfinite(v) and (v > lo or (lo_ok and v == lo)) and (v < hi or (hi_ok and v == hi))
        if not ok:
            lo_s = f"{'≥' if lo_ok else '>'} {lo}"
            hi_s = "" if hi == math.inf else f" and {'≤' if hi_ok else '<'} {hi}"
            raise SimpoQError(f"{where}: {key} is {v}; it must be finite, {lo_s}{hi_s}")
    if r.max_prompt_length >= r.max_length:
        raise SimpoQError(f"{where}: max_prompt_length {r.max_prompt_length} must be below max_length {r.max_length}")
    if r.max_steps == 0 or r.max_steps < -1:
        raise SimpoQError(f"{where}: max_steps is {r.max_steps}; give a positive number, or -1 for whole epochs")


def _nearest(key, fields) -> str:
    """'; did you mean X?' and the valid keys, for an unknown one."""
    import difflib

    close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(fields)}"


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    p = Path(path)
    try:
        if not p.is_file():
            raise SimpoQError(f"{p}: no such recipe file" if not p.exists() else f"{p}: not a regular file")
        if p.stat().st_size > 1 << 20:
            raise SimpoQError(f"{p}: {p.stat().st_size} bytes, too large for a recipe")
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as e:
        at = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}" if e.problem_mark else ""
        raise SimpoQError(f"{p}: cannot read recipe: {e.problem or e.context}{at}") from e
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SimpoQError(f"{p}: cannot read recipe ({e})") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SimpoQError(f"{p}: a recipe is a mapping of keys to values, not a {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    values = {}
    for k, v in raw.items():
        if not isinstance(k, str) or k not in fields:
            raise SimpoQError(f"{p}: unknown recipe key {k!r}{_nearest(k, fields)}")
        values[k] = _coerce(fields[k], v, str(p))
    for o in overrides:
        if "=" not in o:
            raise SimpoQError(f"--set {o!r}: expected key=value")
        k, v = o.split("=", 1)
        if k not in fields:
            raise SimpoQError(f"--set {k}: unknown recipe key{_nearest(k, fields)}")
        values[k] = _coerce(fields[k], v, "--set")
    r = Recipe(**values)
    # checked now, not after hours of training
    for key, allowed in (
        ("loss_type", ("sigmoid", "hinge")),
        ("save_dtype", ("bfloat16", "float16", "float32")),
        ("fsdp", ("auto", "always")),
    ):
        if getattr(r, key) not in allowed:
            raise SimpoQError(f"{p}: {key}: {getattr(r, key)!r} is not one of {', '.join(allowed)}")
    _check_ranges(r, str(p))
    from simpo_q.publish import check_parameter

    r.ollama_parameters = {
        k: check_parameter(str(k), v, f"{p}: ollama_parameters") for k, v in r.ollama_parameters.items()
    }
    if r.ollama_system is not None and '"""' in r.ollama_system:
        raise SimpoQError(f'{p}: ollama_system must not contain """ (it ends a Modelfile block)')
    if not r.model:
        raise SimpoQError(f"{p}: the recipe names no model (set model: a Hugging Face model directory)")
    if not r.data:
        raise SimpoQError(f"{p}: the recipe names no data (set data: a preference data file or directory)")
    base = p.parent
    for k in ("model", "data", "eval_data"):
        v = getattr(r, k)
        if v and not Path(v).is_absolute() and not Path(v).exists() and (base / v).exists():
            setattr(r, k, str(base / v))
    # an output_dir written in the recipe is relative to the recipe, like its model and data (so a
    # recipe in a clone writes inside the clone wherever it is run from); one given with --set
    # is relative to the current directory, as any command-line path
    if (
        "output_dir" in raw
        and not any(o.startswith("output_dir=") for o in overrides)
        and not Path(r.output_dir).is_absolute()
    ):
        r.output_dir = os.path.normpath(base / r.output_dir)
    return r
