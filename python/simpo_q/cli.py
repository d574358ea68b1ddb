"""The `simpo-q` command line: parses arguments and calls the public Python API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from simpo_q._native import SimpoQError


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (threads, context, chunks)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def _size(text: str) -> int:
    from simpo_q.allocate import parse_size

    return parse_size(text)


def _tiny_model(args: argparse.Namespace) -> int:
    from simpo_q.tiny import TinyConfig, build_tiny_model

    cfg = TinyConfig(
        seed=args.seed,
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        heads=args.heads,
        kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        vocab=args.vocab,
        shards=args.shards,
        arch=args.arch,
    )
    out = build_tiny_model(args.dir, cfg, pretrain_steps=args.pretrain_steps, quiet=args.quiet)
    if not args.quiet:
        for p in sorted(out.iterdir()):
            print(f"wrote {p} ({p.stat().st_size} bytes)")
    return 0


# the bundled files `simpo-q data` writes out: what the README's examples and a first run need
BUNDLED = {
    "calibration.txt": "calibration text for `imatrix` (prose, dialogue, lists, numbers, code)",
    "evaluation.txt": "held-out text for `eval kld` (not the calibration text)",
    "preferences.jsonl": "240 preference pairs (prompt, chosen, rejected) for `train`",
    "tiny-recipe.yaml": "a recipe for the tiny model and preferences.jsonl beside it",
    "gsm8k-sample.jsonl": "GSM8K questions for `eval tasks --task gsm8k`",
    "mmlu-redux-sample.jsonl": "MMLU-Redux questions for `eval tasks --task mmlu`",
}


def _data(args: argparse.Namespace) -> int:
    from importlib import resources

    from simpo_q.outputs import check_output, write_text

    out = Path(args.out or args.name)
    check_output(out, [], side_file=True, force=args.force)
    text = resources.files("simpo_q.data").joinpath(args.name).read_text(encoding="utf-8")
    write_text(out, text)
    if not args.quiet:
        print(f"wrote {out} ({BUNDLED[args.name]})", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from simpo_q.demo import run_demo

    for path in run_demo(Path(args.out), cache=Path(args.cache), quiet=args.quiet):
        print(f"wrote {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from simpo_q.convert import convert

    out = _one_of("outfile", args.outfile, args.out, None)
    if out is None:
        raise SimpoQError("convert: give the output file (OUT or --outfile)")
    convert(
        args.model,
        out,
        args.outtype,
        quiet=args.quiet,
        threads=args.threads,
        name=args.model_name,
        vocab_only=args.vocab_only,
        split_max_size=_split_bytes(args.split_max_size),
        split_max_tensors=args.split_max_tensors,
        metadata=args.metadata,
    )
    return 0


def _split_bytes(text: str) -> int:
    """The converter's split_str_to_n_bytes: a number of bytes, optionally followed by K, M or
    G (powers of 1000)."""
    scale = {"K": 1000, "M": 1000**2, "G": 1000**3}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise SimpoQError(f"--split-max-size {text!r}: expected a number, optionally followed by K, M or G")
    return int(digits) * scale


def _quantize(args: argparse.Namespace) -> int:
    from simpo_q.policy import Overrides
    from simpo_q.quantize_model import parse_kv_override, quantize_model

    tt = []
    for spec in args.tensor_type:
        if "=" not in spec:
            raise SimpoQError(f"--tensor-type {spec!r}: expected PATTERN=TYPE")
        pat, t = spec.rsplit("=", 1)
        tt.append((pat, t))
    if args.tensor_type_file:
        from simpo_q.allocate import read_tensor_type_file

        tt += read_tensor_type_file(args.tensor_type_file)
    target_size = None if args.target_size is None else _size(args.target_size)
    args.type = _one_of("type", args.type, args.type_pos, "Q3_K_S")
    args.threads = _one_of("threads", args.threads, args.nthreads_pos, None)
    ov = Overrides(
        output_tensor_type=args.output_tensor_type,
        token_embedding_type=args.token_embedding_type,
        tensor_types=tt,
        pure=args.pure,
        leave_output=args.leave_output_tensor,
    )
    quantize_model(
        args.input,
        args.out,
        args.type,
        overrides=ov,
        dry_run=args.dry_run,
        ollama=args.ollama,
        quiet=args.quiet,
        threads=args.threads,
        imatrix=args.imatrix,
        imatrix_ctx=args.ctx,
        imatrix_chunks=args.chunks,
        force=args.force,
        refine=args.refine,
        target_bpw=args.target_bpw,
        target_size=target_size,
        name=args.name,
        page=_page(args),
        model_card=args.model_card,
        kv_overrides=[parse_kv_override(s) for s in args.override_kv],
        allow_requantize=args.allow_requantize,
        include_weights=tuple(args.include_weights),
        exclude_weights=tuple(args.exclude_weights),
        prune_layers=_layer_list(args.prune_layers),
        keep_split=args.keep_split,
        split_max_size=_split_bytes(args.split_max_size),
        split_max_tensors=args.split_max_tensors,
    )
    return 0


def _layer_list(spec: str | None) -> tuple[int, ...]:
    """--prune-layers L0,L1,...: non-negative layer numbers, sorted, without repeats (as
    llama-quantize's parse_layer_prune)."""
    if spec is None:
        return ()
    out = set()
    for part in spec.split(","):
        try:
            n = int(part)
        except ValueError:
            n = -1
        if n < 0:
            raise SimpoQError(f"--prune-layers: invalid layer id {part!r}")
        out.add(n)
    return tuple(sorted(out))


def _one_of(what: str, flag, positional, default):
    """A value given as --flag or positionally (llama-quantize's habit), not two different ones."""
    from simpo_q.policy import check_file_type

    if flag is not None and positional is not None:
        same = check_file_type(str(flag)) == check_file_type(str(positional)) if what == "type" else flag == positional
        if not same:
            raise SimpoQError(f"--{what} {flag} and the positional {what} {positional} disagree; give one")
    return flag if flag is not None else positional if positional is not None else default


def _page(args: argparse.Namespace, always: bool = False):
    """The page options of quantize and pipeline (None when quantize was given none of them:
    its metadata then stays llama-quantize's)."""
    from simpo_q.publish import Page, parse_parameters

    given = args.license or args.license_file or args.base_model or args.parameter or args.system
    if not (given or always or getattr(args, "ollama", False) or getattr(args, "model_card", False)):
        return None
    return Page(
        license=args.license,
        license_file=args.license_file,
        base_model=list(args.base_model),
        system=args.system,
        parameters=parse_parameters(args.parameter),
    )


def _page_options(p: argparse.ArgumentParser) -> None:
    """What the Modelfile, the model card and the GGUF's general.* keys say about the model."""
    p.add_argument(
        "--license",
        metavar="ID",
        help="licence id for the card and general.license (default: the architecture's: gemma for "
        "Gemma, none for Llama)",
    )
    p.add_argument("--license-file", metavar="FILE", help="full licence text for the Modelfile's LICENSE block")
    p.add_argument(
        "--base-model",
        action="append",
        default=[],
        metavar="ID",
        help="Hugging Face id of the model this one derives from (repeatable; general.base_model.*)",
    )
    p.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an Ollama PARAMETER over the architecture's defaults (repeatable; stop may repeat)",
    )
    p.add_argument("--system", metavar="TEXT", help="the Modelfile's SYSTEM prompt")


