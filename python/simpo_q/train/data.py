"""Preference data as the official SimPO trainer tokenizes it.

Rows are in the princeton-nlp/gemma2-ultrafeedback-armorm format: `prompt` (str), `chosen`
and `rejected` (message lists ending with the assistant turn). The prompt is the chat
template of `chosen[:-1]` without a generation prompt (so it starts with the template's one
`<bos>`); each answer is the assistant turn as the same template renders it after the
prompt (Gemma: `<start_of_turn>model\\n{text}<end_of_turn>\\n`; Llama-3: its assistant
header, the text and `<|eot_id|>`), plus the tokenizer's end of sequence when the turn does
not end with it. Every answer token is scored — the role header and the closing markers
included — and no prompt token is. Truncation is the official
keep_end rule. Bad rows are counted by reason and reported, never silently dropped.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from simpo_q._native import SimpoQError


@dataclass
class Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


def read_rows(path: str | os.PathLike, split: str = "train") -> list[dict]:
    """Rows of a JSON-lines or Parquet file, of a `datasets` folder (save_to_disk), or of one
    split of a hub dataset snapshot (its Parquet/JSON-lines files)."""
    p = Path(path)
    if p.is_dir():
        if not any((p / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
            from simpo_q.hub import split_files

            files = split_files(p, split)
            if not files:
                raise SimpoQError(
                    f"{p}: no preference data here (no Parquet or JSON-lines files, not a datasets folder)"
                )
            return [row for f in files for row in read_rows(f)]
        try:
            import datasets
        except ImportError as e:
            raise SimpoQError(f"{p}: reading a datasets directory needs the `datasets` package") from e
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise SimpoQError(
                    f"{p}: no split {split!r} (splits: {', '.join(ds)}); choose one with --set data_split=..."
                )
            ds = ds[split]
        return [dict(r) for r in ds]
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise SimpoQError(f"{p}: reading Parquet needs the `pyarrow` package") from e
        try:
            return pq.read_table(p).to_pylist()
        except (OSError, ValueError) as e:
            raise SimpoQError(f"{p}: cannot read Parquet ({e})") from e
    from simpo_q.textfile import read_jsonl

    return [row for _, row in read_jsonl(p, "preference data file")]


def render_answer(tok, prompt_msgs: list[dict], prompt_text: str, content: str) -> str | None:
    """One assistant turn as the model's chat template renders it after the prompt (Gemma:
    `<start_of_turn>model\n…<end_of_turn>\n`; Llama-3: its assistant header, …, <|eot_id|>):
    the conversation with the answer, less the prompt. None if the template renders the
    prompt differently once an answer follows (nothing to split off)."""
    full = tok.apply_chat_template([*prompt_msgs, {"role": "assistant", "content": content}], tokenize=False)
    return full[len(prompt_text) :] if full.startswith(prompt_text) else None


def tokenize_pairs(rows: list[dict], tok, *, max_length: int, max_prompt_length: int) -> tuple[list[Pair], Counter]:
    pairs: list[Pair] = []
    bad: Counter = Counter()
    for row in rows:
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if (
            not isinstance(row.get("prompt"), str)
            or not isinstance(chosen, list)
            or not isinstance(rejected, list)
            or not chosen
            or not rejected
        ):
            bad["missing or malformed prompt/chosen/rejected"] += 1
            continue
        if not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in (*chosen, *rejected)
        ):
            bad["a message without a string role and content"] += 1
            continue
        a_c, a_r = chosen[-1]["content"], rejected[-1]["content"]
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            bad["last message is not an assistant turn"] += 1
            continue
        if not a_c.strip() or not a_r.strip():
            bad["empty response"] += 1
            continue
        if a_c.strip() == a_r.strip():
            bad["identical responses"] += 1
            continue
        prompt_msgs = chosen[:-1] or [{"role": "user", "content": row["prompt"]}]
        try:
            prompt_text = tok.apply_chat_template(prompt_msgs, tokenize=False)
        except Exception:
            bad["prompt messages rejected by the chat template"] += 1
            continue
        p = tok(prompt_text, add_special_tokens=False).input_ids
        if not p or p[0] != tok.bos_token_id:
            p = [tok.bos_token_id, *p]
        answers = []
        texts = [render_answer(tok, prompt_msgs, prompt_text, a) for a in (a_c, a_r)]
        if None in texts:
            bad["the chat template renders the prompt differently before an answer"] += 1
            continue
        for a in texts:
            ids = tok(a, add_special_tokens=False).input_ids
            if not ids or ids[-1] != tok.eos_token_id:
                ids = [*ids, tok.eos_token_id]
            answers.append(ids)
        c, r = answers
        longer = max(len(c), len(r))
        if len(p) + longer > max_length:
            p = p[-max_prompt_length:]
        if len(p) + longer > max_length:
            c, r = c[: max_length - max_prompt_length], r[: max_length - max_prompt_length]
        if not c or not r:
            bad["nothing left to score after truncation"] += 1
            continue
        pairs.append(Pair(p, c, r))
    return pairs, bad


def collate(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected, right-padded to one width; prompt labels −100."""
    seqs, labels = [], []
    for side in ("chosen", "rejected"):
        for pr in pairs:
            ans = getattr(pr, side)
            seqs.append(pr.prompt + ans)
            labels.append([-100] * len(pr.prompt) + ans)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(lb)] = torch.tensor(lb)
        att[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


def epoch_batches(n: int, lengths: list[int], global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The pairs of one epoch in global batches: shuffled with (seed, epoch), then sorted by
    length inside windows of 50 batches (less padding), with the batch order shuffled again.
    A short final batch is dropped so every step has the same number of pairs."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    window = 50 * global_batch
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        batches += [chunk[b : b + global_batch] for b in range(0, len(chunk), global_batch)]
    batches = [b for b in batches if len(b) == global_batch]
    rng.shuffle(batches)
    return batches
