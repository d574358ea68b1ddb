"""Hugging Face model and dataset ids as llama.cpp's converter reads them into general.* keys.

A port, function for function and under the same names, of `Metadata.id_to_title` and
`Metadata.get_model_id_components` in llama.cpp's gguf-py (gguf/metadata.py), so that the
general.base_model.* and general.dataset.* keys simpo-q writes are the ones
convert_hf_to_gguf.py writes from the same model card (tests/test_publish.py compares them)."""

from __future__ import annotations

import re


def id_to_title(string: str) -> str:
    """'gemma-2-9b-it' -> 'Gemma 2 9b It': words title-cased unless an acronym or a version."""
    return " ".join(
        w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w
        for w in string.strip().replace("-", " ").split()
    )


def get_model_id_components(model_id: str | None = None, total_params: int = 0):
    """(full name, organization, basename, finetune, version, size label) of `org/name`."""
    if model_id is None:
        return None, None, None, None, None, None
    if " " in model_id:
        return model_id, None, None, None, None, None  # a plain name, not an id
    if "/" in model_id:
        org, full = model_id.split("/", 1)
    else:
        org, full = None, model_id
    if org is not None and len(org) > 0 and org[0] == ".":
        org = None  # './' or '../', not an organization
    parts = [p for p in full.split("-") if p]
    types: list[set[str]] = [set() for _ in parts]
    for i, part in enumerate(parts):
        if re.fullmatch(r"(v|iter)?\d+([.]\d+)*", part, re.IGNORECASE):
            types[i].add("version")
        elif re.fullmatch(r"i?q\d(_\w)*|b?fp?(16|32)", part, re.IGNORECASE):
            types[i].add("type")
            parts[i] = part.upper()
        elif i > 0 and re.fullmatch(
            r"(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)", part, re.IGNORECASE
        ):
            part = part.replace("_", ".")
            if part[-1].isdecimal():  # bloom-7b1
                part = part[:-2] + "." + part[-1] + part[-2]
            if len(part) > 1 and part[-2].isdecimal() and part[-1] in "kmbt":
                part = part[:-1] + part[-1].upper()
            if total_params != 0:
                try:
                    label_params = float(part[:-1]) * pow(1000, " KMBT".find(part[-1]))
                    # far from the model's size: a context length, so part of the finetune
                    if (total_params < 0 and label_params < abs(total_params) // 8) or (
                        total_params > 0 and abs(label_params - total_params) > 7 * total_params // 8
                    ):
                        types[i].add("finetune")
                        part = part[:-1] + part[-1].lower()
                except ValueError:
                    pass
            if len(types[i]) == 0:
                types[i].add("size_label")
            parts[i] = part
        elif i > 0 and re.fullmatch(r"chat|instruct|vision|lora", part, re.IGNORECASE):
            if total_params < 0 and part.lower() == "lora":
                types[i].add("type")
            else:
                types[i].add("finetune")
    # word sizes ("small") are dropped when a numeric one is present
    if any(c.isdecimal() for n, t in zip(parts, types, strict=True) if "size_label" in t for c in n):
        for n, t in zip(parts, types, strict=True):
            if "size_label" in t and all(c.isalpha() for c in n):
                t.remove("size_label")
    at_start = True
    for part, t in zip(parts, types, strict=True):
        if at_start and ((len(t) == 0 and part[0].isalpha()) or "version" in t):
            t.add("basename")
        else:
            at_start = False
            if len(t) == 0:
                t.add("finetune")
    for t in reversed(types):  # a trailing version is not the basename
        if "basename" in t and len(t) > 1:
            t.remove("basename")
        else:
            break
    basename = "-".join(n for n, t in zip(parts, types, strict=True) if "basename" in t) or None
    size_label = "-".join(dict.fromkeys(s for s, t in zip(parts, types, strict=True) if "size_label" in t)) or None
    finetune = "-".join(f for f, t in zip(parts, types, strict=True) if "finetune" in t) or None
    version = "-".join(v for v, t in zip(parts, types, strict=True) if "version" in t and "basename" not in t) or None
    if size_label is None and finetune is None and version is None:
        basename = None  # too ambiguous
    return full, org, basename, finetune, version, size_label


def id_entry(model_id: str, total_params: int) -> dict[str, str]:
    """A base model or dataset entry (name, organization, version, repo_url) of an id or URL,
    as the converter builds it from a model card's `base_model` or `datasets`."""
    entry: dict[str, str] = {}
    ident: str | None = model_id
    if model_id.startswith(("http://", "https://", "ssh://")):
        entry["repo_url"] = model_id
        m = re.match(r"https?://huggingface.co/([^/]+/[^/]+)$", model_id) if "huggingface.co" in model_id else None
        ident = m.group(1) if m else None
    if ident is None:
        return entry
    full, org, _, _, version, _ = get_model_id_components(ident, total_params)
    if full is not None:
        entry["name"] = id_to_title(full)
    if org is not None:
        entry["organization"] = id_to_title(org)
    if version is not None:
        entry["version"] = version
    if "repo_url" not in entry and org is not None and full is not None:
        entry["repo_url"] = f"https://huggingface.co/{org}/{full}"
    return entry
