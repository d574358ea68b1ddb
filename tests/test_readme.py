"""The README's examples run as written: every line of its "Every command, on the tiny model"
block and its Python example, in an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from simpo_q.tiny import cached_tiny_model

REPO = Path(__file__).parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _block(heading: str, lang: str) -> str:
    """The first ```lang block after `heading`."""
    rest = README[README.index(heading) :]
    m = re.search(rf"```{lang}\n(.*?)```", rest, re.S)
    assert m, f"no {lang} block after {heading!r}"
    return m.group(1)


def _env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def test_every_command_runs_as_written(tmp_path: Path) -> None:
    # the demo's tiny model is built once per machine (.cache); seed this folder's cache with it
    cache = tmp_path / ".cache"
    cache.mkdir()
    built = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    (cache / built.name).symlink_to(built.resolve(), target_is_directory=True)
    lines = [x for x in _block("### Every command, on the tiny model", "sh").splitlines() if x.strip()]
    assert len(lines) >= 20
    for line in lines:
        r = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=600)  # fmt: skip
        assert r.returncode == 0, (line, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, (line, r.stderr[-2000:])
    for f in (
        "model-f32.gguf",
        "model-Q4_K_M.gguf",
        "imatrix.gguf",
        "Modelfile",
        "README.md",
        "tuned.gguf",
        "demo/tiny-gemma2-simpo-Q3_K_S.gguf",
        "run/final/config.json",
        "llama-Q4_K_M.gguf",
    ):
        assert (tmp_path / f).exists(), f


def test_python_example_runs_as_written(tmp_path: Path) -> None:
    code = _block("## Python API", "python")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "out.gguf").exists()
