"""`simpo-q eval tasks`: the SimPO model card's GSM and MMLU columns, as ZeroEval measures
them (yuchenlin/ZeroEval): zero-shot, greedy, the model asked to answer in JSON with
`reasoning` and `answer`; accuracy over all questions, the share with no parsable answer,
and "length", the mean number of characters of the reasoning of the parsed answers.

The prompts and the answer parsing follow ZeroEval's `src/templates` (OEQA, MCQA),
`src/evaluation/eval_utils.py` and `math_eval.py` / `mcqa_eval.py`. Where we differ:
- the gold GSM8K answer is read from the public layout's `answer` ("… #### 72"), where
  ZeroEval's copy of the data stores the number alone;
- a fraction in a model's answer ("3/4") is read with `fractions.Fraction`, where ZeroEval
  calls Python's `eval` on the model's text, which would run whatever the model wrote;
- MMLU-Redux's gold answer may be the choice's index or letter (`answer`, the public layout)
  or its text (`correct_answer`, ZeroEval's copy).
The same prompt goes through the chat template of a Hugging Face directory (transformers'
`generate`) and of a GGUF (llama.cpp's chat completion)."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from simpo_q._native import SimpoQError

# ZeroEval's src/templates/OEQA.py and MCQA.py, line by line (some lines end in a space,
# which matters: the prompt must be theirs byte for byte)
_JSON_FORMAT = ["```json", "{", '    "reasoning": "___",', '    "answer": "___"', "}", "```", ""]
OEQA = "\n".join(
    [
        "",
        "## Question: ",
        "",
        "{question}",
        "",
        "",
        "## Instruction ",
        "",
        "Please answer this question by first reasoning and then providing your answer.",
        "Present your reasoning and solution in the following json format. ",
        'Please show your final answer in the `answer` field, e.g.,`"answer": "42"`.',
        "",
        *_JSON_FORMAT,
    ]
)
MCQA = "\n".join(
    [
        "",
        "## Question: ",
        "",
        "{question}",
        "",
        "## Choices:",
        "",
        "{choices}",
        "",
        "## Instruction ",
        "",
        "Please answer this question by first reasoning and then selecting the correct choice. ",
        "Present your reasoning and solution in the following json format. ",
        'Please show your choice in the `answer` field with only the choice letter, e.g.,`"answer": "C"`.',
        "",
        *_JSON_FORMAT,
    ]
)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TASKS = ("gsm8k", "mmlu")


@dataclass
class Question:
    id: str
    prompt: str
    gold: str  # GSM: the number; MMLU: the letter


def gsm_prompt(question: str) -> str:
    return OEQA.replace("{question}", question)


def mmlu_prompt(question: str, choices: list[str]) -> str:
    listed = "".join(f"- ({LETTERS[i]}) {c}\n" for i, c in enumerate(choices))
    return MCQA.replace("{question}", question).replace("{choices}", listed)


def load_questions(path: str | os.PathLike, task: str, limit: int | None = None) -> list[Question]:
    """Questions from a JSON-lines file in the public layout; a malformed line is an error
    naming its number."""
    from simpo_q.textfile import read_jsonl

    if task not in TASKS:
        raise SimpoQError(f"--task: {task!r} is not one of {', '.join(TASKS)}")
    p = Path(path)
    out: list[Question] = []
    for n, row in read_jsonl(p, "task file"):
        if not isinstance(row.get("question"), str):
            raise SimpoQError(f'{p}:{n}: expected an object with a string "question"')
        qid = str(row.get("id", f"{task}#{len(out)}"))
        if task == "gsm8k":
            ans = row.get("answer")
            if not isinstance(ans, (str, int, float)):
                raise SimpoQError(f'{p}:{n}: expected "answer" (GSM8K: the solution ending in "#### N")')
            gold = str(ans).rsplit("####", 1)[-1].strip()
            if _first_number(_sanitize(gold)) is None:
                raise SimpoQError(f"{p}:{n}: no number in the gold answer {gold!r}")
            out.append(Question(qid, gsm_prompt(row["question"]), gold))
        else:
            choices = row.get("choices")
            if (
                not isinstance(choices, list)
                or not 2 <= len(choices) <= len(LETTERS)
                or not all(isinstance(c, str) for c in choices)
            ):
                raise SimpoQError(f'{p}:{n}: expected "choices", a list of 2 to 26 strings')
            out.append(Question(qid, mmlu_prompt(row["question"], choices), _mmlu_gold(row, choices, f"{p}:{n}")))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise SimpoQError(f"{p}: no questions")
    return out


def _mmlu_gold(row: dict, choices: list[str], where: str) -> str:
    a = row.get("answer")
    if type(a) is int and 0 <= a < len(choices):
        return LETTERS[a]
    if isinstance(a, str) and len(a) == 1 and a.upper() in LETTERS[: len(choices)]:
        return a.upper()
    if isinstance(row.get("correct_answer"), str) and row["correct_answer"] in choices:
        return LETTERS[choices.index(row["correct_answer"])]
    raise SimpoQError(
        f'{where}: expected "answer" (the index or letter of the correct choice) or "correct_answer" (its text)'
    )


# ---------------------------------------------------------------- ZeroEval's answer parsing


def extract_first_complete_json(s: str):
    """The first balanced {...} of the text, parsed with its newlines removed (ZeroEval)."""
    depth, start = 0, None
    for i, ch in enumerate(s):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                try:
                    return json.loads(s[start : i + 1].replace("\n", ""))
                except ValueError:
                    return None
    return None


def extract_values_from_json(s: str, keys=("reasoning", "answer"), allow_no_quotes: bool = False) -> dict:
    """ZeroEval's regular-expression fallback for JSON that does not parse."""
    out = {}
    for key in keys:
        m = re.search(f'"{key}"\\s*:\\s*"([^"]*?)"', s) or re.search(f'"{key}"\\s*:\\s*"(.*?)"', s, re.DOTALL)
        if m:
            out[key] = m.group(1)
        elif allow_no_quotes:
            m = re.search(f'"{key}"\\s*:\\s*([^,\\s]*)', s) or re.search(f"{key}\\s*:\\s*([^,\\s]*)", s)
            if m:
                out[key] = m.group(1)
    return out


