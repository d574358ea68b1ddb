"""The real size: a generated checkpoint with gemma-2-9b-it's exact shapes (42 layers, hidden
3584, intermediate 14336, 16 heads, 8 KV heads, head_dim 256, vocabulary 256000; 9.24B
parameters, bf16 in 4 shards with an index; the tiny model's tokenizer, whose ids fit the
vocabulary, padded to 256000 by both converters), built in bounded memory and cached. Then,
each step in its own process, with wall time and peak RSS:

- simpo-q convert --outtype bf16, its tensors and metadata compared with llama.cpp's converter's;
- simpo-q quantize --type Q3_K_S, without and with an importance matrix;
- simpo-q imatrix --offload (2 chunks of 128 tokens), one decoder layer at a time, in float32
  and in bfloat16, and llama-imatrix on the same chunks (on its bf16 GGUF; all end to end,
  loading included), with how far each of ours is from llama-imatrix's;
- llama.cpp's route on the same files: convert_hf_to_gguf.py --outtype bf16, then
  llama-quantize --imatrix (the same matrix) Q3_K_S with 2 threads;

and asserts that simpo-q's tensors equal llama-quantize's. `--rebuild` also builds the
checkpoint again in a scratch folder, to measure the builder, and checks it byte for byte
against the cached one. The disk high-water mark is sampled throughout. About 27 GB of free
disk at the peak (beside the cached checkpoint's 17 GB); checked first.

    .venv/bin/python benches/bench_9b.py [--work .cache/bench-9b] [--keep] [--imatrix-chunks 2] [--rebuild]
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benches"))

SHAPE = {
    "layers": 42,
    "hidden": 3584,
    "intermediate": 14336,
    "heads": 16,
    "kv_heads": 8,
    "head_dim": 256,
    "vocab": 256000,
}
GIB = 1 << 30


def build(out: Path, shards: int = 4, shape: dict | None = None, query_pre_attn_scalar: int | None = None) -> None:
    """The checkpoint (`shape`, by default gemma-2-9b's), tensor by tensor and block by block
    (bounded memory), then `.complete`. `query_pre_attn_scalar`: gemma-2-9b's is its head_dim
    (the default), gemma-2-27b's hidden / heads (144, not 128)."""
    from simpo_q.safetensors_out import write_weights
    from simpo_q.tiny import TinyConfig, cached_tiny_model
    from simpo_q.tiny.builder import hf_config, init_tensor_bf16_blocks, tensor_specs

    tiny = cached_tiny_model(REPO / ".cache", pretrain_steps=0, quiet=True)
    out.mkdir(parents=True, exist_ok=True)
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "added_tokens", "chat_template", "generation")):
            shutil.copy2(f, out / f.name)
    shape = shape or SHAPE
    cfg = TinyConfig(**shape, shards=shards)
    c = hf_config(cfg)
    c["query_pre_attn_scalar"] = query_pre_attn_scalar or shape["head_dim"]
    (out / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    specs = tensor_specs(cfg)
    write_weights(out, specs, ((n, init_tensor_bf16_blocks(0, n, s, k)) for n, s, k in specs), shards)
    (out / ".complete").write_text("ok\n")


class DiskWatch:
    """The largest amount of disk used, above the start, on the file system of `path`."""

    def __init__(self, path: Path):
        self.path, self.start, self.peak = path, self._used(path), 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _used(path: Path) -> int:
        s = os.statvfs(path)
        return (s.f_blocks - s.f_bfree) * s.f_frsize

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self._used(self.path) - self.start)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, self._used(self.path) - self.start)


def imatrix_agreement(ours: Path, ref: Path) -> str:
    """Median and 99th percentile, over every column of every entry, of the relative
    difference of the per-token mean squares (sum / count) from llama-imatrix's."""
    import numpy as np
    from simpo_q._native import Imatrix

    a, b = Imatrix.load(str(ours)), Imatrix.load(str(ref))
    rel = []
    if sorted(a.names()) != sorted(b.names()):
        return f"different entries ({len(a.names())} against {len(b.names())})"
    for n in b.names():
        (x, cx), (y, cy) = a.entry(n), b.entry(n)
        x, y = x / cx, y / cy
        rel.append(np.abs(x - y) / np.maximum(np.abs(y), np.finfo(np.float32).tiny))
    r = np.concatenate(rel)
    return f"median {np.median(r):.2e}, p99 {np.quantile(r, 0.99):.2e} ({len(b.names())} entries)"


def gguf_digest(path: Path) -> tuple[list, list]:
    """A GGUF's metadata and tensors (name, type, shape) each with a digest of its value or
    bytes: enough to compare two 17 GB files without holding both on the disk at once. Run it
    through `digest_in_child`: reading 17 GB through a memory map raises this process's
    high-water mark, which every child started afterwards would report as its own."""
    from simpo_q.gguf import open_gguf

    def h(b) -> str:
        return hashlib.blake2b(b, digest_size=16).hexdigest()

    r = open_gguf(path)
    meta = [(k, t, h(repr(v).encode())) for k, t, v in r.metadata]
    return meta, [(t[0], list(t[1]), t[2], h(r.tensor_bytes(t[0]).data)) for t in r.tensors]


