"""The refined encoder and the size-budget allocation: what they cost and what they gain.

    .venv/bin/python benches/bench_refine.py speed            # per core, 4096×3584, exact vs --refine
    .venv/bin/python benches/bench_refine.py kld [--hidden 1024 --layers 4 --pretrain-steps 300] [--seed 1]
    .venv/bin/python benches/bench_refine.py shrink [--hidden 1024 --layers 4 --pretrain-steps 300]
    .venv/bin/python benches/bench_refine.py ensemble [--hidden 1024 --layers 4 --pretrain-steps 300] [--perturb 16]
    .venv/bin/python benches/bench_refine.py budget --layers 16 --hidden 2048 --intermediate 8192

`speed`: Mw/s on one thread (best of 3) of the exact path and of the refined one, and the
importance-weighted error the refinement removes (the measure it lowers). `kld`: mean KLD
on the bundled held-out text (never used for calibration) of Q3_K_S and Q4_K_M, exact and
refined, with and without the importance matrix of the bundled calibration text, and of
`--target-bpw` at Q3_K_S's and Q3_K_M's own sizes beside those files (with the importance
matrix given as a file, and as the calibration text, which adds the output sensitivities);
against the model's F32 GGUF through llama.cpp.
`ensemble`: the same comparison of exact and refined files as `kld`, over `--perturb` copies of
the model whose weights are multiplied by 1 + 0.001·N(0, 1) (each copy its own seed, kept in
float32): equally good models whose files differ in the details (most blocks' scales by a
step, some roundings). Their exact files' KLDs differ by several percent (the rounding
lottery, measured here), so one file against one file cannot show a gain smaller than that;
the mean over the copies can, with an error taken over the copies.
`shrink`: how much shorter than the weights the exact and the refined blocks are (Σ x·x̂ / Σ x²
over the generated model's linear layers), the effect the refinement undoes for Q3_K and Q6_K.
`budget`: the time `--target-bpw` spends measuring the candidate types on the generated
~1B checkpoint of bench_pipeline.py, without and with the calibration text (whose output
sensitivities take a forward and a backward per chunk).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).parent.parent
DATA = REPO / "python" / "simpo_q" / "data"


def speed() -> None:
    import simpo_q
    from refine_measure import weighted_error

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 3584)).astype(np.float32)
    w = rng.uniform(0.01, 10, 3584).astype(np.float32)
    print(
        f"# 4096×3584 standard normal, importance uniform in [0.01, 10]; 1 thread, best of 3; "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| type | imatrix | exact (Mw/s) | refined (Mw/s) | time ratio | weighted error removed |")
    print("|---|---|---|---|---|---|")
    for t in simpo_q.REFINABLE_TYPES:
        for imp in (None, w):
            best = [1e9, 1e9]
            for _ in range(3):
                t0 = time.perf_counter()
                a = simpo_q.quantize(x, t, imp, threads=1)
                t1 = time.perf_counter()
                b = simpo_q.quantize(x, t, imp, threads=1, refine=True)
                t2 = time.perf_counter()
                best = [min(best[0], t1 - t0), min(best[1], t2 - t1)]

            def err(q, t=t, imp=imp):
                return float(weighted_error(x, t, imp, q).sum())

            n = x.size / 1e6
            print(
                f"| {t} | {'yes' if imp is not None else 'no'} | {n / best[0]:.1f} | {n / best[1]:.1f} | "
                f"{best[1] / best[0]:.2f}x | {1 - err(b) / err(a):.1%} |"
            )


def kld(a) -> None:
    from simpo_q import imatrix as im
    from simpo_q.convert import convert
    from simpo_q.evaluate.engines import LlamaCppModel
    from simpo_q.evaluate.kld import paired_difference, run_kld
    from simpo_q.gguf import open_gguf
    from simpo_q.quantize_model import quantize_model
    from simpo_q.tiny import cached_tiny_model

    t0 = time.perf_counter()
    model = cached_tiny_model(REPO / ".cache", _tiny_config(a), pretrain_steps=a.pretrain_steps, quiet=True)
    built = time.perf_counter() - t0
    work = REPO / ".cache" / f"bench-refine-{model.name}"
    work.mkdir(parents=True, exist_ok=True)
    f32 = convert(model, work / "f32.gguf", "f32", quiet=True)
    cal = work / "cal.imatrix.gguf"
    im.collect(model, DATA / "calibration.txt", ctx=a.ctx, quiet=True).save(str(cal), "gguf")
    files = _exact_and_refined(model, cal, work)
    params = sum(int(np.prod(t[1])) for t in open_gguf(files["Q3_K_S"]).tensors)
    for ftype in ("Q3_K_S", "Q3_K_M"):
        for imat in (None, cal):
            sfx = " +imatrix" if imat else ""
            stem = f"{ftype}{sfx.replace(' ', '_')}"
            if f"{ftype}{sfx}" not in files:  # Q3_K_S's exact files are written above
                files[f"{ftype}{sfx}"] = quantize_model(
                    model, work / f"{stem}.gguf", ftype, imatrix=imat, quiet=True, force=True
                )
            base = files[f"{ftype}{sfx}"]
            bpw = 8 * sum(t[4] for t in open_gguf(base).tensors) / params
            # with the importance matrix: from the file (its weights alone), and from the
            # calibration text (the same matrix, and the output sensitivities)
            for how, given in ((sfx, imat), *([(" +calibration text", DATA / "calibration.txt")] if imat else [])):
                name = f"target-bpw {bpw:.3f} ({ftype}'s size){how}"
                files[name] = quantize_model(
                    model,
                    work / f"target-{ftype}{how.replace(' ', '_')}.gguf",
                    "Q3_K_S",
                    imatrix=given,
                    imatrix_ctx=a.ctx,
                    target_bpw=bpw,
                    quiet=True,
                    force=True,
                )
    ref = LlamaCppModel(f32, a.ctx)
    names = list(files)
    reports, values = run_kld(
        ref,
        [LlamaCppModel(files[n], a.ctx) for n in names],
        (DATA / "evaluation.txt").read_text(),
        ctx=a.ctx,
        quiet=True,
    )
    print(
        f"# {model.name}: {params / 1e6:.1f}M parameters (hidden {a.hidden}, {a.layers} layers), pretrained "
        f"{a.pretrain_steps} steps ({built:.0f} s incl. building); held-out evaluation.txt, ctx {a.ctx}, "
        f"{reports[0]['chunks']} chunks; {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| file | bits per weight | mean KLD | same top p | against the file of its type, paired |")
    print("|---|---|---|---|---|")
    for n, r, v in zip(names, reports, values, strict=True):
        bpw = 8 * sum(t[4] for t in open_gguf(files[n]).tensors) / params
        # a refined file against the exact one, a budgeted one against the file type of its size
        # (with the importance matrix for the calibration-text rows): the mean KLD difference
        # over the same tokens, with its error over chunks (evaluate.kld.paired_difference)
        other = n.removesuffix(" refined") if n.endswith(" refined") else None
        if n.startswith("target-bpw"):
            other = n.split("(")[1].split("'")[0] + (" +imatrix" if "+" in n else "")
        vs = ""
        if other is not None:
            d, unc = paired_difference(values[names.index(other)], v, r["chunks"])
            vs = f"{d:+.6f} ± {unc:.6f} ({d / reports[names.index(other)]['kld']:+.1%})"
        print(f"| {n} | {bpw:.3f} | {r['kld']:.6f} ± {r['kld_unc']:.6f} | {100 * r['same_top_p']:.2f}% | {vs} |")


def shrink(a) -> None:
    """How much shorter than the weights the exact and the refined blocks are, layer by layer
    of the generated model (the kld command's, same options): Σ w·x·x̂ / Σ w·x² over each
    linear layer (w the importance, or 1), and the squared error relative to Σ w·x²."""
    import simpo_q
    from safetensors.torch import load_file
    from simpo_q import imatrix as im
    from simpo_q.tiny import cached_tiny_model

    model = cached_tiny_model(REPO / ".cache", _tiny_config(a), pretrain_steps=a.pretrain_steps, quiet=True)
    cal = im.collect(model, DATA / "calibration.txt", ctx=a.ctx, quiet=True)
    weights = {}
    for f in sorted(model.glob("*.safetensors")):
        weights.update(load_file(f))
    from simpo_q.arch.gemma2 import LINEARS

    print(f"# {model.name}: every linear layer; {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print()
    print("| type | imatrix | exact: length | refined: length | exact: squared error | refined: squared error |")
    print("|---|---|---|---|---|---|")
    for t in simpo_q.REFINABLE_TYPES:
        for use in (False, True):
            sums = np.zeros((2, 3))
            for name, x in weights.items():
                parts = name.split(".")
                if len(parts) < 5 or ".".join(parts[3:5]) not in LINEARS:
                    continue
                gguf = f"blk.{parts[2]}.{LINEARS['.'.join(parts[3:5])]}.weight"
                imp = cal.importance(gguf) if use else None
                x = np.ascontiguousarray(x.float().numpy())
                w = np.ones(x.shape[1]) if imp is None else imp.astype(np.float64)
                xd = x.astype(np.float64)
                for k, refine in enumerate((False, True)):
                    v = simpo_q.dequantize(simpo_q.quantize(x, t, imp, refine=refine), t, x.shape[1])
                    v = v.astype(np.float64)
                    sums[k] += [(xd * v * w).sum(), (xd * xd * w).sum(), (((xd - v) ** 2) * w).sum()]
            length, err = sums[:, 0] / sums[:, 1], sums[:, 2] / sums[:, 1]
            print(
                f"| {t} | {'yes' if use else 'no'} | {length[0]:.4f} | {length[1]:.4f} | {err[0]:.5f} | {err[1]:.5f} |"
            )


def _tiny_config(a):
    from simpo_q.tiny import TinyConfig

    return TinyConfig(
        seed=a.seed,
        hidden=a.hidden,
        intermediate=2 * a.hidden,
        layers=a.layers,
        heads=max(4, a.hidden // 64),
        kv_heads=max(2, a.hidden // 128),
    )


def _exact_and_refined(model: Path, cal: Path, work: Path, prefix: str = "") -> dict[str, Path]:
    """Q3_K_S and Q4_K_M, without and with the importance matrix `cal`, each exact then
    refined: name → file (under `work`, named `prefix` + name)."""
    from simpo_q.quantize_model import quantize_model

    files: dict[str, Path] = {}
    for t in ("Q3_K_S", "Q4_K_M"):
        for imat in (None, cal):
            for refine in (False, True):
                name = f"{t}{' +imatrix' if imat else ''}{' refined' if refine else ''}"
                files[name] = quantize_model(
                    model,
                    work / f"{prefix}{name.replace(' ', '_')}.gguf",
                    t,
                    imatrix=imat,
                    refine=refine,
                    quiet=True,
                    force=True,
                )
    return files


def _perturbed(model: Path, out: Path, seed: int) -> Path:
    """A copy of `model` whose matrices are multiplied by 1 + 0.001·N(0, 1), in float32 (bf16
    would round most of the change away): the same model to within a KLD of a few 1e-6 (the
    command prints it), whose quantized files differ in the details (`_what_moved`)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp)
    g = torch.Generator().manual_seed(seed)
    for f in sorted(tmp.glob("*.safetensors")):
        t = load_file(f)
        for k in sorted(t):
            if t[k].dim() == 2:
                t[k] = t[k].float() * (1 + 0.001 * torch.randn(t[k].shape, generator=g))
        save_file(t, f, metadata={"format": "pt"})
    tmp.rename(out)
    return out


