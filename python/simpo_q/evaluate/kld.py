"""`simpo-q eval kld`: how far quantized models are from the full-precision one, in the
statistics of llama.cpp's `llama-perplexity --kl-divergence`.

The text is cut as llama-perplexity cuts it (one trailing newline dropped, tokenized with
BOS, chunks of `ctx` tokens whose first token becomes BOS, only the second half of each chunk
scored: the logits at positions ctx/2 … ctx−2 predict tokens ctx/2+1 … ctx−1). The
reference and every quantized model run chunk by chunk in lockstep, so no file of reference
logits is written (llama-perplexity's would be ~69 GiB for Gemma-2 9B at ctx 512) and memory
holds one chunk of logits per model.

Where we differ from llama-perplexity, on purpose: its reference log-probabilities pass
through a file as 16-bit integers over [max − 16, max], and its KL sum skips reference
log-probabilities below −16. Ours are float64 and exact. tests/test_eval_kld.py measures the
difference against the real tool."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from simpo_q._native import SimpoQError

KLD_PERCENTILES = [
    ("Maximum", 1.0),
    ("99.9%", 0.999),
    ("99.0%", 0.99),
    ("95.0%", 0.95),
    ("90.0%", 0.90),
    ("Median", 0.5),
    ("10.0%", 0.10),
    ("5.0%", 0.05),
    ("1.0%", 0.01),
    ("0.1%", 0.001),
    ("Minimum", 0.0),
]
DP_PERCENTILES = [
    ("Maximum", 1.0),
    ("99.9%", 0.999),
    ("99.0%", 0.99),
    ("95.0%", 0.95),
    ("90.0%", 0.90),
    ("75.0%", 0.75),
    ("Median", 0.5),
    ("25.0%", 0.25),
    ("10.0%", 0.10),
    ("5.0%", 0.05),
    ("1.0%", 0.01),
    ("0.1%", 0.001),
    ("Minimum", 0.0),
]
ROWS_PER_SLICE = 16  # log-softmax in float64 over [16, vocab] at a time: 33 MB at 256000 tokens


def chunk_tokens(tokens: list[int], ctx: int, chunks: int | None, bos: int | None, where: str) -> list[list[int]]:
    """llama-perplexity's chunks (see the module docstring)."""
    if ctx < 4:
        raise SimpoQError(f"--ctx {ctx}: must be at least 4 (half of each chunk is scored)")
    if len(tokens) < 2 * ctx:
        raise SimpoQError(
            f"{where}: {len(tokens)} tokens; --ctx {ctx} needs at least {2 * ctx} (two chunks, as "
            f"llama-perplexity requires)"
        )
    n = len(tokens) // ctx
    if chunks is not None:
        n = min(n, chunks)
    out = []
    for i in range(n):
        c = list(tokens[i * ctx : (i + 1) * ctx])
        if bos is not None:
            c[0] = bos
        out.append(c)
    return out


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


