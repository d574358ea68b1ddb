"""The refined encoder's measure, written independently of the core (rust/core/src/quants/
refine.rs), for the tests and benches/bench_refine.py."""

from __future__ import annotations

import numpy as np
import simpo_q


def weighted_error(x: np.ndarray, qtype: str, w: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    """Per-row measure of the refinement, computed independently of the core: the squared
    error weighted by the importance shrunk halfway to its mean over each 256-value
    super-block (1 without one), and for Q3_K and Q6_K each block's shrinkage
    ε = 1 − Σ w·x·x̂ / Σ w·x² (the raw importance) counted 256·ε²·Σ w'·x² more."""
    n = x.shape[1]
    raw = np.ones(n) if w is None else w.astype(np.float64)
    blocks = raw.reshape(-1, 256)
    wt = blocks if w is None else blocks + blocks.mean(axis=1, keepdims=True)
    xs = x.astype(np.float64).reshape(x.shape[0], -1, 256)
    v = simpo_q.dequantize(q, qtype, n).astype(np.float64).reshape(xs.shape)
    e = (((xs - v) ** 2) * wt).sum(axis=2)
    if qtype in ("Q3_K", "Q6_K"):
        sxx = (blocks * xs * xs).sum(axis=2)
        eps = np.where(sxx > 0, 1 - (blocks * xs * v).sum(axis=2) / np.where(sxx > 0, sxx, 1), 0.0)
        e = e + 256 * eps * eps * (wt * xs * xs).sum(axis=2)
    return e.sum(axis=1)