def clear_output(text: str) -> str:
    for t in ("<|endoftext|>", "<pad>", "<end_of_turn>"):
        text = text.replace(t, " ")
    return text.strip()


def parse_prediction(text: str, task: str) -> dict | None:
    """{"reasoning", "answer"} from a model's output, or None when no answer is found (for
    MMLU also a null or empty answer, as mcqa_eval.py; math_eval.py accepts those and then
    finds no number in them)."""
    pred = extract_first_complete_json(text)
    if not isinstance(pred, dict) or "answer" not in pred:
        pred = extract_values_from_json(text, allow_no_quotes=True)
    if "answer" not in pred:
        return None
    if task == "mmlu" and (pred["answer"] is None or pred["answer"] == ""):
        return None
    return pred


def _sanitize(answer: str) -> str:
    answer = answer.replace("$", "").strip().replace(",", "")
    if "/" in answer:
        try:
            answer = str(float(Fraction(answer.replace(" ", ""))))
        except (ValueError, ZeroDivisionError):
            pass
    return answer


def _first_number(s: str) -> float | None:
    m = re.search(r"-?\d+(\.\d+)?", s)
    return float(m.group()) if m else None


def judge(task: str, q: Question, output: str) -> dict:
    """The verdict on one output: parsed or not, correct or not, the reasoning's length."""
    pred = parse_prediction(clear_output(output), task)
    if pred is None:
        return {
            "id": q.id,
            "parsed": False,
            "correct": False,
            "answer": None,
            "gold": q.gold,
            "reasoning_chars": 0,
            "output": output,
        }
    reasoning = str(pred.get("reasoning", ""))
    answer = str(pred["answer"])
    if task == "gsm8k":
        a, g = _first_number(_sanitize(answer)), _first_number(_sanitize(q.gold))
        correct = a is not None and g is not None and a == g
    else:
        correct = answer == q.gold or f"{q.gold})" in answer
    return {
        "id": q.id,
        "parsed": True,
        "correct": correct,
        "answer": answer,
        "gold": q.gold,
        "reasoning_chars": len(reasoning),
        "output": output,
    }