def _merged_chunk_size(files: list[str]) -> int:
    """The chunk size of a merge without --ctx: the first input's that records one (a legacy
    .dat file does not), else llama-imatrix's 512."""
    from simpo_q import imatrix as im

    for f in files:
        size = im.load(f).chunk_size
        if size > 0:
            return size
    return 512


def _resume_from(args: argparse.Namespace):
    """The statistics a killed run left in the output (--resume), checked against this run's
    arguments; None when there is nothing to resume from."""
    from simpo_q import imatrix as im

    out = Path(args.output)
    if not args.file or not args.model:
        raise SimpoQError("--resume continues a collection: give MODEL and -f TEXT")
    if not out.exists():
        if not args.quiet:
            print(f"imatrix: {out} does not exist; starting from the first chunk", file=sys.stderr)
        return None
    m = im.load(out)
    if m.chunk_size != args.ctx:
        raise SimpoQError(f"{out}: collected with chunks of {m.chunk_size} tokens; this run has --ctx {args.ctx}")
    if str(args.file) not in m.datasets:
        raise SimpoQError(f"{out}: collected over {m.datasets}, not {args.file}; nothing to resume")
    if args.chunks is not None and m.chunk_count >= args.chunks:
        raise SimpoQError(f"{out}: already holds {m.chunk_count} chunks (--chunks {args.chunks}); nothing to do")
    if not args.quiet:
        print(f"imatrix: resuming {out} after {m.chunk_count} chunks", file=sys.stderr)
    m.datasets = [d for d in m.datasets if d != str(args.file)]  # this run adds it back
    return m


