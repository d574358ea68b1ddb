"""`--target-bpw` / `--target-size`: each tensor's type chosen among llama.cpp's types so that
the model's total weighted error is as small as the size budget allows.

1. For every tensor the allocation may change, its error under each candidate type is
   measured: Σᵢ sᵢ·Σⱼ wⱼ·(xᵢⱼ − x̂ᵢⱼ)², with wⱼ the importance of input column j (in_sum2 /
   count of the importance matrix, 1 without one) and sᵢ the output sensitivity of row i
   (sensitivity.py: what a unit of that output's error costs in KL divergence; 1 when not
   measured). Rows of large tensors are sampled evenly (at most `SAMPLE_ROWS`), and the sum
   scaled to all rows.
2. Every tensor starts at its cheapest candidate; the budget is then spent greedily on the
   upgrade (to any larger candidate) that removes the most error per byte, until nothing
   more fits.
With output sensitivities the errors of different layers are comparable, and Q2_K is a
candidate too; without them it is not (see `K_CANDIDATES`).
The token embedding and the output head keep the file type's choice, and so do tensors
that are not quantized: their error is not comparable with the linear layers' (no importance
matrix measures the head's input, and Gemma's head is its embedding). Measured, letting them
take part with a flat importance made a wider model's KL divergence twice as large at the
same size (BENCHMARKS.md).

The result is written as a tensor-type file, `^name$=type` per line with the name's dots
escaped, which llama-quantize's `--tensor-type-file` reads (each line a regular expression
searched in the tensor name, the first match winning) and `quantize --tensor-type-file` too.
"""

from __future__ import annotations

import heapq
import re
import sys
from dataclasses import dataclass

import numpy as np

import simpo_q
from simpo_q._native import SimpoQError
from simpo_q.gguf_out import shape_bytes

