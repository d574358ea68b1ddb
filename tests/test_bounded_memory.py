"""Large tensors go through the quantizer in blocks of rows (read, widened, quantized and
written piece by piece, the next block read while this one is quantized): the bytes are the
same as whole-tensor quantization for every path, and errors still name the tensor's row.
The memory this saves is measured by benches/bench_9b.py, not here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import simpo_q.gguf_out as gguf_out
from simpo_q._native import SimpoQError
from simpo_q.convert import convert
from simpo_q.quantize_model import quantize_model
from simpo_q.sources import HFDirectory
from simpo_q.tiny import TinyConfig, build_tiny_model, cached_tiny_model

REPO = Path(__file__).parent.parent
CALIB = REPO / "python" / "simpo_q" / "data" / "calibration.txt"


@pytest.fixture(scope="module")
def model() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


def _spy_blocks(monkeypatch) -> list[tuple[str, int]]:
    """Blocks of a few rows from now on (every 2-D tensor of the tiny model is split); the
    (tensor, rows per block) of each blocked tensor are recorded."""
    seen: list[tuple[str, int]] = []
    real = gguf_out.encode_blocks

    def spy(p, step, threads, pool):
        seen.append((p.name, step))
        yield from real(p, step, threads, pool)

    monkeypatch.setattr(gguf_out, "BLOCK_BYTES", 3 * 1024 + 17)
    monkeypatch.setattr(gguf_out, "encode_blocks", spy)
    return seen


@pytest.fixture
def tiny_blocks(monkeypatch) -> list[tuple[str, int]]:
    return _spy_blocks(monkeypatch)


def _whole_then_blocks(make, tmp_path: Path, monkeypatch) -> tuple[bytes, bytes, list]:
    a = make(tmp_path / "whole.gguf").read_bytes()
    seen = _spy_blocks(monkeypatch)
    b = make(tmp_path / "blocks.gguf").read_bytes()
    return a, b, seen


@pytest.mark.parametrize(
    "how", ["Q3_K_S", "Q4_K_M+imatrix", "Q4_K_M+refine", "Q8_0", "f16-convert", "q8_0-convert", "from-F16-GGUF"]
)
def test_blocks_of_rows_give_the_same_bytes(model: Path, tmp_path: Path, monkeypatch, how: str) -> None:
    if how.endswith("-convert"):

        def make(out):
            return convert(model, out, how.split("-")[0], quiet=True)
    elif how == "from-F16-GGUF":
        f16 = convert(model, tmp_path / "f16.gguf", "f16", quiet=True)

        def make(out):
            return quantize_model(f16, out, "Q4_K_M", quiet=True)
    else:
        ftype, _, extra = how.partition("+")
        imat = None
        if extra == "imatrix":
            from simpo_q import imatrix as im

            imat = tmp_path / "i.gguf"
            im.collect(model, CALIB, ctx=64, chunks=2, quiet=True).save(str(imat), "gguf")

        def make(out):
            return quantize_model(model, out, ftype, quiet=True, imatrix=imat, refine=extra == "refine")

    a, b, seen = _whole_then_blocks(make, tmp_path, monkeypatch)
    assert a == b
    assert len(seen) >= 14 and ("token_embd.weight", 3) in seen  # 3 rows of 256 float32 per block


def test_an_error_in_a_later_block_names_the_tensors_row(model: Path, tmp_path: Path, tiny_blocks) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(model, d)
    sd = load_file(str(d / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][301, 5] = float("nan")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert torch.isnan(sd["model.layers.1.mlp.up_proj.weight"]).any()
    with pytest.raises(SimpoQError, match=r"tensor blk.1.ffn_up.weight: x: non-finite value NaN at row 301, column 5"):
        quantize_model(d, tmp_path / "x.gguf", "Q4_K_M", quiet=True)
    assert not (tmp_path / "x.gguf").exists()
    assert ("blk.1.ffn_up.weight", 3) in tiny_blocks


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_rows_read_from_the_file_equal_safetensors(tmp_path: Path, dtype: str) -> None:
    """The reader widens a block of rows from the file itself (no torch): the same values
    safetensors gives, for each stored dtype, in a sharded checkpoint too."""
    import torch
    from safetensors.torch import load_file, save_file

    d = build_tiny_model(tmp_path / "m", TinyConfig(shards=2))
    torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[dtype]
    for f in d.glob("model-*.safetensors"):
        sd = {k: v.to(torch_dtype) for k, v in load_file(str(f)).items()}
        save_file(sd, str(f), metadata={"format": "pt"})
    src = HFDirectory(d)
    assert src.dtypes() == {dtype}
    for name in src.names():
        ref = src._load_safetensors(name)
        assert np.array_equal(src.load(name), ref), name
        if ref.ndim == 2:
            n = ref.shape[0]
            for a, b in ((0, 1), (n // 3, n // 2), (n - 2, n)):
                assert np.array_equal(src.load_rows(name, a, b), ref[a:b]), (name, a, b)


def _evict(path: Path, start: int = 0, length: int = 0) -> None:
    """Drops the file's clean pages (from `start`, `length` bytes; 0: to the end) from the
    page cache, as after a reboot: the next read of them goes to the disk."""
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cache", ["evicted", "half-evicted", "cached", "no-O_DIRECT", "auto"])
def test_blocks_read_directly_or_from_the_page_cache_are_the_same(tmp_path: Path, monkeypatch, cache: str) -> None:
    """With direct reads on (SIMPO_Q_DIRECT_READS=always; by default only for checkpoints
    larger than memory), a block not wholly in the page cache is read with O_DIRECT into an
    aligned buffer at the tensor's unaligned offset; one in the cache is copied; a file system
    that refuses O_DIRECT is read buffered. With the default, a checkpoint this small is read
    buffered even when evicted. Every way gives the bytes safetensors reads."""
    import errno
    import os

    import simpo_q.file_reads as fr

    d = build_tiny_model(tmp_path / "m", TinyConfig(shards=2))
    if cache != "auto":
        monkeypatch.setenv("SIMPO_Q_DIRECT_READS", "always")
    src = HFDirectory(d)
    assert src.direct_reads == (cache != "auto")
    direct: list[bool] = []
    real = fr._direct_read
    monkeypatch.setattr(fr, "_direct_read", lambda *a: direct.append(real(*a)) or direct[-1])
    if cache == "no-O_DIRECT":
        real_open = os.open

        def refuse(path, flags, *a):
            if flags & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *a)

        monkeypatch.setattr(fr.os, "open", refuse)
    for name in src.names():
        ref = src._load_safetensors(name)
        if ref.ndim != 2:
            continue
        f = src._where[name]
        if cache in ("evicted", "no-O_DIRECT", "auto"):
            _evict(f)
        elif cache == "half-evicted":
            _evict(f, f.stat().st_size // 2)
        else:
            f.read_bytes()
        n = ref.shape[0]
        for a, b in ((0, n), (1, n // 3), (n // 3, n - 1)):
            assert np.array_equal(src.load_rows(name, a, b), ref[a:b]), (name, a, b, cache)
    if cache in ("cached", "auto"):
        assert direct == []
    elif cache == "no-O_DIRECT":
        assert direct and not any(direct)
    else:
        assert any(direct)


def test_a_truncated_file_is_named_on_every_read_path(tmp_path: Path) -> None:
    from simpo_q.file_reads import read_range

    f = tmp_path / "short.bin"
    f.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    assert bytes(read_range(f, 5000, 300, "x")) == f.read_bytes()[5000:5300]
    for evicted in (False, True):
        if evicted:
            _evict(f)
        with pytest.raises(SimpoQError, match=r"short.bin: truncated while reading tensor 't'"):
            read_range(f, 10000, 1000, "tensor 't'")


def test_direct_reads_only_for_checkpoints_larger_than_memory(monkeypatch, capsys, tmp_path: Path) -> None:
    import simpo_q.file_reads as fr
    from simpo_q.cli import main as cli

    monkeypatch.delenv("SIMPO_Q_DIRECT_READS", raising=False)
    monkeypatch.setattr(fr, "_mem_available", lambda: 10 << 30)
    assert fr.direct_reads_for(11 << 30) and not fr.direct_reads_for(9 << 30)
    monkeypatch.setenv("SIMPO_Q_DIRECT_READS", "never")
    assert not fr.direct_reads_for(11 << 30)
    monkeypatch.setenv("SIMPO_Q_DIRECT_READS", "always")
    assert fr.direct_reads_for(1)
    monkeypatch.setenv("SIMPO_Q_DIRECT_READS", "yes")
    assert cli(["inspect", str(tmp_path)]) == 2
    assert "SIMPO_Q_DIRECT_READS='yes': expected one of auto, always, never" in capsys.readouterr().err


@pytest.mark.parametrize("shape,kind", [((3072, 256), "embed"), ((256,), "norm"), ((512, 256), "linear")])
def test_the_builder_writes_the_same_weights_in_blocks(shape, kind) -> None:
    """The model builder generates and converts large tensors in blocks of rows; the random
    stream is the same in pieces, so the weights (and every cached model) are unchanged."""
    from simpo_q.tiny.builder import f32_to_bf16_bytes, init_tensor, init_tensor_bf16_blocks

    whole = f32_to_bf16_bytes(init_tensor(42, "t", shape, kind))
    blocks = list(init_tensor_bf16_blocks(42, "t", shape, kind, block_elems=1000))
    assert b"".join(blocks) == whole and (len(blocks) > 1 or len(shape) == 1)


def test_not_enough_disk_is_said_before_any_work(model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The output's size is known from the plan: a folder without room fails at once, with
    the numbers, before the importance matrix is computed."""
    import shutil as sh
    from collections import namedtuple

    from simpo_q.cli import main as cli

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10 << 20, 9 << 20, 1 << 20))
    assert cli(["quantize", str(model), str(tmp_path / "m.gguf"), "--imatrix", str(CALIB)]) == 2
    err = capsys.readouterr().err
    assert "m.gguf: the Q3_K_S GGUF needs 0.01 GiB" in err and "GiB free" in err, err
    assert list(tmp_path.iterdir()) == []
    assert cli(["convert", str(model), str(tmp_path / "f.gguf")]) == 2
    assert "f.gguf: the bf16 GGUF needs" in capsys.readouterr().err  # auto: bf16, as stored


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_weights_in_memory_go_through_in_blocks(model: Path, tmp_path: Path, monkeypatch, dtype: str) -> None:
    """The pipeline's final write (ModelWeights over the model in memory, as after training):
    read in blocks of rows, the bytes of the whole-tensor path and of the same weights
    quantized from the directory; each tensor gathered once, and none held afterwards."""
    import torch
    from simpo_q.gguf import open_gguf
    from simpo_q.train.weights import ModelWeights
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
    gathered: list[str] = []

    def make(out):
        with ModelWeights(model, hf) as src:
            real = src._gather
            monkeypatch.setattr(src, "_gather", lambda name: gathered.append(name) or real(name))
            path = quantize_model(src, out, "Q4_K_M", quiet=True)
            assert src._held is None
            return path

    a, b, seen = _whole_then_blocks(make, tmp_path, monkeypatch)
    assert a == b
    assert ("token_embd.weight", 3) in seen
    names = [t[0] for t in open_gguf(tmp_path / "blocks.gguf").tensors]
    assert len(gathered) == 2 * len(names) and sorted(gathered[len(names) :]) == sorted(set(gathered[len(names) :]))
    x, y = (
        open_gguf(tmp_path / "blocks.gguf"),
        open_gguf(quantize_model(model, tmp_path / "dir.gguf", "Q4_K_M", quiet=True)),
    )
    assert [t[:3] for t in x.tensors] == [t[:3] for t in y.tensors]
    for name in names:
        assert np.array_equal(x.tensor_bytes(name), y.tensor_bytes(name)), name
