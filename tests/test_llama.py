"""The second family, Llama (arch/llama.py), proven as Gemma-2 is: the tiny Llama converts as
llama.cpp's converter converts it (every key and byte), quantizes as llama_model_quantize
does, runs in llama.cpp with Hugging Face's logits, collects the importance matrix that
llama-imatrix collects, trains a SimPO step, and publishes a template that renders what
its chat template renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from simpo_q import imatrix as im
from simpo_q._native import SimpoQError
from simpo_q.arch import llama
from simpo_q.convert import convert
from simpo_q.gguf import metadata_dict, open_gguf
from simpo_q.quantize_model import quantize_model
from simpo_q.tiny import TinyConfig, build_tiny_model, cached_tiny_model
from test_convert_quantize import NAMING_KEYS, _llama_quantize, llama_cpp, load
from test_imatrix import CALIB, tools
from test_publish import _conversations, _modelfile_blocks

REPO = Path(__file__).parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CTX, CHUNKS = 128, 4


@pytest.fixture(scope="module")
def model() -> Path:
    return cached_tiny_model(REPO / ".cache", TinyConfig(arch="llama"), pretrain_steps=200, quiet=True)


@pytest.fixture(scope="module")
def files(model: Path, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("llama")
    out = {"f32": convert(model, d / "tiny-f32.gguf", "f32", quiet=True)}
    for ftype in ("Q3_K_S", "Q4_K_M"):
        out[ftype] = quantize_model(model, d / f"tiny-{ftype}.gguf", ftype, quiet=True)
    return out


def test_tiny_llama_is_a_llama_3_layout(model: Path) -> None:
    from transformers import AutoTokenizer

    cfg = json.loads((model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is False
    tok = AutoTokenizer.from_pretrained(model)
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert chat == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|eot_id|>"


def test_conversion_equals_llama_cpp_converter(model: Path, files, tmp_path: Path) -> None:
    from llama_cpp_tree import llama_cpp_tree

    ref = tmp_path / "ref-f32.gguf"
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    subprocess.run(
        [
            sys.executable,
            str(llama_cpp_tree() / "convert_hf_to_gguf.py"),
            str(model),
            "--outtype",
            "f32",
            "--outfile",
            str(ref),
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    a, b = open_gguf(files["f32"]), open_gguf(ref)
    assert [(k, t, v) for k, t, v in a.metadata if k not in NAMING_KEYS] == [
        (k, t, v) for k, t, v in b.metadata if k not in NAMING_KEYS
    ]
    # the untied head is output.weight; the query and key rows are permuted as the converter does
    assert "output.weight" in {t[0] for t in a.tensors}
    assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name


def test_llama_cpp_tokenizes_and_computes_like_hf(model: Path, files) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    vocab = load(files["f32"], vocab_only=True)
    for s in [
        "Hello world",
        "  spaces  ",
        "tabs\tand\nnewlines\n\n",
        "naïve café – ½",
        "日本語",
        "<|eot_id|> and <|start_header_id|>",
    ]:
        assert vocab.tokenize(s.encode(), add_bos=True, special=True) == tok(s).input_ids, repr(s)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="eager").eval()
    llm = load(files["f32"], type_k=0, type_v=0)
    for p in ["The river bends twice", "What is 17 + 25?"]:
        ids = tok(p).input_ids
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0, -1].numpy()
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)
        assert float(np.max(np.abs(got - ref)) / np.max(np.abs(ref))) < 1e-3, p


@pytest.mark.parametrize(("ftype", "fid"), [("Q3_K_S", 11), ("Q4_K_M", 15)])
def test_quantize_equals_llama_quantize(files, tmp_path: Path, ftype: str, fid: int) -> None:
    ref = tmp_path / "ref.gguf"
    _llama_quantize(files["f32"], ref, fid)
    a, b = open_gguf(files[ftype]), open_gguf(ref)
    assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
    assert metadata_dict(a) == metadata_dict(b)
    # the untied head takes Q6_K, the embedding the file type's own
    types = {n: t for n, _, t, *_ in a.tensors}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == ftype[:4]
    out = llama_cpp().Llama(model_path=str(files[ftype]), n_ctx=128, n_threads=2, verbose=False)
    assert out("The river", max_tokens=8, temperature=0.0)["choices"][0]["text"].strip() != ""


def test_importance_matrix_agrees_with_llama_imatrix(model: Path, files, tmp_path: Path) -> None:
    """In memory and one layer at a time, the sums llama-imatrix collects on the same chunks."""
    bins = tools()
    ours = im.collect(model, CALIB, ctx=CTX, chunks=CHUNKS, quiet=True)
    ref = tmp_path / "ref.gguf"
    subprocess.run(
        [
            str(bins / "llama-imatrix"),
            "-m",
            str(files["f32"]),
            "-f",
            str(CALIB),
            "-o",
            str(ref),
            "-c",
            str(CTX),
            "--chunks",
            str(CHUNKS),
            "-t",
            "2",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    r = im.load(ref)
    assert r.names() == ours.names() and len(r.names()) == 7 * 2
    for name in r.names():
        (sa, ca), (sb, cb) = ours.entry(name), r.entry(name)
        assert ca == cb
        assert np.max(np.abs(sa - sb) / np.abs(sb)) < 1e-3, name
    from simpo_q.imatrix_offload import collect_offloaded

    by_layer = collect_offloaded(model, CALIB, ctx=CTX, chunks=CHUNKS, quiet=True)
    for name in ours.names():
        (sa, ca), (sb, cb) = ours.entry(name), by_layer.entry(name)
        assert ca == cb and np.max(np.abs(sa - sb) / np.abs(sa)) < 1e-5, name


def test_one_simpo_step_moves_every_weight(model: Path, tmp_path: Path) -> None:
    """One optimizer step on the bundled pairs: the answers rendered by Llama-3's template
    (assistant header, <|eot_id|>), every tensor saved (the untied head too) and changed."""
    from safetensors.torch import load_file
    from simpo_q.train.loop import train
    from simpo_q.train.recipe import load_recipe

    r = load_recipe(
        REPO / "recipes" / "tiny.yaml",
        [f"model={model}", f"output_dir={tmp_path / 'run'}", "max_steps=1", "eval_steps=0", "save_dtype=float32"],
    )
    train(r, quiet=True)
    before = load_file(str(model / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert sorted(after) == sorted(before) and "lm_head.weight" in after
    for k in before:
        assert not np.array_equal(before[k].float().numpy(), after[k].numpy()), k
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(metrics[0]["loss"])


def test_answers_end_with_the_end_of_turn(model: Path) -> None:
    from simpo_q.train.data import tokenize_pairs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    row = {
        "prompt": "What is 2 + 2?",
        "chosen": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": " 4 "}],
        "rejected": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "5"}],
    }
    (pair,), bad = tokenize_pairs([row], tok, max_length=256, max_prompt_length=128)
    assert not bad
    assert tok.decode(pair.prompt) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 2?<|eot_id|>"
    )
    assert tok.decode(pair.chosen) == "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"


def test_template_renders_what_the_chat_template_renders(model: Path, tmp_path: Path, go_renderer: Path) -> None:
    """Ollama's TEMPLATE, executed by Go's text/template, gives byte for byte what Llama-3's
    chat template gives with the generation prompt, less <|begin_of_text|> (llama.cpp adds
    it); Llama has a system role, so the system prompt is its own turn."""
    from transformers import AutoTokenizer

    assert quantize_model(model, tmp_path / "m.gguf", "Q4_K_M", quiet=True, ollama=True) is not None
    blocks = _modelfile_blocks((tmp_path / "Modelfile").read_text())
    assert "LICENSE" not in blocks  # the family does not say which licence: the user does
    assert blocks["PARAMETER"] == [
        "num_ctx 8192",
        'stop "<|start_header_id|>"',
        'stop "<|end_header_id|>"',
        'stop "<|eot_id|>"',
    ]
    tok = AutoTokenizer.from_pretrained(str(model))
    cases, expected = [], []
    for system, msgs in _conversations():
        full = ([{"role": "system", "content": system}] if system else []) + msgs
        cases.append({"messages": full})
        text = tok.apply_chat_template(full, tokenize=False, add_generation_prompt=True)
        assert text.startswith(tok.bos_token)
        expected.append(text[len(tok.bos_token) :])
    r = subprocess.run(
        [str(go_renderer)],
        input=json.dumps({"template": blocks["TEMPLATE"][0], "cases": cases}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(r.stdout) == expected


def test_dequantized_gguf_runs_in_the_hf_model(model: Path, files) -> None:
    """`eval kld`'s path back from a GGUF: the permutation undone, so the float32 file gives
    the Hugging Face model's own logits."""
    import torch
    from simpo_q.evaluate.engines import TorchModel

    ref = TorchModel.from_directory(model)
    back = TorchModel.from_gguf(files["f32"], ref)
    ids = ref.tokenize("The river bends twice and the market opens early")
    assert np.allclose(back.logits(ids, 0), ref.logits(ids, 0), atol=1e-5)
    assert torch.equal(back.model.lm_head.weight, ref.model.lm_head.weight)


