"""The whole job: SimPO training, an importance matrix on calibration text, and a k-quant
GGUF (+ Ollama Modelfile and NOTICE) written from the trained weights as they are in memory
— tensor by tensor into the native quantizer, with no intermediate F32/F16 file.

Under FSDP2 the importance matrix is collected by all ranks on the sharded model (each runs
its share of the chunks, the sums are added onto rank 0), and the weights reach rank 0's
quantizer one gathered tensor at a time: no rank ever holds the whole unsharded model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from simpo_q._native import SimpoQError


def _check_args(
    recipe,
    out: Path,
    ftype: str,
    imatrix,
    ollama: bool,
    force: bool,
    ctx: int,
    chunks: int | None,
    page,
    model_card: bool,
) -> None:
    """Before hours of training: the file type must exist, --imatrix must be readable, and
    every output must be writable, not an input, and (beside OUT) not already there."""
    from simpo_q import imatrix as im
    from simpo_q.arch import adapter_for
    from simpo_q.model_card import card_beside
    from simpo_q.ollama import ollama_files
    from simpo_q.outputs import check_output, imatrix_beside
    from simpo_q.policy import check_file_type
    from simpo_q.sources import HFDirectory

    check_file_type(ftype)
    if ctx < 1:
        raise SimpoQError(f"--ctx {ctx}: must be at least 1")
    if chunks is not None and chunks < 1:
        raise SimpoQError(f"--chunks {chunks}: must be at least 1")
    src = HFDirectory(recipe.model)
    text = None
    if imatrix is not None and isinstance(imatrix, (str, os.PathLike)):
        p = Path(imatrix)
        if not p.is_file():
            raise SimpoQError(f"{p}: --imatrix file not found")
        if not im.is_imatrix_file(p):
            im.read_text(p)
            text = p
    inputs = [recipe.model, recipe.data, recipe.eval_data, imatrix if isinstance(imatrix, (str, os.PathLike)) else None]
    check_output(out, inputs)
    if text is not None:
        check_output(imatrix_beside(out), inputs, side_file=True, force=force)
    resolved = page.resolve(adapter_for(src.config, str(src.path / "config.json")))  # licence, parameters
    if ollama:
        for side in ollama_files(out, resolved):
            check_output(side, [*inputs, out], side_file=True, force=force)
    if model_card:
        check_output(card_beside(out), [*inputs, out], side_file=True, force=force)


def run_pipeline(
    recipe,
    out: str | os.PathLike,
    *,
    ftype: str = "Q3_K_S",
    imatrix=None,
    imatrix_ctx: int = 512,
    imatrix_chunks: int | None = None,
    ollama: bool = True,
    quiet: bool = False,
    name: str | None = None,
    force: bool = False,
    eval_text=None,
    eval_ctx: int = 512,
    eval_chunks: int | None = None,
    refine: bool = False,
    target_bpw: float | None = None,
    target_size: int | None = None,
    page=None,
    model_card: bool = True,
) -> Path | None:
    """Returns the GGUF's path on rank 0, None on the other ranks. The GGUF's general.name is
    `name`, by default the run's name (the recipe's output_dir), not that of its `final`
    directory. `page` (simpo_q.publish.Page) holds the command line's licence, base model,
    parameters and system prompt; the recipe fills in the rest (recipe_page)."""
    from transformers import AutoTokenizer

    from simpo_q import imatrix as im
    from simpo_q.outputs import imatrix_beside
    from simpo_q.quantize_model import quantize_model
    from simpo_q.train.distributed import rank_world
    from simpo_q.train.loop import resolve_hub_ids, train_model
    from simpo_q.train.weights import ModelWeights, serve_weights

    out = Path(out)
    page = recipe_page(recipe, page)  # before resolving: the card names hub ids, not cache folders
    recipe = resolve_hub_ids(recipe)
    _check_args(recipe, out, ftype, imatrix, ollama, force, imatrix_ctx, imatrix_chunks, page, model_card)
    if eval_text is not None:
        from simpo_q.textfile import read_text

        read_text(eval_text, "evaluation text")  # a bad evaluation text fails now, not after training
    run_dir, model = train_model(recipe, quiet=quiet)
    from simpo_q.train.loop import run_summary

    page.training = {**(page.training or {}), **run_summary(run_dir)}
    final = Path(run_dir) / "final"
    if not (final / "config.json").exists():
        raise SimpoQError(f"{final}: the training run did not finish (stop_after_steps?)")
    rank, _ = rank_world()
    sensitivity = None
    if imatrix is not None and isinstance(imatrix, (str, os.PathLike)) and not im.is_imatrix_file(imatrix):
        tok = AutoTokenizer.from_pretrained(str(final))
        text = im.read_text(imatrix)
        m = im.collect_from_model(model, tok, imatrix, ctx=imatrix_ctx, chunks=imatrix_chunks, quiet=quiet, text=text)
        if target_bpw is not None or target_size is not None:
            from simpo_q.sensitivity import collect_sensitivity

            # a budget weighs each layer's errors by what they cost the trained model
            sensitivity = collect_sensitivity(
                model, tok, text, ctx=imatrix_ctx, chunks=imatrix_chunks, where=str(imatrix), quiet=quiet
            )
        if rank == 0:
            assert m is not None
            imatrix = imatrix_beside(out)
            m.save(str(imatrix), "gguf")
            if not quiet:
                print(f"wrote {imatrix} (importance matrix, {len(m)} entries)", file=sys.stderr)
    if rank != 0:
        serve_weights(model)
        return None
    with ModelWeights(final, model) as src:
        # the importance matrix was just written beside OUT by this run: not an existing side file
        path = quantize_model(
            src,
            out,
            ftype,
            imatrix=imatrix,
            imatrix_ctx=imatrix_ctx,
            imatrix_chunks=imatrix_chunks,
            ollama=ollama,
            quiet=quiet,
            name=name or Path(recipe.output_dir).resolve().name,
            force=force,
            inputs=(recipe.model, recipe.data, recipe.eval_data),
            refine=refine,
            target_bpw=target_bpw,
            target_size=target_size,
            sensitivity=sensitivity,
            page=page,
            model_card=model_card and eval_text is None,
        )
    if not quiet:
        print(f"pipeline: trained {final}, wrote {path}", file=sys.stderr)
    if eval_text is not None:
        reports = evaluate_gguf(
            model, final, path, ftype, imatrix is not None, eval_text, ctx=eval_ctx, chunks=eval_chunks, quiet=quiet
        )
        if model_card and page.card is not None:
            from simpo_q.evaluate.kld import render

            page.evaluation = f"on {Path(eval_text).name}\n" + render(reports)
            page.card.write()
            if not quiet:
                print(f"wrote {page.card.path} (model card, with the evaluation)", file=sys.stderr)
    return path


def recipe_page(recipe, page=None):
    """The page of a trained model: the command line's choices over the recipe's (system
    prompt, Ollama parameters), the base model and data when they are hub ids, and the
    training settings for the model card."""
    import dataclasses

    from simpo_q.hub import hub_id
    from simpo_q.publish import Page

    page = dataclasses.replace(page) if page is not None else Page()
    if not page.base_model and hub_id(recipe.model):
        page.base_model = [recipe.model]
    if page.base_name is None:
        page.base_name = Path(recipe.model).name
    if not page.datasets and hub_id(recipe.data):
        page.datasets = [recipe.data]
    page.parameters = {**recipe.ollama_parameters, **page.parameters}
    if page.system is None:
        page.system = recipe.ollama_system
    page.training = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}
    return page


def evaluate_gguf(
    model,
    final: Path,
    gguf: Path,
    ftype: str,
    with_imatrix: bool,
    text_file,
    *,
    ctx: int,
    chunks: int | None,
    quiet: bool,
) -> list[dict]:
    """What quantization cost: `eval kld` of the GGUF against the trained model (in memory,
    float32: the weights the quantizer read) on a text it was not calibrated on, beside the
    same file type without the importance matrix (written to a temporary folder)."""
    import tempfile

    from transformers import AutoTokenizer

    from simpo_q.arch import adapter_for
    from simpo_q.evaluate.engines import LlamaCppModel, TorchModel, _hf_vocabulary
    from simpo_q.evaluate.kld import render, run_kld
    from simpo_q.quantize_model import quantize_model
    from simpo_q.textfile import read_text
    from simpo_q.train.distributed import is_distributed
    from simpo_q.train.weights import ModelWeights

    hf = model.hf if hasattr(model, "hf") else model
    if is_distributed():
        ref = TorchModel.from_directory(final)  # sharded weights: the saved model instead
    else:
        tok = AutoTokenizer.from_pretrained(str(final))
        ref = TorchModel(
            hf,
            tok,
            f"{final} (in memory)",
            _hf_vocabulary(tok, hf.config.vocab_size),
            adapter_for(hf.config.to_dict(), "the trained model").ARCH,
        )
    was_training = hf.training
    hf.eval()
    try:
        with tempfile.TemporaryDirectory(prefix=".simpo-q-eval-", dir=gguf.parent) as tmp:
            files = [gguf]
            if with_imatrix:
                with ModelWeights(final, model) as src:
                    plain = gguf.with_name(gguf.name.removesuffix(".gguf") + "-no-imatrix.gguf")
                    files.append(quantize_model(src, Path(tmp) / plain.name, ftype, quiet=True))
            text = read_text(text_file, "evaluation text")
            reports, _ = run_kld(
                ref,
                [LlamaCppModel(f, ctx) for f in files],
                text,
                ctx=ctx,
                chunks=chunks,
                where=str(text_file),
                quiet=quiet,
            )
    finally:
        hf.train(was_training)
    print(render(reports))
    return reports
