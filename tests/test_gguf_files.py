"""The native GGUF writer and reader against the `gguf` package (gguf-py 0.19.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simpo_q
from ggml_ref import require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simpo_q.gguf import GGUFOutput, metadata_dict, open_gguf

try:
    import gguf
except ImportError as e:  # pragma: no cover
    gguf = None
    _err = e

METADATA = [
    ("general.architecture", "str", "gemma2"),
    ("general.name", "str", "Tïny ✓"),
    ("gemma2.context_length", "u32", 8192),
    ("gemma2.attention.layer_norm_rms_epsilon", "f32", 1e-6),
    ("x.u8", "u8", 255),
    ("x.i8", "i8", -128),
    ("x.u16", "u16", 65535),
    ("x.i16", "i16", -32768),
    ("x.i32", "i32", -5),
    ("x.u64", "u64", 2**63),
    ("x.i64", "i64", -(2**62)),
    ("x.f64", "f64", 0.1),
    ("x.bool", "bool", True),
    ("tokenizer.ggml.tokens", "array[str]", ["<pad>", "<eos>", "▁a", "日本"]),
    ("tokenizer.ggml.scores", "array[f32]", [0.0, -1.5, -1000.0, 2.25]),
    ("tokenizer.ggml.token_type", "array[i32]", [3, 3, 1, 1]),
]


def _gguf():
    if gguf is None:
        require("gguf==0.19.0 (pip install '.[test]')", _err)
    return gguf


def write_sample(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    tensors = {
        "token_embd.weight": (simpo_q.quantize(x, "Q6_K"), (3, 256), "Q6_K"),
        "blk.0.attn_norm.weight": (rng.standard_normal(7).astype(np.float32), (7,), "F32"),
        "blk.0.attn_q.weight": (simpo_q.quantize(x[:2], "Q8_0"), (2, 256), "Q8_0"),
    }
    with GGUFOutput(path, METADATA, [(n, s, t) for n, (_, s, t) in tensors.items()]) as w:
        for n, (d, _, _) in tensors.items():
            w.write(n, d)
    return {n: np.ascontiguousarray(d).reshape(-1).view(np.uint8) for n, (d, _, _) in tensors.items()}


def test_gguf_package_reads_our_file(tmp_path: Path) -> None:
    g = _gguf()
    path = tmp_path / "ours.gguf"
    data = write_sample(path)
    r = g.GGUFReader(str(path))
    fields = {f.name: f for f in r.fields.values()}
    assert fields["general.architecture"].contents() == "gemma2"
    assert fields["general.name"].contents() == "Tïny ✓"
    assert fields["gemma2.context_length"].contents() == 8192
    assert fields["tokenizer.ggml.tokens"].contents() == ["<pad>", "<eos>", "▁a", "日本"]
    assert fields["tokenizer.ggml.token_type"].types == [g.GGUFValueType.ARRAY, g.GGUFValueType.INT32]
    assert fields["x.u64"].contents() == 2**63 and fields["x.bool"].contents() is True
    assert [t.name for t in r.tensors] == list(data)
    by = {t.name: t for t in r.tensors}
    assert by["token_embd.weight"].tensor_type == g.GGMLQuantizationType.Q6_K
    assert list(by["token_embd.weight"].shape) == [256, 3]
    for name, raw in data.items():
        assert np.array_equal(np.asarray(by[name].data).reshape(-1).view(np.uint8), raw), name


def test_we_read_the_gguf_packages_file(tmp_path: Path) -> None:
    g = _gguf()
    path = tmp_path / "theirs.gguf"
    w = g.GGUFWriter(str(path), "gemma2")
    w.add_uint32("gemma2.block_count", 2)
    w.add_float32("gemma2.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_token_list(["<pad>", "a"])
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("tokenizer.chat_template", "{{ bos_token }}")
    a = np.arange(64, dtype=np.float32).reshape(2, 32)
    q = simpo_q.quantize(a, "Q8_0")
    w.add_tensor("a.weight", a)
    w.add_tensor("q.weight", q, raw_dtype=g.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = open_gguf(path)
    md = metadata_dict(r)
    assert md["general.architecture"] == "gemma2" and md["gemma2.block_count"] == 2
    assert md["tokenizer.ggml.tokens"] == ["<pad>", "a"] and md["tokenizer.ggml.add_bos_token"] is True
    types = {k: t for k, t, _ in r.metadata}
    assert types["tokenizer.ggml.tokens"] == "array[str]" and types["gemma2.block_count"] == "u32"
    tensors = {t[0]: t for t in r.tensors}
    assert tensors["a.weight"][1:3] == ([32, 2], "F32")
    assert tensors["q.weight"][1:3] == ([32, 2], "Q8_0")
    assert np.array_equal(r.tensor_bytes("a.weight").view(np.float32).reshape(2, 32), a)
    assert np.array_equal(r.tensor_bytes("q.weight"), q.reshape(-1))
    view = r.tensor_bytes("a.weight")
    assert not view.flags.writeable
    del r  # the view keeps the map alive
    assert view.view(np.float32)[5] == 5.0


def test_round_trip_through_our_reader(tmp_path: Path) -> None:
    path = tmp_path / "rt.gguf"
    data = write_sample(path)
    r = open_gguf(path)
    got = [(k, t, v) for k, t, v in r.metadata]
    for (k, t, v), (k2, t2, v2) in zip(METADATA, got, strict=True):
        assert (k, t) == (k2, t2)
        if t in ("f32", "array[f32]"):
            assert np.allclose(np.float32(v), np.float32(v2), rtol=0, atol=0)
        else:
            assert v == v2, k
    for name, raw in data.items():
        assert np.array_equal(r.tensor_bytes(name), raw)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError, match="boom"):
        with GGUFOutput(path, METADATA, [("a.weight", (2, 32), "F32")]) as w:
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match=r"out.gguf: tensor \"a.weight\": 4 bytes given, 256 expected"):
        with GGUFOutput(path, METADATA, [("a.weight", (2, 32), "F32")]) as w:
            w.write("a.weight", np.zeros(1, np.float32))
    with pytest.raises(ValueError, match=r"1 of 1 tensors never written"):
        with GGUFOutput(path, METADATA, [("a.weight", (2, 32), "F32")]):
            pass
    assert list(tmp_path.iterdir()) == []


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope/out.gguf: cannot create output"):
        GGUFOutput(tmp_path / "nope" / "out.gguf", METADATA, [])


def test_bad_metadata_types(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r'metadata "k": unknown type "u128"'):
        GGUFOutput(tmp_path / "a.gguf", [("k", "u128", 1)], [])
    with pytest.raises(ValueError, match=r'metadata "k": expected u8 value'):
        GGUFOutput(tmp_path / "a.gguf", [("k", "u8", 300)], [])
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def sample_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fz") / "s.gguf"
    write_sample(path)
    return path.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_corrupt_files_give_clear_errors(sample_bytes: bytes, tmp_path: Path, data) -> None:
    b = bytearray(sample_bytes)
    header = 600
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, header - 1))
        b[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.none() | st.integers(0, len(b)))
    if cut is not None:
        b = b[:cut]
    path = tmp_path / "fz.gguf"
    path.write_bytes(bytes(b))
    try:
        r = open_gguf(path)
        for name, *_ in r.tensors:
            r.tensor_bytes(name)
    except simpo_q.SimpoQError as e:
        assert str(path) in str(e)
