"""`simpo-q eval tasks`: ZeroEval's prompts and answer parsing, the public GSM8K and
MMLU-Redux layouts, and the same prompt through a Hugging Face directory and its GGUF."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from simpo_q._native import SimpoQError
from simpo_q.cli import main as cli
from simpo_q.evaluate.tasks import (
    Question,
    gsm_prompt,
    judge,
    load_questions,
    mmlu_prompt,
    parse_prediction,
    summarize,
)
from simpo_q.quantize_model import quantize_model
from simpo_q.tiny import cached_tiny_model

REPO = Path(__file__).parent.parent
DATA = REPO / "python" / "simpo_q" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ZeroEval's src/templates/OEQA.py, as published: the prompt must be this text exactly
ZEROEVAL_OEQA_FOR_Q = (
    "\n## Question: \n\nQ\n\n\n## Instruction \n\nPlease answer this question by first reasoning and then "
    "providing your answer.\nPresent your reasoning and solution in the following json format. \nPlease show "
    'your final answer in the `answer` field, e.g.,`"answer": "42"`.\n\n```json\n{\n    "reasoning": '
    '"___",\n    "answer": "___"\n}\n```\n'
)


def test_prompts_are_zeroevals() -> None:
    assert gsm_prompt("Q") == ZEROEVAL_OEQA_FOR_Q
    p = mmlu_prompt("Which?", ["x", "y"])
    assert "## Choices:\n\n- (A) x\n- (B) y\n\n\n## Instruction" in p
    assert 'with only the choice letter, e.g.,`"answer": "C"`.' in p


GSM = Question("g", "", "12")
MMLU = Question("m", "", "B")


@pytest.mark.parametrize(
    ("output", "parsed", "correct"),
    [
        ('```json\n{\n  "reasoning": "4*6=24; 24-12=12",\n  "answer": "12"\n}\n```', True, True),
        ('{"reasoning": "r", "answer": 12}', True, True),
        ('{"reasoning": "r", "answer": "12 shells"}', True, True),
        ('{"reasoning": "r", "answer": "$1,2"}', True, True),  # "$" and "," dropped: 12
        ('{"reasoning": "r", "answer": "24/2"}', True, True),  # a fraction, read without eval
        ('{"reasoning": "r", "answer": "11.5"}', True, False),
        ('{"reasoning": "broken "quotes" here", "answer": "12"', True, True),  # the regex fallback
        ("reasoning: none\nanswer: 12", True, True),  # no quotes at all
        ('{"reasoning": "r", "answer": ""}', True, False),  # math_eval accepts it, finds no number
        ("I think it is twelve.", False, False),
        ('{"reasoning": "r", "answer": "__import__(\'os\').system(\'touch PWNED\')/2"}', True, False),
    ],
)
def test_gsm_judging_follows_math_eval(output: str, parsed: bool, correct: bool, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    v = judge("gsm8k", GSM, output)
    assert (v["parsed"], v["correct"]) == (parsed, correct), v
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("output", "parsed", "correct"),
    [
        ('{"reasoning": "Vienna is the capital.", "answer": "B"}', True, True),
        ('{"reasoning": "r", "answer": "B) Vienna"}', True, True),
        ('{"reasoning": "r", "answer": "(B)"}', True, True),
        ('{"reasoning": "r", "answer": "b"}', True, False),
        ('{"reasoning": "r", "answer": ""}', False, False),  # mcqa_eval: an empty answer is no answer
        ('{"reasoning": "r", "answer": null}', False, False),
        ("The answer is B.", False, False),
    ],
)
def test_mmlu_judging_follows_mcqa_eval(output: str, parsed: bool, correct: bool) -> None:
    v = judge("mmlu", MMLU, output)
    assert (v["parsed"], v["correct"]) == (parsed, correct), v


def test_length_is_the_mean_reasoning_of_parsed_answers() -> None:
    vs = [
        judge("gsm8k", GSM, '{"reasoning": "abcd", "answer": "12"}'),
        judge("gsm8k", GSM, '{"reasoning": "ab", "answer": "3"}'),
        judge("gsm8k", GSM, "no json"),
    ]
    s = summarize("m", vs)
    assert s["accuracy"] == pytest.approx(1 / 3) and s["no_answer"] == pytest.approx(1 / 3)
    assert s["length"] == 3.0 and s["total"] == 3
    assert parse_prediction("<end_of_turn>", "gsm8k") is None


def test_public_layouts_and_their_errors(tmp_path: Path) -> None:
    g = load_questions(DATA / "gsm8k-sample.jsonl", "gsm8k")
    assert len(g) == 24 and g[0].gold == "12" and "Goran has 4 jars" in g[0].prompt
    m = load_questions(DATA / "mmlu-redux-sample.jsonl", "mmlu", limit=5)
    assert len(m) == 5 and m[0].gold == "B" and "- (B) Vienna" in m[0].prompt
    zero_eval_style = tmp_path / "z.jsonl"
    zero_eval_style.write_text(json.dumps({"question": "q", "choices": ["a", "b", "c"], "correct_answer": "c"}) + "\n")
    assert load_questions(zero_eval_style, "mmlu")[0].gold == "C"
    bad = tmp_path / "bad.jsonl"
    for lines, want in [
        (['{"question": "q", "answer": "#### 3"}', "{not json"], r"bad.jsonl:2: not valid JSON"),
        (['{"question": "q", "answer": "#### three"}'], r"bad.jsonl:1: no number in the gold answer"),
        (['["q"]'], r"bad.jsonl:1: expected a JSON object per line"),
    ]:
        bad.write_text("\n".join(lines) + "\n")
        with pytest.raises(SimpoQError, match=want):
            load_questions(bad, "gsm8k")
    bad.write_text(json.dumps({"question": "q", "choices": ["a"], "answer": 0}) + "\n")
    with pytest.raises(SimpoQError, match=r"bad.jsonl:1: expected \"choices\""):
        load_questions(bad, "mmlu")
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}) + "\n")
    with pytest.raises(SimpoQError, match=r"bad.jsonl:1: expected \"answer\""):
        load_questions(bad, "mmlu")


@pytest.fixture(scope="module")
def model() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


def test_the_same_prompt_reaches_both_engines(model: Path, tmp_path: Path) -> None:
    """The GGUF's chat template (what llama.cpp's chat completion renders) gives the same
    prompt as the Hugging Face tokenizer's."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from simpo_q.gguf import metadata_dict, open_gguf
    from transformers import AutoTokenizer

    gguf = quantize_model(model, tmp_path / "m.gguf", "Q8_0", quiet=True)
    md = metadata_dict(open_gguf(gguf))
    tok = AutoTokenizer.from_pretrained(str(model))
    msgs = [{"role": "user", "content": gsm_prompt("What is 2 + 2?")}]
    hf = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    fmt = Jinja2ChatFormatter(
        md["tokenizer.chat_template"], eos_token="<eos>", bos_token="<bos>", add_generation_prompt=True
    )
    assert fmt(messages=msgs).prompt == hf


def test_cli_on_a_directory_and_its_gguf(model: Path, tmp_path: Path, capsys) -> None:
    gguf = quantize_model(model, tmp_path / "m.gguf", "Q3_K_S", quiet=True)
    capsys.readouterr()
    rc = cli(
        [
            "--quiet",
            "eval",
            "tasks",
            str(model),
            str(gguf),
            "--task",
            "mmlu",
            "--data",
            str(DATA / "mmlu-redux-sample.jsonl"),
            "--limit",
            "3",
            "--max-tokens",
            "12",
            "--ctx",
            "1024",
            "--json",
            str(tmp_path / "t.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "accuracy" in out and "m.gguf" in out and "verdicts that differ" in out
    rep = json.loads((tmp_path / "t.json").read_text())
    assert rep["task"] == "mmlu" and [len(m["verdicts"]) for m in rep["models"]] == [3, 3]
    for m in rep["models"]:
        assert m["accuracy"] == sum(v["correct"] for v in m["verdicts"]) / 3
        assert all(v["output"] for v in m["verdicts"])  # the models really answered
    assert isinstance(rep["flips"], list)
