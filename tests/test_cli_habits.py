"""Habits of llama.cpp users (issue 18, the parts done so far): --quiet after the subcommand,
defaults in --help, file types by name in inspect, readable parameter counts in plan,
llama-quantize's positional type and thread count, and its log line for line."""

from __future__ import annotations

from pathlib import Path

import pytest
from simpo_q.cli import build_parser
from simpo_q.cli import main as cli
from simpo_q.quantize_model import quantize_model
from simpo_q.tiny import cached_tiny_model

REPO = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("argv", "quiet"),
    [
        (["inspect", "f.gguf"], False),
        (["--quiet", "inspect", "f.gguf"], True),
        (["inspect", "f.gguf", "--quiet"], True),
        (["eval", "kld", "r", "q.gguf", "-f", "t.txt", "--quiet"], True),
    ],
)
def test_quiet_before_or_after_the_subcommand(argv: list[str], quiet: bool) -> None:
    assert build_parser().parse_args(argv).quiet is quiet


@pytest.mark.parametrize(
    "command", ["quantize", "imatrix", "convert", "pipeline", "plan", "train", "tiny-model", "demo"]
)
def test_help_shows_defaults(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert "(default:" in out and "--quiet" in out


def test_inspect_names_the_file_type_and_plan_counts_small_models(tmp_path: Path, capsys) -> None:
    model = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    f = quantize_model(model, tmp_path / "m.gguf", "Q3_K_S", quiet=True)
    capsys.readouterr()
    assert cli(["inspect", str(f)]) == 0
    assert "Q3_K_S (11)" in capsys.readouterr().out
    assert cli(["plan", str(REPO / "recipes" / "tiny.yaml"), "--set", f"model={model}", "--gpus", "1"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "M parameters" in first and "0.00B" not in first


def test_quantize_takes_llama_quantizes_positional_type_and_threads(tmp_path: Path, capsys) -> None:
    """`quantize IN OUT Q4_K_M`, `IN OUT 15` and `IN OUT 15 2` (type by name or number,
    trailing thread count) give the same file as `--type Q4_K_M`; two different types are
    refused."""
    model = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    ref = quantize_model(model, tmp_path / "ref.gguf", "Q4_K_M", quiet=True).read_bytes()
    for i, extra in enumerate([["Q4_K_M"], ["q4_k_m"], ["15"], ["15", "2"], ["15", "--type", "Q4_K_M"]]):
        out = tmp_path / f"{i}.gguf"
        assert cli(["--quiet", "quantize", str(model), str(out), *extra]) == 0, extra
        assert out.read_bytes() == ref, extra
    assert cli(["quantize", str(model), str(tmp_path / "x.gguf"), "Q4_K_M", "--type", "Q3_K_S"]) == 2
    assert "--type Q3_K_S and the positional type Q4_K_M disagree" in capsys.readouterr().err
    assert cli(["quantize", str(model), str(tmp_path / "x.gguf"), "99"]) == 2
    assert "unknown file type '99'; supported: F32 (0), F16 (1)" in capsys.readouterr().err


@pytest.mark.parametrize("hidden", [256, 288])  # 288: rows not divisible by 256, so k-quants fall back
def test_quantize_logs_what_llama_quantize_logs(tmp_path: Path, hidden: int) -> None:
    """From the same BF16 GGUF, `quantize` prints llama-quantize's per-tensor lines (input
    type, conversion, sizes in MiB), its fallback warnings, its closing model and quant
    sizes with bits per weight and its fallback count, line for line."""
    import re
    import subprocess
    import sys

    from ggml_ref import require
    from simpo_q.convert import convert
    from simpo_q.tiny import TinyConfig

    try:
        from llama_cpp_tree import llama_cpp_tools

        tools = llama_cpp_tools()
    except Exception as e:
        require("llama-quantize built from the llama-cpp-python 0.3.36 tree", e)
    model = cached_tiny_model(
        REPO / ".cache", TinyConfig(hidden=hidden, intermediate=2 * hidden), pretrain_steps=0, quiet=True
    )
    bf16 = convert(model, tmp_path / "bf16.gguf", "bf16", quiet=True)
    ref = subprocess.run(
        [str(tools / "llama-quantize"), str(bf16), str(tmp_path / "ref.gguf"), "Q4_K_M", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    ours = subprocess.run(
        [sys.executable, "-m", "simpo_q", "quantize", str(bf16), str(tmp_path / "ours.gguf"), "Q4_K_M", "2"],
        capture_output=True,
        text=True,
        check=True,
    )

    def lines(text: str) -> list[str]:
        keep = [
            x
            for x in text.splitlines()
            if x.startswith(("[", "warning:")) or "size  =" in x or "required fallback" in x
        ]
        return [re.sub(r"^(llama_model_quantize_impl|quantize): ", "", x) for x in keep]

    want = lines(ref.stdout + ref.stderr)
    assert len([x for x in want if x.startswith("[")]) == 24
    assert any(x.startswith("warning:") for x in want) == (hidden == 288)
    assert lines(ours.stderr) == want


def test_override_kv_gives_llama_quantizes_file(tmp_path: Path, capsys) -> None:
    """--override-kv KEY=TYPE:VALUE as llama-quantize: ints written as u32 of their magnitude,
    a key that exists moved to the end; the whole file byte for byte. A malformed one is
    refused before any work."""
    import subprocess

    from ggml_ref import require
    from simpo_q.convert import convert

    try:
        from llama_cpp_tree import llama_cpp_tools

        tools = llama_cpp_tools()
    except Exception as e:
        require("llama-quantize built from the llama-cpp-python 0.3.36 tree", e)
    model = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    bf16 = convert(model, tmp_path / "bf16.gguf", "bf16", quiet=True)
    kv = ["general.name=str:Renamed", "gemma2.context_length=int:-4096", "my.flag=bool:true", "my.f=float:0.5"]
    flags = [x for k in kv for x in ("--override-kv", k)]
    subprocess.run(
        [str(tools / "llama-quantize"), *flags, str(bf16), str(tmp_path / "ref.gguf"), "Q4_K_M", "2"],
        capture_output=True,
        check=True,
    )
    assert cli(["--quiet", "quantize", *flags, str(bf16), str(tmp_path / "ours.gguf"), "Q4_K_M"]) == 0
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()
    for bad in ["general.name", "x=int:abc", "x=bool:yes", "x=list:1", "x=str:" + "a" * 128]:
        assert cli(["quantize", str(bf16), str(tmp_path / "bad.gguf"), "--override-kv", bad]) == 2
        assert f"--override-kv {bad!r}: expected KEY=" in capsys.readouterr().err
    assert not (tmp_path / "bad.gguf").exists()


def test_recipe_keys_and_paths(tmp_path: Path, monkeypatch) -> None:
    """An unknown recipe key names the nearest valid one and lists them all; output_dir in a
    recipe is relative to the recipe (as model and data), one from --set to the current
    directory; the shipped tiny recipe writes inside the clone."""
    from simpo_q._native import SimpoQError
    from simpo_q.train.recipe import load_recipe

    d = tmp_path / "recipes"
    d.mkdir()
    (d / "r.yaml").write_text("model: m\ndata: d\nlearning_rat: 1e-4\n")
    with pytest.raises(
        SimpoQError,
        match=r"unknown recipe key 'learning_rat'; did you mean 'learning_rate'\? "
        r"Valid keys: model, data, ",
    ):
        load_recipe(d / "r.yaml")
    with pytest.raises(SimpoQError, match=r"--set bta: unknown recipe key; did you mean 'beta'\?"):
        load_recipe(REPO / "recipes" / "tiny.yaml", ["bta=2"])
    (d / "r.yaml").write_text("model: m\ndata: d\noutput_dir: ../runs/a\n")
    monkeypatch.chdir(tmp_path / "recipes")
    assert load_recipe(d / "r.yaml").output_dir == str(tmp_path / "runs" / "a")
    assert load_recipe(d / "r.yaml", ["output_dir=here"]).output_dir == "here"
    tiny = load_recipe(REPO / "recipes" / "tiny.yaml")
    assert Path(tiny.output_dir) == REPO / "out" / "simpo-tiny"


def test_train_ends_with_the_model_and_its_last_evaluation(tmp_path: Path, capsys) -> None:
    model = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    assert (
        cli(
            [
                "train",
                str(REPO / "recipes" / "tiny.yaml"),
                "--set",
                f"model={model}",
                "--set",
                f"output_dir={tmp_path / 'run'}",
                "--set",
                "max_steps=2",
                "--set",
                "eval_steps=1",
            ]
        )
        == 0
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"train: 2 steps; the model: {tmp_path / 'run' / 'final'}; held-out reward accuracy ")
    assert "margin " in last and last.endswith("at step 2")


def _quantized_as_llama_quantize(tmp_path: Path, model: Path, ftype: str, flags: list[str], with_imatrix: bool) -> Path:
    """Quantizes the model's bf16 GGUF with llama-quantize and with simpo-q (the same flags,
    with the importance matrix of the bundled calibration text or none), asserts the two files
    are equal byte for byte, and returns ours."""
    import subprocess

    from simpo_q import imatrix as im
    from simpo_q.convert import convert

    tools = _llama_tools()
    bf16 = convert(model, tmp_path / "bf16.gguf", "bf16", quiet=True)
    extra = []
    if with_imatrix:
        calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
        im.collect(model, calib, ctx=128, chunks=2, quiet=True).save(str(tmp_path / "im.gguf"), "gguf")
        extra = ["--imatrix", str(tmp_path / "im.gguf")]
    subprocess.run(
        [str(tools / "llama-quantize"), *extra, *flags, str(bf16), str(tmp_path / "ref.gguf"), ftype, "2"],
        capture_output=True,
        check=True,
    )
    assert cli(["--quiet", "quantize", *extra, *flags, str(bf16), str(tmp_path / "ours.gguf"), ftype]) == 0
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()
    return tmp_path / "ours.gguf"


@pytest.mark.parametrize(
    ("arch", "flags", "ftype", "with_imatrix"),
    [
        ("gemma2", ["--prune-layers", "0"], "Q4_K_M", True),
        ("llama", ["--prune-layers", "1,1"], "Q3_K_S", True),
        ("llama", ["--leave-output-tensor"], "Q3_K_S", False),
        ("gemma2", ["--leave-output-tensor"], "Q4_K_M", False),
    ],
)
def test_prune_layers_and_leave_output_tensor_give_llama_quantizes_file(
    tmp_path: Path, arch: str, flags: list[str], ftype: str, with_imatrix: bool
) -> None:
    """--prune-layers (layers dropped, the rest renumbered, the block count set after the
    importance matrix's keys, its entries found under their old names) and
    --leave-output-tensor (the untied head stays in its input type; a tied model has none):
    the whole file byte for byte as llama-quantize writes it."""
    from simpo_q.gguf import metadata_dict, open_gguf
    from simpo_q.tiny import TinyConfig

    model = cached_tiny_model(REPO / ".cache", TinyConfig(arch=arch), pretrain_steps=200, quiet=True)
    ours = _quantized_as_llama_quantize(tmp_path, model, ftype, flags, with_imatrix)
    r = open_gguf(ours)
    if "--prune-layers" in flags:
        assert metadata_dict(r)[f"{arch}.block_count"] == 1
        assert not any(n.startswith("blk.1.") for n, *_ in r.tensors)
    if "--leave-output-tensor" in flags and arch == "llama":
        assert {n: t for n, _, t, *_ in r.tensors}["output.weight"] == "BF16"


def test_copy_keeps_every_tensor_and_the_file_type(tmp_path: Path, capsys) -> None:
    """llama-quantize's COPY: a GGUF's tensors as they are, its file type kept (the only
    changes are llama-quantize's own keys); refused for a Hugging Face directory."""
    import subprocess

    from simpo_q.quantize_model import quantize_model

    tools = _llama_tools()
    model = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    q4 = quantize_model(model, tmp_path / "q4.gguf", "Q4_K_M", quiet=True)
    subprocess.run(
        [str(tools / "llama-quantize"), str(q4), str(tmp_path / "ref.gguf"), "COPY"], capture_output=True, check=True
    )
    assert cli(["--quiet", "quantize", str(q4), str(tmp_path / "ours.gguf"), "COPY"]) == 0
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()
    assert cli(["quantize", str(model), str(tmp_path / "hf.gguf"), "COPY"]) == 2
    assert "COPY copies the tensors of a GGUF" in capsys.readouterr().err
    assert cli(["quantize", str(q4), str(tmp_path / "bad.gguf"), "Q4_K_M", "--prune-layers", "0,7"]) == 2
    assert "--prune-layers: " in capsys.readouterr().err and not (tmp_path / "bad.gguf").exists()


def _llama_tools() -> Path:
    from ggml_ref import require

    try:
        from llama_cpp_tree import llama_cpp_tools

        return llama_cpp_tools()
    except Exception as e:
        require("llama-quantize built from the llama-cpp-python 0.3.36 tree", e)
        raise


def test_split_files_as_the_converter_and_llama_quantize_write_them(tmp_path: Path) -> None:
    """convert --split-max-size writes the converter's split files (every key but the guessed
    naming ones, every tensor byte); quantize reads a split input whole, and with --keep-split
    writes llama-quantize's split files byte for byte; quantize --split-max-size splits its
    own output; llama.cpp loads split files and computes what the single file computes."""
    import os
    import subprocess
    import sys

    import numpy as np
    from llama_cpp_tree import llama_cpp_tree
    from simpo_q.gguf import open_gguf

    tools = _llama_tools()
    model = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    subprocess.run(
        [sys.executable, str(llama_cpp_tree() / "convert_hf_to_gguf.py"), str(model), "--outtype", "f32",
         "--outfile", str(tmp_path / "ref.gguf"), "--split-max-size", "2M"],
        check=True, capture_output=True, env=env, timeout=600,
    )  # fmt: skip
    assert cli(["--quiet", "convert", str(model), str(tmp_path / "ours.gguf"), "--outtype", "f32",
                "--split-max-size", "2M"]) == 0  # fmt: skip
    names = [f"-0000{i}-of-00004.gguf" for i in range(1, 5)]
    naming = {"general.name", "general.finetune", "general.basename"}
    for n in names:
        a, b = open_gguf(tmp_path / f"ours{n}"), open_gguf(tmp_path / f"ref{n}")
        assert [x for x in a.metadata if x[0] not in naming] == [x for x in b.metadata if x[0] not in naming]
        assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
        assert all(np.array_equal(a.tensor_bytes(t[0]), b.tensor_bytes(t[0])) for t in b.tensors)
    first = tmp_path / f"ref{names[0]}"
    for flags, out in (([], "one.gguf"), (["--keep-split"], "kept.gguf")):
        subprocess.run([str(tools / "llama-quantize"), *flags, str(first), str(tmp_path / f"ref-{out}"), "Q4_K_M",
                        "2"], check=True, capture_output=True)  # fmt: skip
        assert cli(["--quiet", "quantize", *flags, str(first), str(tmp_path / out), "Q4_K_M"]) == 0
    assert (tmp_path / "one.gguf").read_bytes() == (tmp_path / "ref-one.gguf").read_bytes()
    for n in names:
        assert (tmp_path / f"kept{n}").read_bytes() == (tmp_path / f"ref-kept{n}").read_bytes(), n
    # simpo-q's own split output from the Hugging Face directory, loaded by llama.cpp
    assert cli(["--quiet", "quantize", str(model), str(tmp_path / "s.gguf"), "Q4_K_M", "--split-max-size", "1M"]) == 0
    split = sorted(tmp_path.glob("s-*-of-*.gguf"))
    assert len(split) > 1
    from test_convert_quantize import load

    ids = [2, 651, 1509, 64, 7]
    outs = []
    for f in (tmp_path / "one.gguf", split[0]):
        llm = load(f)
        llm.eval(ids)
        outs.append(np.asarray(llm.scores[len(ids) - 1]))
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize(
    ("arch", "ftype", "with_imatrix"),
    [
        ("gemma2", "Q2_K", False),
        ("gemma2", "Q2_K_S", True),
        ("llama", "Q2_K", True),
        ("llama", "Q2_K_S", True),
    ],
)
def test_q2_k_file_types_give_llama_quantizes_file(tmp_path: Path, arch: str, ftype: str, with_imatrix: bool) -> None:
    """Q2_K and Q2_K_S: the whole file byte for byte as llama-quantize writes it. The Llama has
    four query heads per key head, where llama.cpp gives attn_v Q4_K (Gemma-2's two: Q3_K in
    Q2_K, Q2_K in Q2_K_S); ffn_down and attn_output follow their Q2_K rules."""
    from simpo_q.gguf import open_gguf
    from simpo_q.tiny import TinyConfig

    cfg = TinyConfig(arch="llama", heads=8, kv_heads=2, head_dim=32) if arch == "llama" else TinyConfig()
    model = cached_tiny_model(REPO / ".cache", cfg, pretrain_steps=0, quiet=True)
    ours = _quantized_as_llama_quantize(tmp_path, model, ftype, [], with_imatrix)
    types = {n: t for n, _, t, *_ in open_gguf(ours).tensors}
    want_v = "Q4_K" if arch == "llama" else ("Q3_K" if ftype == "Q2_K" else "Q2_K")
    assert types["blk.0.attn_v.weight"] == want_v and types["blk.1.attn_q.weight"] == "Q2_K"


def test_q2_k_s_without_an_importance_matrix_is_refused_first(tmp_path: Path, capsys) -> None:
    """llama-quantize refuses Q2_K_S's Q2_K tensors without an importance matrix; so do we,
    before anything is read or written, and a matrix missing one of them is named."""
    from simpo_q import imatrix as im

    model = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    out = tmp_path / "q.gguf"
    assert cli(["quantize", str(model), str(out), "Q2_K_S"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith(
            "Q2_K_S needs an importance matrix for its Q2_K tensors (blk.0.attn_k.weight and 13 more): "
            "give one with --imatrix, as llama-quantize requires"
        )
        and "\n" not in err
    )
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    m = im.collect(model, calib, ctx=128, chunks=2, quiet=True)
    partial = im.Imatrix(m.chunk_size)
    for n in m.names():
        if n != "blk.1.ffn_up.weight":
            partial.set_entry(n, *m.entry(n))
    partial.chunk_count = m.chunk_count
    partial.save(str(tmp_path / "partial.gguf"), "gguf")
    assert cli(["quantize", "--imatrix", str(tmp_path / "partial.gguf"), str(model), str(out), "Q2_K_S"]) == 2
    assert "no entry for blk.1.ffn_up.weight, which Q2_K_S quantizes to Q2_K" in capsys.readouterr().err
    assert not out.exists()


def test_simd_levels_give_the_same_bytes_and_a_bad_one_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    """SIMPO_Q_SIMD caps the quantizers' instruction set (read once per process, so each
    level runs in a process of its own): every level writes the same file; an unknown value
    is one line naming it, before any work."""
    import os
    import subprocess
    import sys

    model = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    files = []
    for level in ("plain", "avx2", "avx512"):
        out = tmp_path / f"{level}.gguf"
        env = dict(os.environ, SIMPO_Q_SIMD=level)
        cmd = [sys.executable, "-m", "simpo_q", "--quiet", "quantize", str(model), str(out), "Q4_K_M"]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        files.append(out.read_bytes())
    assert files[0] == files[1] == files[2]
    monkeypatch.setenv("SIMPO_Q_SIMD", "avx-512")
    assert cli(["quantize", str(model), str(tmp_path / "x.gguf"), "Q4_K_M"]) == 2
    assert "SIMPO_Q_SIMD='avx-512': expected one of avx512, avx2, plain" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
