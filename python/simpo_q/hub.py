"""Hugging Face hub ids wherever a path is accepted: `google/gemma-2-9b-it`,
`princeton-nlp/gemma2-ultrafeedback-armorm@<revision>`.

An id is resolved to a snapshot folder of the standard Hugging Face cache (HF_HUB_CACHE, or
HF_HOME/hub, or ~/.cache/huggingface/hub) with huggingface_hub, downloading what is missing
when online; HF_HUB_OFFLINE=1 reads the cache alone. The folder is then read by the same code
as a local path. A string that names an existing file or folder is always a path."""

from __future__ import annotations

import os
import re
from pathlib import Path

from simpo_q._native import SimpoQError

# owner/name[@revision], with the characters the hub allows in each
_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")

# names that are files, never repositories (a repository name may hold dots: Llama-3.1-8B)
_FILE_SUFFIXES = (".gguf", ".safetensors", ".json", ".jsonl", ".parquet", ".txt", ".dat", ".yaml", ".yml")

# what simpo-q reads of a model and of a dataset (no other weights formats, no pickles)
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "README.md", "LICENSE*"]
DATASET_FILES = [
    "*.parquet",
    "*.json",
    "*.jsonl",
    "README.md",
    "*/*.parquet",
    "*/*.json",
    "*/*.jsonl",
    "*/*/*.parquet",
    "*/*/*.jsonl",
]


def hub_id(s: str | os.PathLike) -> tuple[str, str | None] | None:
    """(repo, revision) when `s` is a hub id and not an existing path, else None."""
    s = os.fspath(s)
    if Path(s).exists():
        return None
    m = _ID.match(s)
    if m is None or s.startswith((".", "/")) or s.lower().endswith(_FILE_SUFFIXES):
        return None
    return m.group("repo"), m.group("rev")


def cache_dir() -> Path:
    """The standard cache, read from the environment now (tests set HF_HOME per test)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def local(s: str | os.PathLike, kind: str = "model", files: list[str] | None = None) -> Path:
    """The local folder of a path or a hub id (`kind`: "model" or "dataset"); `files`
    narrows a download (the planner needs config.json alone)."""
    ident = hub_id(s)
    if ident is None:
        return Path(s)
    repo, rev = ident
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise SimpoQError(f"{s}: reading a hub id needs the huggingface_hub package") from e
    pats = files or (MODEL_FILES if kind == "model" else DATASET_FILES)
    where = f"{s}: no such file or directory, and as a Hugging Face {kind} id"
    try:
        path = snapshot_download(
            repo,
            repo_type=kind,
            revision=rev,
            cache_dir=str(cache_dir()),
            allow_patterns=pats,
            local_files_only=offline(),
        )
    except RevisionNotFoundError as e:
        raise SimpoQError(f"{where} it has no revision {rev!r}") from e
    except GatedRepoError as e:
        raise SimpoQError(
            f"{where} it is gated: accept its licence on huggingface.co and log in (hf auth login)"
        ) from e
    except RepositoryNotFoundError as e:
        raise SimpoQError(f"{where} there is no such repository on the hub (or it is private)") from e
    except LocalEntryNotFoundError as e:
        at = f" at revision {rev!r}" if rev else ""
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub cannot be reached"
        raise SimpoQError(
            f"{where} it is not in the cache {cache_dir()}{at}, and {why}; download it first "
            f"(hf download {repo}{' --repo-type dataset' if kind == 'dataset' else ''})"
        ) from e
    except (OSError, ValueError) as e:
        raise SimpoQError(f"{where} it cannot be resolved ({e})") from e
    return Path(path)


def repo_name(folder: Path) -> str | None:
    """`gemma-2-9b-it` for a snapshot folder of the cache (…/models--google--gemma-2-9b-it/
    snapshots/<commit>), whose own name is a commit hash; None for any other folder."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith(("models--", "datasets--")) and "--" in repo[8:]:
        return repo.split("--")[-1]
    return None


def split_files(folder: Path, split: str) -> list[Path]:
    """The data files of one split of a hub dataset snapshot, by the hub's naming rules: files
    named `{split}-*` or `{split}.*`, or under a folder named after the split."""
    data = sorted(
        f
        for f in folder.rglob("*")
        if f.is_file()
        and f.suffix in (".parquet", ".jsonl", ".json")
        and f.name not in ("dataset_info.json", "state.json", "dataset_dict.json")
        and not f.name.startswith(".")
    )
    if not data:
        return []
    mine = [f for f in data if f.name.split("-")[0].split(".")[0] == split or split in f.relative_to(folder).parts[:-1]]
    if mine:
        return mine
    splits = sorted({f.name.split("-")[0].split(".")[0] for f in data})
    raise SimpoQError(
        f"{folder}: no files of split {split!r} (splits here: {', '.join(splits)}); "
        f"choose one with --set data_split=..."
    )
