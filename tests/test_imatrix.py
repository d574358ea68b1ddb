"""Importance matrix: collection equals an independent computation and llama-imatrix; the
files are llama.cpp's; quantizing with it equals ggml and llama-quantize; bad input fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ggml_ref import ggml, require
from simpo_q import imatrix as im
from simpo_q._native import Imatrix, SimpoQError
from simpo_q.arch import gemma2
from simpo_q.cli import main as cli
from simpo_q.convert import convert
from simpo_q.gguf import metadata_dict, open_gguf
from simpo_q.quantize_model import quantize_model
from simpo_q.tiny import cached_tiny_model

REPO = Path(__file__).parent.parent
CALIB = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
CTX, CHUNKS = 128, 8
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


@pytest.fixture(scope="module")
def collected(model) -> Imatrix:
    return im.collect(model, CALIB, ctx=CTX, chunks=CHUNKS, quiet=True)


def tools() -> Path:
    try:
        from llama_cpp_tree import llama_cpp_tools

        return llama_cpp_tools()
    except Exception as e:
        require("llama-imatrix/llama-quantize built from the llama-cpp-python 0.3.36 tree", e)
        raise


def test_sums_equal_plain_torch_hooks(model, collected) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    chunks = im.chunk_tokens(tok, CALIB.read_text(), CTX, CHUNKS, "calib")
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="eager").eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for i, layer in enumerate(hf.model.layers):
        for hf_name, g in gemma2.LINEARS.items():
            name = f"blk.{i}.{g}.weight"

            def hook(_m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x * x).sum(0)
                counts[name] = counts.get(name, 0) + x.shape[0]

            hooks.append(layer.get_submodule(hf_name).register_forward_pre_hook(hook))
    with torch.no_grad():
        for c in chunks:
            hf(torch.tensor([c]))
    assert sorted(sums) == collected.names()
    for name in sums:
        s, c = collected.entry(name)
        ref = sums[name].numpy()
        assert c == counts[name] == CTX * CHUNKS
        assert np.max(np.abs(s - ref) / np.abs(ref)) < 1e-5, name


def test_agrees_with_llama_imatrix(model, collected, tmp_path) -> None:
    bins = tools()
    f32 = convert(model, tmp_path / "f32.gguf", "f32", quiet=True)
    ref = tmp_path / "ref.gguf"
    subprocess.run(
        [
            str(bins / "llama-imatrix"),
            "-m",
            str(f32),
            "-f",
            str(CALIB),
            "-o",
            str(ref),
            "-c",
            str(CTX),
            "--chunks",
            str(CHUNKS),
            "-t",
            "2",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    r = im.load(ref)
    assert r.names() == collected.names() and r.chunk_count == collected.chunk_count == CHUNKS
    for name in r.names():
        (sa, ca), (sb, cb) = collected.entry(name), r.entry(name)
        assert ca == cb
        assert np.max(np.abs(sa - sb) / np.abs(sb)) < 1e-3, name


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_llama_quantize_accepts_our_files_and_equals_us(model, collected, tmp_path, fmt) -> None:
    bins = tools()
    path = tmp_path / f"im.{fmt}"
    collected.save(str(path), fmt)
    f32 = convert(model, tmp_path / "f32.gguf", "f32", quiet=True)
    ref = tmp_path / "ref.gguf"
    subprocess.run(
        [str(bins / "llama-quantize"), "--imatrix", str(path), str(f32), str(ref), "Q3_K_S", "2"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    ours = quantize_model(model, tmp_path / "ours.gguf", "Q3_K_S", imatrix=path, quiet=True)
    a, b = open_gguf(ours), open_gguf(ref)
    assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
    assert metadata_dict(a) == metadata_dict(b)
    assert metadata_dict(a)["quantize.imatrix.entries_count"] == 14


def test_tensor_bytes_equal_ggml_with_the_same_vectors(model, collected, tmp_path) -> None:
    from simpo_q.sources import HFDirectory

    out = quantize_model(model, tmp_path / "q.gguf", "Q4_K_M", imatrix=collected, quiet=True)
    r = open_gguf(out)
    src = HFDirectory(model)
    hf_of = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    checked = 0
    for name, _dims, qtype, *_ in r.tensors:
        parts = name.split(".")
        if len(parts) != 4 or parts[2] not in hf_of:
            continue
        x = src.load(f"model.layers.{parts[1]}.{hf_of[parts[2]]}.weight")
        s, c = collected.entry(name)
        want = ggml().quantize(x, qtype, (s / np.float32(c)).astype(np.float32))
        assert np.array_equal(r.tensor_bytes(name), want.reshape(-1)), name
        checked += 1
    assert checked == 14


def test_files_round_trip_and_gguf_package_reads_them(collected, tmp_path) -> None:
    for fmt in ("gguf", "dat"):
        p = tmp_path / f"a.{fmt}"
        collected.save(str(p), fmt)
        back = im.load(p)
        p2 = tmp_path / f"b.{fmt}"
        back.save(str(p2), fmt)
        assert p.read_bytes() == p2.read_bytes(), fmt
        for name in collected.names():
            assert np.allclose(back.importance(name), collected.importance(name), rtol=1e-6)
    try:
        import gguf
    except ImportError as e:
        require("gguf==0.19.0", e)
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    fields = {f.name: f for f in r.fields.values()}
    assert fields["general.type"].contents() == "imatrix"
    assert fields["imatrix.chunk_count"].contents() == CHUNKS and fields["imatrix.chunk_size"].contents() == CTX
    t = {x.name: x for x in r.tensors}
    s, c = collected.entry("blk.0.attn_q.weight")
    assert np.array_equal(np.asarray(t["blk.0.attn_q.weight.in_sum2"].data), s)
    assert float(np.asarray(t["blk.0.attn_q.weight.counts"].data)[0]) == c


def test_merging_halves_equals_one_run(model, tmp_path) -> None:
    """Two texts whose chunks are the first and last four chunks of the whole: the merged
    matrices (one GGUF, one legacy .dat) equal one run over the whole text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    text = CALIB.read_text()
    ids = tok(text[:-1] if text.endswith("\n") else text).input_ids
    k = 4 * CTX
    # each chunk's first token is replaced by BOS, so a part may start anywhere after it
    first, second = tok.decode(ids[1:k]), tok.decode(ids[k + 1 : 2 * k])
    assert tok(first).input_ids == [tok.bos_token_id, *ids[1:k]]
    assert tok(second).input_ids == [tok.bos_token_id, *ids[k + 1 : 2 * k]]
    # the loader strips one trailing newline, as llama-imatrix does
    (tmp_path / "a.txt").write_text(first + "\n")
    (tmp_path / "b.txt").write_text(second + "\n")
    whole = im.collect(model, CALIB, ctx=CTX, chunks=CHUNKS, quiet=True)
    a = im.collect(model, tmp_path / "a.txt", ctx=CTX, quiet=True)
    b = im.collect(model, tmp_path / "b.txt", ctx=CTX, quiet=True)
    a.save(str(tmp_path / "a.gguf"))
    b.save(str(tmp_path / "b.dat"), "dat")
    assert (
        cli(
            [
                "--quiet",
                "imatrix",
                "--in-file",
                str(tmp_path / "a.gguf"),
                "--in-file",
                str(tmp_path / "b.dat"),
                "-o",
                str(tmp_path / "m.gguf"),
                "--ctx",
                str(CTX),
            ]
        )
        == 0
    )
    m = im.load(tmp_path / "m.gguf")
    assert m.names() == whole.names() and m.chunk_count == whole.chunk_count == CHUNKS
    for name in whole.names():
        (s1, c1), (s2, c2) = m.entry(name), whole.entry(name)
        assert c1 == c2
        assert np.allclose(s1, s2, rtol=1e-5), name
    # without --ctx the merge keeps the inputs' chunk size (the GGUF records it; the .dat
    # does not, and is scaled by it), not the default 512
    args = ["--quiet", "imatrix", "--in-file", str(tmp_path / "a.gguf"), "--in-file", str(tmp_path / "b.dat")]
    assert cli([*args, "-o", str(tmp_path / "n.gguf")]) == 0
    n = im.load(tmp_path / "n.gguf")
    assert n.chunk_size == CTX and all(n.entry(x)[1] == m.entry(x)[1] for x in m.names())
    assert im.load(tmp_path / "b.dat").chunk_size == 0


