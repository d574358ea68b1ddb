"""HF Gemma-2 → GGUF: llama.cpp loads and runs our files, our conversion equals llama.cpp's
converter, our quantization equals llama.cpp's quantizer, and bad input fails cleanly."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ggml_ref import require
from simpo_q._native import SimpoQError
from simpo_q.cli import main as cli
from simpo_q.convert import convert
from simpo_q.gguf import metadata_dict, open_gguf
from simpo_q.policy import plan_types
from simpo_q.quantize_model import quantize_model
from simpo_q.tiny import TinyConfig, build_tiny_model, cached_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).parent.parent
# gguf-py guesses these from the directory name (title-casing, splitting off a "finetune");
# simpo-q writes the directory name as general.name and guesses nothing.
NAMING_KEYS = {"general.name", "general.finetune", "general.basename"}


def llama_cpp():
    try:
        import llama_cpp as lc
    except ImportError as e:
        require("llama-cpp-python==0.3.36 (pip install '.[test]')", e)
    return lc


@pytest.fixture(scope="module")
def model() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


@pytest.fixture(scope="module")
def files(model: Path, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gguf")
    out = {}
    for outtype in ("f32", "q8_0"):
        out[outtype] = convert(model, d / f"tiny-{outtype}.gguf", outtype, quiet=True)
    for ftype in ("Q3_K_S", "Q4_K_M"):
        out[ftype] = quantize_model(model, d / f"tiny-{ftype}.gguf", ftype, quiet=True)
    return out


def load(path: Path, **kw):
    lc = llama_cpp()
    return lc.Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False, seed=0, **kw)


PROMPTS = ["The river bends twice", "What is 17 + 25?", "Le marché ouvre tôt"]
STRINGS = [
    "Hello world",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\n\n\n",
    "CRLF\r\nline",
    "naïve café – ½ \u00a0nbsp",
    "日本語のテキスト",
    "Ελληνικά",
    "emoji 🙂",
    "<unused3> and <mask>",
    "x = [1, 2, 3]\n",
]


def test_llama_cpp_tokenizes_like_hf(model: Path, files) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    llm = load(files["f32"], vocab_only=True)
    for s in STRINGS:
        assert llm.tokenize(s.encode(), add_bos=True, special=True) == tok(s).input_ids, repr(s)
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == tok(chat, add_special_tokens=False).input_ids


def test_llama_cpp_logits_and_greedy_match_hf(model: Path, files) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="eager").eval()
    llm = load(files["f32"], type_k=0, type_v=0)
    for p in PROMPTS:
        ids = tok(p).input_ids
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0, -1].numpy()
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)
        rel = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
        assert rel < 1e-3, (p, rel)
        with torch.no_grad():
            gen = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids) :].tolist()
        llm.reset()
        ours = []
        for t in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            ours.append(t)
            if len(ours) == 16:
                break
        assert ours == gen[: len(ours)] and len(ours) == len(gen), (p, ours, gen)


@pytest.mark.parametrize("kind", ["q8_0", "Q3_K_S", "Q4_K_M"])
def test_quantized_files_load_and_generate(files, kind: str) -> None:
    llm = load(files[kind])
    out = llm("The river", max_tokens=8, temperature=0.0)
    assert out["choices"][0]["text"].strip() != ""
    r = open_gguf(files[kind])
    if kind in ("Q3_K_S", "Q4_K_M"):
        want = plan_types(kind, [(n, tuple(reversed(d))) for n, d, *_ in r.tensors])
        assert {n: t for n, _, t, *_ in r.tensors} == want


def _llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    lc = llama_cpp()
    p = lc.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = 2
    assert lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) == 0


@pytest.mark.parametrize(("ftype", "fid"), [("Q3_K_S", 11), ("Q4_K_M", 15)])
def test_quantize_equals_llama_quantize(files, tmp_path: Path, ftype: str, fid: int) -> None:
    ref = tmp_path / "ref.gguf"
    _llama_quantize(files["f32"], ref, fid)
    a, b = open_gguf(files[ftype]), open_gguf(ref)
    assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
    assert [(k, t) for k, t, _ in a.metadata] == [(k, t) for k, t, _ in b.metadata]
    ma, mb = metadata_dict(a), metadata_dict(b)
    assert ma == mb


def test_conversion_equals_llama_cpp_converter(model: Path, files, tmp_path: Path) -> None:
    try:
        from llama_cpp_tree import llama_cpp_tree

        tree = llama_cpp_tree()
    except Exception as e:  # network or disk problem fetching the reference
        require("llama.cpp tree from the llama-cpp-python 0.3.36 sdist", e)
    ref = tmp_path / "ref-f32.gguf"
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    subprocess.run(
        [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model), "--outtype", "f32", "--outfile", str(ref)],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    a, b = open_gguf(files["f32"]), open_gguf(ref)
    ka = [(k, t, v) for k, t, v in a.metadata if k not in NAMING_KEYS]
    kb = [(k, t, v) for k, t, v in b.metadata if k not in NAMING_KEYS]
    assert ka == kb
    assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name


@pytest.mark.parametrize("flags", [["--outtype", "auto"], ["--vocab-only"]])
def test_convert_speaks_convert_hf_to_gguf(model: Path, tmp_path: Path, flags: list[str]) -> None:
    """convert_hf_to_gguf.py's own flags give its file: --outtype auto (bf16 here, as stored),
    --vocab-only (metadata and vocabulary, no tensors), --outfile with {ftype}; and
    --model-name sets general.name."""
    try:
        from llama_cpp_tree import llama_cpp_tree

        tree = llama_cpp_tree()
    except Exception as e:
        require("llama.cpp tree from the llama-cpp-python 0.3.36 sdist", e)
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    subprocess.run(
        [
            sys.executable,
            str(tree / "convert_hf_to_gguf.py"),
            str(model),
            *flags,
            "--outfile",
            str(tmp_path / "ref-{ftype}.gguf"),
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert cli(["--quiet", "convert", str(model), *flags, "--outfile", str(tmp_path / "ours-{ftype}.gguf")]) == 0
    # the converter's default outtype is auto, ours too: bf16, as the tiny model is stored
    a, b = open_gguf(tmp_path / "ours-bf16.gguf"), open_gguf(tmp_path / "ref-bf16.gguf")
    assert [(k, t, v) for k, t, v in a.metadata if k not in NAMING_KEYS] == [
        (k, t, v) for k, t, v in b.metadata if k not in NAMING_KEYS
    ]
    assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
    assert (len(a.tensors) == 0) == ("--vocab-only" in flags)
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
    assert cli(["--quiet", "convert", str(model), str(tmp_path / "named.gguf"), "--model-name", "Tiny SimPO"]) == 0
    assert metadata_dict(open_gguf(tmp_path / "named.gguf"))["general.name"] == "Tiny SimPO"


def test_sharded_and_single_give_identical_gguf(tmp_path: Path) -> None:
    # the same directory name for both, so general.name agrees too
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    build_tiny_model(tmp_path / "a" / "tiny", TinyConfig())
    build_tiny_model(tmp_path / "b" / "tiny", TinyConfig(shards=3))
    assert len(list((tmp_path / "b" / "tiny").glob("model-*.safetensors"))) == 3
    a = quantize_model(tmp_path / "a" / "tiny", tmp_path / "a.gguf", "Q3_K_S", quiet=True)
    b = quantize_model(tmp_path / "b" / "tiny", tmp_path / "b.gguf", "Q3_K_S", quiet=True)
    assert a.read_bytes() == b.read_bytes()


def test_ollama_files(model: Path, tmp_path: Path) -> None:
    assert cli(["--quiet", "quantize", str(model), str(tmp_path / "m.gguf"), "--type", "Q4_K_M", "--ollama"]) == 0
    mf = (tmp_path / "Modelfile").read_text()
    assert mf.startswith("FROM ./m.gguf\n") and 'PARAMETER stop "<start_of_turn>"' in mf
    assert 'PARAMETER stop "<end_of_turn>"' in mf and "PARAMETER num_ctx 4096" in mf and "<start_of_turn>model" in mf
    assert "Gemma Terms of Use found at ai.google.dev/gemma/terms" in (tmp_path / "NOTICE").read_text()


def test_dry_run_writes_nothing(model: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    assert cli(["quantize", str(model), str(tmp_path / "x.gguf"), "--type", "Q4_K_M", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "token_embd.weight" in out and "type = Q6_K" in out and "predicted size" in out and " BPW)" in out
    assert list(tmp_path.iterdir()) == []
    # nor computes anything: a calibration text is not run through the model
    import simpo_q.imatrix as im

    monkeypatch.setattr(im, "collect", lambda *a, **k: pytest.fail("the dry run collected an importance matrix"))
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    assert cli(["quantize", str(model), str(tmp_path / "x.gguf"), "--dry-run", "--imatrix", str(calib)]) == 0
    assert "dry run: the importance matrix is not computed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_overrides(model: Path, tmp_path: Path) -> None:
    p = quantize_model(
        model,
        tmp_path / "o.gguf",
        "Q3_K_S",
        quiet=True,
        overrides=__import__("simpo_q.policy", fromlist=["Overrides"]).Overrides(
            token_embedding_type="Q8_0", tensor_types=[(r"ffn_down", "Q5_K")]
        ),
    )
    types = {n: t for n, _, t, *_ in open_gguf(p).tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.ffn_down.weight"] == "Q5_K"
    assert types["blk.0.ffn_up.weight"] == "Q3_K"


def test_inspect(files, capsys) -> None:
    assert cli(["inspect", str(files["Q3_K_S"])]) == 0
    out = capsys.readouterr().out
    assert "general.file_type" in out and "token_embd.weight" in out and "Q6_K" in out
    assert cli(["inspect", "--json", str(files["Q3_K_S"])]) == 0
    import json

    j = json.loads(capsys.readouterr().out)
    assert j["version"] == 3 and any(t["name"] == "blk.0.attn_q.weight" for t in j["tensors"])


# --- bad input: a clear error naming the file, and nothing at OUT ---


def _fails(tmp_path: Path, src: Path, match: str, out_name: str = "out.gguf") -> None:
    out = tmp_path / out_name
    with pytest.raises(SimpoQError, match=match):
        quantize_model(src, out, "Q3_K_S", quiet=True)
    assert not out.exists() and not any(p.name.startswith(f".{out_name}.tmp") for p in tmp_path.iterdir())


def _copy(model: Path, tmp_path: Path) -> Path:
    d = tmp_path / "m"
    shutil.copytree(model, d)
    return d


def test_missing_config(model, tmp_path) -> None:
    d = _copy(model, tmp_path)
    (d / "config.json").unlink()
    _fails(tmp_path, d, r"config.json: missing")


def test_unsupported_architecture(model, tmp_path) -> None:
    import json

    d = _copy(model, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    _fails(
        tmp_path,
        d,
        r"unsupported architecture \['Qwen2ForCausalLM'\]; supported: Gemma2ForCausalLM, "
        r"LlamaForCausalLM, MistralForCausalLM",
    )


def test_missing_shard(tmp_path) -> None:
    d = tmp_path / "m"
    build_tiny_model(d, TinyConfig(shards=2))
    (d / "model-00002-of-00002.safetensors").unlink()
    _fails(tmp_path, d, r"model-00002-of-00002.safetensors: missing shard")


def test_truncated_safetensors(model, tmp_path) -> None:
    d = _copy(model, tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _fails(tmp_path, d, r"model.safetensors: truncated")


def test_corrupt_safetensors_header(model, tmp_path) -> None:
    d = _copy(model, tmp_path)
    f = d / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[8:20] = b"\x00garbage!!!!"
    f.write_bytes(bytes(b))
    _fails(tmp_path, d, r"model.safetensors: corrupt safetensors header")


def test_nan_weight(model, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    d = _copy(model, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert torch.isnan(sd["model.layers.1.mlp.up_proj.weight"]).any()
    _fails(tmp_path, d, r"tensor blk.1.ffn_up.weight: x: non-finite value NaN at row 3, column 5")


def test_unwritable_output(model, tmp_path) -> None:
    with pytest.raises(SimpoQError, match=r"no_dir/out.gguf: the folder .*no_dir does not exist"):
        quantize_model(model, tmp_path / "no_dir" / "out.gguf", "Q3_K_S", quiet=True)


def test_output_that_is_not_a_file(model, tmp_path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(SimpoQError, match=r"dir.gguf: is a directory; give a file name"):
        quantize_model(model, tmp_path / "dir.gguf", "Q3_K_S", quiet=True)
    with pytest.raises(SimpoQError, match=r"/dev/null: exists and is not a regular file"):
        quantize_model(model, Path("/dev/null"), "Q3_K_S", quiet=True)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: too small for the quantized model (needs root to mount)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_output_location(model, tiny_disk: Path, monkeypatch) -> None:
    out = tiny_disk / "out.gguf"
    # said before any work, from the planned size
    with pytest.raises(SimpoQError, match=r"out.gguf: the Q3_K_S GGUF needs 0.01 GiB .* has 0.00 GiB free"):
        quantize_model(model, out, "Q3_K_S", quiet=True)
    assert list(tiny_disk.iterdir()) == []
    # and if the disk fills during the write anyway (another writer), nothing is left
    import simpo_q.quantize_model as qm

    monkeypatch.setattr(qm, "check_space", lambda *a, **k: None)
    with pytest.raises(SimpoQError, match=r"out.gguf: write failed: No space left on device"):
        quantize_model(model, out, "Q3_K_S", quiet=True)
    assert list(tiny_disk.iterdir()) == []


@pytest.mark.parametrize("outtype", ["f32", "bf16"])
def test_quantize_from_gguf_equals_from_hf(model: Path, files, tmp_path: Path, outtype: str) -> None:
    """bf16 weights survive an f32 or bf16 GGUF exactly, so both inputs give the same file
    (but for general.file_type of the input, which quantize rewrites anyway)."""
    src = files["f32"] if outtype == "f32" else convert(model, tmp_path / "in-bf16.gguf", "bf16", quiet=True)
    a = quantize_model(src, tmp_path / "from-gguf.gguf", "Q3_K_S", quiet=True)
    b = open_gguf(files["Q3_K_S"])
    ra = open_gguf(a)
    assert [t[:3] for t in ra.tensors] == [t[:3] for t in b.tensors]
    for name, *_ in b.tensors:
        assert np.array_equal(ra.tensor_bytes(name), b.tensor_bytes(name)), name
    assert metadata_dict(ra) == metadata_dict(b)


def test_quantized_gguf_input_needs_allow_requantize(files, tmp_path: Path) -> None:
    """As llama-quantize: converting an already quantized tensor is refused (before any work)
    unless --allow-requantize; then it is dequantized as ggml does and quantized again, and
    the file equals llama-quantize --allow-requantize's byte for byte."""
    with pytest.raises(
        SimpoQError,
        match=r"requantizing from type Q3_K is disabled \(tensor blk.0.attn_k.weight "
        r"would become Q4_K\); pass --allow-requantize",
    ):
        quantize_model(files["Q3_K_S"], tmp_path / "x.gguf", "Q4_K_M", quiet=True)
    assert not (tmp_path / "x.gguf").exists()
    try:
        from llama_cpp_tree import llama_cpp_tools

        tools = llama_cpp_tools()
    except Exception as e:
        require("llama-quantize built from the llama-cpp-python 0.3.36 tree", e)
    q8 = quantize_model(files["f32"], tmp_path / "q8.gguf", "Q8_0", quiet=True)
    subprocess.run(
        [str(tools / "llama-quantize"), "--allow-requantize", str(q8), str(tmp_path / "ref.gguf"), "Q4_K_M", "2"],
        capture_output=True,
        check=True,
    )
    ours = quantize_model(q8, tmp_path / "ours.gguf", "Q4_K_M", quiet=True, allow_requantize=True)
    assert ours.read_bytes() == (tmp_path / "ref.gguf").read_bytes()


