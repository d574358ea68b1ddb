"""Dequantization equals the reference dequantizer (`gguf.quants.dequantize`) float for
float, and each type's error on normal data is what it should be."""

from __future__ import annotations

import numpy as np
import pytest
import simpo_q
from adversarial import DATA_KINDS, make_data, make_imatrix
from ggml_ref import require

try:
    import gguf
    from gguf.quants import dequantize as gguf_dequantize
except ImportError as e:  # pragma: no cover - exercised only without the test extra
    gguf = None
    _gguf_error = e


def _gguf_type(qtype: str):
    if gguf is None:
        require("gguf==0.19.0 (pip install '.[test]')", _gguf_error)
    return gguf.GGMLQuantizationType[qtype]


@pytest.mark.parametrize("qtype", list(simpo_q.QUANT_TYPES))
@pytest.mark.parametrize("kind", ["normal", "heavy_tailed", "outlier", "near_fp16_max", "tiny", "zeros"])
def test_dequantize_equals_gguf_bit_for_bit(qtype: str, kind: str) -> None:
    gtype = _gguf_type(qtype)
    rng = np.random.default_rng(3)
    x = make_data(kind, 5, 512, rng)
    for w in (None, make_imatrix("exp2", 512, rng)):
        q = simpo_q.quantize(x, qtype, w)
        ours = simpo_q.dequantize(q, qtype, 512)
        ref = np.asarray(gguf_dequantize(q, gtype), dtype=np.float32).reshape(ours.shape)
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), f"{qtype}/{kind}"


@pytest.mark.parametrize("qtype", [t for t in simpo_q.QUANT_TYPES if t not in ("F32", "F16", "BF16")])
def test_dequantize_random_bytes_equals_gguf(qtype: str) -> None:
    """Arbitrary block contents (not only what our quantizer writes), with the f16 scales
    kept finite so both sides compute the same finite numbers."""
    gtype = _gguf_type(qtype)
    rng = np.random.default_rng(11)
    rs = simpo_q.row_size(qtype, 512)
    data = rng.integers(0, 256, (8, rs), dtype=np.uint8)
    # re-quantize a real row for the scale fields: keeps d/dmin finite and realistic
    scales = simpo_q.quantize(make_data("normal", 8, 512, rng), qtype)
    mask = np.zeros(rs, dtype=bool)
    bs = simpo_q.type_info(qtype)[2]
    offsets = {  # the f16 scale fields of each block
        "Q2_K": [80, 81, 82, 83],
        "Q3_K": [108, 109],
        "Q4_K": [0, 1, 2, 3],
        "Q5_K": [0, 1, 2, 3],
        "Q6_K": [208, 209],
    }
    for b in range(rs // bs):
        for o in offsets.get(qtype, [0, 1, 2, 3] if qtype in ("Q4_1", "Q5_1") else [0, 1]):
            mask[b * bs + o] = True
    data[:, mask] = scales[:, mask]
    ours = simpo_q.dequantize(data, qtype, 512)
    ref = np.asarray(gguf_dequantize(data, gtype), dtype=np.float32).reshape(ours.shape)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


# Relative RMSE on standard normal data, measured with this implementation (which equals
# ggml's bytes); asserted with a 3% margin so a regression in the error shows up.
EXPECTED_REL_RMSE = {
    "F32": 0.0,
    "F16": 0.000208,
    "BF16": 0.00167,
    "Q8_0": 0.00537,
    "Q6_K": 0.0178,
    "Q5_K": 0.0362,
    "Q5_1": 0.0380,
    "Q5_0": 0.0429,
    "Q4_K": 0.0715,
    "Q4_1": 0.0783,
    "IQ4_NL": 0.0763,
    "Q4_0": 0.0862,
    "Q3_K": 0.151,
    "Q2_K": 0.297,
}


@pytest.mark.parametrize("qtype", list(simpo_q.QUANT_TYPES))
def test_relative_rmse_on_normal_data(qtype: str) -> None:
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    back = simpo_q.dequantize(simpo_q.quantize(x, qtype), qtype, 1024)
    rel = float(np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x**2)))
    assert rel <= EXPECTED_REL_RMSE[qtype] * 1.03 + 1e-7, f"{qtype}: {rel:.5f}"
    assert rel >= EXPECTED_REL_RMSE[qtype] * 0.90, f"{qtype}: {rel:.5f} suspiciously low"


def test_dequantize_of_every_kind_is_finite_for_finite_fp16_range() -> None:
    rng = np.random.default_rng(5)
    for kind in DATA_KINDS:
        x = make_data(kind, 2, 256, rng)
        for qtype in ("Q3_K", "Q6_K"):
            assert np.isfinite(simpo_q.dequantize(simpo_q.quantize(x, qtype), qtype, 256)).all()