def test_permutation_round_trips() -> None:
    x = np.arange(8 * 2 * 4 * 3, dtype=np.float32).reshape(8 * 8, 3)
    for heads in (1, 2, 4, 8):
        assert np.array_equal(llama.unpermute(llama.permute(x, heads), heads), x)
    # one head of 4 rows: halves [0, 1 | 2, 3] interleave as 0, 2, 1, 3
    assert llama.permute(np.arange(4, dtype=np.float32).reshape(4, 1), 1)[:, 0].tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"RoPE scaling 'llama3' is not supported yet"),
        ({"attention_bias": True}, r"attention_bias is true; biased Llama layers are not supported yet"),
        ({"num_key_value_heads": 3}, r"num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ],
)
def test_what_is_not_supported_is_refused_before_any_work(model: Path, tmp_path: Path, change, message) -> None:
    d = tmp_path / "m"
    build_tiny_model(d, TinyConfig(arch="llama"), quiet=True)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(SimpoQError, match=message):
        convert(d, tmp_path / "out.gguf", "f32", quiet=True)
    assert not (tmp_path / "out.gguf").exists()


def test_bpe_only_tokenizer_is_refused_clearly(model: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model, d)
    (d / "tokenizer.model").unlink()
    with pytest.raises(
        SimpoQError,
        match=r"tokenizer.model: missing; .* BPE-only tokenizer.json \(Llama-3\) is not "
        r"supported yet",
    ):
        convert(d, tmp_path / "out.gguf", "f32", quiet=True)


