"""A SentencePiece vocabulary and the Hugging Face tokenizer files → GGUF tokenizer keys,
as llama.cpp's converter writes them (its `_create_vocab_sentencepiece` and gguf-py's
`SpecialVocab`), in the same order."""

from __future__ import annotations

import json
from pathlib import Path

from simpo_q._native import SimpoQError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# gguf-py writes ids for these types only (cls has no writer); sep keeps its historic spelling
ID_KEYS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "unk": "unknown_token_id",
    "sep": "seperator_token_id",
    "pad": "padding_token_id",
    "mask": "mask_token_id",
}
ADD_KEYS = {"bos", "eos", "sep"}


def _looks_special(tok: str) -> bool:
    return (
        tok in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (tok.startswith("<|") and tok.endswith("|>"))
        or (tok.startswith("<｜") and tok.endswith("｜>"))
        or tok.startswith("<unused")
    )


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SimpoQError(f"{path}: not valid JSON ({e})") from e


def sentencepiece_vocab(model_dir: Path, vocab_size: int | None):
    import sentencepiece as spm

    path = model_dir / "tokenizer.model"
    if not path.is_file():
        raise SimpoQError(f"{path}: missing; conversion needs the SentencePiece model")
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise SimpoQError(f"{path}: not a SentencePiece model ({e})") from e
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(min(n, sp.vocab_size())):
        if sp.IsUnknown(i):
            t = UNKNOWN
        elif sp.IsControl(i):
            t = CONTROL
        elif sp.IsUnused(i):
            t = UNUSED
        elif sp.IsByte(i):
            t = BYTE
        else:
            t = NORMAL
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), t
    added = read_json(model_dir / "added_tokens.json") or {}
    for text, i in added.items():
        if i < n:
            tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED
    tc = read_json(model_dir / "tokenizer_config.json") or {}
    for sid, data in tc.get("added_tokens_decoder", {}).items():
        i = int(sid)
        if i >= n:
            continue
        tok = data["content"]
        if data.get("special") or _looks_special(tok):
            types[i] = CONTROL
        else:
            tok = tok.replace("\u2581", " ")
            types[i] = USER_DEFINED
        scores[i], tokens[i] = -1000.0, tok
    return tokens, scores, types


def special_vocab(model_dir: Path, config: dict, n_vocab: int) -> list[tuple[str, str, object]]:
    tj = read_json(model_dir / "tokenizer.json") or {}
    tc = read_json(model_dir / "tokenizer_config.json")
    added = tj.get("added_tokens", [])
    add: dict[str, bool] = {}
    pp = tj.get("post_processor") or {}
    for proc in pp.get("processors", [pp]) if pp else []:
        if proc.get("type") != "TemplateProcessing":
            continue
        single, pair = proc.get("single", []), proc.get("pair", [])
        bos = (tc or {}).get("bos_token")
        eos = (tc or {}).get("eos_token")
        sep = (tc or {}).get("sep_token")
        first = single[0].get("SpecialToken", {}).get("id") if len(single) > 1 else None
        last = single[-1].get("SpecialToken", {}).get("id") if len(single) > 1 else None
        if first:
            add["bos"] = first == bos
        if last:
            add["eos"] = last == eos
        if pair:
            start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
            stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
            mid = pair[start:stop]
            if (
                mid
                and mid[0].get("Sequence", {}).get("id") == "A"
                and mid[-1].get("Sequence", {}).get("id") == "B"
                and mid[1:-1]
            ):
                mid = mid[1:-1]
                entry = mid[0].get("SpecialToken", {}).get("id")
                add_sep = bool(entry in (sep, eos) and not last)
                if len(mid) == 2 and mid[1].get("SpecialToken", {}).get("id") in (sep, eos):
                    add_sep = True
                add["sep"] = add_sep
    ids: dict[str, int] = {}
    for typ in SPECIAL_TYPES:
        if tc is None:
            break
        flag = tc.get(f"add_{typ}_token")
        if isinstance(flag, bool) and typ not in add:
            add[typ] = flag
        entry = tc.get(f"{typ}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(content, str):
            tid = next((a.get("id") for a in added if a.get("content") == content), None)
            if isinstance(tid, int) and 0 <= tid < n_vocab:
                ids[typ] = tid
    for typ in SPECIAL_TYPES:
        if typ not in ids:
            v = config.get(f"{typ}_token_id")
            if isinstance(v, int) and 0 <= v < n_vocab:
                ids[typ] = v
    out: list[tuple[str, str, object]] = []
    for typ, tid in ids.items():
        if typ in ID_KEYS:
            out.append((f"tokenizer.ggml.{ID_KEYS[typ]}", "u32", tid))
    for typ, v in add.items():
        if typ in ADD_KEYS:
            out.append((f"tokenizer.ggml.add_{typ}_token", "bool", v))
    template = (tc or {}).get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, str) and template:
        out.append(("tokenizer.chat_template", "str", template))
    return out


def tokenizer_metadata(model_dir: Path, config: dict) -> list[tuple[str, str, object]]:
    tokens, scores, types = sentencepiece_vocab(model_dir, config.get("vocab_size"))
    md: list[tuple[str, str, object]] = [
        ("tokenizer.ggml.model", "str", "llama"),
        ("tokenizer.ggml.pre", "str", "default"),
        ("tokenizer.ggml.tokens", "array[str]", tokens),
        ("tokenizer.ggml.scores", "array[f32]", scores),
        ("tokenizer.ggml.token_type", "array[i32]", types),
    ]
    return md + special_vocab(model_dir, config, len(tokens))