def _what_moved(model: Path, copy_q3ks: Path, work: Path) -> tuple[float, float]:
    """Copy 0's exact Q3_K_S file against the unperturbed model's: the share of Q3_K blocks
    whose scale bytes differ (a block ends with 12 bytes of sub-block scales and the 2 of d),
    and the share of differing values among the blocks whose scales did not."""
    import simpo_q
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from simpo_q.quantize_model import quantize_model

    _, per_block, block_bytes = simpo_q.type_info("Q3_K")

    base = quantize_model(model, work / "Q3_K_S-what-moved.gguf", "Q3_K_S", quiet=True, force=True)
    theirs = {t.name: t for t in GGUFReader(copy_q3ks).tensors}
    blocks = moved = values = differ = 0
    for t in GGUFReader(base).tensors:
        if t.tensor_type.name != "Q3_K":
            continue
        u = theirs[t.name]
        a_, b_ = np.asarray(t.data).reshape(-1, block_bytes), np.asarray(u.data).reshape(-1, block_bytes)
        same = (a_[:, -14:] == b_[:, -14:]).all(axis=1)
        keep = np.repeat(same, per_block)
        va = dequantize(t.data, t.tensor_type).ravel()[keep]
        vb = dequantize(u.data, u.tensor_type).ravel()[keep]
        blocks, moved = blocks + same.size, moved + int((~same).sum())
        values, differ = values + va.size, differ + int((va != vb).sum())
    base.unlink()
    return moved / blocks, differ / max(values, 1)