def test_eighty_layer_llama_gets_llama_cpps_70b_attn_v(tmp_path: Path) -> None:
    """llama.cpp calls a llama of 80 layers with grouped keys "70B" and gives its attn_v more
    bits (Q5_K where Q3_K_S would say Q3_K): the same types as llama_model_quantize, on a
    narrow 80-layer model."""
    d = build_tiny_model(
        tmp_path / "m",
        TinyConfig(arch="llama", layers=80, hidden=256, intermediate=256, heads=8, kv_heads=2, head_dim=32, vocab=1024),
        quiet=True,
    )
    f16 = convert(d, tmp_path / "f16.gguf", "f16", quiet=True)
    ref = tmp_path / "ref.gguf"
    _llama_quantize(f16, ref, 11)
    ours = quantize_model(d, tmp_path / "ours.gguf", "Q3_K_S", quiet=True)
    a, b = open_gguf(ours), open_gguf(ref)
    types = {n: t for n, _, t, *_ in a.tensors}
    assert types == {n: t for n, _, t, *_ in b.tensors}
    assert types["blk.0.attn_v.weight"] == "Q5_K" and types["blk.0.attn_q.weight"] == "Q3_K"
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name


def test_plan_counts_a_llamas_own_tensors_and_activations(model: Path) -> None:
    """`plan` sizes a Llama from its own adapter and Hugging Face code: every parameter (the
    untied head too) and, on the meta device, what its layers keep for backward."""
    import torch
    from simpo_q.train.plan import plan, saved_bytes
    from simpo_q.train.recipe import load_recipe
    from transformers import AutoModelForCausalLM

    r = load_recipe(REPO / "recipes" / "tiny.yaml", [f"model={model}"])
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="eager")
    assert plan(r, 1, 80)["params"] == sum(p.numel() for p in hf.parameters())
    cfg = json.loads((model / "config.json").read_text())
    hf.train()
    seen: dict[int, int] = {}
    params = {p.untyped_storage()._cdata for p in hf.parameters()}

    def pack(x):
        if x.untyped_storage()._cdata not in params:
            seen[x.untyped_storage()._cdata] = x.untyped_storage().nbytes()
        return x

    ids = torch.ones((2, 64), dtype=torch.long)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        hf.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    assert saved_bytes(json.dumps(cfg, sort_keys=True), 2, 64, False, False, cfg["num_hidden_layers"]) == sum(
        seen.values()
    )