@dataclass
class KldStats:
    """llama-perplexity's running sums (kl_divergence_result), in float64, and every token's
    KLD and Δp for the percentiles."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)

    def add(self, base_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
        """One chunk: logits [n, vocab] of the reference and of this model, targets [n]."""
        for s in range(0, len(targets), ROWS_PER_SLICE):
            sl = slice(s, s + ROWS_PER_SLICE)
            lb, lq, t = log_softmax64(base_logits[sl]), log_softmax64(logits[sl]), targets[sl]
            rows = np.arange(len(t))
            nll, nll_base = -lq[rows, t], -lb[rows, t]
            kld = (np.exp(lb) * (lb - lq)).sum(axis=1)
            p_diff = np.exp(-nll) - np.exp(-nll_base)
            self.sum_nll += nll.sum()
            self.sum_nll2 += (nll * nll).sum()
            self.sum_nll_base += nll_base.sum()
            self.sum_nll_base2 += (nll_base * nll_base).sum()
            self.sum_nll_nll_base += (nll * nll_base).sum()
            self.sum_kld += kld.sum()
            self.sum_kld2 += (kld * kld).sum()
            self.sum_p_diff += p_diff.sum()
            self.sum_p_diff2 += (p_diff**2).sum()
            self.sum_p_diff4 += (p_diff**4).sum()
            self.n_same_top += int((logits[sl].argmax(axis=1) == base_logits[sl].argmax(axis=1)).sum())
            self.count += len(t)
            self.kld_values.append(kld)
            self.p_diff_values.append(p_diff)

    @property
    def mean_kld(self) -> float:
        return self.sum_kld / self.count if self.count else float("nan")

    def report(self) -> dict:
        """The numbers llama-perplexity prints at the end, under its names."""
        n = self.count
        if n < 2:
            raise SimpoQError("too few scored tokens for statistics")

        def mean_unc(s: float, s2: float) -> tuple[float, float]:
            f = s / n
            df = s2 / n - f * f
            return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)

        log_ppl, log_ppl_unc = mean_unc(self.sum_nll, self.sum_nll2)
        log_base, log_base_unc = mean_unc(self.sum_nll_base, self.sum_nll_base2)
        cov = (self.sum_nll_nll_base / n - (self.sum_nll / n) * (self.sum_nll_base / n)) / (n - 1) if n >= 10 else 0.0
        ratio = log_ppl - log_base
        ratio_unc = math.sqrt(max(0.0, log_ppl_unc**2 + log_base_unc**2 - 2 * cov))
        kld, kld_unc = mean_unc(self.sum_kld, self.sum_kld2)
        dp, dp_unc = mean_unc(self.sum_p_diff, self.sum_p_diff2)
        mse, mse_unc = mean_unc(self.sum_p_diff2, self.sum_p_diff4)
        rms = math.sqrt(mse)
        same = self.n_same_top / n
        kv = np.sort(np.concatenate(self.kld_values))
        pv = np.sort(np.concatenate(self.p_diff_values))
        ppl, ppl_base = math.exp(log_ppl), math.exp(log_base)
        return {
            "tokens": n,
            "ppl": ppl,
            "ppl_unc": ppl * log_ppl_unc,
            "ppl_base": ppl_base,
            "ppl_base_unc": ppl_base * log_base_unc,
            "cor_ln_ppl": cov / (log_ppl_unc * log_base_unc) if log_ppl_unc * log_base_unc > 0 else float("nan"),
            "ln_ppl_ratio": ratio,
            "ln_ppl_ratio_unc": ratio_unc,
            "ppl_ratio": math.exp(ratio),
            "ppl_ratio_unc": math.exp(ratio) * ratio_unc,
            "ppl_diff": ppl - ppl_base,
            "kld": kld,
            "kld_unc": kld_unc,
            "kld_percentiles": {k: float(np.quantile(kv, q)) for k, q in KLD_PERCENTILES},
            "dp": dp,
            "dp_unc": dp_unc,
            "dp_percentiles": {k: float(np.quantile(pv, q)) for k, q in DP_PERCENTILES},
            "dp_rms": rms,
            "dp_rms_unc": 0.5 / rms * mse_unc if rms > 0 else 0.0,
            "same_top_p": same,
            "same_top_p_unc": math.sqrt(same * (1 - same) / (n - 1)),
        }


def run_kld(
    reference,
    models: list,
    text: str,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    where: str = "text",
    quiet: bool = False,
) -> tuple[list[dict], list[np.ndarray]]:
    """(one report per model, each model's per-token KLDs in text order) over `text`. Every
    model after the first also gets its mean KLD minus the first model's, paired token by
    token (`kld_vs_first`, `kld_vs_first_unc`: `paired_difference`)."""
    from simpo_q.evaluate.engines import check_same_model
    from tqdm.auto import tqdm

    for m in models:
        check_same_model(reference, m)
    if text.endswith("\n"):
        text = text[:-1]
    batches = chunk_tokens(reference.tokenize(text), ctx, chunks, reference.bos, where)
    first = ctx // 2
    stats = [KldStats() for _ in models]
    t0 = time.perf_counter()
    bar = tqdm(batches, desc="kld", unit="chunk", disable=True if quiet else None, file=sys.stderr)
    for i, chunk in enumerate(bar, 1):
        targets = np.asarray(chunk[first + 1 :], dtype=np.int64)
        base = reference.logits(chunk, first)
        for m, st in zip(models, stats, strict=True):
            st.add(base, m.logits(chunk, first), targets)
        rate = i * ctx * (1 + len(models)) / (time.perf_counter() - t0)
        bar.set_postfix(tok_s=f"{rate:.0f}", kld="/".join(f"{st.mean_kld:.4f}" for st in stats))
    reports = []
    values = [np.concatenate(st.kld_values) for st in stats]
    for i, (m, st) in enumerate(zip(models, stats, strict=True)):
        r = st.report()
        r.update(
            model=m.name,
            engine=m.engine,
            reference=reference.name,
            reference_engine=reference.engine,
            ctx=ctx,
            chunks=len(batches),
        )
        if i > 0:
            r["kld_vs_first"], r["kld_vs_first_unc"] = paired_difference(values[0], values[i], len(batches))
        reports.append(r)
    return reports, values


def paired_difference(a: np.ndarray, b: np.ndarray, chunks: int) -> tuple[float, float]:
    """The mean of b − a over the same tokens (two models' per-token KLDs, in text order) and
    its standard error. Why paired: both models err most on the same hard tokens, so the
    difference varies far less than either mean, and whether one model is closer than the
    other is read from it, not from two overlapping error bars. The error is taken over
    chunks (tokens of one chunk are not independent of each other), so it is honest rather
    than small."""
    d = (b - a).reshape(chunks, -1).mean(axis=1)
    unc = float(d.std(ddof=1) / math.sqrt(chunks)) if chunks > 1 else float("nan")
    return float(d.mean()), unc


def render(reports: list[dict]) -> str:
    """A table: one column per model, llama-perplexity's statistics as rows."""
    names = [Path(r["model"]).name for r in reports]
    w = max(14, *(len(n) + 1 for n in names))
    rows: list[tuple[str, list[str]]] = [
        ("PPL(Q)", [f"{r['ppl']:.4f} ± {r['ppl_unc']:.4f}" for r in reports]),
        ("PPL(base)", [f"{r['ppl_base']:.4f} ± {r['ppl_base_unc']:.4f}" for r in reports]),
        ("PPL(Q)/PPL(base)", [f"{r['ppl_ratio']:.5f} ± {r['ppl_ratio_unc']:.5f}" for r in reports]),
        ("ln(PPL(Q)/PPL(base))", [f"{r['ln_ppl_ratio']:.5f} ± {r['ln_ppl_ratio_unc']:.5f}" for r in reports]),
        ("Cor(ln PPL)", [f"{100 * r['cor_ln_ppl']:.2f}%" for r in reports]),
        ("Mean KLD", [f"{r['kld']:.6f} ± {r['kld_unc']:.6f}" for r in reports]),
    ]
    if len(reports) > 1:
        # paired with the first model's, token by token (`paired_difference`)
        rows.append(
            (
                "Mean KLD − first's",
                [""] + [f"{r['kld_vs_first']:+.6f} ± {r['kld_vs_first_unc']:.6f}" for r in reports[1:]],
            )
        )
    rows += [(f"{k} KLD", [f"{r['kld_percentiles'][k]:.6f}" for r in reports]) for k, _ in KLD_PERCENTILES]
    rows.append(("Mean Δp", [f"{100 * r['dp']:.3f} ± {100 * r['dp_unc']:.3f} %" for r in reports]))
    rows += [(f"{k} Δp", [f"{100 * r['dp_percentiles'][k]:.3f} %" for r in reports]) for k, _ in DP_PERCENTILES]
    rows.append(("RMS Δp", [f"{100 * r['dp_rms']:.3f} ± {100 * r['dp_rms_unc']:.3f} %" for r in reports]))
    rows.append(("Same top p", [f"{100 * r['same_top_p']:.3f} ± {100 * r['same_top_p_unc']:.3f} %" for r in reports]))
    w = max(w, *(len(c) + 2 for _, cs in rows for c in cs))
    head = f"{'':22s}" + "".join(f"{n:>{w}s}" for n in names)
    r0 = reports[0]
    lines = [
        f"KL divergence from {r0['reference']} ({r0['reference_engine']}), {r0['chunks']} chunks of {r0['ctx']} "
        f"tokens, {r0['tokens']} scored",
        head,
    ]
    lines += [f"{k:22s}" + "".join(f"{c:>{w}s}" for c in cs) for k, cs in rows]
    return "\n".join(lines)


def plot(kld_values: list[np.ndarray], names: list[str]) -> bytes:
    """PNG bytes: the per-token KLD distributions side by side, log scale."""
    try:
        import matplotlib
    except ImportError as e:
        raise SimpoQError("--plot needs matplotlib (pip install 'simpo-q[eval]')") from e
    import io

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(names), 4.5), dpi=120)
    floor = 1e-7  # tokens the model predicts exactly would sit at −∞ on a log axis
    data = [np.log10(np.maximum(v, floor)) for v in kld_values]
    ax.violinplot(data, showmedians=True, showextrema=True)
    ax.boxplot(data, widths=0.12, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    ax.set_ylabel("log10 KL divergence per token")
    ax.set_title("KL divergence from the full-precision model")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def kld_files(
    reference: str,
    quants: list[str],
    text_file: str,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    engine: str = "llama.cpp",
    threads: int | None = None,
    json_out: str | None = None,
    plot_out: str | None = None,
    quiet: bool = False,
    flash_attn: bool = True,
) -> list[dict]:
    """The command: checks everything, loads the models, runs them in lockstep, writes the
    table to stdout and, when asked, the JSON and the plot (nothing half-written)."""
    import json

    from simpo_q.evaluate.engines import LlamaCppModel, TorchModel, is_gguf, load_reference
    from simpo_q.outputs import check_output, write_text
    from simpo_q.textfile import read_text

    if engine not in ("llama.cpp", "torch"):
        raise SimpoQError(f"--engine: {engine!r} is not llama.cpp or torch")
    if chunks is not None and chunks < 2:
        raise SimpoQError(f"--chunks {chunks}: must be at least 2")
    inputs = [reference, *quants, text_file]
    for q in quants:
        if not is_gguf(q):
            raise SimpoQError(f"{q}: not a GGUF file")
    for out in (json_out, plot_out):
        if out:
            check_output(out, inputs)
    if plot_out:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise SimpoQError("--plot needs matplotlib (pip install 'simpo-q[eval]')")
    text = read_text(text_file, "evaluation text")
    ref = load_reference(reference, ctx=ctx, device=device, dtype=dtype, threads=threads, flash_attn=flash_attn)
    if engine == "torch":
        if not isinstance(ref, TorchModel):
            raise SimpoQError(
                f"{reference}: --engine torch needs a Hugging Face directory as the reference (its "
                f"architecture runs the dequantized weights)"
            )
        models = [TorchModel.from_gguf(q, ref, dtype=dtype) for q in quants]
    else:
        models = [LlamaCppModel(q, ctx, threads, flash_attn) for q in quants]
    reports, values = run_kld(ref, models, text, ctx=ctx, chunks=chunks, where=str(text_file), quiet=quiet)
    for r in reports:
        r["text"] = str(text_file)
    print(render(reports))
    if json_out:
        write_text(json_out, json.dumps(reports, indent=1) + "\n")
    if plot_out:
        from simpo_q._native import write_file

        write_file(plot_out, plot(values, [Path(q).name for q in quants]))
    return reports
