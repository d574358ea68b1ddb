"""The embedded default: the tiny real Gemma-2 checkpoint and the bundled data."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from simpo_q.arch.gemma2 import CHAT_TEMPLATE as GEMMA_CHAT_TEMPLATE
from simpo_q.cli import main as cli
from simpo_q.tiny import TinyConfig, build_tiny_model, cached_tiny_model, corpus
from simpo_q.tiny.builder import bundled_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).parent.parent


def digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    assert cli(["--quiet", "tiny-model", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def pretrained() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


def test_files_and_config(tiny: Path) -> None:
    names = {p.name for p in tiny.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma2ForCausalLM"]
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["attn_logit_softcapping"], cfg["final_logit_softcapping"]) == (50.0, 30.0)
    assert cfg["query_pre_attn_scalar"] == cfg["head_dim"] == 64
    assert cfg["hidden_activation"] == "gelu_pytorch_tanh" and cfg["rms_norm_eps"] == 1e-6
    assert cfg["sliding_window"] == 4096
    assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0


def test_same_arguments_same_bytes(tiny: Path, tmp_path: Path) -> None:
    assert cli(["--quiet", "tiny-model", str(tmp_path)]) == 0
    assert digest(tmp_path) == digest(tiny)


def test_other_seed_other_weights(tiny: Path, tmp_path: Path) -> None:
    build_tiny_model(tmp_path, TinyConfig(seed=1))
    a, b = digest(tmp_path), digest(tiny)
    assert a["model.safetensors"] != b["model.safetensors"]
    assert a["tokenizer.model"] == b["tokenizer.model"]


def test_weights_are_bf16_without_lm_head(tiny: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert "lm_head.weight" not in keys
        import torch

        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in keys)
        norm = f.get_tensor("model.layers.0.input_layernorm.weight").float()
        assert norm.abs().max() > 0  # randomised, so the converter's +1 is exercised


def test_sharded_and_single_hold_the_same_tensors(tiny: Path, tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open

    build_tiny_model(tmp_path, TinyConfig(shards=3))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    with safe_open(str(tiny / "model.safetensors"), framework="pt") as single:
        names = set(single.keys())
        assert names == set(index["weight_map"])
        total = 0
        for name, fname in index["weight_map"].items():
            with safe_open(str(tmp_path / fname), framework="pt") as sh:
                t = sh.get_tensor(name)
            ref = single.get_tensor(name)
            assert t.shape == ref.shape and t.view(torch.int16).equal(ref.view(torch.int16))
            total += ref.numel() * 2
    assert index["metadata"]["total_size"] == total


def test_loads_in_transformers_and_generates(pretrained: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pretrained)
    model = AutoModelForCausalLM.from_pretrained(pretrained, attn_implementation="eager")
    assert type(model).__name__ == "Gemma2ForCausalLM"
    ids = tok("The river bends", return_tensors="pt")
    assert ids.input_ids[0, 0].item() == 2  # one BOS, added by the tokenizer
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    new = out[0, ids.input_ids.shape[1] :].tolist()
    assert len(new) == 12
    assert len(set(new)) > 3, f"pretrained model should not repeat one token: {tok.decode(new)!r}"


def test_tokenizer_special_ids_and_round_trip(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    }
    assert ids == {
        "<pad>": 0,
        "<eos>": 1,
        "<bos>": 2,
        "<unk>": 3,
        "<mask>": 4,
        "<start_of_turn>": 106,
        "<end_of_turn>": 107,
    }
    for text in [
        "Hello world",
        "  leading and trailing  ",
        "tabs\tand\nnewlines\n\n\n",
        "CRLF\r\nline",
        "naïve café – ½",
        "日本語のテキスト",
        "Ελληνικά",
        "emoji 🙂🚀",
        "x = [1, 2, 3]\n",
    ]:
        enc = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(enc) == text, repr(text)


def test_chat_template_as_gemma(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    msgs = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": " 4. "},
        {"role": "user", "content": "Thanks"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n"
        "<start_of_turn>model\n4.<end_of_turn>\n<start_of_turn>user\nThanks<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[:2] == [2, 106] and ids.count(2) == 1 and ids.count(107) == 3
    cfg = json.loads((tiny / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == GEMMA_CHAT_TEMPLATE
    assert cfg["add_bos_token"] is True and cfg["add_eos_token"] is False
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_bad_arguments_are_clear_errors(tmp_path: Path, capsys) -> None:
    assert cli(["tiny-model", str(tmp_path), "--heads", "3", "--kv-heads", "2"]) == 2
    assert "--heads 3 must be a multiple of --kv-heads 2" in capsys.readouterr().err


def test_bundled_data_is_the_generators_output() -> None:
    assert bundled_text("calibration.txt") == corpus.calibration_text()
    assert bundled_text("preferences.jsonl") == corpus.preference_jsonl()
    assert bundled_text("evaluation.txt") == corpus.evaluation_text()
    assert bundled_text("gsm8k-sample.jsonl") == corpus.gsm8k_sample()
    assert bundled_text("mmlu-redux-sample.jsonl") == corpus.mmlu_redux_sample()


def test_bundled_data_sizes_and_format() -> None:
    text = bundled_text("calibration.txt")
    assert len(text.encode()) >= 64 * 1024
    assert any(ch in text for ch in "日本") and "def " in text and "fn main" in text and "Shopping list" in text
    rows = [json.loads(line) for line in bundled_text("preferences.jsonl").splitlines()]
    assert len(rows) >= 200
    for r in rows:
        assert isinstance(r["prompt"], str) and r["prompt"]
        for side in ("chosen", "rejected"):
            assert [m["role"] for m in r[side]] == ["user", "assistant"]
            assert r[side][0]["content"] == r["prompt"]
        assert r["chosen"][1]["content"] != r["rejected"][1]["content"]
        assert r["score_chosen"] > r["score_rejected"]


def test_chosen_answers_are_correct_arithmetic() -> None:
    """The preference signal is systematic: every addition's chosen answer is right and its
    rejected answer wrong, so a tiny model can learn it."""
    rows = [json.loads(line) for line in bundled_text("preferences.jsonl").splitlines()]
    adds = [r for r in rows if r["prompt"].startswith("What is ") and " + " in r["prompt"]]
    assert adds
    for r in adds:
        a, b = (int(v) for v in r["prompt"][8:-1].split(" + "))
        assert r["chosen"][1]["content"].endswith(f"= {a + b}.")
        assert not r["rejected"][1]["content"].endswith(f"= {a + b}.")


def test_large_variant_streams_one_tensor_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """The writer never holds more than one tensor: check the builder's peak allocation on a
    model whose weights are much larger than any single tensor."""
    import tracemalloc

    cfg = TinyConfig(layers=8, hidden=512, intermediate=1024, heads=8, kv_heads=4, head_dim=64)
    tracemalloc.start()
    build_tiny_model(tmp_path, cfg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    total = (tmp_path / "model.safetensors").stat().st_size
    largest = 3072 * 512 * 2
    assert total > 10 * largest
    # float32 generation + bf16 bytes of the largest tensor, plus the tokenizer trainer's text
    assert peak < 4 * largest * 2 + 8_000_000, (peak, total)
    assert np.isfinite(peak)
