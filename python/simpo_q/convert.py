"""Hugging Face model directory → GGUF, as llama.cpp's convert_hf_to_gguf.py writes it
(metadata keys and order, tensor names and order, the adapter's transforms, vocabulary), with tensors read
lazily and written as they are produced."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from simpo_q._native import SimpoQError
from simpo_q.arch import adapter_for
from simpo_q.arch.base import converted_name
from simpo_q.gguf_out import Planned, size_label, write_gguf
from simpo_q.outputs import check_output
from simpo_q.policy import FILE_TYPES
from simpo_q.sources import HFDirectory

# the converter's outtypes: file types of one tensor type (policy.FILE_TYPES owns their numbers)
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def hf_plan(src: HFDirectory, tensor_type) -> list[Planned]:
    """Every tensor the converter writes, in its order, with `tensor_type(gguf_name, shape)`."""
    arch = adapter_for(src.config, str(src.path / "config.json"))
    plan = []
    cfg = src.config
    for hf in src.names():
        name = converted_name(arch, cfg, hf)
        if name is None:
            continue
        shape = src.shape(hf)

        def load(hf=hf) -> np.ndarray:
            return arch.transform(cfg, hf, src.load(hf))

        rows = None
        if hasattr(src, "load_rows") and len(shape) == 2 and arch.row_local(cfg, hf):

            def rows(start: int, stop: int, hf=hf) -> np.ndarray:
                return arch.transform(cfg, hf, src.load_rows(hf, start, stop))

        # what the quantizer's log calls the input's type: norms become float32 (+1 added)
        src_type = src.stored_type(hf) if len(shape) == 2 else "F32"
        plan.append(Planned(name, tuple(shape), tensor_type(name, tuple(shape)), load, rows=rows, src_type=src_type))
    return plan


def converted_metadata(
    src: HFDirectory, file_type: int, n_params: int, name: str | None = None, override: dict | None = None
) -> list[tuple[str, str, object]]:
    """The converter's keys, in its order; `override`: a --metadata file's keys
    (general_meta.read_override)."""
    arch = adapter_for(src.config, str(src.path / "config.json"))
    cfg = src.config
    from simpo_q.hub import repo_name

    # a hub snapshot's folder is a commit hash: the repository names the model instead
    name = name or Path(cfg.get("_name_or_path") or repo_name(src.path) or src.path.resolve().name).name
    from simpo_q.general_meta import card_keys, general_keys, generation_sampling, read_card

    head, tail = general_keys(
        name,
        # no size label without tensors (a vocabulary-only file), as the converter
        size_label(n_params) if n_params else None,
        card_keys(read_card(src.path), n_params),
        generation_sampling(src.path),
        override or {},
    )
    md: list[tuple[str, str, object]] = [
        ("general.architecture", "str", arch.ARCH),
        ("general.type", "str", "model"),
        *head,
        *tail,
    ]
    md += arch.hparams_metadata(cfg, file_type)
    md.append(("general.quantization_version", "u32", 2))
    md += arch.vocab_metadata(src.path, cfg)
    return md


def auto_outtype(src: HFDirectory) -> str:
    """convert_hf_to_gguf.py's `--outtype auto`: the stored type of the first tensor of two
    or more dimensions, bf16 or f16 (f16 for anything else)."""
    for hf in src.names():
        if len(src.shape(hf)) >= 2:
            return {"BF16": "bf16", "F16": "f16"}.get(src.stored_type(hf), "f16")
    return "f16"


def convert(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    outtype: str = "f16",
    *,
    quiet: bool = False,
    threads: int | None = None,
    name: str | None = None,
    vocab_only: bool = False,
    split_max_size: int = 0,
    split_max_tensors: int = 0,
    metadata: str | os.PathLike | None = None,
) -> Path:
    """`outtype` "auto" as the converter; `out` may hold `{ftype}` (or `{FTYPE}`), replaced by
    the outtype's name (the converter's templated file name); `name` replaces general.name;
    `vocab_only` writes the metadata and vocabulary without tensors. `split_max_size` (bytes of
    tensor data) and `split_max_tensors` split the output as the converter does
    (OUT-00001-of-0000N.gguf, llama.cpp's split layout; 0: no limit); returns the first file.
    `metadata`: the converter's --metadata override file (general.* keys, JSON)."""
    if outtype not in (*OUTTYPES, "auto"):
        raise SimpoQError(f"--outtype: {outtype!r} is not one of {', '.join(OUTTYPES)}, auto")
    from simpo_q.hub import local

    model_dir = local(model_dir)  # a hub id is read from its cached snapshot
    src = HFDirectory(model_dir)
    from simpo_q.general_meta import read_override

    override = read_override(metadata) if metadata is not None else None
    if outtype == "auto":
        outtype = auto_outtype(src)
    file_type, qtype = FILE_TYPES[outtype.upper()]
    # gguf-py's fill_templated_filename: {ftype}/{outtype} lower case, {FTYPE}/{OUTTYPE} upper case
    for key, value in (
        ("{ftype}", outtype),
        ("{outtype}", outtype),
        ("{FTYPE}", outtype.upper()),
        ("{OUTTYPE}", outtype.upper()),
    ):
        out = str(out).replace(key, value)
    out = Path(out)
    check_output(out, [model_dir])

    def tensor_type(name: str, shape: tuple[int, ...]) -> str:
        if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
            return "F32"
        if qtype == "Q8_0" and shape[-1] % 32:
            return "F16"
        return qtype

    plan = hf_plan(src, tensor_type)
    from simpo_q.gguf_out import ALIGNMENT, tensor_bytes
    from simpo_q.outputs import check_space

    if vocab_only:
        plan = []
    check_space(out, sum(tensor_bytes(p) + ALIGNMENT for p in plan) + (8 << 20), f"the {outtype} GGUF")
    n_params = sum(int(np.prod(p.shape)) for p in plan)
    md = converted_metadata(src, file_type, n_params, name, override)
    if not (split_max_size or split_max_tensors) or not plan:
        return write_gguf(out, md, plan, quiet=quiet, threads=threads)
    from simpo_q.gguf_out import write_split_gguf
    from simpo_q.gguf_split import split_by_size

    where = split_by_size([tensor_bytes(p) for p in plan], split_max_size, split_max_tensors)
    parts = [[p for p, i in zip(plan, where, strict=True) if i == k] for k in range(where[-1] + 1)]
    prefix = str(out.with_name(out.stem))  # the converter's shard names hang off the stem
    return write_split_gguf(out, prefix, md, parts, quiet=quiet, threads=threads, inputs=[model_dir])[0]