def ensemble(a) -> None:
    from simpo_q import imatrix as im
    from simpo_q.convert import convert
    from simpo_q.evaluate.engines import LlamaCppModel
    from simpo_q.evaluate.kld import run_kld
    from simpo_q.tiny import cached_tiny_model

    model = cached_tiny_model(REPO / ".cache", _tiny_config(a), pretrain_steps=a.pretrain_steps, quiet=True)
    work = REPO / ".cache" / f"bench-refine-{model.name}"
    work.mkdir(parents=True, exist_ok=True)
    cal = work / "cal.imatrix.gguf"  # of the unperturbed model, as `kld` makes it
    if not cal.exists():
        im.collect(model, DATA / "calibration.txt", ctx=a.ctx, quiet=True).save(str(cal), "gguf")
    text = (DATA / "evaluation.txt").read_text()
    names: list[str] = []
    rows, copies = [], []
    for p in range(a.perturb):
        copy = _perturbed(model, work / f"perturbed-{p}", seed=p)
        f32 = work / f"perturbed-{p}.f32.gguf"
        if not f32.exists():
            convert(copy, f32, "f32", quiet=True)
        copies.append(f32)
        files = _exact_and_refined(copy, cal, work, prefix=f"perturbed-{p}-")
        names = list(files)
        reports, _ = run_kld(
            LlamaCppModel(f32, a.ctx), [LlamaCppModel(f, a.ctx) for f in files.values()], text, ctx=a.ctx, quiet=True
        )
        rows.append([r["kld"] for r in reports])
        if p == 0:
            moved = _what_moved(model, files["Q3_K_S"], work)
        for f in files.values():
            f.unlink()
    # what the perturbation costs by itself: each copy's F32 file against the model's own
    ref = work / "f32.gguf"  # the unperturbed model's, as `kld` makes it
    if not ref.exists():
        convert(model, ref, "f32", quiet=True)
    reports, _ = run_kld(
        LlamaCppModel(ref, a.ctx), [LlamaCppModel(f, a.ctx) for f in copies], text, ctx=a.ctx, quiet=True
    )
    own = np.array([r["kld"] for r in reports])
    kld = np.array(rows)  # copies × files
    print(
        f"# {model.name}: hidden {a.hidden}, {a.layers} layers, pretrained {a.pretrain_steps} steps; "
        f"{a.perturb} perturbed copies (weights × (1 + 0.001·N(0,1)), seeds 0..{a.perturb - 1}); held-out "
        f"evaluation.txt, ctx {a.ctx}; {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print(f"The perturbation by itself (each copy's F32 file against the model's): mean KLD {own.mean():.2e}.")
    print(
        f"What it moves in copy 0's Q3_K_S file against the model's: {moved[0]:.1%} of the Q3_K blocks' "
        f"scales (d or a sub-block scale), and {moved[1]:.3%} of the values in the other blocks."
    )
    print()
    print(
        "| file | mean KLD over copies | spread over copies (SD) | refined − exact, mean over copies | refined lower |"
    )
    print("|---|---|---|---|---|")
    for i, n in enumerate(names):
        m, sd = kld[:, i].mean(), kld[:, i].std(ddof=1)
        vs = low = ""
        if n.endswith(" refined"):
            d = kld[:, i] - kld[:, i - 1]  # the exact file of the same copy
            se = d.std(ddof=1) / np.sqrt(a.perturb)
            vs = f"{d.mean():+.6f} ± {se:.6f} ({d.mean() / kld[:, i - 1].mean():+.1%})"
            low = f"{int((d < 0).sum())} of {a.perturb}"
        print(f"| {n} | {m:.6f} | {sd:.6f} ({sd / m:.1%}) | {vs} | {low} |")


def budget(a) -> None:
    from simpo_q.quantize_model import quantize_model
    from simpo_q.tiny import TinyConfig, build_tiny_model

    model = REPO / ".cache" / "bench-pipeline" / f"gemma2-L{a.layers}-H{a.hidden}-I{a.intermediate}"
    if not (model / "config.json").exists():
        build_tiny_model(
            model,
            TinyConfig(
                layers=a.layers, hidden=a.hidden, intermediate=a.intermediate, heads=8, kv_heads=4, head_dim=256
            ),
        )
    out = REPO / ".cache" / "bench-refine-budget"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    quantize_model(model, out / "q3ks.gguf", "Q3_K_S", quiet=True, force=True)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize_model(model, out / "budget.gguf", "Q3_K_S", target_bpw=3.9, quiet=True, force=True)
    with_budget = time.perf_counter() - t0
    cal = DATA / "calibration.txt"
    t0 = time.perf_counter()
    quantize_model(model, out / "q3ks-im.gguf", "Q3_K_S", imatrix=cal, imatrix_chunks=a.chunks, quiet=True, force=True)
    with_imatrix = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize_model(
        model,
        out / "budget-im.gguf",
        "Q3_K_S",
        imatrix=cal,
        imatrix_chunks=a.chunks,
        target_bpw=3.9,
        quiet=True,
        force=True,
    )
    sensitive = time.perf_counter() - t0
    print(f"# {model.name} (random weights, bf16 safetensors); {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print()
    print(f"| quantize --type Q3_K_S | {plain:.1f} s |")
    print(f"| same, --target-bpw 3.9 (measuring 5 types per tensor, then writing) | {with_budget:.1f} s |")
    print(f"| quantize --type Q3_K_S --imatrix calibration.txt --chunks {a.chunks} (ctx 512) | {with_imatrix:.1f} s |")
    print(
        f"| same, --target-bpw 3.9 (the importance matrix, the output sensitivities over the same chunks, "
        f"6 types measured per tensor, then writing) | {sensitive:.1f} s |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["speed", "kld", "shrink", "ensemble", "budget"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="kld: the generated model's seed")
    ap.add_argument("--chunks", type=int, default=8, help="budget: calibration chunks of 512 tokens")
    ap.add_argument("--perturb", type=int, default=16, help="ensemble: perturbed copies of the model")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    {
        "speed": lambda: speed(),
        "kld": lambda: kld(a),
        "shrink": lambda: shrink(a),
        "ensemble": lambda: ensemble(a),
        "budget": lambda: budget(a),
    }[a.what]()


if __name__ == "__main__":
    main()
