"""The main job on the embedded default: the tiny pretrained Gemma-2 model (built and cached
on first use) is fine-tuned with SimPO on the bundled preference pairs, an importance matrix
is measured on the bundled calibration text, and the trained weights go straight from memory
into a Q3_K_S GGUF (Q6_K for the tied embedding) with an Ollama Modelfile, the Gemma
NOTICE and a model card (README.md). It ends with what quantization cost: the KL divergence of the file from the trained
model on held-out text (the bundled evaluation text, never used for calibration), beside the
same type without the importance matrix; and llama.cpp answers a question."""

from __future__ import annotations

import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"  # the bundled texts and preference pairs


def run_demo(out: Path, cache: Path, quiet: bool = False) -> list[Path]:
    from simpo_q.outputs import imatrix_beside
    from simpo_q.pipeline import run_pipeline
    from simpo_q.tiny import cached_tiny_model
    from simpo_q.train.recipe import Recipe

    model = cached_tiny_model(cache, pretrain_steps=200, quiet=quiet)
    out.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(
        model=str(model),
        data=str(DATA / "preferences.jsonl"),
        eval_fraction=0.15,
        output_dir=str(out / "simpo"),
        beta=2.0,
        gamma_beta_ratio=0.5,
        max_length=256,
        max_prompt_length=192,
        learning_rate=3e-4,
        max_steps=40,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        chunk_tokens=256,
        eval_steps=20,
    )
    gguf = run_pipeline(
        recipe,
        out / "tiny-gemma2-simpo-Q3_K_S.gguf",
        ftype="Q3_K_S",
        imatrix=DATA / "calibration.txt",
        imatrix_ctx=128,
        imatrix_chunks=16,
        quiet=quiet,
        name="tiny-gemma2-simpo",
        force=True,  # the demo owns its output folder
        eval_text=DATA / "evaluation.txt",
        eval_ctx=128,
    )
    assert gguf is not None
    written = [
        model,
        out / "simpo" / "final",
        out / "simpo" / "metrics.jsonl",
        gguf,
        imatrix_beside(gguf),
        out / "Modelfile",
        out / "NOTICE",
        out / "README.md",
    ]
    try:
        import llama_cpp
    except ImportError:
        return written
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, verbose=False)
    q = "What is the capital of France?"
    a = llm.create_chat_completion(messages=[{"role": "user", "content": q}], max_tokens=16, temperature=0.0)[
        "choices"
    ][0]["message"]["content"]
    if not quiet:
        print(f"llama.cpp, {gguf.name}: {q!r} -> {a!r}", file=sys.stderr)
    return written