def digest_in_child(path: Path) -> tuple[list, list]:
    import subprocess

    code = (
        f"import sys, json; sys.path.insert(0, {str(REPO / 'benches')!r}); from pathlib import Path; "
        f"from bench_9b import gguf_digest; print(json.dumps(gguf_digest(Path({str(path)!r}))))"
    )
    meta, tensors = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout)
    return [tuple(m) for m in meta], [tuple(t) for t in tensors]


def same_digests(a: tuple[list, list], b: tuple[list, list]) -> str:
    """'N/N' identical tensors, and which metadata keys differ (simpo-q does not guess naming
    keys from the directory's name as the converter does: docs/conversion.md)."""
    n_same = sum(x == y for x, y in zip(a[1], b[1], strict=False))
    ma, mb = {m[0]: m for m in a[0]}, {m[0]: m for m in b[0]}
    differ = sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k))
    order = [k for k in ma if k not in differ] == [k for k in mb if k not in differ]
    meta = f"metadata identical but for {', '.join(differ) or 'nothing'}" + ("" if order else " (order DIFFERS)")
    if len(a[1]) == len(b[1]) and n_same == len(b[1]):
        return f"{n_same}/{len(b[1])}; {meta}"
    return f"NOT identical: {n_same}/{len(b[1])}; {meta}"


def build_step(model: Path) -> tuple[float, float]:
    """Builds the checkpoint into `model` in a child process: (wall s, peak RSS MiB)."""
    from bench_pipeline import run

    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'benches')!r}); from pathlib import Path; "
        f"from bench_9b import build; build(Path({str(model)!r}))"
    )
    return run([sys.executable, "-c", code])