def summarize(name: str, verdicts: list[dict]) -> dict:
    parsed = [v for v in verdicts if v["parsed"]]
    n = len(verdicts)
    return {
        "model": name,
        "total": n,
        "accuracy": sum(v["correct"] for v in verdicts) / n,
        "no_answer": (n - len(parsed)) / n,
        "length": sum(v["reasoning_chars"] for v in parsed) / len(parsed) if parsed else 0.0,
        "verdicts": verdicts,
    }


# ---------------------------------------------------------------- the models answering


class HFChat:
    def __init__(self, path: str | os.PathLike, device: str = "cpu", dtype: str = "float32"):
        from simpo_q.evaluate.engines import TorchModel

        self.m = TorchModel.from_directory(path, device=device, dtype=dtype)
        self.name = str(path)

    def answer(self, prompt: str, max_tokens: int) -> str:
        import torch

        tok = self.m.tokenizer
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"].to(self.m.device)
        with torch.no_grad():
            out = self.m.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                repetition_penalty=1.0,
                pad_token_id=tok.pad_token_id,
            )
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=False)


class GGUFChat:
    def __init__(self, path: str | os.PathLike, ctx: int, threads: int | None = None):
        from simpo_q.evaluate.engines import LlamaCppModel

        self.m = LlamaCppModel(path, ctx, threads)
        self.name = str(path)

    def answer(self, prompt: str, max_tokens: int) -> str:
        r = self.m.llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            repeat_penalty=1.0,
            seed=0,
        )
        return r["choices"][0]["message"]["content"] or ""


def load_chat_model(path: str, *, ctx: int, device: str, dtype: str, threads: int | None):
    from simpo_q.evaluate.engines import is_gguf
    from simpo_q.hub import local

    p = local(path)  # a hub id is read from its cached snapshot
    if p.is_dir():
        return HFChat(p, device, dtype)
    if is_gguf(p):
        return GGUFChat(p, ctx, threads)
    raise SimpoQError(f"{p}: neither a Hugging Face model directory nor a GGUF file")


def flips(a: dict, b: dict) -> list[dict]:
    """The questions whose verdict differs between two models."""
    return [
        {"id": x["id"], Path(a["model"]).name: x["correct"], Path(b["model"]).name: y["correct"]}
        for x, y in zip(a["verdicts"], b["verdicts"], strict=True)
        if x["correct"] != y["correct"]
    ]


def render(reports: list[dict], task: str, flipped: list[dict] | None) -> str:
    w = max(24, *(len(Path(r["model"]).name) + 2 for r in reports))
    lines = [
        f"{task}: zero-shot, greedy, JSON answers (ZeroEval)",
        f"{'model':{w}s} {'accuracy':>9s} {'no answer':>10s} {'length':>8s} {'total':>6s}",
    ]
    for r in reports:
        lines.append(
            f"{Path(r['model']).name:{w}s} {100 * r['accuracy']:8.2f}% {100 * r['no_answer']:9.2f}% "
            f"{r['length']:8.1f} {r['total']:6d}"
        )
    if flipped is not None:
        lines.append(
            f"verdicts that differ between the two: {len(flipped)}"
            + (": " + ", ".join(f["id"] for f in flipped[:20]) if flipped else "")
        )
    return "\n".join(lines)


def tasks_files(
    models: list[str],
    task: str,
    data: str,
    *,
    limit: int | None = None,
    max_tokens: int = 4096,
    ctx: int = 8192,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    json_out: str | None = None,
    quiet: bool = False,
) -> list[dict]:
    from simpo_q.outputs import check_output, write_text
    from tqdm.auto import tqdm

    questions = load_questions(data, task, limit)
    if json_out:
        check_output(json_out, [*models, data])
    chats = [load_chat_model(m, ctx=ctx, device=device, dtype=dtype, threads=threads) for m in models]
    reports = []
    for chat in chats:
        verdicts = []
        for q in tqdm(
            questions, desc=Path(chat.name).name, unit="question", disable=True if quiet else None, file=sys.stderr
        ):
            verdicts.append(judge(task, q, chat.answer(q.prompt, max_tokens)))
        reports.append(summarize(chat.name, verdicts))
    flipped = flips(reports[0], reports[1]) if len(reports) == 2 else None
    print(render(reports, task, flipped))
    if json_out:
        write_text(
            json_out,
            json.dumps(
                {"task": task, "data": str(data), "max_tokens": max_tokens, "models": reports, "flips": flipped},
                indent=1,
            )
            + "\n",
        )
    return reports