def test_process_output_collects_the_untied_head_as_llama_imatrix(model: Path, files, tmp_path: Path) -> None:
    """--process-output: the untied head's input (output.weight) too, equal to
    llama-imatrix --process-output's, in memory and one layer at a time."""
    from simpo_q.imatrix_offload import collect_offloaded

    bins = tools()
    ref = tmp_path / "ref.gguf"
    subprocess.run(
        [str(bins / "llama-imatrix"), "-m", str(files["f32"]), "-f", str(CALIB), "-o", str(ref), "-c", str(CTX),
         "--chunks", str(CHUNKS), "-t", "2", "--process-output"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    r = im.load(ref)
    assert "output.weight" in r.names()
    for ours in (
        im.collect(model, CALIB, ctx=CTX, chunks=CHUNKS, quiet=True, process_output=True),
        collect_offloaded(model, CALIB, ctx=CTX, chunks=CHUNKS, quiet=True, process_output=True),
    ):
        assert ours.names() == r.names()
        (sa, ca), (sb, cb) = ours.entry("output.weight"), r.entry("output.weight")
        assert ca == cb and np.max(np.abs(sa - sb) / np.abs(sb)) < 1e-3
    # and llama-quantize uses that entry for the head as simpo-q does
    subprocess.run(
        [str(bins / "llama-quantize"), "--imatrix", str(ref), str(files["f32"]), str(tmp_path / "q.gguf"), "Q3_K_S",
         "2"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    mine = quantize_model(model, tmp_path / "mine.gguf", "Q3_K_S", imatrix=ref, quiet=True)
    assert np.array_equal(
        open_gguf(mine).tensor_bytes("output.weight"), open_gguf(tmp_path / "q.gguf").tensor_bytes("output.weight")
    )


def test_metadata_file_and_sampling_defaults_as_the_converter(model: Path, tmp_path: Path) -> None:
    """convert --metadata FILE and a generation_config.json's sampling defaults (Llama-3's
    temperature, top_p...): the general.* keys convert_hf_to_gguf.py writes, in its order."""
    import shutil

    from llama_cpp_tree import llama_cpp_tree
    from simpo_q.cli import main as cli

    d = tmp_path / "m"
    shutil.copytree(model, d)
    gen = json.loads((d / "generation_config.json").read_text())
    gen.update(temperature=0.6, top_p=0.9, top_k=40, repetition_penalty=1.1, do_sample=True)
    (d / "generation_config.json").write_text(json.dumps(gen))
    meta = {
        "general.name": "Tiny Llama", "general.author": "simpo-q", "general.version": "v1",
        "general.organization": "Simpo", "general.finetune": "SimPO", "general.basename": "tiny-llama",
        "general.description": "a tiny test model", "general.quantized_by": "me",
        "general.license.name": "Apache 2.0", "general.license.link": "https://www.apache.org/licenses/LICENSE-2.0",
        "general.url": "https://example.org/m", "general.repo_url": "https://example.org/m.git",
        "general.source.url": "https://example.org/src",
        "general.base_models": [{"name": "Base", "organization": "Meta", "repo_url": "https://huggingface.co/x/y"}],
        "general.datasets": [{"name": "Pairs", "version": "v2"}, {"name": "More"}],
        "general.tags": ["simpo", "tiny"], "general.languages": ["en", "fr"],
        "general.sampling.min_p": 0.05,
    }  # fmt: skip
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    ref = tmp_path / "ref.gguf"
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    subprocess.run(
        [sys.executable, str(llama_cpp_tree() / "convert_hf_to_gguf.py"), str(d), "--outtype", "f32",
         "--outfile", str(ref), "--metadata", str(tmp_path / "meta.json"), "--vocab-only"],
        check=True, capture_output=True, env=env, timeout=600,
    )  # fmt: skip
    assert cli(["--quiet", "convert", str(d), str(tmp_path / "ours.gguf"), "--outtype", "f32", "--vocab-only",
                "--metadata", str(tmp_path / "meta.json")]) == 0  # fmt: skip
    a, b = open_gguf(tmp_path / "ours.gguf"), open_gguf(ref)
    general = [(k, t, v) for k, t, v in b.metadata if k.startswith("general.")]
    assert [(k, t, v) for k, t, v in a.metadata if k.startswith("general.")] == general
    assert ("general.sampling.temp", "f32", pytest.approx(0.6)) in [(k, t, v) for k, t, v in general]
    assert [(k, t) for k, t, _ in a.metadata] == [(k, t) for k, t, _ in b.metadata]
    (tmp_path / "bad.json").write_text(json.dumps({"general.license": "mit"}))
    assert cli(["convert", str(d), str(tmp_path / "x.gguf"), "--metadata", str(tmp_path / "bad.json")]) == 2


def test_budget_weighs_a_llamas_layers_by_their_output_sensitivity(model: Path, files, tmp_path: Path) -> None:
    """The size budget from a calibration text on a Llama: every linear layer (its own
    projection names) gets output sensitivities, Q2_K is among the choices, the file stays
    within Q3_K_S's size and llama.cpp generates from it."""
    from simpo_q import imatrix as im
    from simpo_q.evaluate.engines import LlamaCppModel
    from simpo_q.sensitivity import collect_sensitivity

    tok, hf = im.load_model(model, quiet=True)
    sens = collect_sensitivity(hf, tok, CALIB.read_text(), ctx=CTX, chunks=CHUNKS, where="cal", quiet=True)
    layers = hf.config.num_hidden_layers
    assert len(sens) == 7 * layers and all(np.isfinite(v).all() and (v > 0).all() for v in sens.values())
    assert sens["blk.0.attn_k.weight"].shape == (hf.config.num_key_value_heads * hf.config.head_dim,)
    base = files["Q3_K_S"]
    data = sum(t[4] for t in open_gguf(base).tensors)
    params = sum(int(np.prod(t[1])) for t in open_gguf(base).tensors)
    out = quantize_model(
        model,
        tmp_path / "b.gguf",
        "Q3_K_S",
        imatrix=CALIB,
        imatrix_ctx=CTX,
        imatrix_chunks=CHUNKS,
        target_bpw=8 * data / params,
        quiet=True,
    )
    assert sum(t[4] for t in open_gguf(out).tensors) <= data
    assert "Q2_K" in {t[2] for t in open_gguf(out).tensors}
    text = LlamaCppModel(out, CTX, threads=2).llm.create_completion("The river", max_tokens=4, temperature=0.0)
    assert text["choices"][0]["text"]
