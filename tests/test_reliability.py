"""Nothing executed, nothing lost, nothing silently wrong: one test per class of failure a
red-team run found (docs/reliability.md lists them with these tests)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simpo_q
from simpo_q._native import Imatrix, SimpoQError
from simpo_q.cli import main as cli
from simpo_q.tiny import cached_tiny_model

REPO = Path(__file__).parent.parent
CALIB = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
PAIRS = REPO / "python" / "simpo_q" / "data" / "preferences.jsonl"
TINY_RECIPE = REPO / "recipes" / "tiny.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


@pytest.fixture
def copy(model: Path, tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(model, d)
    return d


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """(exit code, stderr) of the command line run in this process."""
    capsys.readouterr()
    try:
        rc = cli(["--quiet", *args])
    except SystemExit as e:  # argparse's own errors
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


def one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, err)


def sub(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, **kw)


# ---------------------------------------------------------------- 1. code execution


class _Boom:
    """Unpickling this creates a marker file: the proof that a loader executed code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_unpickles(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    ck = out / "checkpoint"
    ck.mkdir(parents=True)
    marker = tmp_path / "pwned"
    for name in ("trainer_state.pt", ".metadata"):
        (ck / name).write_bytes(pickle.dumps(_Boom(str(marker))))
    # the same payload in the places a save in progress uses
    for d in ("checkpoint.next", "checkpoint.prev"):
        (out / d).mkdir()
        (out / d / "trainer_state.json").write_text("{}")
        (out / d / ".metadata").write_bytes(pickle.dumps(_Boom(str(marker))))
    rc, err = run_cli(
        capsys,
        "train",
        str(TINY_RECIPE),
        "--set",
        f"model={model}",
        "--set",
        f"output_dir={out}",
        "--set",
        "max_steps=2",
        "--set",
        "eval_steps=0",
    )
    one_line_error(rc, err, "old torch-pickle format")
    assert not marker.exists()
    assert not (out / "checkpoint.next").exists() and not (out / "checkpoint.prev").exists()


def test_checkpoint_files_are_not_pickles(model: Path, tmp_path: Path) -> None:
    from simpo_q.train.loop import train
    from simpo_q.train.recipe import load_recipe

    r = load_recipe(
        TINY_RECIPE,
        [
            f"model={model}",
            f"output_dir={tmp_path / 'run'}",
            "max_steps=2",
            "save_steps=1",
            "eval_steps=0",
            "threads=1",
        ],
    )
    train(r, quiet=True)
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert files == ["rank-00000.safetensors", "trainer_state.json"]
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["world_size"] == 1


@pytest.mark.parametrize(
    "shard",
    ["../../../../../../etc/passwd", "../other/model.safetensors", "/etc/passwd", "sub/model.safetensors", ".."],
)
def test_index_shards_must_be_files_of_the_model_directory(copy: Path, tmp_path: Path, shard: str) -> None:
    from simpo_q.sources import HFDirectory

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(copy / "model.safetensors", other / "model.safetensors")
    names = HFDirectory(copy).names()
    (copy / "model.safetensors").unlink()
    (copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    with pytest.raises(SimpoQError, match="is not a file name in"):
        HFDirectory(copy)


# ---------------------------------------------------------------- 2. data loss


def test_outputs_that_are_inputs_are_refused(copy: Path, tmp_path: Path, capsys) -> None:
    from simpo_q.convert import convert

    f32 = convert(copy, tmp_path / "in.gguf", "f32", quiet=True)
    (tmp_path / "link.gguf").symlink_to(f32)
    os.link(f32, tmp_path / "hard.gguf")
    imat = tmp_path / "m.imatrix.gguf"
    m = Imatrix(512)
    m.set_entry("blk.0.attn_q.weight", np.ones(256, np.float32), 4)
    m.save(str(imat), "gguf")
    cal = tmp_path / "cal.txt"
    shutil.copy(CALIB, cal)
    before = {p: digest(p) for p in [f32, imat, cal, *copy.iterdir()] if p.is_file()}
    cases = [
        ("quantize", str(f32), str(f32)),
        ("quantize", str(f32), str(tmp_path / "link.gguf")),
        ("quantize", str(f32), str(tmp_path / "hard.gguf")),
        ("quantize", str(copy), str(copy / "model.safetensors")),
        ("quantize", str(copy), str(copy / "config.json")),
        ("quantize", str(copy), str(imat), "--imatrix", str(imat)),
        ("convert", str(copy), str(copy / "tokenizer.json")),
        ("imatrix", str(copy), "-f", str(cal), "-o", str(cal)),
        ("imatrix", "--in-file", str(imat), "-o", str(imat)),
    ]
    for args in cases:
        rc, err = run_cli(capsys, *args)
        one_line_error(rc, err, "writing it would destroy what is read")
    assert {p: digest(p) for p in before} == before


def test_files_beside_out_are_kept_unless_forced(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.gguf"
    for name in ("Modelfile", "NOTICE", "m.imatrix.gguf"):
        (tmp_path / name).write_text("mine\n")
        rc, err = run_cli(
            capsys,
            "quantize",
            str(model),
            str(out),
            "--ollama",
            "--imatrix",
            str(CALIB),
            "--chunks",
            "2",
            "--ctx",
            "128",
        )
        one_line_error(rc, err, name, "exists; pass --force")
        assert (tmp_path / name).read_text() == "mine\n" and not out.exists()
        (tmp_path / name).unlink()
    for name in ("Modelfile", "NOTICE", "m.imatrix.gguf"):
        (tmp_path / name).write_text("mine\n")
    rc, err = run_cli(
        capsys,
        "quantize",
        str(model),
        str(out),
        "--ollama",
        "--imatrix",
        str(CALIB),
        "--chunks",
        "2",
        "--ctx",
        "128",
        "--force",
    )
    assert rc == 0, err
    assert all((tmp_path / n).read_text(errors="replace") != "mine\n" for n in ("Modelfile", "NOTICE"))
    assert (tmp_path / "m.imatrix.gguf").read_bytes()[:4] == b"GGUF"


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_every_writer_refuses_devices(tmp_path: Path) -> None:
    m = Imatrix(512)
    m.set_entry("blk.0.attn_q.weight", np.ones(256, np.float32), 4)
    for fmt in ("dat", "gguf"):
        with pytest.raises(SimpoQError, match="not a regular file"):
            m.save("/dev/null", fmt)
    with pytest.raises(SimpoQError, match="not a regular file"):
        simpo_q._native.write_file("/dev/null", b"x")
    assert Path("/dev/null").is_char_device()


KILL_SCRIPT = """
import os, sys
import simpo_q.train.checkpoint as ck
stage, nth = sys.argv[1], int(sys.argv[2])
seen = {"n": 0}
def kill(name):
    if name == stage:
        seen["n"] += 1
        if seen["n"] == nth:
            os._exit(9)
ck._stage = kill
from simpo_q.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _train_args(model: Path, out: Path) -> list[str]:
    return [
        "--quiet",
        "train",
        str(TINY_RECIPE),
        "--set",
        f"model={model}",
        "--set",
        f"output_dir={out}",
        "--set",
        "max_steps=5",
        "--set",
        "save_steps=2",
        "--set",
        "eval_steps=0",
        "--set",
        "threads=1",
        "--set",
        "save_dtype=float32",
    ]


def _final(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(out / "final" / "model.safetensors"))


@pytest.mark.slow
def test_a_kill_at_any_stage_of_a_save_resumes_to_the_same_weights(model: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    r = sub(["-m", "simpo_q", *_train_args(model, full)])
    assert r.returncode == 0, r.stderr
    want = _final(full)
    stages = ["rank files written", "state written", "old checkpoint moved aside", "new checkpoint in place"]
    for stage in stages:
        out = tmp_path / stage.replace(" ", "-")
        # the second save (step 4) is killed: the first one (step 2) must survive it
        r = sub(["-c", KILL_SCRIPT, stage, "2", *_train_args(model, out)])
        assert r.returncode == 9, (stage, r.stderr)
        r = sub(["-m", "simpo_q", *_train_args(model, out)])
        assert r.returncode == 0, (stage, r.stderr)
        got = _final(out)
        for k in want:
            assert np.array_equal(want[k], got[k]), (stage, k)
        assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


SIGNAL_SCRIPT = """
import os, signal, sys
import simpo_q.gguf_out as go
sig = getattr(signal, sys.argv[1])
real, count = go.encode, {"n": 0}
def encode(p, threads=None):
    count["n"] += 1
    if count["n"] == 3:
        os.kill(os.getpid(), sig)
    return real(p, threads)
go.encode = encode
from simpo_q.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_during_quantize_leaves_nothing(model: Path, tmp_path: Path, sig: str) -> None:
    out = tmp_path / "m.gguf"
    r = sub(["-c", SIGNAL_SCRIPT, sig, "--quiet", "quantize", str(model), str(out)])
    assert r.returncode == 128 + getattr(signal, sig), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_killed_runs_are_removed(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    r = sub(["-c", SIGNAL_SCRIPT, "SIGKILL", "--quiet", "quantize", str(model), str(out)])
    assert r.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".m.gguf.tmp-"), left
    r = sub(["-m", "simpo_q", "--quiet", "quantize", str(model), str(out)])
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


# ---------------------------------------------------------------- 3. silently wrong output


def _rewrite(d: Path, edit) -> None:
    """Rewrites the tiny model's single safetensors file through `edit(tensors)`."""
    from safetensors.torch import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    edit(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def _config(d: Path, **kw) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kw)
    (d / "config.json").write_text(json.dumps(cfg))


CORRUPTIONS = {
    "hidden size": (lambda d: _config(d, hidden_size=128), "has shape"),
    "more layers": (lambda d: _config(d, num_hidden_layers=3), "'model.layers.2.input_layernorm.weight' is missing"),
    "head count": (lambda d: _config(d, num_attention_heads=8), "has shape"),
    "missing tensor": (
        lambda d: _rewrite(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
        "'model.layers.1.mlp.up_proj.weight' is missing",
    ),
    "transposed": (
        lambda d: _rewrite(
            d,
            lambda t: t.update(
                {"model.layers.0.mlp.down_proj.weight": t["model.layers.0.mlp.down_proj.weight"].T.contiguous()}
            ),
        ),
        "'model.layers.0.mlp.down_proj.weight' has shape",
    ),
    "zero-sized": (
        lambda d: _rewrite(d, lambda t: t.update({"model.norm.weight": t["model.norm.weight"][:0]})),
        "'model.norm.weight' has shape [0]",
    ),
    "extra tensor": (
        lambda d: _rewrite(d, lambda t: t.update({"model.layers.0.extra.weight": t["model.norm.weight"].clone()})),
        "unexpected tensor",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_weights_that_do_not_match_the_config_are_refused_before_writing(
    copy: Path, tmp_path: Path, capsys, case: str
) -> None:
    corrupt, message = CORRUPTIONS[case]
    corrupt(copy)
    for args in (
        ["quantize", str(copy), str(tmp_path / "q.gguf")],
        ["convert", str(copy), str(tmp_path / "c.gguf")],
        ["imatrix", str(copy), "-f", str(CALIB), "-o", str(tmp_path / "i.gguf"), "--ctx", "64"],
    ):
        rc, err = run_cli(capsys, *args)
        one_line_error(rc, err, str(copy), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    model: Path, tmp_path: Path, monkeypatch
) -> None:
    import simpo_q.train.loop as loop
    import torch
    from simpo_q.train.recipe import load_recipe

    real, calls = loop.simpo_loss, {"n": 0}

    def poisoned(*a, **kw):
        calls["n"] += 1
        losses, rc, rr = real(*a, **kw)
        if calls["n"] > 2 * 2:  # two micro-batches per step: the third step goes wrong
            losses = losses * torch.tensor(float("nan"))
        return losses, rc, rr

    monkeypatch.setattr(loop, "simpo_loss", poisoned)
    out = tmp_path / "run"
    r = load_recipe(
        TINY_RECIPE, [f"model={model}", f"output_dir={out}", "max_steps=5", "save_steps=1", "eval_steps=0", "threads=1"]
    )
    with pytest.raises(SimpoQError, match=r"step 3: the loss \(nan\).*not finite.*last good checkpoint"):
        loop.train(r, quiet=True)
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2 and not (out / "final").exists()
    from safetensors.numpy import load_file

    assert all(np.isfinite(v).all() for v in load_file(str(out / "checkpoint" / "rank-00000.safetensors")).values())


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_learning_rate_must_be_finite_and_positive(value: str) -> None:
    from simpo_q.train.recipe import load_recipe

    with pytest.raises(SimpoQError, match=f"learning_rate is {value if value != '-1' else '-1.0'}"):
        load_recipe(TINY_RECIPE, [f"learning_rate={value}"])


def test_huge_importances_are_refused_everywhere(model: Path, tmp_path: Path, capsys) -> None:
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    w = np.ones(256, np.float32)
    w[7] = 3e38
    for t in ("Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q5_1", "IQ4_NL"):
        with pytest.raises(SimpoQError, match="column 7 is too large"):
            simpo_q.quantize(x, t, w)
    # a file with such an entry: quantize refuses, naming the tensor
    m = Imatrix(512)
    m.set_entry("blk.0.attn_q.weight", np.full(256, 3e38, np.float32), 1)
    m.save(str(tmp_path / "huge.gguf"), "gguf")
    rc, err = run_cli(
        capsys, "quantize", str(model), str(tmp_path / "q.gguf"), "--imatrix", str(tmp_path / "huge.gguf")
    )
    one_line_error(rc, err, "blk.0.attn_q.weight", "too large")
    assert not (tmp_path / "q.gguf").exists()
    # merging two such files would overflow the sums: refused, naming both files
    shutil.copy(tmp_path / "huge.gguf", tmp_path / "huge2.gguf")
    rc, err = run_cli(
        capsys,
        "imatrix",
        "--in-file",
        str(tmp_path / "huge.gguf"),
        "--in-file",
        str(tmp_path / "huge2.gguf"),
        "-o",
        str(tmp_path / "merged.gguf"),
    )
    one_line_error(rc, err, "huge2.gguf", "huge.gguf", "overflows float32")
    assert not (tmp_path / "merged.gguf").exists()


# ---------------------------------------------------------------- 4. crashes and tracebacks


@pytest.mark.parametrize("qtype", simpo_q.QUANT_TYPES)
def test_extreme_sizes_are_errors(qtype: str) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    block = simpo_q.type_info(qtype)[1]

    @settings(max_examples=60, deadline=None)
    @given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=64))
    def check(n: int, nbytes: int) -> None:
        try:
            rs = simpo_q.row_size(qtype, n)
        except (SimpoQError, OverflowError):
            rs = None
        if rs is not None:
            assert n > 0 and n % block == 0 and rs == n // block * simpo_q.type_info(qtype)[2]
        try:
            out = simpo_q.dequantize(np.zeros(nbytes, np.uint8), qtype, n)
        except (SimpoQError, OverflowError):
            return
        assert rs is not None and nbytes % rs == 0 and out.shape == (nbytes // rs, n)

    check()
    for n in (2**62, 2**62 + 1, 2**63, 2**64 - 1):
        with pytest.raises((SimpoQError, OverflowError)):
            simpo_q.dequantize(np.zeros(8, np.uint8), qtype, n)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_devices_are_refused_before_reading(model: Path, tmp_path: Path, capsys) -> None:
    rc, err = run_cli(capsys, "imatrix", "--show", "/dev/zero")
    one_line_error(rc, err, "/dev/zero", "not a regular file")
    rc, err = run_cli(capsys, "imatrix", str(model), "-f", "/dev/zero", "-o", str(tmp_path / "i.gguf"))
    one_line_error(rc, err, "/dev/zero", "not a regular file")
    rc, err = run_cli(capsys, "quantize", "/dev/zero", str(tmp_path / "q.gguf"))
    one_line_error(rc, err, "/dev/zero", "not a regular file or a directory")
    rc, err = run_cli(capsys, "inspect", str(tmp_path))
    one_line_error(rc, err, "is a directory, not a GGUF file")


@pytest.mark.parametrize("case", ["header list", "index list", "config null", "config list", "index weight_map list"])
def test_json_of_the_wrong_shape(copy: Path, tmp_path: Path, capsys, case: str) -> None:
    if case == "header list":
        raw = (copy / "model.safetensors").read_bytes()
        n = int.from_bytes(raw[:8], "little")
        head = b"[1, 2, 3]".ljust(n, b" ")
        (copy / "model.safetensors").write_bytes(raw[:8] + head + raw[8 + n :])
        want = "not an object"
    elif case.startswith("index"):
        (copy / "model.safetensors.index.json").write_text("[]" if case == "index list" else '{"weight_map": []}')
        want = "not a valid safetensors index"
    else:
        (copy / "config.json").write_text("null" if case == "config null" else "[1]")
        want = "not an object"
    rc, err = run_cli(capsys, "quantize", str(copy), str(tmp_path / "q.gguf"))
    one_line_error(rc, err, str(copy), want)


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (["quantize", "M", "O", "--threads", "-1"], "--threads: -1 must be at least 1"),
        (["quantize", "M", "O", "--ctx", "0"], "--ctx: 0 must be at least 1"),
        (["quantize", "M", "O", "--chunks", "-1"], "--chunks: -1 must be at least 1"),
        (["imatrix", "M", "-f", "T", "-o", "O", "--ctx", "0"], "--ctx: 0 must be at least 1"),
        (["convert", "M", "O", "--threads", "0"], "--threads: 0 must be at least 1"),
    ],
)
def test_bad_numbers_are_usage_errors(capsys, args: list[str], want: str) -> None:
    rc, err = run_cli(capsys, *args)
    assert rc == 2 and want in err and "Traceback" not in err, err


def test_bad_tensor_type_regex_fails_before_the_importance_matrix(model: Path, tmp_path: Path, capsys) -> None:
    rc, err = run_cli(
        capsys,
        "quantize",
        str(model),
        str(tmp_path / "q.gguf"),
        "--imatrix",
        str(CALIB),
        "--tensor-type",
        "attn_(q=Q4_K",
    )
    one_line_error(rc, err, "'attn_(q' is not a valid regular expression")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("- a\n- b\n", "a recipe is a mapping"),
        ("just words\n", "a recipe is a mapping"),
        ("", "the recipe names no model"),
        ("model: m\ndata: d\nper_device_train_batch_size: 0\n", "per_device_train_batch_size is 0"),
        ("model: m\ndata: d\ngradient_accumulation_steps: 0\n", "gradient_accumulation_steps is 0"),
        ("model: m\ndata: d\neval_fraction: -0.5\n", "eval_fraction is -0.5"),
        ("model: m\ndata: d\nwarmup_ratio: 5\n", "warmup_ratio is 5.0"),
        ("model: m\ndata: d\nbf16: maybe\n", "bf16: cannot use 'maybe'"),
        ("model: m\ndata: d\nmax_steps: 2.5\n", "max_steps: cannot use 2.5"),
        ("{model: [1, 2\n", "cannot read recipe"),
    ],
)
def test_bad_recipes(tmp_path: Path, capsys, text: str, want: str) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    rc, err = run_cli(capsys, "train", str(p))
    one_line_error(rc, err, want)


def test_message_content_that_is_not_a_string(model: Path, tmp_path: Path, capsys) -> None:
    row = {
        "prompt": "hi",
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["no"]}],
    }
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(row) + "\n")
    rc, err = run_cli(
        capsys,
        "train",
        str(TINY_RECIPE),
        "--set",
        f"model={model}",
        "--set",
        f"data={data}",
        "--set",
        f"output_dir={tmp_path / 'run'}",
    )
    # --quiet must not hide why nothing was usable
    one_line_error(rc, err, "no usable preference pairs", "1 a message without a string role and content")


