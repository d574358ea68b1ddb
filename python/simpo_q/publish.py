"""What a user publishes with a GGUF, decided before any work: the licence and its text, the
base model, the datasets, the Ollama parameters and system prompt (`Page`), and the general.*
keys that say so inside the file, written as llama.cpp's converter writes them from a model card.

The architecture adapter owns the defaults (template, parameters, licence); the command line
and the recipe override them; every choice is checked here, so that a bad one fails before
the importance matrix or the training starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from simpo_q._native import SimpoQError
from simpo_q.model_id import id_entry


@dataclass(frozen=True)
class License:
    id: str  # the model card's `license:` value
    name: str
    link: str
    text_file: str | None  # bundled full text, in simpo_q/data
    notice: str | None  # the notice file every distribution must carry, if the licence asks for one


# licences whose full text ships with simpo-q; any other needs --license-file
LICENSES = {
    "gemma": License(
        "gemma",
        "Gemma Terms of Use",
        "https://ai.google.dev/gemma/terms",
        "gemma-terms-of-use.txt",
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n",
    ),
}

# Ollama's model options (api/types.go, Options and Runner) and how each is written and checked
OLLAMA_PARAMETER_TYPES = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "num_thread": int,
    "use_mmap": bool,
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
}


def check_parameter(key: str, value, where: str):
    """An Ollama parameter value in its type (stop: a list of strings), or a clear error."""
    t = OLLAMA_PARAMETER_TYPES.get(key)
    if t is None:
        raise SimpoQError(f"{where}: {key!r} is not an Ollama parameter; known: {', '.join(OLLAMA_PARAMETER_TYPES)}")
    if t is list:
        vals = value if isinstance(value, list) else [value]
        if not vals or not all(isinstance(v, str) and v and '"' not in v and "\n" not in v for v in vals):
            raise SimpoQError(f"{where}: stop: expected non-empty strings without quotes or newlines, got {value!r}")
        return list(vals)
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError("expected true or false")
        if t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        v = float(value)
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        return int(v) if v.is_integer() else v
    except (TypeError, ValueError) as e:
        raise SimpoQError(f"{where}: {key}: cannot use {value!r} ({e})") from e


def parse_parameters(specs: list[str], where: str = "--parameter") -> dict:
    """`KEY=VALUE` items (stop repeatable: all of them replace the default stops)."""
    out: dict = {}
    for s in specs:
        if "=" not in s:
            raise SimpoQError(f"{where} {s!r}: expected KEY=VALUE")
        k, v = s.split("=", 1)
        k = k.strip()
        if k == "stop":
            out["stop"] = [*out.get("stop", []), *check_parameter(k, v, where)]
        else:
            out[k] = check_parameter(k, v, where)
    return out


@dataclass
class Page:
    """Everything written about the model, beside and inside the GGUF."""

    name: str | None = None
    license: str | None = None  # a licence id; None: the architecture's
    license_file: str | os.PathLike | None = None
    base_model: list[str] = field(default_factory=list)
    base_name: str | None = None  # what the card calls the source without a hub id (its folder's name)
    datasets: list[str] = field(default_factory=list)
    system: str | None = None
    parameters: dict = field(default_factory=dict)
    quantized_by: str = "simpo-q"
    tags: list[str] = field(default_factory=list)
    training: dict | None = None  # the recipe's settings, when `pipeline` trained the model
    evaluation: str | None = None  # the `eval kld` table, once one was run
    card: object = None  # the model card the quantizer made (model_card.Card), to write or rewrite

    def resolve(self, arch) -> ResolvedPage:
        """The page with the architecture's defaults filled in, every value checked."""
        lic_id = self.license if self.license is not None else getattr(arch, "LICENSE", None)
        known = LICENSES.get(lic_id) if lic_id else None
        text = None
        if self.license_file is not None:
            p = Path(self.license_file)
            if not p.is_file():
                raise SimpoQError(
                    f"{p}: --license-file not found" if not p.exists() else f"{p}: --license-file is not a regular file"
                )
            from simpo_q.textfile import read_text

            text = read_text(p, "licence file")
        elif known is not None and known.text_file is not None:
            text = resources.files("simpo_q.data").joinpath(known.text_file).read_text(encoding="utf-8")
        elif lic_id:
            raise SimpoQError(
                f"--license {lic_id}: simpo-q has no text of this licence; give it with --license-file "
                f"(bundled: {', '.join(LICENSES)})"
            )
        if text is not None and '"""' in text:
            raise SimpoQError(f'{self.license_file}: the licence text contains """, which ends a Modelfile block')
        if self.system is not None and ('"""' in self.system or not self.system.strip()):
            raise SimpoQError(f'--system {self.system!r}: must be non-empty and must not contain """')
        params = {
            k: check_parameter(k, v, "ollama parameters") for k, v in getattr(arch, "OLLAMA_PARAMETERS", {}).items()
        }
        for k, v in self.parameters.items():
            params[k] = check_parameter(k, v, "--parameter")
        for b in self.base_model:
            if not isinstance(b, str) or not b.strip():
                raise SimpoQError(f"--base-model {b!r}: expected a Hugging Face id or a URL")
        return ResolvedPage(self, lic_id, known, text, params)


@dataclass
class ResolvedPage:
    page: Page
    license_id: str | None
    license: License | None
    license_text: str | None
    parameters: dict

    def general_metadata(self, total_params: int) -> list[tuple[str, str, object]]:
        """The general.* keys convert_hf_to_gguf.py writes from a model card with this page's
        front matter, in its order (gguf-py's Metadata.set_gguf_meta_model)."""
        md: list[tuple[str, str, object]] = [("general.quantized_by", "str", self.page.quantized_by)]
        if self.license_id:
            md.append(("general.license", "str", self.license_id))
            if self.license is not None:
                md.append(("general.license.name", "str", self.license.name))
                md.append(("general.license.link", "str", self.license.link))
        for prefix, ids in (("general.base_model", self.page.base_model), ("general.dataset", self.page.datasets)):
            if not ids:
                continue
            md.append((f"{prefix}.count", "u32", len(ids)))
            for i, ident in enumerate(ids):
                e = id_entry(ident, total_params)
                for k in ("name", "version", "organization", "repo_url"):
                    if k in e:
                        md.append((f"{prefix}.{i}.{k}", "str", e[k]))
        if self.page.tags:
            md.append(("general.tags", "array[str]", list(self.page.tags)))
        return md

    def card_front_matter(self) -> dict:
        """The model card's YAML front matter (Hugging Face's keys)."""
        fm: dict = {}
        if self.page.base_model:
            fm["base_model"] = self.page.base_model[0] if len(self.page.base_model) == 1 else self.page.base_model
            fm["base_model_relation"] = "quantized"
        if self.license_id:
            fm["license"] = self.license_id
            if self.license is not None:
                fm["license_name"] = self.license.name
                fm["license_link"] = self.license.link
        if self.page.datasets:
            fm["datasets"] = list(self.page.datasets)
        if self.page.tags:
            fm["tags"] = list(self.page.tags)
        fm["quantized_by"] = self.page.quantized_by
        return fm
