"""Habits of llama.cpp users (issue 18, the parts done so far): --quiet after the subcommand,
defaults in --help, file types by name in inspect, readable parameter counts in plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from simpo_q.cli import build_parser
from simpo_q.cli import main as cli
from simpo_q.quantize_model import quantize_model
from simpo_q.tiny import cached_tiny_model

REPO = Path(__file__).parent.parent


@pytest.mark.parametrize(("argv", "quiet"), [
    (["inspect", "f.gguf"], False),
    (["--quiet", "inspect", "f.gguf"], True),
    (["inspect", "f.gguf", "--quiet"], True),
    (["eval", "kld", "r", "q.gguf", "-f", "t.txt", "--quiet"], True),
])
def test_quiet_before_or_after_the_subcommand(argv: list[str], quiet: bool) -> None:
    assert build_parser().parse_args(argv).quiet is quiet


@pytest.mark.parametrize("command", ["quantize", "imatrix", "convert", "pipeline", "plan", "train", "tiny-model",
                                     "demo"])
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