def test_resuming_into_a_run_of_another_shape(model: Path, tmp_path: Path, capsys) -> None:
    from simpo_q.tiny import TinyConfig

    other = cached_tiny_model(REPO / ".cache", TinyConfig(layers=1), pretrain_steps=0, quiet=True)
    base = [
        "train",
        str(TINY_RECIPE),
        "--set",
        f"output_dir={tmp_path / 'run'}",
        "--set",
        "max_steps=2",
        "--set",
        "save_steps=1",
        "--set",
        "eval_steps=0",
        "--set",
        "stop_after_steps=1",
    ]
    rc, err = run_cli(capsys, *base, "--set", f"model={other}")
    assert rc == 0, err
    rc, err = run_cli(capsys, *base, "--set", f"model={model}")
    one_line_error(rc, err, "written by a run of another model")


def test_ctrl_c_is_one_line_and_130(model: Path, tmp_path: Path) -> None:
    r = sub(["-c", SIGNAL_SCRIPT, "SIGINT", "--quiet", "quantize", str(model), str(tmp_path / "m.gguf")])
    assert r.returncode == 130 and r.stderr.strip() == "simpo-q: interrupted; nothing partial was left behind"


# ---------------------------------------------------------------- 5. clear messages, early failures


def test_missing_model_is_named_at_once(tmp_path: Path, capsys) -> None:
    rc, err = run_cli(
        capsys, "train", str(TINY_RECIPE), "--set", "model=no/such/dir", "--set", f"output_dir={tmp_path / 'run'}"
    )
    one_line_error(rc, err, "no/such/dir: no such model directory")
    rc, err = run_cli(capsys, "quantize", "no/such/dir", str(tmp_path / "q.gguf"))
    one_line_error(rc, err, "no/such/dir: no such file or directory")


