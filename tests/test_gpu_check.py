"""benches/gpu_check.py cannot rot while no accelerator is at hand: its --cpu-smoke run takes
the same code path (torchrun, FSDP2, bf16, checkpointing, imatrix, quantize from memory,
chunked log-probs, the estimate, the layer-by-layer importance matrix) at tiny sizes on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


@pytest.mark.slow
def test_cpu_smoke_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "g"
    r = subprocess.run(
        [sys.executable, str(REPO / "benches" / "gpu_check.py"), "--cpu-smoke", "--out", str(out), "--budget-s", "240"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert all(p["ok"] for p in res["parts"].values()), (res["parts"], (out / "train.log").read_text()[-3000:])
    t = res["train"]
    assert t["steps_timed"] == 2 and t["tokens_per_s"] > 0 and t["tokens_per_step"] == 2 * 2 * 128
    assert t["imatrix_tokens"] == 8 * 128 and t["imatrix_tokens_per_s_hooks"] > 0
    assert t["gguf_bytes"] > 100_000 and t["weights_device"] == "cpu"
    e = res["estimate"]
    assert e["steps"] == 465 and e["card_minutes"] == 100 and e["minutes_at_measured_mfu"] > 0
    lp = res["logps"]
    assert lp["vocab"] == 3072 and lp["chunked"]["seconds"] > 0
    of = res["offload"]  # the layer-by-layer collection: every linear weight of both layers
    assert of["entries"] == 7 * 2 and of["tokens"] == 4 * 64 and of["max_memory_allocated_gib"] is None
    md = (out / "gpu_check.md").read_text()
    for row in (
        "| training |",
        "| importance matrix |",
        "| trained weights → Q3_K_S GGUF",
        "| full recipe",
        "| chunked log-probs",
        "| importance matrix layer by layer, bf16, 2 layers of the smoke model's shape |",
    ):
        assert row in md
