"""`simpo-q quantize`: a Hugging Face directory or an F32/F16/BF16 GGUF → a k-quant GGUF,
with llama.cpp's per-tensor policy, tensor order and metadata, each tensor quantized as it
streams to the output (no intermediate F32/F16 file)."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

import simpo_q
from simpo_q._native import SimpoQError
from simpo_q.arch import adapter_by_arch
from simpo_q.convert import converted_metadata, hf_plan
from simpo_q.gguf_out import ALIGNMENT, Planned, shape_bytes, size_summary, tensor_bytes, write_gguf
from simpo_q.model_card import Card, Made, card_beside
from simpo_q.ollama import ollama_files, write_ollama_files
from simpo_q.outputs import check_output, check_space, imatrix_beside, write_text
from simpo_q.policy import (
    BLOCK_NAME,
    COPY,
    FILE_TYPES,
    Overrides,
    check_file_type,
    plan_types,
    requires_imatrix,
    weights_map_key,
)
from simpo_q.publish import Page
from simpo_q.sources import HFDirectory, StateDictSource

FLOAT_INPUTS = ("F32", "F16", "BF16")


def _from_hf(path):
    src = path if isinstance(path, StateDictSource) else HFDirectory(path)
    plan = hf_plan(src, lambda name, shape: "F32")
    n_params = sum(int(np.prod(p.shape)) for p in plan)
    return converted_metadata(src, 0, n_params), plan, src


def _from_gguf(path: Path):
    """(metadata, planned float32 loaders, the open reader) of a GGUF. Quantized tensors are
    dequantized as ggml does (requantizing is allowed or refused per tensor, later)."""
    from simpo_q.gguf_split import SplitGguf

    r = SplitGguf(path)  # an unsplit file, or the first of a split one (all its files are read)
    plan = []
    for name, dims, qtype, _, _ in r.tensors:
        if qtype not in simpo_q.QUANT_TYPES:
            raise SimpoQError(
                f"{path}: tensor {name!r} is {qtype}, which simpo-q cannot read (give an "
                f"F32/F16/BF16 GGUF or the Hugging Face directory)"
            )
        shape = tuple(reversed(dims))

        def load(name=name, qtype=qtype, shape=shape) -> np.ndarray:
            raw = r.tensor_bytes(name)
            return simpo_q.dequantize(raw, qtype, shape[-1]).reshape(shape)

        def rows(start: int, stop: int, name=name, qtype=qtype, cols=shape[-1]) -> np.ndarray:
            rb = simpo_q.row_size(qtype, cols)
            raw = r.tensor_bytes(name)[start * rb : stop * rb]
            return simpo_q.dequantize(raw, qtype, cols).reshape(stop - start, cols)

        plan.append(Planned(name, shape, qtype, load, rows=rows if len(shape) == 2 else None, src_type=qtype))
    return [(k, t, v) for k, t, v in r.metadata], plan, r


def _imatrix_kind(imatrix, inp: Path) -> str | None:
    """None, "memory", "file" or "text" (a calibration text to collect from), checked
    before any work: the file must be readable, and text needs a Hugging Face directory."""
    from simpo_q import imatrix as im

    if imatrix is None:
        return None
    if not isinstance(imatrix, (str, os.PathLike)):
        return "memory"
    path = Path(imatrix)
    if not path.exists():
        raise SimpoQError(f"{path}: --imatrix file not found")
    if not path.is_file():
        raise SimpoQError(f"{path}: --imatrix is not a regular file")
    if im.is_imatrix_file(path):
        return "file"
    if not inp.is_dir():
        raise SimpoQError(
            f"{path}: computing an importance matrix from text needs a Hugging Face directory as input, not {inp}"
        )
    im.read_text(path)  # a bad text fails now, not after loading the model
    return "text"


def _importance(
    imatrix, kind: str | None, inp: Path, saved: Path, quiet: bool, ctx: int, chunks: int | None, budgeted: bool
):
    """(Imatrix, file name recorded in the GGUF, output sensitivities or None) from an imatrix
    file, or computed from a calibration text and saved at `saved` (OUT.imatrix.gguf). A
    budget with a calibration text measures the output sensitivities on the same chunks
    (sensitivity.py): one more forward and a backward per chunk."""
    from simpo_q import imatrix as im

    if kind is None:
        return None, None, None
    if kind == "memory":
        return imatrix, "<in memory>", None
    if kind == "file":
        return im.load(imatrix), str(imatrix), None
    from simpo_q.imatrix_offload import collect_offloaded, needs_offload

    sens = None
    why = None if budgeted else needs_offload(inp, "cpu", "float32")  # a budget was checked to fit
    if why:
        if not quiet:
            print(f"imatrix: one decoder layer at a time ({why.split(';')[0]})", file=sys.stderr)
        # 512 tokens per product, as `simpo-q imatrix --offload` on the CPU
        m = collect_offloaded(inp, imatrix, ctx=ctx, chunks=chunks, quiet=quiet, batch=max(1, 512 // ctx))
    else:
        text = im.read_text(imatrix)
        tok, model = im.load_model(inp, quiet=quiet)
        m = im.collect_from_model(model, tok, imatrix, ctx=ctx, chunks=chunks, quiet=quiet, text=text)
        if budgeted:
            from simpo_q.sensitivity import collect_sensitivity

            sens = collect_sensitivity(model, tok, text, ctx=ctx, chunks=chunks, where=str(imatrix), quiet=quiet)
    m.save(str(saved), "gguf")
    if not quiet:
        print(f"wrote {saved} (importance matrix, {len(m)} entries)", file=sys.stderr)
    return m, str(saved), sens


def _check_arguments(
    imatrix,
    imatrix_ctx: int,
    imatrix_chunks: int | None,
    target_bpw: float | None,
    target_size: int | None,
    include_weights: tuple,
    exclude_weights: tuple,
) -> None:
    """The options that contradict each other or are out of range, before anything is read."""
    if imatrix_ctx < 1:
        raise SimpoQError(f"--ctx {imatrix_ctx}: must be at least 1")
    if imatrix_chunks is not None and imatrix_chunks < 1:
        raise SimpoQError(f"--chunks {imatrix_chunks}: must be at least 1")
    if target_bpw is not None and target_size is not None:
        raise SimpoQError("--target-bpw and --target-size: give one of them")
    if include_weights and exclude_weights:
        raise SimpoQError("--include-weights and --exclude-weights: give one of them (as llama-quantize)")
    if (include_weights or exclude_weights) and imatrix is None:
        raise SimpoQError(
            "--include-weights/--exclude-weights choose which tensors use the importance matrix; "
            "give one with --imatrix"
        )
    if target_bpw is not None and not (0 < target_bpw < 64):
        raise SimpoQError(f"--target-bpw {target_bpw}: expected bits per weight between 0 and 64")
    if target_size is not None and target_size <= 0:
        raise SimpoQError(f"--target-size {target_size}: must be positive")


def _open_source(inp):
    """(input path, metadata, planned tensors, origin, reader): a live model's weights, a Hugging
    Face directory (or hub id) or a GGUF. `reader` is set for a GGUF, whose unchanged tensors
    are copied byte for byte."""
    if isinstance(inp, StateDictSource):
        metadata, source, origin = _from_hf(inp)
        return inp.path, metadata, source, origin, None  # the directory gives config, tokenizer, imatrix model
    from simpo_q.hub import local

    inp = local(inp)  # a hub id is read from its cached snapshot
    if inp.is_dir():
        metadata, source, origin = _from_hf(inp)
        return inp, metadata, source, origin, None
    if inp.is_file():
        metadata, source, reader = _from_gguf(inp)
        return inp, metadata, source, reader, reader
    if inp.exists():
        raise SimpoQError(
            f"{inp}: not a regular file or a directory (a device or pipe?); give a Hugging Face "
            f"model directory or a GGUF file"
        )
    raise SimpoQError(f"{inp}: no such file or directory")


def _file_type_id(ftype: str, metadata: list, reader, inp: Path, choosing: bool) -> int:
    """general.file_type of the output: the file type's number; for COPY the input GGUF's own."""
    if ftype != COPY:
        return FILE_TYPES[ftype][0]
    if reader is None:
        raise SimpoQError(f"{inp}: COPY copies the tensors of a GGUF; convert a Hugging Face directory with `convert`")
    if choosing:
        raise SimpoQError("COPY keeps every tensor as it is: --refine, --target-bpw and --target-size do not apply")
    ft = next((v for k, _, v in metadata if k == "general.file_type"), None)
    if not isinstance(ft, int):
        raise SimpoQError(f"{inp}: no general.file_type to keep (COPY keeps the input's file type)")
    return ft


def prune(
    source: list[Planned], layers: tuple[int, ...], inp: Path
) -> tuple[list[Planned], dict[str, str], int | None]:
    """llama-quantize's --prune-layers (its remap_layer): in llama.cpp's tensor order, the
    layers before the first pruned one keep their numbers, the pruned ones are dropped and
    the rest are renumbered in turn. Returns (tensors, new name -> input name, block count;
    None when nothing is pruned)."""
    if not layers:
        return source, {}, None
    n_layer = len({m.group(1) for p in source if (m := BLOCK_NAME.match(p.name))})
    bad = [i for i in layers if i >= n_layer]
    if bad:
        raise SimpoQError(f"--prune-layers: {inp} has {n_layer} layers (0..{n_layer - 1}); no layer {bad[0]}")
    if len(layers) >= n_layer:
        raise SimpoQError(f"--prune-layers: that prunes every layer of {inp}")
    mapped: dict[int, int | None] = {}
    next_id = 0
    out, original = [], {}
    for p in sorted(source, key=lambda p: weights_map_key(p.name)):
        m = BLOCK_NAME.match(p.name)
        if m is None:
            out.append(p)
            continue
        blk = int(m.group(1))
        if blk not in mapped:
            if blk in layers:
                mapped[blk] = None
            elif blk < layers[0]:
                mapped[blk], next_id = blk, blk + 1
            else:
                mapped[blk], next_id = next_id, next_id + 1
        if mapped[blk] is None:
            continue
        name = f"blk.{mapped[blk]}.{p.name[m.end() :]}"
        original[name] = p.name
        out.append(dataclasses.replace(p, name=name))
    return out, original, next_id


def _write(
    out: Path,
    md: list,
    plan: list[Planned],
    reader,
    original: dict[str, str],
    keep_split: bool,
    split_max_size: int,
    split_max_tensors: int,
    quiet: bool,
    threads: int | None,
    inputs: list,
) -> list[Path]:
    """The GGUF: one file, or the files of a split one (each name is checked before the first
    is written)."""
    if not (keep_split or split_max_size or split_max_tensors):
        return [write_gguf(out, md, plan, quiet=quiet, threads=threads)]
    from simpo_q.gguf_out import write_split_gguf
    from simpo_q.gguf_split import split_by_size, split_prefix

    if keep_split:
        where = [reader.split_of(original.get(p.name, p.name)) for p in plan]
    else:
        where = split_by_size([tensor_bytes(p) for p in plan], split_max_size, split_max_tensors)
    parts = [[p for p, i in zip(plan, where, strict=True) if i == k] for k in range(max(where) + 1)]
    files = write_split_gguf(
        out, split_prefix(out), md, parts, quiet=quiet, threads=threads, always_split_names=keep_split, inputs=inputs
    )
    return files


def _check_outputs(out, ins: list, need: int, what: str, sides: list[Path], force: bool) -> None:
    """The GGUF and every file beside it may be written (none is an input; side files exist
    only with --force), and the disk has room: all before the long work."""
    check_output(out, ins)
    check_space(out, need, what)
    for side in sides:
        check_output(side, [*ins, out], side_file=True, force=force)


def _file_metadata(
    metadata: list,
    file_type: int,
    general_name: str | None,
    resolved,
    plan: list[Planned],
    refine: bool,
    kv_overrides,
    imat,
    imat_file,
    weights: set[str],
    inp: Path,
    last: list = (),
) -> list:
    """The output's keys: the source's, the file type, the name and page (general.*), the
    refinement note, then the user's overrides, the importance matrix's keys and `last` (a
    pruned model's block count), in llama-quantize's order. `weights`: the input's tensor
    names, which the importance matrix must know."""
    md = [
        (k, t, v)
        for k, t, v in metadata
        if k
        not in ("general.quantization_version", "general.file_type", "split.no", "split.count", "split.tensors.count")
    ]
    md += [("general.quantization_version", "u32", 2), ("general.file_type", "u32", file_type)]
    if general_name:
        md = [(k, t, general_name if k == "general.name" else v) for k, t, v in md]
    if resolved is not None:
        md = _with_general(md, resolved.general_metadata(sum(int(np.prod(p.shape)) for p in plan)))
    if refine:
        # the file records how it was made; llama.cpp ignores keys it does not know
        refined = sorted({p.qtype for p in plan if p.refine and p.qtype in simpo_q.REFINABLE_TYPES})
        md.append(
            (
                "quantize.refined",
                "str",
                f"simpo-q {simpo_q.__version__} refined encoder: {', '.join(refined) or 'no refinable type'}",
            )
        )
    sets = list(kv_overrides)  # llama-quantize applies the user's overrides, then its imatrix keys
    if imat is not None:
        used = [n for n in imat.names() if n in weights]
        if not used:
            raise SimpoQError(f"{imat_file}: no entry matches a weight of {inp} (an imatrix of another model?)")
        sets.append(("quantize.imatrix.file", "str", imat_file[:127]))
        if imat.datasets:
            sets.append(("quantize.imatrix.dataset", "str", imat.datasets[0][:127]))
        sets.append(("quantize.imatrix.entries_count", "u32", len(imat)))
        if imat.chunk_count > 0:
            sets.append(("quantize.imatrix.chunks_count", "u32", imat.chunk_count))
    sets += list(last)
    for key, t, v in sets:  # ggml's gguf_set_val: the key (new, or moved from its place) goes last
        md = [e for e in md if e[0] != key] + [(key, t, v)]
    return md


def _print_budget_table(plan: list[Planned], table) -> None:
    """--target-bpw/--target-size's choice: tensor, type, bytes, error. No metadata key says
    it: the tensor types do, and a budget is a promise on the file's size."""
    params = sum(int(np.prod(p.shape)) for p in plan)
    data = sum(tensor_bytes(p) for p in plan)
    errors = {c.name: c.options[c.chosen][1] for c in table}
    print(f"{'tensor':36s} {'type':6s} {'bytes':>12s} {'error':>12s}")
    for p in plan:
        e = errors.get(p.name)
        print(f"{p.name:36s} {p.qtype:6s} {tensor_bytes(p):12d} {'' if e is None else f'{e:12.4g}':>12s}")
    print(f"tensor data: {data} bytes, {8 * data / params:.4f} bits per weight")


def _print_dry_run(plan: list[Planned]) -> None:
    """What would be written: each tensor's type and bytes, the total and bits per weight."""
    total = 0
    for i, p in enumerate(plan, 1):
        n = tensor_bytes(p)
        total += n + (-n % ALIGNMENT)
        shape = ", ".join(str(d) for d in reversed(p.shape))
        print(f"[{i:4d}/{len(plan):4d}] {p.name:36s} - [{shape:>18s}], type = {p.qtype:6s}, {n} bytes")
    params = sum(int(np.prod(p.shape)) for p in plan)
    print(
        f"predicted size: {total} bytes of tensor data ({total / 2**20:.2f} MiB, "
        f"{8 * sum(tensor_bytes(p) for p in plan) / params:.2f} BPW) in {len(plan)} tensors"
    )


def _publish(
    out: Path, md: list, adapter, page: Page, resolved, made: Made, ollama: bool, model_card: bool, quiet: bool
) -> None:
    """The page around the GGUF: the Modelfile and NOTICE (`ollama`), and the model card, which
    `page.card` keeps for the pipeline to rewrite with its evaluation (`model_card`)."""
    if ollama:
        for f in write_ollama_files(out, adapter, resolved):
            if not quiet:
                print(f"wrote {f}", file=sys.stderr)
    title = str(next((v for k, _, v in md if k == "general.name"), out.stem))
    page.card = Card(card_beside(out), title, adapter, resolved, made)
    if model_card:
        page.card.write()
        if not quiet:
            print(f"wrote {page.card.path} (model card)", file=sys.stderr)


def _tensor_types(
    source: list[Planned],
    ftype: str,
    overrides,
    arch: str,
    n_layer: int | None,
    allow_requantize: bool,
    fallbacks: list[str],
    inp: Path,
    quiet: bool,
) -> dict[str, str]:
    """Each tensor's type under llama.cpp's policy and the overrides; a quantized input
    tensor is converted only with --allow-requantize (llama-quantize's rule: errors add up;
    one that keeps its type is copied). Prints the fallback warnings."""
    input_types = {p.name: p.qtype for p in source}
    if ftype == COPY:
        return input_types
    types = plan_types(
        ftype,
        [(p.name, p.shape) for p in source],
        overrides,
        input_types,
        fallbacks=fallbacks,
        arch=arch,
        n_layer=n_layer,
    )
    for name, t in types.items():
        if input_types[name] not in FLOAT_INPUTS and t != input_types[name] and not allow_requantize:
            raise SimpoQError(
                f"{inp}: requantizing from type {input_types[name]} is disabled (tensor {name} "
                f"would become {t}); pass --allow-requantize"
            )
    if not quiet:
        for line in fallbacks:
            print(line, file=sys.stderr)
    return types


def _planned(
    p: Planned, source_name: str, t: str, reader, imat, imat_file, refine: bool, quiet: bool, filtered: bool
) -> Planned:
    """The output tensor: an unchanged type of a GGUF input copied byte for byte (as
    llama-quantize does), anything else quantized from the input with its importance vector.
    `source_name`: the tensor's name in the input and the importance matrix (a pruned model
    renumbers its layers)."""
    if t == p.qtype and reader is not None:
        return Planned(
            p.name, p.shape, t, lambda n=source_name, r=reader: r.tensor_bytes(n), raw=True, src_type=p.src_type
        )
    vec = _vector(imat, imat_file, source_name, p.shape, t, quiet, filtered)
    return Planned(p.name, p.shape, t, p.load, imatrix=vec, refine=refine, rows=p.rows, src_type=p.src_type)


def quantize_model(
    inp: str | os.PathLike | StateDictSource,
    out: str | os.PathLike,
    ftype: str = "Q3_K_S",
    *,
    overrides: Overrides | None = None,
    dry_run: bool = False,
    ollama: bool = False,
    quiet: bool = False,
    threads: int | None = None,
    imatrix=None,
    imatrix_ctx: int = 512,
    imatrix_chunks: int | None = None,
    name: str | None = None,
    force: bool = False,
    inputs: tuple = (),
    refine: bool = False,
    target_bpw: float | None = None,
    target_size: int | None = None,
    sensitivity: dict[str, np.ndarray] | None = None,
    page: Page | None = None,
    model_card: bool = False,
    kv_overrides: list[tuple[str, str, object]] = (),
    allow_requantize: bool = False,
    include_weights: tuple[str, ...] = (),
    exclude_weights: tuple[str, ...] = (),
    prune_layers: tuple[int, ...] = (),
    keep_split: bool = False,
    split_max_size: int = 0,
    split_max_tensors: int = 0,
) -> Path | None:
    """`name`, when given, replaces general.name (otherwise the source directory's name).
    Files written beside OUT (OUT.imatrix.gguf, Modelfile, NOTICE, README.md) are refused
    when they exist, unless `force`. `inputs`: further paths the output must not replace (the
    pipeline's recipe inputs). `page` (licence, base model, Ollama parameters...) goes into
    the GGUF's general.* keys, the Modelfile (`ollama`) and the model card (`model_card`);
    the quantizer sets `page.card`, which the pipeline rewrites with its evaluation.
    `kv_overrides`: (key, type, value) metadata set as llama-quantize's --override-kv does
    (`parse_kv_override`). `prune_layers`: decoder layers dropped, the rest renumbered
    (llama-quantize's --prune-layers). `ftype` "COPY": a GGUF's tensors as they are.
    `keep_split`: a split GGUF input gives as many output files (llama-quantize's
    --keep-split); `split_max_size`/`split_max_tensors` split the output as the converter
    does. A split output's files are OUT-00001-of-0000N.gguf; the first one is returned.
    `sensitivity`: the output sensitivities a budget weighs errors with ({tensor name: one value
    per row}, sensitivity.py); measured here when `imatrix` is a calibration text."""
    general_name = name
    ftype = check_file_type(ftype)
    _check_arguments(imatrix, imatrix_ctx, imatrix_chunks, target_bpw, target_size, include_weights, exclude_weights)
    budgeted = target_bpw is not None or target_size is not None
    inp, metadata, source, origin, reader = _open_source(inp)
    file_type = _file_type_id(ftype, metadata, reader, inp, budgeted or refine)
    source, original, block_count = prune(source, prune_layers, inp)
    arch = str(next((v for k, _, v in metadata if k == "general.architecture"), ""))
    # everything that can be checked is checked before the long work (the importance matrix)
    kind = _imatrix_kind(imatrix, inp)
    if kind == "text" and budgeted and not dry_run:
        from simpo_q.sensitivity import check_memory

        check_memory(inp, imatrix_ctx, str(imatrix))
    by_name = {p.name: p for p in source}
    fallbacks: list[str] = []  # llama-quantize's warning lines, one per tensor whose type was replaced
    n_layer = next((v for k, _, v in metadata if k == f"{arch}.block_count"), None)
    types = _tensor_types(source, ftype, overrides, arch, n_layer, allow_requantize, fallbacks, inp, quiet)
    needy = [n for n in sorted(types, key=weights_map_key) if requires_imatrix(ftype, n, types[n])]
    if needy and imatrix is None:
        raise SimpoQError(
            f"{inp}: {ftype} needs an importance matrix for its Q2_K tensors ({needy[0]} and "
            f"{len(needy) - 1} more): give one with --imatrix, as llama-quantize requires"
        )
    adapter = adapter_by_arch(arch, str(inp))
    publishing = page is not None or ollama or model_card
    if publishing and page is None:
        page = Page()
    if page is not None and page.base_name is None:
        page.base_name = inp.name
    if page is not None and not page.tags:
        page.tags = [
            "gguf",
            "llama.cpp",
            "ollama",
            ftype,
            *(["imatrix"] if kind else []),
            *(["simpo"] if page.training is not None else []),
        ]
    resolved = page.resolve(adapter) if page is not None else None
    saved = imatrix_beside(out)
    if not dry_run:
        ins = [inp, imatrix if kind in ("file", "text") else None, *inputs]
        # the tensor data at the planned types, plus room for the metadata (the vocabulary)
        need = sum(shape_bytes(types[p.name], p.shape) + ALIGNMENT for p in source) + (8 << 20)
        sides = [
            *([saved] if kind == "text" else []),
            *(ollama_files(Path(out), resolved) if ollama else []),
            *([card_beside(out)] if model_card else []),
            *([tensor_types_beside(out)] if budgeted else []),
        ]
        _check_outputs(out, ins, need, f"the {ftype} GGUF", sides, force)
    if dry_run and kind == "text":
        # a dry run computes nothing: the types do not depend on the importance matrix
        if not quiet:
            print(
                "dry run: the importance matrix is not computed"
                + (
                    "; the budget's errors are measured without it and without the output "
                    "sensitivities, so the real run may choose other types"
                    if budgeted
                    else ""
                ),
                file=sys.stderr,
            )
        kind = None
    imat, imat_file, measured = _importance(imatrix, kind, inp, saved, quiet, imatrix_ctx, imatrix_chunks, budgeted)
    sensitivity = sensitivity if sensitivity is not None else measured
    if imat is not None and (include_weights or exclude_weights):
        imat = _filtered(imat, include_weights, exclude_weights)
    table = None
    if budgeted:
        from simpo_q.allocate import plan_budget

        if sensitivity is None and imat is not None and not quiet:
            print(
                "the budget's errors are weighted by the importance matrix alone; give --imatrix the "
                "calibration text instead for the output sensitivities too (docs/refine.md)",
                file=sys.stderr,
            )

        planned = [by_name[n] for n in sorted(by_name, key=weights_map_key)]
        types, table = plan_budget(
            planned,
            types,
            lambda n: _vector(imat, imat_file, original.get(n, n), by_name[n].shape, types[n], True),
            None if sensitivity is None else lambda n: _sensitivity(sensitivity, original.get(n, n), by_name[n].shape),
            target_bpw=target_bpw,
            target_size=target_size,
            refine=refine,
            threads=threads,
            quiet=quiet,
        )
    order = sorted(by_name, key=weights_map_key)
    if keep_split:
        if reader is None:
            raise SimpoQError(f"{inp}: --keep-split keeps the files of a split GGUF; this input is a directory")
        # llama-quantize's order with --keep-split: file by file, in each file's order
        offsets = {t[0]: (reader.split_of(t[0]), t[3]) for t in reader.tensors}
        order = sorted(by_name, key=lambda n: offsets[original.get(n, n)])
    plan = [
        _planned(
            by_name[name],
            original.get(name, name),
            types[name],
            reader,
            imat,
            imat_file,
            refine,
            quiet,
            bool(include_weights or exclude_weights),
        )
        for name in order
    ]
    for p in plan if imat is not None else ():  # a dry run from a text computes no matrix
        if requires_imatrix(ftype, p.name, p.qtype) and p.imatrix is None and not p.raw:
            raise SimpoQError(
                f"{imat_file or imatrix}: no entry for {original.get(p.name, p.name)}, which {ftype} quantizes to "
                f"Q2_K with an importance matrix only (llama-quantize refuses it too)"
            )
    md = _file_metadata(
        metadata,
        file_type,
        general_name,
        resolved,
        plan,
        refine,
        kv_overrides,
        imat,
        imat_file,
        {original.get(n, n) for n in by_name},
        inp,
        # llama-quantize sets a pruned model's block count after every override
        last=[] if block_count is None else [(f"{arch}.block_count", "u32", block_count)],
    )
    if budgeted and (not quiet or dry_run):
        _print_budget_table(plan, table)
    if dry_run:
        _print_dry_run(plan)
        return None
    out = Path(out)
    files = _write(
        out, md, plan, reader, original, keep_split, split_max_size, split_max_tensors, quiet, threads, [inp, *inputs]
    )
    path = files[0]
    if not quiet:
        for line in size_summary(plan):
            print(line, file=sys.stderr)
        if fallbacks:
            print(
                f"quantize: WARNING: {len(fallbacks)} of {len(plan)} tensor(s) required fallback quantization",
                file=sys.stderr,
            )
        for f in files:
            print(f"wrote {f} ({f.stat().st_size} bytes)", file=sys.stderr)
    if budgeted:
        from simpo_q.allocate import tensor_type_file

        tt = write_text(tensor_types_beside(out), tensor_type_file({p.name: p.qtype for p in plan}))
        if not quiet:
            print(f"wrote {tt} (the chosen types; llama-quantize --tensor-type-file reads it)", file=sys.stderr)
    if page is not None and resolved is not None:
        made = Made(
            path.name,
            ftype,
            [p.qtype for p in plan],
            _describe(inp, origin),
            reader is not None,
            imatrix=None
            if imat is None
            else {
                "file": Path(imat_file).name,
                "dataset": imat.datasets[0] if imat.datasets else None,
                "chunks": imat.chunk_count or None,
                "ctx": imat.chunk_size or None,
            },
            refined=refine,
            budget=(
                f"--target-bpw {target_bpw}"
                if target_bpw is not None
                else f"--target-size {target_size} bytes"
                if target_size is not None
                else None
            ),
            size_bytes=sum(f.stat().st_size for f in files),
        )
        _publish(path, md, adapter, page, resolved, made, ollama, model_card, quiet)
    return path


def _with_general(md: list, general: list) -> list:
    """The page's general.* keys where the converter puts them: after general.size_label."""
    keys = {k for k, _, _ in general}
    md = [e for e in md if e[0] not in keys]
    at = next(
        (i + 1 for i, (k, _, _) in enumerate(md) if k == "general.size_label"),
        next((i + 1 for i, (k, _, _) in enumerate(md) if k == "general.name"), len(md)),
    )
    return md[:at] + general + md[at:]


def _describe(inp: Path, origin) -> str:
    """Where the weights came from, for the model card."""
    if isinstance(origin, HFDirectory):
        return f"the {'/'.join(sorted(d.lower() for d in origin.dtypes()))} safetensors of `{inp.name}`"
    if isinstance(origin, StateDictSource):
        return "the trained weights in memory, tensor by tensor"
    types = sorted({qt for _, _, qt, _, _ in origin.tensors})
    return f"the {'/'.join(types)} GGUF `{inp.name}`"


def parse_kv_override(spec: str) -> tuple[str, str, object]:
    """llama.cpp's string_parse_kv_override: KEY=int:N (written as u32 of |N|, as
    llama-quantize does), KEY=float:X (f32), KEY=bool:true|false, KEY=str:S (≤ 127 chars)."""
    key, sep, rest = spec.partition("=")
    if not sep or not key or len(key) >= 128:
        raise SimpoQError(f"--override-kv {spec!r}: expected KEY=TYPE:VALUE (TYPE int, float, bool or str)")
    kind, _, value = rest.partition(":")
    try:
        if kind == "int":
            return key, "u32", abs(int(value)) & 0xFFFFFFFF
        if kind == "float":
            return key, "f32", float(value)
        if kind == "bool" and value in ("true", "false"):
            return key, "bool", value == "true"
        if kind == "str" and len(value) <= 127:
            return key, "str", value
    except ValueError:
        pass
    raise SimpoQError(
        f"--override-kv {spec!r}: expected KEY=int:N, KEY=float:X, KEY=bool:true|false or "
        f"KEY=str:TEXT (at most 127 characters)"
    )


def _filtered(imat, include: tuple[str, ...], exclude: tuple[str, ...]):
    """llama-quantize's prepare_imatrix: the entries whose names contain none of `exclude`,
    or one of `include`; None when nothing is left (the file is then quantized without one,
    and records none)."""
    from simpo_q._native import Imatrix

    keep = [
        n
        for n in imat.names()
        if (not exclude or not any(s in n for s in exclude)) and (not include or any(s in n for s in include))
    ]
    if not keep:
        return None
    out = Imatrix(imat.chunk_size)
    for n in keep:
        s, c = imat.entry(n)
        out.set_entry(n, s, c)
    out.datasets, out.chunk_count = imat.datasets, imat.chunk_count
    return out


def _vector(imat, imat_file, name: str, shape: tuple[int, ...], qtype: str, quiet: bool, filtered: bool = False):
    """This tensor's importance vector (in_sum2 / counts, as llama-quantize), or None."""
    if imat is None or qtype in FLOAT_INPUTS:
        return None
    v = imat.importance(name)
    if v is None:
        if not quiet and name.endswith(".weight") and name != "token_embd.weight" and not filtered:
            print(f"no imatrix entry for {name}: quantized without one", file=sys.stderr)
        return None
    if len(v) != shape[-1]:
        raise SimpoQError(
            f"{imat_file}: entry {name} has {len(v)} columns, the tensor has {shape[-1]} (an imatrix of another model?)"
        )
    return v


def _sensitivity(sens: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """This tensor's output sensitivities (one per row; sensitivity.py), or None."""
    v = sens.get(name)
    if v is None:
        return None
    rows = int(np.prod(shape[:-1]))
    if len(v) != rows:
        raise SimpoQError(f"output sensitivities of {name}: {len(v)} values, the tensor has {rows} rows")
    return np.asarray(v, dtype=np.float64)


def tensor_types_beside(out: str | os.PathLike) -> Path:
    """Where a size-budget allocation is written: OUT.tensor-types.txt."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".gguf") + ".tensor-types.txt")
