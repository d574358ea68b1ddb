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