SAMPLE_ROWS = 512
FIXED = ("token_embd.weight", "output.weight")
# Q2_K only with output sensitivities: by the importance-weighted error alone the allocation
# sent tensors down to it that the held-out text needed (the tiny model at Q3_K_M's size with
# the importance matrix: mean KLD 0.0306 against 0.0142 without Q2_K), while weighted by the
# sensitivities too it takes Q2_K for the tensors that can bear it (BENCHMARKS.md)
K_CANDIDATES = ("Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
K_CANDIDATES_SENSITIVE = ("Q2_K", *K_CANDIDATES)
SMALL_CANDIDATES = ("Q4_0", "Q5_0", "Q8_0")  # rows that are not whole 256-value super-blocks


@dataclass
class Choice:
    name: str
    shape: tuple[int, ...]
    options: dict[str, tuple[int, float]]  # type → (bytes, error)
    chosen: str


def candidates(ne0: int, sensitive: bool) -> tuple[str, ...]:
    if ne0 % 256:
        return SMALL_CANDIDATES
    return K_CANDIDATES_SENSITIVE if sensitive else K_CANDIDATES


def measure(
    x: np.ndarray,
    importance: np.ndarray | None,
    types: tuple[str, ...],
    refine: bool,
    threads: int | None,
    sensitivity: np.ndarray | None = None,
) -> dict[str, float]:
    """The weighted squared error of `x` (rows × columns) under each type: columns weighted
    by `importance`, rows by `sensitivity` (each 1 when None)."""
    rows = x.shape[0]
    idx = np.linspace(0, rows - 1, SAMPLE_ROWS).round().astype(np.int64) if rows > SAMPLE_ROWS else np.arange(rows)
    sample = np.ascontiguousarray(x[idx])
    scale = rows / sample.shape[0]
    w = np.ones(x.shape[1]) if importance is None else importance.astype(np.float64)
    s = np.ones(len(idx)) if sensitivity is None else sensitivity[idx]
    out = {}
    for t in types:
        q = simpo_q.quantize(sample, t, importance, threads=threads, refine=refine)
        d = sample.astype(np.float64) - simpo_q.dequantize(q, t, x.shape[1], threads=threads)
        out[t] = float(s @ (d * d) @ w * scale)
    return out


def allocate(choices: list[Choice], budget: int) -> int:
    """Spends `budget` bytes (for the allocatable tensors) greedily by error removed per byte;
    returns the bytes used. `choices` start at their cheapest option."""
    used = 0
    for c in choices:
        c.chosen = min(c.options, key=lambda t: (c.options[t][0], c.options[t][1]))
        used += c.options[c.chosen][0]
    if used > budget:
        return used
    heap: list[tuple[float, int, str, str]] = []

    def push(i: int) -> None:
        c = choices[i]
        b0, e0 = c.options[c.chosen]
        for t, (b, e) in c.options.items():
            if b > b0 and e < e0:
                heapq.heappush(heap, (-(e0 - e) / (b - b0), i, c.chosen, t))

    for i in range(len(choices)):
        push(i)
    while heap:
        _, i, frm, to = heapq.heappop(heap)
        c = choices[i]
        if c.chosen != frm:
            continue  # stale: this tensor moved since
        extra = c.options[to][0] - c.options[frm][0]
        if used + extra > budget:
            continue
        c.chosen = to
        used += extra
        push(i)
    return used


def parse_size(text: str) -> int:
    """Bytes from '4.3GB', '4000MiB', '123456' (decimal and binary suffixes)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise SimpoQError(f"--target-size {text!r}: expected a size such as 4.3GB, 4100MiB or 4300000000")
    unit = m.group(2).upper().rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[
        unit
    ]
    return int(float(m.group(1)) * mult)


def plan_budget(
    plan,
    types: dict[str, str],
    importance_of,
    sensitivity_of=None,
    *,
    target_bpw: float | None,
    target_size: int | None,
    refine: bool,
    threads: int | None,
    quiet: bool,
) -> tuple[dict[str, str], list[Choice]]:
    """The types under the budget. `plan`: the source's Planned tensors (float loaders);
    `types`: the file type's choice for every tensor; `importance_of(name)`: the importance
    vector, or None; `sensitivity_of(name)`: the output sensitivities (one per row), or None;
    `sensitivity_of` None: none were measured. Returns (types, the allocatable tensors' choices)."""
    from tqdm.auto import tqdm

    params = sum(int(np.prod(p.shape)) for p in plan)
    budget = int(target_bpw * params / 8) if target_bpw is not None else int(target_size)
    fixed, choices = 0, []
    for p in tqdm(plan, desc="measuring types", unit="tensor", disable=True if quiet else None, file=sys.stderr):
        quantized = types[p.name] not in ("F32", "F16", "BF16") and len(p.shape) >= 2
        if not quantized or p.name in FIXED:
            fixed += shape_bytes(types[p.name], p.shape)
            continue
        imp = importance_of(p.name)
        sens = None if sensitivity_of is None else sensitivity_of(p.name)
        if sensitivity_of is not None and sens is None:
            # one tensor weighed without them would not be comparable with the rest
            raise SimpoQError(f"no output sensitivities were measured for {p.name}")
        x = p.load().reshape(-1, p.shape[-1])
        cand = candidates(p.shape[-1], sensitivity_of is not None)
        errs = measure(x, imp, cand, refine, threads, sens)
        choices.append(Choice(p.name, p.shape, {t: (shape_bytes(t, p.shape), errs[t]) for t in cand}, cand[0]))
    floor = fixed + sum(min(b for b, _ in c.options.values()) for c in choices)
    if floor > budget:
        raise SimpoQError(
            f"the size budget of {budget} bytes ({8 * budget / params:.3f} bits per weight) is below "
            f"the smallest this model can be with these types: {floor} bytes "
            f"({8 * floor / params:.3f} bits per weight)"
        )
    allocate(choices, budget - fixed)
    out = dict(types)
    for c in choices:
        out[c.name] = c.chosen
    return out, choices


def tensor_type_file(types: dict[str, str]) -> str:
    """`^name$=type` lines, llama-quantize's --tensor-type-file format (names lower case)."""
    return "".join(f"^{re.escape(n).lower()}$={t.lower()}\n" for n, t in types.items())


def read_tensor_type_file(path) -> list[tuple[str, str]]:
    """(pattern, type) pairs from a tensor-type file: `pattern=type` items separated by
    spaces or newlines, as llama-quantize reads them."""
    from pathlib import Path

    from simpo_q.textfile import read_text

    p = Path(path)
    out = []
    for i, item in enumerate(read_text(p, "tensor-type file").split(), 1):
        if "=" not in item or item.startswith("=") or item.endswith("="):
            raise SimpoQError(f"{p}: item {i} {item!r} is not PATTERN=TYPE")
        pat, t = item.rsplit("=", 1)
        try:
            simpo_q.type_info(t.upper())
        except SimpoQError as e:
            raise SimpoQError(f"{p}: item {i}: {e}") from e
        out.append((pat, t.upper()))
    return out
