"""Adversarial inputs for the quantizers: the kinds of data that break naive ports."""

from __future__ import annotations

import numpy as np

DATA_KINDS = [
    "normal",
    "heavy_tailed",
    "outlier",
    "zeros",
    "constant",
    "subnormal",
    "tiny",
    "near_fp16_max",
    "half_ties",
    "grid",
    "narrow_negative",
    "mixed_scale",
]
IMATRIX_KINDS = ["uniform", "exp2", "ones", "sparse", "zero_chunks", "one_hot", "tiny", "huge_range"]


def make_data(kind: str, rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    shape = (rows, n)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "heavy_tailed":
        x = rng.standard_t(1.5, shape)
    elif kind == "outlier":
        x = rng.standard_normal(shape) * 0.01
        for r in range(rows):
            x[r, rng.integers(n)] = rng.choice([-1, 1]) * 10.0 ** rng.uniform(1, 4)
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "constant":
        x = np.full(shape, rng.uniform(-3, 3))
    elif kind == "subnormal":
        x = rng.standard_normal(shape) * 1e-40
    elif kind == "tiny":
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-20, -10)
    elif kind == "near_fp16_max":
        x = rng.uniform(-65504, 65504, shape) * rng.choice([0.9, 1.0, 2.0])
    elif kind == "half_ties":
        # after scaling by 127/amax (Q8_0) or similar these land on k + 0.5
        x = rng.integers(-127, 127, shape) + 0.5
        x[:, 0] = 127.0
    elif kind == "grid":
        x = np.round(rng.standard_normal(shape) * 10) / 10
    elif kind == "narrow_negative":
        x = -1.0 - rng.uniform(0, 1e-3, shape)
    elif kind == "mixed_scale":
        x = rng.standard_normal(shape) * (10.0 ** rng.integers(-14, 3, (rows, n // 16)).repeat(16, axis=1))
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(x, dtype=np.float32)


def make_imatrix(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        w = rng.uniform(0, 1, n)
    elif kind == "exp2":
        w = np.exp(rng.standard_normal(n)) ** 2
    elif kind == "ones":
        w = np.ones(n)
    elif kind == "sparse":
        w = rng.uniform(0, 1, n) * (rng.uniform(0, 1, n) > 0.3)
    elif kind == "zero_chunks":
        w = rng.uniform(0, 1, n)
        w.reshape(-1, 16)[rng.uniform(0, 1, n // 16) < 0.25] = 0
    elif kind == "one_hot":
        w = np.zeros(n)
        w.reshape(-1, 16)[np.arange(n // 16), rng.integers(0, 16, n // 16)] = 1.0
    elif kind == "tiny":
        w = rng.uniform(0, 1, n) * 1e-30
    elif kind == "huge_range":
        w = 10.0 ** rng.uniform(-20, 20, n)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(w, dtype=np.float32)