def test_importance_lowers_weighted_error(model, collected) -> None:
    import simpo_q
    from simpo_q.sources import HFDirectory

    src = HFDirectory(model)
    for name in collected.names():
        i, kind = name.split(".")[1], name.split(".")[2]
        hf = {
            "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        }[kind]
        x = src.load(f"model.layers.{i}.{hf}.weight")
        w = collected.importance(name)
        err = []
        for v in (None, w):
            y = simpo_q.dequantize(simpo_q.quantize(x, "Q3_K", v), "Q3_K", x.shape[1])
            err.append(float(((y - x) ** 2 * w).sum()))
        assert err[1] < err[0], (name, err)


def test_quantize_with_calibration_text_saves_the_matrix(model, tmp_path) -> None:
    out = tmp_path / "m.gguf"
    assert (
        cli(["--quiet", "quantize", str(model), str(out), "--imatrix", str(CALIB), "--ctx", "128", "--chunks", "2"])
        == 0
    )
    assert (tmp_path / "m.imatrix.gguf").exists()
    md = metadata_dict(open_gguf(out))
    assert md["quantize.imatrix.file"].endswith("m.imatrix.gguf") and md["quantize.imatrix.chunks_count"] == 2


def test_quantize_collects_layer_by_layer_when_the_model_does_not_fit(
    model, collected, tmp_path, monkeypatch, capsys
) -> None:
    """`quantize --imatrix TEXT` on a model larger than the free memory collects one decoder
    layer at a time (the statistics of the whole-model path) instead of running out of memory."""
    import simpo_q.imatrix_offload as off

    monkeypatch.setattr(off, "available_bytes", lambda device: 1 << 20)  # 1 MiB free: the 2M model does not fit
    out = tmp_path / "m.gguf"
    argv = ["quantize", str(model), str(out), "--imatrix", str(CALIB), "--ctx", str(CTX), "--chunks", str(CHUNKS)]
    assert cli(argv) == 0
    assert "imatrix: one decoder layer at a time (the model needs" in capsys.readouterr().err
    _assert_same_statistics(im.load(tmp_path / "m.imatrix.gguf"), collected, rtol=1e-5)
    assert out.exists()


def test_show(collected, tmp_path, capsys) -> None:
    collected.save(str(tmp_path / "s.gguf"))
    assert cli(["imatrix", "--show", str(tmp_path / "s.gguf")]) == 0
    out = capsys.readouterr().out
    assert "blk.0.attn_q.weight" in out and "14 entries" in out


# --- bad input ---


def test_short_empty_binary_text(model, tmp_path) -> None:
    (tmp_path / "short.txt").write_text("too short")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01\x02")
    for f, msg in [
        ("short.txt", r"short.txt: calibration text has \d+ tokens; --ctx 128 needs at least 256"),
        ("empty.txt", r"empty.txt: calibration text is empty"),
        ("bin.txt", r"bin.txt: calibration text looks binary"),
    ]:
        with pytest.raises(SimpoQError, match=msg):
            quantize_model(model, tmp_path / "o.gguf", imatrix=tmp_path / f, imatrix_ctx=128, quiet=True)
        assert not (tmp_path / "o.gguf").exists()


def test_imatrix_of_another_model(model, collected, tmp_path) -> None:
    other = Imatrix(128)
    other.add("blk.0.attn_q.weight", np.ones((4, 100), np.float32))
    other.save(str(tmp_path / "wrong.gguf"))
    with pytest.raises(SimpoQError, match=r"wrong.gguf: entry blk.0.attn_q.weight has 100 columns, the tensor has 256"):
        quantize_model(model, tmp_path / "o.gguf", imatrix=tmp_path / "wrong.gguf", quiet=True)
    none = Imatrix(128)
    none.add("blk.99.attn_q.weight", np.ones((4, 256), np.float32))
    none.save(str(tmp_path / "none.gguf"))
    with pytest.raises(SimpoQError, match=r"none.gguf: no entry matches a weight"):
        quantize_model(model, tmp_path / "o.gguf", imatrix=tmp_path / "none.gguf", quiet=True)
    assert not (tmp_path / "o.gguf").exists()


def test_nan_negative_and_truncated_files(collected, tmp_path) -> None:
    from simpo_q.gguf import GGUFOutput

    for bad, msg in [(np.nan, "invalid value NaN at column 3"), (-1.0, "invalid value -1 at column 3")]:
        s = np.ones(256, np.float32)
        s[3] = bad
        p = tmp_path / "bad.gguf"
        with GGUFOutput(
            p,
            [
                ("general.type", "str", "imatrix"),
                ("imatrix.datasets", "array[str]", ["x"]),
                ("imatrix.chunk_count", "u32", 1),
                ("imatrix.chunk_size", "u32", 512),
            ],
            [("blk.0.attn_q.weight.in_sum2", (256,), "F32"), ("blk.0.attn_q.weight.counts", (1,), "F32")],
        ) as w:
            w.write("blk.0.attn_q.weight.in_sum2", s)
            w.write("blk.0.attn_q.weight.counts", np.array([10], np.float32))
        with pytest.raises(SimpoQError, match=msg):
            im.load(p)
    collected.save(str(tmp_path / "t.dat"), "dat")
    raw = (tmp_path / "t.dat").read_bytes()
    (tmp_path / "t.dat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SimpoQError, match=r"t.dat: truncated"):
        im.load(tmp_path / "t.dat")
    collected.save(str(tmp_path / "t.gguf"))
    raw = (tmp_path / "t.gguf").read_bytes()
    (tmp_path / "t.gguf").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SimpoQError, match=r"t.gguf: truncated"):
        im.load(tmp_path / "t.gguf")


def test_set_entry_takes_reduced_statistics_and_refuses_bad_ones(collected) -> None:
    """set_entry is how the ranks' sums come back together: a copy built entry by entry is the
    same matrix; sums that cannot be sums of squares are refused, naming the weight."""
    m = Imatrix(collected.chunk_size)
    for n in collected.names():
        s, c = collected.entry(n)
        m.set_entry(n, s, c)
    assert m.names() == collected.names()
    for n in m.names():
        assert np.array_equal(m.importance(n), collected.importance(n))
    for bad in (np.array([1.0, -1.0], np.float32), np.array([np.nan], np.float32), np.zeros(0, np.float32)):
        with pytest.raises(SimpoQError, match="blk.0.attn_q.weight"):
            m.set_entry("blk.0.attn_q.weight", bad, 4)


def _assert_same_statistics(a: Imatrix, b: Imatrix, rtol: float = 0.0) -> None:
    assert a.names() == b.names() and a.chunk_count == b.chunk_count and len(a) == 7 * 2
    for n in a.names():
        (x, cx), (y, cy) = a.entry(n), b.entry(n)
        assert cx == cy, n
        np.testing.assert_allclose(y, x, rtol=rtol, atol=0, err_msg=n)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("budget", [None, 2 * CTX * 256 * 4])
def test_layer_by_layer_equals_the_whole_model(model, collected, dtype, budget) -> None:
    """--offload runs each chunk through one loaded layer at a time (in one pass, or in
    several when the hidden states of all chunks exceed the budget): the same sums and counts
    as the whole model in memory (each chunk runs the same operations, so bit for bit)."""
    from simpo_q.imatrix_offload import collect_offloaded

    ref = collected if dtype == "float32" else im.collect(model, CALIB, ctx=CTX, chunks=CHUNKS, dtype=dtype, quiet=True)
    got = collect_offloaded(model, CALIB, ctx=CTX, chunks=CHUNKS, dtype=dtype, quiet=True, hidden_budget=budget)
    _assert_same_statistics(ref, got, rtol=1e-5 if dtype == "bfloat16" else 0.0)
    assert got.datasets == [str(CALIB)]


@pytest.mark.parametrize("budget", [None, 2 * CTX * 256 * 4])
def test_layer_by_layer_batches_chunks_as_the_whole_model_does(model, collected, budget) -> None:
    """Three chunks through each layer at once (the last batch short; with a budget of two
    chunks' hidden states, passes of three): the whole model's sums with the same batches bit
    for bit, and the unbatched ones within float32 rounding."""
    from simpo_q.imatrix_offload import collect_offloaded

    assert CHUNKS % 3 != 0
    got = collect_offloaded(model, CALIB, ctx=CTX, chunks=CHUNKS, quiet=True, hidden_budget=budget, batch=3)
    _assert_same_statistics(im.collect(model, CALIB, ctx=CTX, chunks=CHUNKS, batch=3, quiet=True), got)
    _assert_same_statistics(collected, got, rtol=1e-5)


def test_offload_is_chosen_when_the_model_does_not_fit(model, collected, tmp_path, monkeypatch, capsys) -> None:
    import simpo_q.imatrix_offload as off

    shards = tmp_path / "sharded"
    from simpo_q.tiny import TinyConfig, build_tiny_model

    build_tiny_model(shards, TinyConfig(shards=3))
    whole = tmp_path / "whole.gguf"
    assert (
        cli(["--quiet", "imatrix", str(shards), "-f", str(CALIB), "--ctx", str(CTX), "--chunks", "3", "-o", str(whole)])
        == 0
    )
    assert (
        cli(
            [
                "imatrix",
                str(shards),
                "-f",
                str(CALIB),
                "--ctx",
                str(CTX),
                "--chunks",
                "3",
                "-o",
                str(tmp_path / "flag.gguf"),
                "--offload",
            ]
        )
        == 0
    )
    assert "one decoder layer at a time (--offload; no perplexity in this mode)" in capsys.readouterr().err
    monkeypatch.setattr(off, "available_bytes", lambda device: 1 << 20)  # 1 MiB free: the 2M model does not fit
    assert (
        cli(
            [
                "imatrix",
                str(shards),
                "-f",
                str(CALIB),
                "--ctx",
                str(CTX),
                "--chunks",
                "3",
                "-o",
                str(tmp_path / "auto.gguf"),
            ]
        )
        == 0
    )
    assert (
        "one decoder layer at a time (the model needs 0.0 GiB in float32, cpu has 0.0 GiB free"
        in capsys.readouterr().err
    )
    # on the CPU the whole-model run takes one chunk per forward too: bit for bit
    ref = im.load(whole)
    _assert_same_statistics(ref, im.load(tmp_path / "flag.gguf"))
    _assert_same_statistics(ref, im.load(tmp_path / "auto.gguf"))


@pytest.mark.parametrize("batch", [3, 8])
def test_chunks_batched_per_forward_give_the_same_statistics(model, collected, batch) -> None:
    """Several chunks per forward (llama-imatrix's -b / ctx): the same rows reach the
    accumulator in the same order, also when the last batch is short."""
    got = im.collect(model, CALIB, ctx=CTX, chunks=CHUNKS, quiet=True, batch=batch)
    _assert_same_statistics(collected, got, rtol=1e-5)


def test_imatrix_speaks_llama_imatrix(model, tmp_path, monkeypatch, capsys) -> None:
    """-m MODEL, the default output imatrix.gguf, --chunk N (skip the first N chunks),
    --no-ppl, and the closing "Final estimate: PPL = x +/- y" line: against llama-imatrix
    with the same arguments (sums within 1e-3 as above, the perplexity within 1e-3)."""
    import re

    bins = tools()
    f32 = convert(model, tmp_path / "f32.gguf", "f32", quiet=True)
    ref = tmp_path / "ref.gguf"
    from llama_cpp_tree import run_logged

    r = run_logged(
        [str(bins / "llama-imatrix"), "-m", str(f32), "-f", str(CALIB), "-o", str(ref), "-c", str(CTX),
         "--chunks", "3", "--chunk", "2", "-t", "2"],
        lambda text: "Final estimate: PPL" in text,
        timeout=600,
    )  # fmt: skip
    want = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", r.stdout + r.stderr)
    monkeypatch.chdir(tmp_path)
    assert cli(["imatrix", "-m", str(model), "-f", str(CALIB), "--ctx", str(CTX), "--chunks", "3", "--chunk", "2"]) == 0
    got = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", capsys.readouterr().err)
    assert want and got
    assert float(got.group(1)) == pytest.approx(float(want.group(1)), rel=1e-3)
    assert float(got.group(2)) == pytest.approx(float(want.group(2)), rel=1e-2)
    ours, theirs = im.load(tmp_path / "imatrix.gguf"), im.load(ref)
    assert ours.names() == theirs.names() and ours.chunk_count == theirs.chunk_count == 3
    for name in theirs.names():
        (sa, ca), (sb, cb) = ours.entry(name), theirs.entry(name)
        assert ca == cb
        assert np.max(np.abs(sa - sb) / np.abs(sb)) < 1e-3, name
    # --no-ppl: the same statistics, no perplexity line
    assert (
        cli(
            [
                "imatrix",
                str(model),
                "-f",
                str(CALIB),
                "--ctx",
                str(CTX),
                "--chunks",
                "3",
                "--chunk",
                "2",
                "--no-ppl",
                "-o",
                str(tmp_path / "noppl.gguf"),
            ]
        )
        == 0
    )
    assert "Final estimate" not in capsys.readouterr().err
    _assert_same_statistics(ours, im.load(tmp_path / "noppl.gguf"))
    assert (
        cli(
            [
                "imatrix",
                str(model),
                "-f",
                str(CALIB),
                "--ctx",
                str(CTX),
                "--chunk",
                "1000",
                "-o",
                str(tmp_path / "x.gguf"),
            ]
        )
        == 2
    )
    assert "not enough left after skipping 1000 chunks of 128" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "names"),
    [
        ("--exclude-weights", ["attn_v", "ffn_down"]),
        ("--include-weights", ["attn_q"]),
        ("--include-weights", ["no-such-tensor"]),
    ],
)
def test_include_and_exclude_weights_equal_llama_quantize(model, collected, tmp_path, flag, names) -> None:
    """Which tensors use the importance matrix, by name substrings, as llama-quantize chooses
    them (entries_count follows; nothing left means no matrix at all): the same file."""
    bins = tools()
    f32 = convert(model, tmp_path / "f32.gguf", "f32", quiet=True)
    imf = tmp_path / "im.gguf"
    collected.save(str(imf), "gguf")
    args = [x for n in names for x in (flag, n)]
    subprocess.run(
        [
            str(bins / "llama-quantize"),
            "--imatrix",
            str(imf),
            *args,
            str(f32),
            str(tmp_path / "ref.gguf"),
            "Q4_K_M",
            "2",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert (
        cli(["--quiet", "quantize", str(f32), str(tmp_path / "ours.gguf"), "Q4_K_M", "--imatrix", str(imf), *args]) == 0
    )
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()


def test_show_statistics_prints_llama_imatrixs_table(model, collected, tmp_path, capsys) -> None:
    """--show-statistics: llama-imatrix's per-tensor and per-layer tables, row for row, for
    the same file (its float32 arithmetic in its order, so the printed digits agree)."""
    import re

    bins = tools()
    f32 = convert(model, tmp_path / "f32.gguf", "f32", quiet=True)
    imf = tmp_path / "im.gguf"
    collected.save(str(imf), "gguf")
    from llama_cpp_tree import run_logged

    r = run_logged(
        [str(bins / "llama-imatrix"), "-m", str(f32), "--in-file", str(imf), "--show-statistics"],
        # the whole of both tables (the log ends with an empty line, so not "the last line")
        lambda text: sum("\t" in x for x in text.splitlines()) == 1 + 14 + 1 + 2,
        timeout=600,
    )
    want = [re.sub(r"^\d+\.\d+\.\d+\.\d+ I ", "", x) for x in (r.stdout + r.stderr).splitlines() if "\t" in x]
    assert cli(["imatrix", "--in-file", str(imf), "--show-statistics"]) == 0
    got = [x for x in capsys.readouterr().out.splitlines() if "\t" in x]
    assert len(want) == 1 + 14 + 1 + 2, (r.stdout + r.stderr)[-1500:]
    assert got == want


def test_periodic_saves_and_resume_give_one_runs_statistics(model, tmp_path, capsys) -> None:
    """-ofreq N writes the statistics so far every N chunks and --save-frequency keeps copies
    (OUT.at_N), each a whole file of that many chunks; --resume continues from what a run
    left (its chunks skipped, its sums kept) and ends where one uninterrupted run ends."""
    base = ["imatrix", str(model), "-f", str(CALIB), "--ctx", str(CTX), "--no-ppl", "--quiet"]
    assert cli([*base, "-o", str(tmp_path / "one.gguf"), "--chunks", "6"]) == 0
    out = tmp_path / "run.gguf"
    assert cli([*base, "-o", str(out), "--chunks", "4", "-ofreq", "2", "--save-frequency", "2"]) == 0
    part = im.load(tmp_path / "run.gguf.at_2")
    assert part.chunk_count == 2 and im.load(out).chunk_count == 4
    dat = tmp_path / "run.dat"
    assert cli([*base, "-o", str(dat), "--chunks", "2", "--save-frequency", "2"]) == 0
    assert im.load(tmp_path / "run.dat.at_2").chunk_size == 0  # the legacy format, as the output
    assert cli([*base, "-o", str(tmp_path / "two.gguf"), "--chunks", "2"]) == 0
    _assert_same_statistics_of(part, im.load(tmp_path / "two.gguf"))
    # the run that stopped after 4 chunks, continued to 6
    assert cli([*base, "-o", str(out), "--chunks", "6", "--resume"]) == 0
    resumed, one = im.load(out), im.load(tmp_path / "one.gguf")
    assert resumed.chunk_count == 6 and resumed.datasets == one.datasets
    _assert_same_statistics_of(resumed, one, rtol=1e-6)
    # nothing left to do, another text, another chunk size: refused
    assert cli([*base, "-o", str(out), "--chunks", "6", "--resume"]) == 2
    assert "already holds 6 chunks" in capsys.readouterr().err
    assert cli([*base[:4], "--ctx", "64", "--quiet", "-o", str(out), "--resume"]) == 2
    assert "chunks of 128 tokens; this run has --ctx 64" in capsys.readouterr().err


def _assert_same_statistics_of(a: Imatrix, b: Imatrix, rtol: float = 0.0) -> None:
    assert a.names() == b.names() and a.chunk_count == b.chunk_count
    for n in a.names():
        (x, cx), (y, cy) = a.entry(n), b.entry(n)
        assert cx == cy, n
        np.testing.assert_allclose(x, y, rtol=rtol, atol=0, err_msg=n)
