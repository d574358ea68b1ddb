"""Hugging Face hub ids wherever a path works, read from a cache this test lays out in the
standard layout (models--…/datasets--… with refs/main, snapshots/<commit> linking into blobs/)
in a temporary HF_HOME. Offline throughout: no test touches the network."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from simpo_q._native import SimpoQError
from simpo_q.cli import main as cli
from simpo_q.gguf import metadata_dict, open_gguf
from simpo_q.quantize_model import quantize_model
from simpo_q.tiny import cached_tiny_model

REPO = Path(__file__).parent.parent
DATA = REPO / "python" / "simpo_q" / "data"
MODEL_ID = "simpo-test/tiny-gemma2"
DATA_ID = "simpo-test/tiny-prefs"


def _lay_out(hub: Path, kind: str, repo: str, files: dict[str, bytes]) -> str:
    """One repository in the cache: blobs named by their hash, a snapshot of links to them,
    refs/main naming the snapshot's commit. Returns the commit."""
    base = hub / f"{kind}s--{repo.replace('/', '--')}"
    commit = hashlib.sha1(
        repr(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()
    ).hexdigest()
    for rel, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return commit


def _parquet(rows: list[dict]) -> bytes:
    import io

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


@pytest.fixture(scope="module")
def cache(model: Path, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("hf-home")
    hub = home / "hub"
    commit = _lay_out(hub, "model", MODEL_ID, {f.name: f.read_bytes() for f in model.iterdir() if f.is_file()})
    rows = [json.loads(line) for line in (DATA / "preferences.jsonl").read_text().splitlines() if line.strip()]
    _lay_out(
        hub,
        "dataset",
        DATA_ID,
        {
            "data/train-00000-of-00001.parquet": _parquet(rows[:-8]),
            "data/test-00000-of-00001.parquet": _parquet(rows[-8:]),
            "README.md": b"---\nconfigs:\n- config_name: default\n---\n",
        },
    )
    return {"home": home, "commit": commit, "rows": len(rows)}


@pytest.fixture
def offline_hub(cache: dict, monkeypatch) -> dict:
    monkeypatch.setenv("HF_HOME", str(cache["home"]))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_quantize_convert_imatrix_and_eval_take_hub_ids(model: Path, tmp_path: Path, offline_hub) -> None:
    a = quantize_model(MODEL_ID, tmp_path / "hub.gguf", "Q4_K_M", quiet=True)
    b = quantize_model(model, tmp_path / "dir.gguf", "Q4_K_M", quiet=True)
    ra, rb = open_gguf(a), open_gguf(b)
    assert [t[:3] for t in ra.tensors] == [t[:3] for t in rb.tensors]
    for name, *_ in rb.tensors:
        assert np.array_equal(ra.tensor_bytes(name), rb.tensor_bytes(name)), name
    # the snapshot folder is a commit hash; the file is named after the repository
    assert metadata_dict(ra)["general.name"] == "tiny-gemma2"
    pinned = f"{MODEL_ID}@{offline_hub['commit']}"
    assert cli(["--quiet", "convert", pinned, str(tmp_path / "f16.gguf")]) == 0
    assert (
        cli(
            [
                "--quiet",
                "imatrix",
                MODEL_ID,
                "-f",
                str(DATA / "calibration.txt"),
                "--ctx",
                "64",
                "--chunks",
                "2",
                "-o",
                str(tmp_path / "i.gguf"),
            ]
        )
        == 0
    )
    assert (
        cli(
            [
                "--quiet",
                "eval",
                "kld",
                MODEL_ID,
                str(a),
                "-f",
                str(DATA / "evaluation.txt"),
                "--ctx",
                "64",
                "--chunks",
                "2",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "ident,message",
    [
        (
            "simpo-test/not-there",
            r"simpo-test/not-there: no such file or directory, and as a Hugging Face model id it "
            r"is not in the cache .*HF_HUB_OFFLINE is set",
        ),
        (f"{MODEL_ID}@v9", r"@v9: .* it is not in the cache .* at revision 'v9'"),
        (f"{MODEL_ID}@{'0' * 40}", r"not in the cache .* at revision '0000000000000000000000000000000000000000'"),
    ],
)
def test_unknown_ids_and_revisions_fail_before_any_work(tmp_path: Path, offline_hub, capsys, ident, message) -> None:
    import re

    assert cli(["quantize", ident, str(tmp_path / "m.gguf"), "--imatrix", str(DATA / "calibration.txt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_of_hub_ids_runs_as_written(tmp_path: Path, offline_hub, capsys) -> None:
    """The recipe names a hub model and a hub dataset (its train split; --set data_split
    chooses another); plan reads the config from the cache; the pipeline's card and GGUF name
    them as base model and dataset."""
    from simpo_q.pipeline import run_pipeline
    from simpo_q.train.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": MODEL_ID,
                "data": DATA_ID,
                "output_dir": str(tmp_path / "run"),
                "max_steps": 2,
                "eval_fraction": 0.1,
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "max_length": 256,
                "max_prompt_length": 192,
                "chunk_tokens": 256,
                "learning_rate": 1e-4,
                "beta": 2.0,
            }
        )
    )
    assert cli(["plan", str(recipe), "--gpus", "1", "--gpu-mem", "80"]) == 0
    capsys.readouterr()
    out = run_pipeline(load_recipe(recipe), tmp_path / "m.gguf", quiet=False)
    err = capsys.readouterr().err
    n_train = offline_hub["rows"] - 8
    assert f"{n_train} usable pairs" in err
    assert out is not None
    fm = yaml.safe_load((tmp_path / "README.md").read_text().split("---\n")[1])
    assert fm["base_model"] == MODEL_ID and fm["datasets"] == [DATA_ID]
    md = metadata_dict(open_gguf(out))
    assert md["general.base_model.0.repo_url"] == f"https://huggingface.co/{MODEL_ID}"
    # as llama.cpp's converter writes it for a dataset id (without the /datasets/ part)
    assert md["general.dataset.0.repo_url"] == f"https://huggingface.co/{DATA_ID}"
    from simpo_q.hub import local
    from simpo_q.train.data import read_rows

    snap = local(DATA_ID, "dataset")
    assert len(read_rows(snap)) == n_train and len(read_rows(snap, "test")) == 8
    with pytest.raises(SimpoQError, match=r"no files of split 'validation' \(splits here: test, train\)"):
        read_rows(snap, "validation")
    shutil.rmtree(tmp_path / "run")