def _imatrix(args: argparse.Namespace) -> int:
    from simpo_q import imatrix as im

    if args.show_statistics:
        # llama-imatrix's form: one --in-file (or --show FILE) and --show-statistics
        files = [*args.in_file, *([args.show] if args.show else [])]
        if len(files) != 1:
            raise SimpoQError("--show-statistics: give a single imatrix file (--in-file FILE)")
        print(im.show_statistics(im.load(files[0]), files[0]))
        return 0
    if args.show:
        m = im.load(args.show)
        size = f"of {m.chunk_size}" if m.chunk_size else "(chunk size not recorded: legacy .dat format)"
        print(f"{args.show}: {len(m)} entries, {m.chunk_count} chunks {size}, datasets {m.datasets}")
        print(
            f"{'name':36s} {'cols':>6s} {'count':>8s} {'sum':>12s} {'min':>10s} {'max':>10s} {'mean':>10s} {'zero':>6s}"
        )
        for r in im.stats(m):
            print(
                f"{r['name']:36s} {r['columns']:6d} {r['count']:8d} {r['sum']:12.4g} {r['min']:10.4g} "
                f"{r['max']:10.4g} {r['mean']:10.4g} {r['zero_fraction']:6.1%}"
            )
        return 0
    args.model = _one_of("model", args.model_opt, args.model, None)
    if args.chunk < 0:
        raise SimpoQError(f"--chunk {args.chunk}: must be at least 0")
    for flag, v in (("--output-frequency", args.output_frequency), ("--save-frequency", args.save_frequency)):
        if v < 0:
            raise SimpoQError(f"{flag} {v}: must be at least 0 (0: never)")
    if not args.output:
        if not args.file:
            raise SimpoQError("imatrix: -o/--output is required when merging")
        args.output = "imatrix.gguf"  # llama-imatrix's default
    if args.file and not args.model:
        raise SimpoQError("imatrix: -f needs MODEL")
    if not args.file and not args.in_file:
        raise SimpoQError("imatrix: give -f TEXT (with MODEL) and/or --in-file FILE")
    from simpo_q._native import Imatrix
    from simpo_q.outputs import check_output

    if args.model:
        from simpo_q.hub import local

        args.model = str(local(args.model))  # a hub id is read from its cached snapshot
    if args.ctx is None:
        args.ctx = _merged_chunk_size(args.in_file) if not args.file else 512
    resumed = None
    if args.resume:
        resumed = _resume_from(args)
    check_output(args.output, [args.model, args.file, *args.in_file])
    if args.file:
        if args.model:
            from simpo_q.sources import HFDirectory

            HFDirectory(args.model)  # a bad model fails before anything is loaded
        im.read_text(args.file)
    m = Imatrix(args.ctx)
    if resumed is not None:
        m = resumed
    for f in args.in_file:
        try:
            m.merge(im.load(f))
        except SimpoQError as e:
            # the core names the entry; the files are only known here
            sources = ", ".join(str(x) for x in args.in_file[: args.in_file.index(f)]) or "nothing"
            raise SimpoQError(f"{f}: cannot merge into {sources}: {e}") from e
    if args.file:
        from simpo_q.imatrix_offload import collect_offloaded, needs_offload

        kw = dict(
            ctx=args.ctx,
            chunks=args.chunks,
            device=args.device,
            dtype=args.dtype,
            quiet=args.quiet,
            into=m,
            skip=args.chunk + (resumed.chunk_count if resumed is not None else 0),
            process_output=args.process_output,
            checkpoint=im.Checkpoint(args.output, args.output_frequency, args.save_frequency),
        )
        if resumed is not None and args.chunks is not None:
            kw["chunks"] = args.chunks - resumed.chunk_count
        why = "--offload" if args.offload else needs_offload(args.model, args.device, args.dtype)
        if why:
            if not args.quiet:
                print(f"imatrix: one decoder layer at a time ({why}; no perplexity in this mode)", file=sys.stderr)
            # layer by layer, a weight is read once for all the chunks in memory, so batching costs
            # nothing there; oneDNN's product on 512 rows beats 128 by 10% on the CPU (benches/bench_gemm.py)
            b = args.batch_size or (2048 if args.device.startswith("cuda") else 512)
            collect_offloaded(args.model, args.file, batch=max(1, b // args.ctx), **kw)
        else:
            # llama-imatrix's rule: a batch of -b tokens holds -b / ctx chunks. Unset: its 2048 on a
            # GPU; one chunk per forward on the CPU, where torch runs batched chunks slower
            # (benches/bench_imatrix_vs_llama.py: 1263 against 1112 tokens/s at 66M)
            b = args.batch_size or (2048 if args.device.startswith("cuda") else args.ctx)
            im.collect(args.model, args.file, batch=max(1, b // args.ctx), ppl=not args.no_ppl, **kw)
    im.save(m, args.output)
    if not args.quiet:
        print(f"wrote {args.output} ({len(m)} entries, {m.chunk_count} chunks)", file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from simpo_q.gguf import open_gguf

    r = open_gguf(args.file)
    if args.json:
        md = [{"key": k, "type": t, "value": v} for k, t, v in r.metadata]
        ts = [{"name": n, "type": t, "shape": d, "bytes": b, "offset": o} for n, d, t, o, b in r.tensors]
        print(json.dumps({"version": r.version, "alignment": r.alignment, "metadata": md, "tensors": ts}))
        return 0
    from simpo_q.policy import FILE_TYPES

    names = {v[0]: k for k, v in FILE_TYPES.items()}
    print(f"GGUF v{r.version}, {len(r.metadata)} metadata entries, {len(r.tensors)} tensors")
    refined = next((v for k, _, v in r.metadata if k == "quantize.refined"), None)
    if refined is not None:
        print(f"  refined: {refined} (same format; not ggml's bytes)")
    for k, t, v in r.metadata:
        text = repr(v)
        if k == "general.file_type" and v in names:
            text = f"{names[v]} ({v})"
        if isinstance(v, list):
            text = f"[{len(v)} items] " + repr(v[:5])[:-1] + (", ...]" if len(v) > 5 else "]")
        print(f"  {k:48s} {t:12s} {text[:120]}")
    print(f"  {'name':40s} {'type':7s} {'shape':22s} {'bytes':>12s} {'offset':>12s}")
    for n, d, t, o, b in r.tensors:
        print(f"  {n:40s} {t:7s} {str(d):22s} {b:12d} {o:12d}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from simpo_q.train.loop import run_summary, train
    from simpo_q.train.recipe import load_recipe

    out = train(load_recipe(args.recipe, args.set), quiet=args.quiet)
    if not args.quiet:
        final = Path(out) / "final"
        s = run_summary(out)
        where = str(final) if final.is_dir() else f"not finished, no final model in {out}"
        line = f"train: {s['steps']} steps; the model: {where}"
        if "eval_accuracy" in s:
            margin = f", margin {s['eval_margin']:.4f}" if s.get("eval_margin") is not None else ""
            line += f"; held-out reward accuracy {s['eval_accuracy']:.3f}{margin} at step {s['eval_step']}"
        print(line, file=sys.stderr)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from simpo_q.train.plan import plan, render
    from simpo_q.train.recipe import load_recipe

    r = load_recipe(args.recipe, args.set)
    gpus = args.gpus or r.gpus
    print(render(plan(r, gpus, args.gpu_mem, tflops=args.tflops, mfu=args.mfu), gpus, args.gpu_mem))
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from simpo_q.pipeline import run_pipeline
    from simpo_q.train.recipe import load_recipe

    run_pipeline(
        load_recipe(args.recipe, args.set),
        args.out,
        ftype=args.type,
        imatrix=args.imatrix,
        imatrix_ctx=args.ctx,
        imatrix_chunks=args.chunks,
        ollama=not args.no_ollama,
        quiet=args.quiet,
        name=args.name,
        force=args.force,
        eval_text=args.eval_text,
        eval_ctx=args.eval_ctx,
        eval_chunks=args.eval_chunks,
        refine=args.refine,
        target_bpw=args.target_bpw,
        target_size=None if args.target_size is None else _size(args.target_size),
        page=_page(args, always=True),
        model_card=not args.no_model_card,
    )
    return 0


def _quiet_hf(quiet: bool) -> None:
    """--quiet also silences transformers' weight-loading bars."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _eval_kld(args: argparse.Namespace) -> int:
    from simpo_q.evaluate.kld import kld_files

    _quiet_hf(args.quiet)
    kld_files(
        args.reference,
        args.quant,
        args.file,
        ctx=args.ctx,
        chunks=args.chunks,
        device=args.device,
        dtype=args.dtype,
        engine=args.engine,
        threads=args.threads,
        json_out=args.json,
        plot_out=args.plot,
        quiet=args.quiet,
        flash_attn=args.flash_attn == "on",
    )
    return 0


def _eval_tasks(args: argparse.Namespace) -> int:
    from simpo_q.evaluate.tasks import tasks_files

    _quiet_hf(args.quiet)
    tasks_files(
        args.model,
        args.task,
        args.data,
        limit=args.limit,
        max_tokens=args.max_tokens,
        ctx=args.ctx,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        json_out=args.json,
        quiet=args.quiet,
    )
    return 0


def _command(subparsers, name: str, **kw) -> argparse.ArgumentParser:
    """A subcommand whose --help shows the defaults and which takes --quiet after its name
    too (left unset when absent, so the one before the subcommand still counts)."""
    sp = subparsers.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kw)
    sp.add_argument(
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars or per-file lines (also accepted before the subcommand)",
    )
    return sp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simpo-q",
        description="SimPO preference fine-tuning to an importance-weighted k-quant GGUF.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-file lines")
    sub = parser.add_subparsers(dest="command", required=True)

    t = _command(sub, "tiny-model", help="write a tiny real Gemma-2 or Llama checkpoint (deterministic)")
    t.add_argument("dir", help="output directory")
    from simpo_q.arch import FAMILIES

    t.add_argument(
        "--arch",
        choices=[a.ARCH for a in FAMILIES],
        default="gemma2",
        help="model family: gemma2 (Gemma's layout and chat template) or llama (Llama-3's chat "
        "template on a SentencePiece vocabulary)",
    )
    t.add_argument("--seed", type=int, default=0, help="random seed of the weights (same seed, same bytes)")
    t.add_argument("--layers", type=int, default=2, help="decoder layers")
    t.add_argument("--hidden", type=int, default=256, help="hidden size")
    t.add_argument("--intermediate", type=int, default=512, help="feed-forward size")
    t.add_argument("--heads", type=int, default=4, help="attention heads")
    t.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    t.add_argument("--head-dim", type=int, default=64, help="size of one head")
    t.add_argument("--vocab", type=int, default=3072, help="vocabulary size (the tokenizer is trained to it)")
    t.add_argument("--shards", type=int, default=1, help="write N safetensors files plus an index")
    t.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        help="train briefly on the bundled text first, so it is a real (tiny) language model",
    )
    t.set_defaults(func=_tiny_model)

    c = _command(sub, "convert", help="Hugging Face Gemma-2 or Llama directory -> GGUF (f32/f16/bf16/q8_0)")
    c.add_argument("model", help="Hugging Face model directory")
    c.add_argument("out", nargs="?", help="output GGUF ({ftype} is replaced by the outtype)")
    c.add_argument("--outfile", help="output GGUF, as convert_hf_to_gguf.py takes it (same as OUT)")
    from simpo_q.convert import OUTTYPES
    from simpo_q.policy import FILE_TYPES

    c.add_argument(
        "--outtype",
        default="auto",
        choices=[*OUTTYPES, "auto"],
        help="type of the 2-D weights; auto: bf16 or f16 as the checkpoint stores them",
    )
    c.add_argument("--model-name", help="general.name of the GGUF (default: the directory's name)")
    c.add_argument("--vocab-only", action="store_true", help="only the metadata and the vocabulary, no tensors")
    c.add_argument(
        "--split-max-size",
        default="0",
        metavar="N[K|M|G]",
        help="split the output into files of at most this much tensor data (OUT-00001-of-0000N.gguf; 0: none)",
    )
    c.add_argument(
        "--metadata",
        metavar="FILE",
        help="a JSON file of general.* keys (name, author, version, license.name, base_models, tags...), "
        "as convert_hf_to_gguf.py's --metadata",
    )
    c.add_argument(
        "--split-max-tensors", type=int, default=0, metavar="N", help="split after this many tensors per file (0: none)"
    )
    c.add_argument("--threads", type=_positive, default=None, help="threads (default: all cores)")
    c.set_defaults(func=_convert)

    q = _command(sub, "quantize", help="HF directory or F32/F16/BF16 GGUF -> k-quant GGUF")
    q.add_argument("input", help="Hugging Face model directory or an F32/F16/BF16 GGUF")
    q.add_argument("out", help="output GGUF")
    q.add_argument(
        "type_pos",
        nargs="?",
        metavar="TYPE",
        help="file type, as llama-quantize takes it: a name or its number (15 = Q4_K_M); same as --type",
    )
    q.add_argument(
        "nthreads_pos",
        nargs="?",
        type=_positive,
        metavar="NTHREADS",
        help="threads, as llama-quantize's trailing argument; same as --threads",
    )
    q.add_argument(
        "--type",
        default=None,
        help="file type (default Q3_K_S): " + ", ".join(f"{n} ({i})" for n, (i, _) in FILE_TYPES.items()),
    )
    q.add_argument("--output-tensor-type", help="type of output.weight (llama-quantize's option)")
    q.add_argument("--token-embedding-type", help="type of token_embd.weight (llama-quantize's option)")
    q.add_argument(
        "--tensor-type",
        action="append",
        default=[],
        metavar="PATTERN=TYPE",
        help="regex on the tensor name = ggml type (repeatable; first match wins)",
    )
    q.add_argument("--pure", action="store_true", help="no per-tensor policy: the file type's type everywhere")
    q.add_argument("--dry-run", action="store_true", help="print each tensor's type and the predicted size")
    q.add_argument(
        "--ollama",
        action="store_true",
        help="also write a Modelfile (template, parameters, licence) and the NOTICE the licence asks for",
    )
    q.add_argument("--model-card", action="store_true", help="also write README.md, a Hugging Face model card")
    q.add_argument(
        "--include-weights",
        action="append",
        default=[],
        metavar="NAME",
        help="use the importance matrix only for tensors whose names contain NAME (repeatable)",
    )
    q.add_argument(
        "--exclude-weights",
        action="append",
        default=[],
        metavar="NAME",
        help="do not use the importance matrix for tensors whose names contain NAME (repeatable)",
    )
    q.add_argument(
        "--keep-split",
        action="store_true",
        help="a split GGUF input gives as many output files, OUT-00001-of-0000N.gguf (llama-quantize's --keep-split)",
    )
    q.add_argument(
        "--split-max-size",
        default="0",
        metavar="N[K|M|G]",
        help="split the output into files of at most this much tensor data, as convert_hf_to_gguf.py (0: none)",
    )
    q.add_argument(
        "--split-max-tensors", type=int, default=0, metavar="N", help="split after this many tensors per file (0: none)"
    )
    q.add_argument(
        "--leave-output-tensor",
        action="store_true",
        help="leave output.weight in its input type (not quantized; larger, sometimes better)",
    )
    q.add_argument(
        "--prune-layers",
        metavar="L0,L1,...",
        help="drop these decoder layers and renumber the rest (llama-quantize's --prune-layers)",
    )
    q.add_argument(
        "--allow-requantize",
        action="store_true",
        help="convert tensors that are already quantized (a quantized GGUF input; the errors add up)",
    )
    q.add_argument(
        "--override-kv",
        action="append",
        default=[],
        metavar="KEY=TYPE:VALUE",
        help="set a metadata key as llama-quantize does (TYPE int, float, bool or str; repeatable)",
    )
    q.add_argument("--name", help="general.name of the GGUF (default: the source directory's name)")
    _page_options(q)
    q.add_argument("--threads", type=_positive, default=None, help="threads (default: all cores)")
    q.add_argument("--imatrix", help="imatrix file (.gguf or .dat) or a calibration text to compute one from")
    q.add_argument("--ctx", type=_positive, default=512, help="context per chunk when computing the imatrix")
    q.add_argument("--chunks", type=_positive, default=None, help="at most N chunks when computing the imatrix")
    q.add_argument(
        "--force",
        action="store_true",
        help="replace existing files beside OUT (OUT.imatrix.gguf, Modelfile, NOTICE, README.md)",
    )
    q.add_argument(
        "--tensor-type-file",
        metavar="FILE",
        help="PATTERN=TYPE items separated by spaces or newlines (llama-quantize's format)",
    )
    q.add_argument(
        "--target-bpw",
        type=float,
        metavar="B",
        help="choose each tensor's type (Q3_K..Q8_0; Q2_K too when --imatrix is a calibration text, which "
        "also measures each layer's output sensitivity) for the least weighted error within B bits per "
        "weight; writes OUT.tensor-types.txt",
    )
    q.add_argument("--target-size", metavar="SIZE", help="the same within SIZE bytes of tensor data (4.3GB, 4100MiB)")
    q.add_argument(
        "--refine",
        action="store_true",
        help="simpo-q's refined encoder for Q3_K/Q4_K/Q5_K/Q6_K tensors: the same format, which stock "
        "llama.cpp runs, with every block's error at most ggml's (not byte-identical to ggml)",
    )
    q.set_defaults(func=_quantize)

    m = _command(sub, "imatrix", help="collect, merge or show an importance matrix (llama-imatrix's job)")
    m.add_argument("model", nargs="?", help="Hugging Face model directory or hub id")
    m.add_argument("-m", "--model", dest="model_opt", metavar="MODEL", help="the model, as llama-imatrix takes it")
    m.add_argument("-f", "--file", help="calibration text")
    m.add_argument(
        "-o",
        "--output",
        help="output file (.gguf, or .dat for the legacy format; default imatrix.gguf "
        "when collecting, as llama-imatrix)",
    )
    m.add_argument("--chunk", type=int, default=0, metavar="N", help="skip the first N chunks of the text")
    m.add_argument("--no-ppl", action="store_true", help="do not compute the perplexity (no output head)")
    m.add_argument(
        "--ctx",
        type=_positive,
        default=None,
        help="tokens per chunk (default 512; when only merging, the inputs' chunk size)",
    )
    m.add_argument("--chunks", type=_positive, default=None, help="at most N chunks (default: all)")
    m.add_argument("--device", default="cpu", help="cpu or cuda")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="torch dtype of the model")
    m.add_argument("--in-file", action="append", default=[], help="merge this imatrix (repeatable)")
    m.add_argument(
        "-b",
        "--batch-size",
        type=_positive,
        default=None,
        help="tokens per forward, as llama-imatrix: -b / --ctx chunks run together (default: 2048 on "
        "a GPU; on the CPU one chunk, where torch is faster so, and 512 tokens with --offload)",
    )
    m.add_argument(
        "--offload",
        action="store_true",
        help="run the model one decoder layer at a time, loading each from the files (about one layer "
        "of memory; chosen by itself when the model does not fit the device)",
    )
    m.add_argument(
        "--process-output",
        action="store_true",
        help="collect the untied head's input too (output.weight; a tied head is the embedding, never collected)",
    )
    m.add_argument(
        "-ofreq",
        "--output-frequency",
        type=int,
        default=0,
        metavar="N",
        help="write the statistics so far to the output every N chunks, so that a killed run can be "
        "continued with --resume (default 0: the output appears once, complete; llama-imatrix saves every 10)",
    )
    m.add_argument(
        "--save-frequency",
        type=int,
        default=0,
        metavar="N",
        help="also keep a copy every N chunks, named OUTPUT.at_CHUNKS (0: none)",
    )
    m.add_argument(
        "--resume",
        action="store_true",
        help="continue from the output a killed run left: its chunks are skipped, its sums kept",
    )
    m.add_argument("--show", metavar="FILE", help="print per-tensor statistics of an imatrix file")
    m.add_argument(
        "--show-statistics",
        action="store_true",
        help="llama-imatrix's statistics of the --in-file: Σ(Act²), min, max, μ, σ, % active, entropy, "
        "ZD score, cosine similarity with the previous layer, and per-layer means",
    )
    m.set_defaults(func=_imatrix)

    i = _command(sub, "inspect", help="metadata and tensor table of a GGUF")
    i.add_argument("file", help="GGUF file")
    i.add_argument("--json", action="store_true", help="everything as JSON")
    i.set_defaults(func=_inspect)

    t = _command(sub, "train", help="SimPO training from a YAML recipe (torchrun for FSDP2)")
    t.add_argument("recipe", help="YAML recipe (recipes/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    t.set_defaults(func=_train)

    pp = _command(sub, "pipeline", help="train (SimPO) -> imatrix -> quantized GGUF from the weights in memory")
    pp.add_argument("recipe", help="YAML recipe (recipes/)")
    pp.add_argument("out", help="output GGUF")
    pp.add_argument("--type", default="Q3_K_S", help="file type (see quantize)")
    pp.add_argument("--imatrix", help="calibration text (or an imatrix file)")
    pp.add_argument("--ctx", type=_positive, default=512, help="tokens per importance-matrix chunk")
    pp.add_argument("--chunks", type=_positive, default=None, help="at most N importance-matrix chunks")
    pp.add_argument("--no-ollama", action="store_true", help="do not write the Modelfile and NOTICE")
    pp.add_argument("--no-model-card", action="store_true", help="do not write README.md (the model card)")
    _page_options(pp)
    pp.add_argument(
        "--force",
        action="store_true",
        help="replace existing files beside OUT (OUT.imatrix.gguf, Modelfile, NOTICE, README.md)",
    )
    pp.add_argument("--name", help="general.name of the GGUF (default: the recipe's output_dir name)")
    pp.add_argument(
        "--eval-text",
        metavar="FILE",
        help="end with `eval kld` of the GGUF against the trained model on this (held-out) text, "
        "beside the same type without the importance matrix",
    )
    pp.add_argument("--refine", action="store_true", help="the refined encoder (see quantize --refine)")
    pp.add_argument("--target-bpw", type=float, metavar="B", help="types chosen within a size budget (see quantize)")
    pp.add_argument("--target-size", metavar="SIZE", help="the same within SIZE bytes (see quantize)")
    pp.add_argument("--eval-ctx", type=_positive, default=512, help="tokens per chunk of --eval-text")
    pp.add_argument("--eval-chunks", type=_positive, default=None, help="at most N chunks of --eval-text")
    pp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    pp.set_defaults(func=_pipeline)

    pl = _command(sub, "plan", help="per-GPU memory and step time of a recipe")
    pl.add_argument("recipe", help="YAML recipe (recipes/)")
    pl.add_argument(
        "--gpus", type=_positive, default=None, help="GPUs (FSDP2 ranks; default: the recipe's gpus, 1 if it says none)"
    )
    pl.add_argument("--gpu-mem", type=float, default=80.0, help="GB of memory per GPU")
    pl.add_argument("--tflops", type=float, default=989.0, help="peak bf16 TFLOP/s of one GPU (H100 SXM: 989)")
    pl.add_argument("--mfu", type=float, default=0.35, help="assumed fraction of the peak reached")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    pl.set_defaults(func=_plan)

    ev = _command(sub, "eval", help="what quantization cost: KL divergence, perplexity, task accuracy")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    k = _command(evs, "kld", help="llama-perplexity --kl-divergence's statistics, reference and quants in lockstep")
    k.add_argument(
        "reference",
        help="full-precision model: a Hugging Face directory (torch) or an F32/F16/BF16/Q8_0 GGUF (llama.cpp)",
    )
    k.add_argument("quant", nargs="+", help="quantized GGUF file(s)")
    k.add_argument("-f", "--file", required=True, help="evaluation text (not the calibration text)")
    k.add_argument("--ctx", type=_positive, default=512, help="tokens per chunk; the second half is scored")
    k.add_argument("--chunks", type=_positive, default=None, help="at most N chunks (default: all)")
    k.add_argument("--device", default="cpu", help="torch device of a Hugging Face reference: cpu or cuda")
    k.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="torch dtype of a Hugging Face reference",
    )
    k.add_argument(
        "--engine",
        default="llama.cpp",
        choices=["llama.cpp", "torch"],
        help="run each GGUF with llama.cpp, or its dequantized weights in the Hugging Face model",
    )
    k.add_argument("--threads", type=_positive, default=None, help="llama.cpp threads (default: all cores)")
    k.add_argument(
        "--flash-attn",
        default="on",
        choices=["on", "off"],
        help="llama.cpp's flash attention (llama-perplexity's default 'auto' is on for CPU)",
    )
    k.add_argument("--json", metavar="FILE", help="write every statistic as JSON")
    k.add_argument("--plot", metavar="FILE.png", help="plot the per-token KLD distributions (matplotlib)")
    k.set_defaults(func=_eval_kld)
    ta = _command(evs, "tasks", help="GSM8K / MMLU-Redux accuracy as ZeroEval measures it (the SimPO card's columns)")
    ta.add_argument(
        "model",
        nargs="+",
        help="Hugging Face directories and/or GGUF files; with two, the questions whose verdict flips are listed",
    )
    ta.add_argument("--task", required=True, choices=["gsm8k", "mmlu"], help="GSM8K or MMLU-Redux")
    ta.add_argument(
        "--data",
        required=True,
        help="JSON lines in the public layout (GSM8K: question, answer "
        "'... #### N'; MMLU-Redux: question, choices, answer)",
    )
    ta.add_argument("--limit", type=_positive, default=None, help="the first N questions only")
    ta.add_argument("--max-tokens", type=_positive, default=4096, help="longest answer (ZeroEval's default)")
    ta.add_argument("--ctx", type=_positive, default=8192, help="llama.cpp context for a GGUF")
    ta.add_argument("--device", default="cpu", help="torch device for a Hugging Face directory")
    ta.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="torch dtype for a Hugging Face directory",
    )
    ta.add_argument("--threads", type=_positive, default=None, help="llama.cpp threads")
    ta.add_argument("--json", metavar="FILE", help="every verdict and the summary as JSON")
    ta.set_defaults(func=_eval_tasks)

    da = _command(sub, "data", help="write one of the bundled files (calibration text, pairs, a recipe...)")
    da.add_argument("name", choices=list(BUNDLED), help="; ".join(f"{k}: {v}" for k, v in BUNDLED.items()))
    da.add_argument("out", nargs="?", help="where to write it (default: its name, in this folder)")
    da.add_argument("--force", action="store_true", help="replace an existing file")
    da.set_defaults(func=_data)

    d = _command(sub, "demo", help="the main job on the embedded default (tiny pretrained Gemma-2)")
    d.add_argument("--out", default="out/demo", help="where the demo writes (it owns this folder)")
    d.add_argument("--cache", default=".cache", help="where the tiny model is built once")
    d.set_defaults(func=_demo)
    return parser


class _Terminated(SystemExit):
    """Raised in the main thread on SIGTERM or SIGHUP, so that every `finally` and `except
    BaseException` on the way out runs: writers remove their temporary files."""


def _on_signal(signum, _frame) -> None:
    raise _Terminated(128 + signum)


def _check_environment() -> None:
    """Settings read from the environment deep inside, checked where an error can be said:
    SIMPO_Q_SIMD caps the quantizers' instruction set, SIMPO_Q_DIRECT_READS says when a
    checkpoint's blocks bypass the page cache (docs/quantization.md)."""
    from simpo_q._native import SIMD_LEVELS
    from simpo_q.file_reads import DIRECT_READS

    for key, values in (("SIMPO_Q_SIMD", SIMD_LEVELS), ("SIMPO_Q_DIRECT_READS", DIRECT_READS)):
        v = os.environ.get(key)
        if v and v not in values:
            raise SimpoQError(f"{key}={v!r}: expected one of {', '.join(values)} (or unset)")


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        _check_environment()
        rc = int(args.func(args))
    except SimpoQError as e:
        # what the user can fix: one line. No barrier on failure: this rank exits non-zero
        # and torchrun stops the others.
        print(f"simpo-q: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of our output went away (`| head`): stop quietly, as Unix tools do
        _silence_stdout()
        return 141
    except OSError as e:
        # the file system refused (disk full, permission): the OS's words and the path
        where = f"{e.filename}: " if e.filename else ""
        print(f"simpo-q: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simpo-q: interrupted; nothing partial was left behind", file=sys.stderr)
        return 130
    except _Terminated as e:
        print(f"simpo-q: terminated by signal {int(e.code) - 128}; nothing partial was left behind", file=sys.stderr)
        return int(e.code)
    try:
        _end_distributed()
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 141
    return rc


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so that the interpreter's final flush does not print
    'Broken pipe' after the reader has gone."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _end_distributed() -> None:
    """Under torchrun, after a command succeeded: wait for every rank, then close the process
    group. A rank that exits while a peer still talks to it (rank 0 writing the final model
    or the GGUF) would otherwise die in the communication library's threads ("terminate
    called without an active exception")."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
