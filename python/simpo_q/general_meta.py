"""The general.* keys convert_hf_to_gguf.py writes besides the architecture: the sampling
defaults of generation_config.json, and a `--metadata` override file, in the order of gguf-py's
Metadata.load and set_gguf_meta_model. (Keys the converter guesses from the directory name and
the model card's front matter are not guessed here: simpo-q writes the name it is given.)"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from simpo_q._native import SimpoQError

# (override key, generation_config keys, GGUF type), in set_gguf_meta_model's order
SAMPLING = (
    ("general.sampling.sequence", ("sequence",), "str"),
    ("general.sampling.top_k", ("top_k",), "i32"),
    ("general.sampling.top_p", ("top_p",), "f32"),
    ("general.sampling.min_p", ("min_p",), "f32"),
    ("general.sampling.xtc_probability", ("xtc_probability",), "f32"),
    ("general.sampling.xtc_threshold", ("xtc_threshold",), "f32"),
    ("general.sampling.temp", ("temperature",), "f32"),
    ("general.sampling.penalty_last_n", ("penalty_last_n",), "i32"),
    ("general.sampling.penalty_repeat", ("penalty_repeat", "repetition_penalty"), "f32"),
    ("general.sampling.mirostat", ("mirostat",), "i32"),
    ("general.sampling.mirostat_tau", ("mirostat_tau",), "f32"),
    ("general.sampling.mirostat_eta", ("mirostat_eta",), "f32"),
)
# the string keys after general.name, in set_gguf_meta_model's order (license: see below)
STRINGS = (
    "general.author", "general.version", "general.organization", "general.finetune", "general.basename",
    "general.description", "general.quantized_by", "general.size_label", "general.license",
    "general.license.name", "general.license.link", "general.url", "general.doi", "general.uuid",
    "general.repo_url", "general.source.url", "general.source.doi", "general.source.uuid",
    "general.source.repo_url",
)  # fmt: skip
# the fields of a base model or dataset entry, in the writer's order
ENTRY_FIELDS = ("name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url")
LISTS = ("general.base_models", "general.datasets")
ARRAYS = ("general.tags", "general.languages")
# an override cannot set general.license (Metadata.load reads only its name and link)
OVERRIDABLE = (
    {k for k, _, _ in SAMPLING} | (set(STRINGS) - {"general.license"}) | set(LISTS) | set(ARRAYS) | {"general.name"}
)


def read_override(path: str | os.PathLike) -> dict:
    """A --metadata file: a JSON object of the keys above, each value checked for its type."""
    from simpo_q.textfile import read_text

    p = Path(path)
    try:
        data = json.loads(read_text(p, "metadata override"))
    except ValueError as e:
        raise SimpoQError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise SimpoQError(f"{p}: a JSON {type(data).__name__}, expected an object of general.* keys")
    types = {k: t for k, _, t in SAMPLING}
    for k, v in data.items():
        if k not in OVERRIDABLE:
            raise SimpoQError(f"{p}: {k!r} is not a key the converter's --metadata sets")
        t = types.get(k, "str")
        if k in LISTS:
            ok = isinstance(v, list) and all(
                isinstance(e, dict) and all(f in ENTRY_FIELDS and isinstance(x, str) for f, x in e.items()) for e in v
            )
        elif k in ARRAYS:
            ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        elif t == "i32":
            ok = type(v) is int and -(2**31) <= v < 2**31
        elif t == "f32":
            ok = type(v) in (int, float) and math.isfinite(v)
        else:
            ok = isinstance(v, str)
        if not ok:
            raise SimpoQError(f"{p}: {k}: {v!r} is not a valid value")
    return data


def generation_sampling(model_dir: Path) -> dict:
    """The sampling defaults a generation_config.json gives (gguf-py's Metadata.load)."""
    from simpo_q.tokenizer import read_json

    gen = read_json(model_dir / "generation_config.json")  # None without one
    out = {}
    if isinstance(gen, dict):
        for key, names, _ in SAMPLING:
            for n in reversed(names):  # repetition_penalty, then penalty_repeat over it
                if n in gen:
                    out[key] = gen[n]
    return out


def general_keys(name: str, size_label: str | None, card: dict, sampling: dict, override: dict):
    """(sampling keys, keys from general.name on), as set_gguf_meta_model writes them: the
    sampling keys come before general.name, the rest after it. `card`: card_keys of the model
    card, under the --metadata `override`; `size_label` counts when neither gives one."""
    types = {k: t for k, _, t in SAMPLING}
    values = {**sampling, **{k: v for k, v in override.items() if k in types}}
    head = [(k, types[k], values[k]) for k, _, _ in SAMPLING if values.get(k) is not None]
    override = {**card, **override}
    strings = {"general.size_label": size_label}
    strings.update({k: v for k, v in override.items() if k in STRINGS})
    tail: list[tuple[str, str, object]] = [("general.name", "str", override.get("general.name", name))]
    tail += [(k, "str", str(strings[k])) for k in STRINGS if strings.get(k) is not None]
    for key, prefix in (("general.base_models", "general.base_model"), ("general.datasets", "general.dataset")):
        entries = override.get(key)
        if entries is not None:
            tail.append((f"{prefix}.count", "u32", len(entries)))
            for i, e in enumerate(entries):
                tail += [(f"{prefix}.{i}.{f}", "str", e[f]) for f in ENTRY_FIELDS if f in e]
    tail += [(k, "array[str]", list(override[k])) for k in ARRAYS if override.get(k) is not None]
    return head, tail


def read_card(model_dir: Path) -> dict:
    """The YAML front matter of the directory's README.md, read as gguf-py's load_model_card
    reads it ({} without one)."""
    import yaml

    p = model_dir / "README.md"
    if not p.is_file():
        return {}
    from simpo_q.textfile import read_text

    lines = read_text(p, "model card").splitlines()
    if not lines or lines[0] != "---":
        return {}
    body = []
    for line in lines[1:]:
        if line == "---":
            break
        body.append(line)
    # the converter's fixes: "no" (Norwegian) stays a string, tabs become two spaces
    text = ("\n".join(body) + "\n").replace("- no\n", '- "no"\n').replace("\t", "  ")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SimpoQError(f"{p}: the model card's front matter is not valid YAML ({e})") from e
    return data if isinstance(data, dict) else {}


# (key, model card keys in the converter's order of preference) of apply_metadata_heuristic's
# direct conventions; general.name is not read from the card (simpo-q names the model itself)
_CARD_STRINGS = (
    ("general.author", ("author", "model_author", "model_creator")),
    ("general.version", ("version", "model_version")),
    ("general.organization", ("organization", "model_organization")),
    ("general.description", ("description", "model_description")),
    ("general.finetune", ("finetune", "model_finetune")),
    ("general.basename", ("basename", "model_basename", "model_type")),
    ("general.size_label", ("size_label", "model_size_label")),
    ("general.source.url", ("url", "model_url")),
    ("general.source.doi", ("doi", "model_doi")),
    ("general.source.uuid", ("uuid", "model_uuid")),
    ("general.source.repo_url", ("repo_url", "model_repo_url")),
    ("general.license", ("license",)),
    ("general.license.name", ("license_name",)),
    ("general.license.link", ("license_link",)),
)


def card_keys(card: dict, total_params: int) -> dict:
    """What convert_hf_to_gguf.py takes from a model card (gguf-py's apply_metadata_heuristic),
    as override-form keys: the llama.cpp conventions, base models and datasets (ids become
    name/organization/version/repo_url entries), licence, tags with the pipeline tag, languages."""
    from simpo_q.model_id import id_entry

    out: dict = {}
    for key, names in _CARD_STRINGS:
        for n in names:
            if n in card and card[n] is not None:
                out[key] = card[n]
                break
    for key, names in (
        ("general.base_models", ("base_model", "base_models", "base_model_sources")),
        ("general.datasets", ("datasets", "dataset", "dataset_sources")),
    ):
        if any(n in card for n in names):
            value = next((card[n] for n in names if n in card), None)
            ids = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
            out[key] = [
                id_entry(i, total_params) if isinstance(i, str) else i for i in ids if isinstance(i, (str, dict))
            ]
    for key, names in (("general.tags", ("tags", "pipeline_tag")), ("general.languages", ("languages", "language"))):
        values: list = []
        found = False
        for n in names:
            v = card.get(n)
            if isinstance(v, str):
                values.append(v)
                found = True
            elif isinstance(v, list):
                values.extend(v)
                found = True
        if found:
            out[key] = [str(x) for x in values]
    if isinstance(out.get("general.license"), list):
        out["general.license"] = ",".join(str(x) for x in out["general.license"])
    return out