def test_pure_uses_one_type(model: Path, tmp_path: Path) -> None:
    from simpo_q.policy import Overrides

    p = quantize_model(model, tmp_path / "p.gguf", "Q4_K_M", quiet=True, overrides=Overrides(pure=True))
    types = {n: t for n, _, t, *_ in open_gguf(p).tensors}
    assert {t for n, t in types.items() if not n.endswith("norm.weight")} == {"Q4_K"}
    assert {t for n, t in types.items() if n.endswith("norm.weight")} == {"F32"}


def test_policy_on_gemma2_9b_shapes() -> None:
    """The issue's table for Gemma-2 9B (42 layers), without any weights."""
    shapes = [("token_embd.weight", (256000, 3584)), ("output_norm.weight", (3584,))]
    for i in range(42):
        shapes += [
            (f"blk.{i}.attn_q.weight", (4096, 3584)),
            (f"blk.{i}.attn_k.weight", (2048, 3584)),
            (f"blk.{i}.attn_v.weight", (2048, 3584)),
            (f"blk.{i}.attn_output.weight", (3584, 4096)),
            (f"blk.{i}.ffn_gate.weight", (14336, 3584)),
            (f"blk.{i}.ffn_up.weight", (14336, 3584)),
            (f"blk.{i}.ffn_down.weight", (3584, 14336)),
            (f"blk.{i}.attn_norm.weight", (3584,)),
        ]
    mb = {0, 1, 2, 3, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 36, 37, 38, 39, 40, 41}
    s = plan_types("Q3_K_S", shapes)
    assert s["token_embd.weight"] == "Q6_K" and s["output_norm.weight"] == "F32"
    assert {t for n, t in s.items() if n.startswith("blk.") and not n.endswith("norm.weight")} == {"Q3_K"}
    m = plan_types("Q4_K_M", shapes)
    for i in range(42):
        want = "Q6_K" if i in mb else "Q4_K"
        assert m[f"blk.{i}.attn_v.weight"] == want and m[f"blk.{i}.ffn_down.weight"] == want
        assert m[f"blk.{i}.attn_q.weight"] == "Q4_K"
    qm = plan_types("Q3_K_M", shapes)
    assert qm["blk.0.attn_v.weight"] == "Q5_K" and qm["blk.2.attn_v.weight"] == "Q4_K"
    assert qm["blk.1.ffn_down.weight"] == "Q5_K" and qm["blk.2.ffn_down.weight"] == "Q4_K"
    assert qm["blk.5.attn_output.weight"] == "Q4_K"
    assert plan_types("Q8_0", shapes)["token_embd.weight"] == "Q8_0"
    ks = plan_types("Q4_K_S", shapes)
    assert ks["blk.3.attn_v.weight"] == "Q5_K" and ks["blk.4.attn_v.weight"] == "Q4_K"
    assert ks["blk.4.ffn_down.weight"] == "Q5_K" and ks["blk.5.ffn_down.weight"] == "Q4_K"
    # gemma-2-9b: 2 query heads per key head; Q2_K lifts attn_v, ffn_down and attn_output to
    # Q3_K, Q2_K_S only the first eighth of ffn_down (to Q4_K)
    q2 = plan_types("Q2_K", shapes)
    assert q2["blk.0.attn_v.weight"] == "Q3_K" and q2["blk.41.ffn_down.weight"] == "Q3_K"
    assert q2["blk.7.attn_output.weight"] == "Q3_K" and q2["blk.7.ffn_up.weight"] == "Q2_K"
    assert q2["token_embd.weight"] == "Q6_K"
    q2s = plan_types("Q2_K_S", shapes)
    assert [q2s[f"blk.{i}.ffn_down.weight"] for i in (4, 5)] == ["Q4_K", "Q2_K"]
    assert q2s["blk.0.attn_v.weight"] == "Q2_K" and q2s["blk.0.attn_output.weight"] == "Q2_K"
    # four query heads per key head (attn_q has four times attn_k's rows): attn_v to Q4_K
    gqa4 = [(n, (8192, 3584) if n.endswith("attn_q.weight") else s) for n, s in shapes]
    assert plan_types("Q2_K", gqa4)["blk.3.attn_v.weight"] == "Q4_K"
    assert plan_types("Q2_K_S", gqa4)["blk.3.attn_v.weight"] == "Q4_K"
    # row lengths that are not multiples of 256 fall back as llama.cpp 0.3.36 does
    odd = plan_types("Q3_K_S", [("blk.0.attn_q.weight", (64, 96)), ("blk.0.ffn_up.weight", (64, 100))])
    assert odd == {"blk.0.attn_q.weight": "Q4_0", "blk.0.ffn_up.weight": "F16"}


