"""Bad input to the native API: a clear ValueError naming the argument, never a panic."""

from __future__ import annotations

import numpy as np
import pytest
import simpo_q


def good(rows: int = 2, n: int = 256) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, n)).astype(np.float32)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: good().astype(np.float64), r"x: dtype must be float32"),
        (lambda: good().astype(np.float16), r"x: dtype must be float32"),
        (lambda: np.asfortranarray(good()), r"x: array must be C-contiguous"),
        (lambda: good().reshape(-1), r"x: expected 2 dimensions, got 1"),
        (lambda: good().reshape(1, 2, 256), r"x: expected 2 dimensions, got 3"),
        (lambda: good(2, 100), r"x: row length 100 is not a positive multiple of Q3_K's block size 256"),
        (lambda: good(2, 0), r"x: row length 0"),
        (lambda: [[1.0] * 256], r"x: expected a numpy.ndarray"),
    ],
)
def test_bad_x(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        simpo_q.quantize(make(), "Q3_K")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_names_row_and_column(bad) -> None:
    x = good(3)
    x[2, 17] = bad
    with pytest.raises(simpo_q.SimpoQError, match=r"x: non-finite value .* at row 2, column 17"):
        simpo_q.quantize(x, "Q6_K")


@pytest.mark.parametrize(
    ("w", "match"),
    [
        (np.ones(255, np.float32), r"imatrix: length 255 does not match n_per_row 256"),
        (np.ones((1, 256), np.float32), r"imatrix: expected 1 dimensions, got 2"),
        (np.ones(256, np.float64), r"imatrix: dtype must be float32"),
        (np.where(np.arange(256) == 9, -1.0, 1.0).astype(np.float32), r"imatrix: negative value -1 at column 9"),
        (np.where(np.arange(256) == 4, np.nan, 1.0).astype(np.float32), r"imatrix: non-finite value NaN"),
        (np.where(np.arange(256) == 4, np.inf, 1.0).astype(np.float32), r"imatrix: non-finite value inf"),
    ],
)
def test_bad_imatrix(w, match) -> None:
    with pytest.raises(ValueError, match=match):
        simpo_q.quantize(good(), "Q3_K", w)


def test_unknown_type_lists_supported() -> None:
    with pytest.raises(ValueError, match=r"unknown quantization type \"IQ2_XS\"; supported: F32, F16"):
        simpo_q.quantize(good(), "IQ2_XS")


def test_threads_zero_is_an_error() -> None:
    with pytest.raises(ValueError, match="threads: must be at least 1"):
        simpo_q.quantize(good(), "Q3_K", threads=0)


def test_dequantize_bad_input() -> None:
    q = simpo_q.quantize(good(), "Q3_K")
    with pytest.raises(ValueError, match=r"data: 219 bytes is not a whole number of Q3_K rows"):
        simpo_q.dequantize(q.reshape(-1)[:219].copy(), "Q3_K", 256)
    with pytest.raises(ValueError, match=r"data: dtype must be uint8"):
        simpo_q.dequantize(q.astype(np.int16), "Q3_K", 256)
    with pytest.raises(ValueError, match=r"n_per_row: n_per_row 100 is not a multiple"):
        simpo_q.dequantize(q, "Q3_K", 100)
    with pytest.raises(ValueError, match=r"data: array must be C-contiguous"):
        simpo_q.dequantize(np.asfortranarray(np.vstack([q, q])), "Q3_K", 256)


def test_quantize_accepts_any_case_of_type_name_and_flat_dequantize_input() -> None:
    x = good()
    q = simpo_q.quantize(x, "q6_k")
    assert np.array_equal(q, simpo_q.quantize(x, "Q6_K"))
    assert np.array_equal(simpo_q.dequantize(q.reshape(-1), "Q6_K", 256), simpo_q.dequantize(q, "Q6_K", 256))


def test_concurrent_calls_from_threads() -> None:
    """Calls from four threads at once (the GIL is released inside) all give ggml's bytes."""
    import threading

    x = np.random.default_rng(1).standard_normal((64, 4096)).astype(np.float32)
    ref = simpo_q.quantize(x, "Q3_K", threads=1)
    barrier = threading.Barrier(4)
    results = []

    def work() -> None:
        barrier.wait()
        results.append(simpo_q.quantize(x, "Q3_K", threads=1))

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, ref) for r in results)