def test_non_finite_weight_is_blamed_on_the_weight(copy: Path, tmp_path: Path, capsys) -> None:
    import torch

    _rewrite(copy, lambda t: t["model.layers.0.mlp.up_proj.weight"].view(-1).__setitem__(5, float("nan")))
    rc, err = run_cli(capsys, "imatrix", str(copy), "-f", str(CALIB), "-o", str(tmp_path / "i.gguf"), "--ctx", "64")
    one_line_error(rc, err, "model.layers.0.mlp.up_proj.weight has non-finite values")
    rc, err = run_cli(capsys, "quantize", str(copy), str(tmp_path / "q.gguf"))
    one_line_error(rc, err, "blk.0.ffn_up.weight")
    # layer by layer, where the check is a min/max reduction: NaN, and each sign of infinity
    out = tmp_path / "o.gguf"
    rc, err = run_cli(capsys, "imatrix", str(copy), "-f", str(CALIB), "-o", str(out), "--ctx", "64", "--offload")
    one_line_error(rc, err, "model.layers.0.mlp.up_proj.weight has non-finite values")
    for value in (float("inf"), float("-inf")):
        _rewrite(copy, lambda t: t["model.layers.0.mlp.up_proj.weight"].view(-1).__setitem__(5, 0.5))
        _rewrite(copy, lambda t, v=value: t["model.layers.1.self_attn.o_proj.weight"].view(-1).__setitem__(7, v))
        rc, err = run_cli(capsys, "imatrix", str(copy), "-f", str(CALIB), "-o", str(out), "--ctx", "64", "--offload")
        one_line_error(rc, err, "model.layers.1.self_attn.o_proj.weight has non-finite values")
    assert not out.exists()
    assert torch is not None


def test_unwritable_pipeline_output_fails_before_training(model: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    rc, err = run_cli(
        capsys,
        "pipeline",
        str(TINY_RECIPE),
        str(tmp_path / "no" / "such" / "m.gguf"),
        "--set",
        f"model={model}",
        "--set",
        f"output_dir={run}",
    )
    one_line_error(rc, err, "does not exist")
    assert not run.exists()


def test_closed_pipe_is_quiet(model: Path, tmp_path: Path) -> None:
    from simpo_q.convert import convert

    f = convert(model, tmp_path / "m.gguf", "f32", quiet=True)
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader is gone before the first byte
    try:
        p = subprocess.run(
            [sys.executable, "-m", "simpo_q", "inspect", "--json", str(f)],
            stdout=w_fd,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(w_fd)
    assert p.returncode == 141 and p.stderr == "", p.stderr
