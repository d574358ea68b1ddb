"""README.md beside the GGUF, in Hugging Face's model-card form: YAML front matter, then what
the file is and how it was made (base model, fine-tune, importance matrix, source, file type
and tensor types, whether the bytes are llama.cpp's own), the `eval kld` table when one was
run, the licence notice and the citations. The modified-files notice the Gemma licence asks
for is here and, as general.* keys, in the GGUF."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

import simpo_q
from simpo_q.outputs import write_text
from simpo_q.publish import ResolvedPage

SIMPO_CITATION = """@inproceedings{meng2024simpo,
    title={SimPO: Simple Preference Optimization with a Reference-Free Reward},
    author={Meng, Yu and Xia, Mengzhou and Chen, Danqi},
    booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
    year={2024}
}"""

# the recipe settings a reader needs to reproduce the fine-tune
_TRAINING_KEYS = (
    "beta",
    "gamma_beta_ratio",
    "loss_type",
    "learning_rate",
    "warmup_ratio",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "max_prompt_length",
    "seed",
)


@dataclass
class Made:
    """How the file was made, as the quantizer saw it."""

    gguf_name: str
    file_type: str
    tensor_types: list[str]  # one per tensor
    source: str  # "the bf16 safetensors of DIR", "the F16 GGUF X", "the trained weights in memory"
    from_gguf: bool
    imatrix: dict | None = None  # file, dataset, chunks, ctx
    refined: bool = False
    budget: str | None = None  # "--target-bpw 3.5"
    size_bytes: int | None = None


def card_beside(out: str | os.PathLike) -> Path:
    """Where the model card of OUT.gguf goes: README.md in its folder (Hugging Face's name)."""
    return Path(out).parent / "README.md"


@dataclass
class Card:
    path: Path
    name: str
    arch: object
    page: ResolvedPage
    made: Made

    def write(self) -> Path:
        return write_text(self.path, render(self.name, self.arch, self.page, self.made))


def render(name: str, arch, page: ResolvedPage, made: Made) -> str:
    fm = page.card_front_matter()
    out = ["---", yaml.safe_dump(fm, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    out.append(f"# {name} — {made.file_type} GGUF")
    out.append("")
    base = ", ".join(page.page.base_model) or f"`{page.page.base_name or 'the source model'}`"
    trained = page.page.training is not None
    what = f"a SimPO fine-tune of {base}" if trained else base
    out.append(
        f"`{made.gguf_name}` is a {made.file_type} quantization of {what}, for llama.cpp and Ollama "
        f"(`ollama create {_slug(name)} -f Modelfile`, or `llama-cli -m {made.gguf_name}`)."
    )
    out.append("")
    out.append("## How it was made")
    out.append("")
    if trained:
        t = page.page.training or {}
        data = ", ".join(page.page.datasets) or f"`{Path(str(t.get('data'))).name}`"
        steps = f", {t['steps']} optimizer steps" if t.get("steps") else ""
        out.append(
            f"- **Fine-tune**: SimPO (reference-free, length-normalised preference optimisation) on "
            f"{data}{steps}, with simpo-q {simpo_q.__version__}: "
            + ", ".join(f"{k} {t[k]}" for k in _TRAINING_KEYS if k in t)
            + "."
        )
        if "eval_accuracy" in t:
            margin = f", reward margin {t['eval_margin']:.4g}" if t.get("eval_margin") is not None else ""
            out.append(
                f"- **Held-out preference pairs** (step {t['eval_step']}): reward accuracy "
                f"{t['eval_accuracy']:.1%}{margin}."
            )
    if made.from_gguf:
        out.append(f"- **Source**: {made.source}.")
    else:
        out.append(f"- **Source**: quantized directly from {made.source}, no f32 file.")
    if made.imatrix:
        im = made.imatrix
        parts = [
            f"dataset `{im['dataset']}`" if im.get("dataset") else None,
            f"{im['chunks']} chunks" if im.get("chunks") else None,
            f"ctx {im['ctx']}" if im.get("ctx") else None,
        ]
        out.append(
            f"- **Importance matrix**: quantized with an importance matrix ({', '.join(p for p in parts if p)}"
            f"; file `{im['file']}`)."
        )
    else:
        out.append("- **Importance matrix**: none.")
    counts = Counter(made.tensor_types)
    out.append(
        f"- **File type**: {made.file_type}; tensors: "
        + ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        + "."
    )
    if made.refined or made.budget:
        how = (["simpo-q's refined encoder (every block's error at most ggml's)"] if made.refined else []) + (
            [f"types chosen within a size budget ({made.budget})"] if made.budget else []
        )
        out.append(f"- **Encoder**: {'; '.join(how)}. The format is llama.cpp's; the bytes are not llama-quantize's.")
    else:
        out.append(
            f"- **Encoder**: simpo-q {simpo_q.__version__}; the tensor bytes are identical to what "
            f"llama.cpp's llama-quantize writes for the same input, type and importance matrix."
        )
    if made.size_bytes is not None:
        out.append(f"- **Size**: {made.size_bytes} bytes.")
    if page.page.evaluation:
        out += [
            "",
            "## What quantization cost",
            "",
            "KL divergence and perplexity against the full-precision model (`simpo-q eval kld`):",
            "",
            "```",
            page.page.evaluation.rstrip(),
            "```",
        ]
    out += ["", "## Licence", ""]
    if page.license is not None:
        out.append(f"{page.license.name} ({page.license.link}); the full text is in the Modelfile's LICENSE block.")
        if page.license.notice:
            out.append("")
            out.append(page.license.notice.strip())
    elif page.license_id:
        out.append(f"`{page.license_id}`; the full text is in the Modelfile's LICENSE block.")
    out.append("")
    out.append(
        f"This file was modified from {base}: "
        + ("fine-tuned with SimPO, then " if trained else "")
        + "converted and quantized by simpo-q."
    )
    cites = ([SIMPO_CITATION] if trained else []) + ([arch.CITATION] if getattr(arch, "CITATION", None) else [])
    if cites:
        out += ["", "## Citations", "", "```bibtex", "\n\n".join(cites), "```"]
    return "\n".join(out) + "\n"


def _slug(name: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower()).strip("-")
    return s or "model"