def test_model_card_keys_as_the_converter(model: Path, tmp_path: Path) -> None:
    """A model card's front matter (gemma-2-9b-it's fields, and the ones llama.cpp's
    converter also reads: base models by id and URL, datasets, tags with the pipeline tag,
    languages with Norwegian's "no") gives the general.* keys convert_hf_to_gguf.py writes."""
    import shutil

    from llama_cpp_tree import llama_cpp_tree

    d = tmp_path / "m"
    shutil.copytree(model, d)
    (d / "README.md").write_text(
        "---\nlicense: gemma\nlibrary_name: transformers\npipeline_tag: text-generation\n"
        "extra_gated_heading: Access Gemma on Hugging Face\ntags:\n- conversational\n"
        "base_model: google/gemma-2-9b\ndatasets:\n- princeton-nlp/gemma2-ultrafeedback-armorm\n"
        "- https://huggingface.co/datasets/x\nlanguage:\n- en\n- no\nmodel_creator: Someone\n"
        "license_link: https://ai.google.dev/gemma/terms\n---\n\n# A card\n"
    )
    ref = tmp_path / "ref.gguf"
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    subprocess.run(
        [sys.executable, str(llama_cpp_tree() / "convert_hf_to_gguf.py"), str(d), "--outtype", "f32",
         "--outfile", str(ref), "--vocab-only"],
        check=True, capture_output=True, env=env, timeout=600,
    )  # fmt: skip
    ours = convert(d, tmp_path / "ours.gguf", "f32", quiet=True, vocab_only=True)
    a, b = open_gguf(ours), open_gguf(ref)
    want = [x for x in b.metadata if x[0].startswith("general.") and x[0] not in NAMING_KEYS]
    assert [x for x in a.metadata if x[0].startswith("general.") and x[0] not in NAMING_KEYS] == want
    assert ("general.license", "str", "gemma") in want and ("general.languages", "array[str]", ["en", "no"]) in want
    assert [k for k, *_ in a.metadata if k not in NAMING_KEYS] == [k for k, *_ in b.metadata if k not in NAMING_KEYS]
