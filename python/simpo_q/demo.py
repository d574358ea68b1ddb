"""The demo on the embedded default: the tiny pretrained Gemma-2 model quantized to a
Q3_K_S GGUF (Q6_K for the tied embedding) straight from its safetensors, with an Ollama
Modelfile and the Gemma NOTICE; then, when llama-cpp-python is installed, llama.cpp loads
the file and continues a prompt. Training and the importance matrix join as they land."""

from __future__ import annotations

import sys
from pathlib import Path


def run_demo(out: Path, cache: Path, quiet: bool = False) -> list[Path]:
    from simpo_q.quantize_model import quantize_model
    from simpo_q.tiny import cached_tiny_model

    model = cached_tiny_model(cache, pretrain_steps=200, quiet=quiet)
    out.mkdir(parents=True, exist_ok=True)
    gguf = quantize_model(model, out / "tiny-gemma2-Q3_K_S.gguf", "Q3_K_S", ollama=True, quiet=quiet)
    assert gguf is not None
    written = [model, gguf, out / "Modelfile", out / "NOTICE"]
    try:
        import llama_cpp
    except ImportError:
        return written
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, verbose=False)
    text = llm("The river bends", max_tokens=24, temperature=0.0)["choices"][0]["text"]
    if not quiet:
        print(f"llama.cpp, {gguf.name}: 'The river bends{text}'", file=sys.stderr)
    return written
