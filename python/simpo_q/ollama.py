"""The Ollama page of a GGUF: a Modelfile (FROM, TEMPLATE, every PARAMETER, SYSTEM, LICENSE)
and, where the licence asks for one, its NOTICE file.

The TEMPLATE is Go text/template over Ollama's `.Messages`; the architecture adapter owns it
and tests/test_ollama.py runs it with Go's own text/template against the Hugging Face chat
template."""

from __future__ import annotations

import json
from pathlib import Path

from simpo_q.outputs import write_text
from simpo_q.publish import ResolvedPage

# the order Ollama's own pages list them in
_ORDER = ("num_ctx", "num_predict", "repeat_penalty", "temperature", "top_k", "top_p", "min_p", "stop")


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def modelfile(gguf_name: str, arch, page: ResolvedPage) -> str:
    """The Modelfile text: FROM the GGUF beside it, the adapter's TEMPLATE, the parameters,
    the system prompt and the full licence text."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{arch.OLLAMA_TEMPLATE}"""']
    params = page.parameters
    for k in sorted(params, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k)):
        if k == "stop":
            lines += [f"PARAMETER stop {json.dumps(s)}" for s in params[k]]
        else:
            lines.append(f"PARAMETER {k} {_value(params[k])}")
    if page.page.system is not None:
        lines.append(f'SYSTEM """{page.page.system}"""')
    if page.license_text is not None:
        lines.append(f'LICENSE """{page.license_text}"""')
    return "\n".join(lines) + "\n"


def ollama_files(gguf: Path, page: ResolvedPage) -> list[Path]:
    """The files `--ollama` writes beside the GGUF: the Modelfile, and NOTICE where the licence
    asks every distribution to carry one (Gemma)."""
    notice = page.license is not None and page.license.notice is not None
    return [gguf.parent / "Modelfile", *([gguf.parent / "NOTICE"] if notice else [])]


def write_ollama_files(gguf: Path, arch, page: ResolvedPage) -> list[Path]:
    texts = {
        "Modelfile": modelfile(gguf.name, arch, page),
        "NOTICE": page.license.notice if page.license is not None else None,
    }
    return [write_text(p, texts[p.name] or "") for p in ollama_files(gguf, page)]
