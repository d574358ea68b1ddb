"""A bounded mutation fuzzer over every file format simpo-q parses besides GGUF (which has its
own): the safetensors header, the shard index, config.json, and both imatrix formats. Each
mutant must load, or fail with SimpoQError: never another exception, a panic or a hang."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simpo_q._native import Imatrix, SimpoQError
from simpo_q.sources import HFDirectory

CONFIG = {
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "vocab_size": 32,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 64,
    "sliding_window": 32,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write_model(d: Path, shards: int = 1) -> None:
    from safetensors.numpy import save_file
    from simpo_q.arch.gemma2 import expected_shapes

    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(CONFIG))
    shapes = expected_shapes(CONFIG, "test")
    rng = np.random.default_rng(0)
    names = sorted(shapes)
    parts = [names[i::shards] for i in range(shards)]
    wm = {}
    for i, part in enumerate(parts):
        f = f"model-{i + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        save_file({n: rng.standard_normal(shapes[n]).astype(np.float32) for n in part}, str(d / f))
        wm.update({n: f for n in part})
    if shards > 1:
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))


def load_all(d: Path) -> None:
    from simpo_q.convert import converted_metadata, hf_plan

    src = HFDirectory(d)
    plan = hf_plan(src, lambda name, shape: "F32")
    for p in plan:
        p.load()
    # the metadata a conversion writes comes from the config (no tokenizer here: stop before it)
    from simpo_q.arch import adapter_for

    adapter_for(src.config, "config.json").hparams_metadata(src.config, 0)
    assert converted_metadata is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def mutate_json(doc, path_choices: list[int], value):
    """Replaces one node of `doc` (chosen by `path_choices`) with `value`."""
    if not path_choices or not isinstance(doc, (dict, list)) or not doc:
        return value
    keys = list(doc.keys()) if isinstance(doc, dict) else list(range(len(doc)))
    k = keys[path_choices[0] % len(keys)]
    doc = dict(doc) if isinstance(doc, dict) else list(doc)
    doc[k] = mutate_json(doc[k], path_choices[1:], value)
    return doc


def byte_mutants():
    return st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "zero"]), st.integers(0, 2**31), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    )


def apply_bytes(raw: bytes, ops) -> bytes:
    b = bytearray(raw)
    for op, at, v in ops:
        i = at % max(1, len(b))
        if op == "flip" and b:
            b[i] ^= 1 << (v % 8)
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b[i:i] = bytes([v]) * (1 + v % 9)
        elif op == "zero" and b:
            b[i : i + 8] = bytes(len(b[i : i + 8]))
    return bytes(b)


def must_load_or_refuse(fn) -> None:
    try:
        fn()
    except SimpoQError:
        pass


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz") / "model"
    write_model(d, shards=2)
    load_all(d)  # the unmutated model loads
    return d


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    import shutil

    d = tmp_path / "m"
    shutil.copytree(base, d)
    return d


@SETTINGS
@given(path=st.lists(st.integers(0, 50), max_size=4), value=json_values)
def test_config_json_mutants(work: Path, path, value) -> None:
    (work / "config.json").write_text(json.dumps(mutate_json(CONFIG, path, value)))
    must_load_or_refuse(lambda: load_all(work))


@SETTINGS
@given(path=st.lists(st.integers(0, 50), max_size=4), value=json_values)
def test_index_mutants(work: Path, base: Path, path, value) -> None:
    doc = json.loads((base / "model.safetensors.index.json").read_text())
    (work / "model.safetensors.index.json").write_text(json.dumps(mutate_json(doc, path, value)))
    must_load_or_refuse(lambda: load_all(work))


def _shard(d: Path) -> Path:
    return sorted(d.glob("*.safetensors"))[0]


@SETTINGS
@given(path=st.lists(st.integers(0, 50), max_size=4), value=json_values)
def test_safetensors_header_mutants(work: Path, base: Path, path, value) -> None:
    raw = _shard(base).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    new = json.dumps(mutate_json(header, path, value)).encode()
    _shard(work).write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    must_load_or_refuse(lambda: load_all(work))


@SETTINGS
@given(ops=byte_mutants(), head_only=st.booleans())
def test_safetensors_byte_mutants(work: Path, base: Path, ops, head_only: bool) -> None:
    raw = _shard(base).read_bytes()
    if head_only:  # aim at the header, where parsing happens
        n = struct.unpack("<Q", raw[:8])[0]
        ops = [(op, at % (8 + n), v) for op, at, v in ops]
    _shard(work).write_bytes(apply_bytes(raw, ops))
    must_load_or_refuse(lambda: load_all(work))


@pytest.fixture(scope="module")
def imatrix_files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("imat")
    m = Imatrix(64)
    rng = np.random.default_rng(1)
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight"):
        m.set_entry(name, rng.random(32).astype(np.float32) * 10, 128)
    m.datasets = ["calibration.txt"]
    m.chunk_count = 2
    out = {}
    for fmt in ("gguf", "dat"):
        m.save(str(d / f"m.{fmt}"), fmt)
        out[fmt] = (d / f"m.{fmt}").read_bytes()
        Imatrix.load(str(d / f"m.{fmt}"))
    return out


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_imatrix_byte_mutants(imatrix_files: dict[str, bytes], tmp_path: Path, fmt: str) -> None:
    p = tmp_path / f"x.{fmt}"

    @SETTINGS
    @given(ops=byte_mutants())
    def check(ops) -> None:
        p.write_bytes(apply_bytes(imatrix_files[fmt], ops))

        def load_and_use() -> None:
            m = Imatrix.load(str(p))
            for n in m.names():
                v = m.importance(n)
                assert v is None or np.isfinite(v).all()
            Imatrix(64).merge(m)

        must_load_or_refuse(load_and_use)

    check()
