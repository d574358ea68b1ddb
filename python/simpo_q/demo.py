"""The demo on the embedded default: the tiny pretrained Gemma-2 model, every weight matrix
quantized with the native k-quants as llama.cpp's Q3_K_S policy chooses (Q6_K for the tied
embedding, Q3_K elsewhere), and a report of the error of each.

Until the GGUF writer lands (issue 5) the quantized tensors are written to an .npz file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

import simpo_q


def _hf_tensors(model_dir: Path):
    """(name, float32 array) for each tensor of a safetensors checkpoint, one at a time."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in sorted(st.keys()):
                yield name, st.get_tensor(name).float().numpy()


def q3_k_s_type(name: str, shape: tuple[int, ...]) -> str | None:
    """Q3_K_S for a dense Gemma-2: Q6_K for the tied embedding, Q3_K for the other matrices,
    norms left in F32 (None)."""
    if len(shape) < 2:
        return None
    return "Q6_K" if name.endswith("embed_tokens.weight") else "Q3_K"


def run_demo(out: Path, cache: Path, quiet: bool = False) -> list[Path]:
    from tqdm.auto import tqdm

    from simpo_q.tiny import cached_tiny_model

    model = cached_tiny_model(cache, pretrain_steps=200, quiet=quiet)
    out.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, np.ndarray] = {}
    report = []
    total_in = total_out = 0
    t0 = time.perf_counter()
    for name, x in tqdm(list(_hf_tensors(model)), desc="quantize", disable=quiet):
        qtype = q3_k_s_type(name, x.shape)
        if qtype is None:
            continue
        q = simpo_q.quantize(np.ascontiguousarray(x), qtype)
        back = simpo_q.dequantize(q, qtype, x.shape[1])
        rel_rmse = float(np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x**2)))
        blobs[name] = q
        report.append({"name": name, "type": qtype, "shape": list(x.shape), "bytes": int(q.nbytes),
                       "rel_rmse": round(rel_rmse, 5)})
        total_in += x.size * 2
        total_out += q.nbytes
    elapsed = time.perf_counter() - t0
    npz = out / "tiny-q3_k_s.npz"
    tmp = out / "tiny-q3_k_s.tmp.npz"
    np.savez(tmp, **blobs)
    os.replace(tmp, npz)
    rep = out / "report.json"
    rep.write_text(json.dumps({"model": str(model), "tensors": report, "bf16_bytes": total_in,
                               "quantized_bytes": total_out, "seconds": round(elapsed, 3)}, indent=2) + "\n")
    if not quiet:
        for r in report:
            print(f"{r['name']:48s} {r['type']:5s} {str(r['shape']):14s} rel. RMSE {r['rel_rmse']:.4f}")
        print(f"{total_in} bytes of bf16 weights -> {total_out} bytes quantized in {elapsed:.2f} s")
    return [model, npz, rep]