def main() -> None:
    from bench_pipeline import run

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(REPO / ".cache" / "bench-9b"))
    ap.add_argument("--keep", action="store_true", help="keep the output files")
    ap.add_argument("--skip-llama", action="store_true", help="only simpo-q's steps")
    ap.add_argument("--imatrix-chunks", type=int, default=2, help="chunks of 128 tokens for both importance matrices")
    ap.add_argument(
        "--rebuild", action="store_true", help="measure the builder: build again in a scratch folder and compare"
    )
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "gemma2-9b-shaped"
    ckpt_bytes = 18_483_411_968 + (1 << 20)  # bf16 weights and headers
    quant_bytes = 4_338_428_192
    # one at a time: the rebuilt checkpoint, our bf16 GGUF, then two Q3_K_S files beside
    # llama.cpp's bf16 GGUF (each step's files are deleted before the next when not needed)
    need = (
        (0 if (model / ".complete").exists() else ckpt_bytes)
        + max(ckpt_bytes, (3 if args.keep else 2) * quant_bytes + (0 if args.skip_llama else ckpt_bytes))
        + 2 * GIB
    )
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(
            f"{work}: {free / GIB:.1f} GiB free; this benchmark needs {need / GIB:.1f} GiB (the "
            f"checkpoint, a bf16 GGUF for llama.cpp's route, two Q3_K_S files)"
        )
    py = sys.executable
    disk = DiskWatch(work)
    rows = []
    notes = []
    if not (model / ".complete").exists():
        shutil.rmtree(model, ignore_errors=True)
        rows.append(("simpo-q", "build the checkpoint (bf16, 4 shards)", *build_step(model)))
    elif args.rebuild:
        again = work / "rebuilt"
        shutil.rmtree(again, ignore_errors=True)
        rows.append(("simpo-q", "build the checkpoint again (bf16, 4 shards)", *build_step(again)))
        names = sorted(f.name for f in model.iterdir())
        same = sorted(f.name for f in again.iterdir()) == names and all(
            filecmp.cmp(model / n, again / n, shallow=False) for n in names
        )
        notes.append(f"rebuilt checkpoint {'byte-identical to' if same else 'DIFFERENT from'} the cached one")
        shutil.rmtree(again)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    sq = [py, "-m", "simpo_q", "--quiet"]
    rows.append(
        (
            "simpo-q",
            "convert --outtype bf16",
            *run([*sq, "convert", str(model), "--outtype", "bf16", "--outfile", str(out / "ours-bf16.gguf")]),
        )
    )
    # compared with the converter's file later, which is written after this one is deleted
    ours_bf16 = None if args.skip_llama else digest_in_child(out / "ours-bf16.gguf")
    (out / "ours-bf16.gguf").unlink()
    rows.append(
        (
            "simpo-q",
            "quantize --type Q3_K_S",
            *run([*sq, "quantize", str(model), str(out / "plain.gguf"), "--type", "Q3_K_S"]),
        )
    )
    # the same again: as much of the checkpoint as the page cache holds (24 GiB of RAM, 17 GiB
    # of weights) is now read from memory, not from the disk
    rows.append(
        (
            "simpo-q",
            "quantize --type Q3_K_S (again: checkpoint in the page cache)",
            *run([*sq, "quantize", str(model), str(out / "plain.gguf"), "--type", "Q3_K_S"]),
        )
    )
    if not args.keep:
        (out / "plain.gguf").unlink()
    for label, dtype, name in (
        ("(float32)", [], "9b.imatrix.gguf"),
        ("--dtype bfloat16", ["--dtype", "bfloat16"], "9b.bf16.imatrix.gguf"),
    ):
        cmd = [*sq, "imatrix", str(model), "-f", str(calib), "--ctx", "128", "--chunks", str(args.imatrix_chunks)]
        rows.append(
            (
                "simpo-q",
                f"imatrix --offload --ctx 128 --chunks {args.imatrix_chunks} {label}",
                *run([*cmd, "--offload", *dtype, "-o", str(out / name)]),
            )
        )
    rows.append(
        (
            "simpo-q",
            "quantize --type Q3_K_S --imatrix",
            *run(
                [
                    *sq,
                    "quantize",
                    str(model),
                    str(out / "ours.gguf"),
                    "--type",
                    "Q3_K_S",
                    "--imatrix",
                    str(out / "9b.imatrix.gguf"),
                ]
            ),
        )
    )
    same = None
    if not args.skip_llama:
        from llama_cpp_tree import llama_cpp_tools, llama_cpp_tree

        tree, tools = llama_cpp_tree(), llama_cpp_tools()
        rows.append(
            (
                "llama.cpp",
                "convert_hf_to_gguf.py --outtype bf16",
                *run(
                    [
                        py,
                        str(tree / "convert_hf_to_gguf.py"),
                        str(model),
                        "--outtype",
                        "bf16",
                        "--outfile",
                        str(out / "bf16.gguf"),
                    ]
                ),
            )
        )
        rows.append(
            (
                "llama.cpp",
                f"llama-imatrix -c 128 --chunks {args.imatrix_chunks} (on the bf16 GGUF)",
                *run(
                    [
                        str(tools / "llama-imatrix"),
                        "-m",
                        str(out / "bf16.gguf"),
                        "-f",
                        str(calib),
                        "-c",
                        "128",
                        "--chunks",
                        str(args.imatrix_chunks),
                        "-t",
                        str(os.cpu_count()),
                        "-o",
                        str(out / "llama.imatrix.gguf"),
                    ]
                ),
            )
        )
        rows.append(
            (
                "llama.cpp",
                "llama-quantize --imatrix ... Q3_K_S 2",
                *run(
                    [
                        str(tools / "llama-quantize"),
                        "--imatrix",
                        str(out / "9b.imatrix.gguf"),
                        str(out / "bf16.gguf"),
                        str(out / "ref.gguf"),
                        "Q3_K_S",
                        "2",
                    ]
                ),
            )
        )
        assert ours_bf16 is not None
        theirs_bf16 = digest_in_child(out / "bf16.gguf")
        notes.append(f"convert's tensors identical to convert_hf_to_gguf.py's: {same_digests(ours_bf16, theirs_bf16)}")
        (out / "bf16.gguf").unlink()
        from simpo_q.gguf import open_gguf

        a, b = open_gguf(out / "ours.gguf"), open_gguf(out / "ref.gguf")
        same = [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors] and all(
            (a.tensor_bytes(t[0]) == b.tensor_bytes(t[0])).all() for t in b.tensors
        )
        n_same = sum(bool((a.tensor_bytes(t[0]) == b.tensor_bytes(t[0])).all()) for t in b.tensors)
        same = f"{n_same}/{len(b.tensors)}" if same else f"NOT identical: {n_same}/{len(b.tensors)}"
        agreement = [
            f"{label} {imatrix_agreement(out / f, out / 'llama.imatrix.gguf')}"
            for label, f in (("float32", "9b.imatrix.gguf"), ("bfloat16", "9b.bf16.imatrix.gguf"))
        ]
        print("# importance matrices against llama-imatrix's:", "; ".join(agreement))
    for n in notes:
        print("#", n)
    peak_disk = disk.stop()
    size = (out / "ours.gguf").stat().st_size
    print(
        f"# gemma-2-9b-it shapes, 9.24B parameters; {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB RAM, "
        f"{time.strftime('%Y-%m-%d')}; Q3_K_S file {size} bytes; tensors identical to llama-quantize's: {same}; "
        f"disk high-water mark {peak_disk / GIB:.1f} GiB above the start"
    )
    print()
    print("| route | step | wall (s) | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for route, step, wall, rss in rows:
        print(f"| {route} | {step} | {wall:.1f} | {rss:.0f} |")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
