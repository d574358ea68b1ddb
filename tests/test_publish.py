"""What a user publishes: the Modelfile (its TEMPLATE run by Go's own text/template against
the Hugging Face chat template, every parameter, the full licence), the model card, and the
general.* keys, which must be what llama.cpp's converter writes from that same card."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import yaml
from ggml_ref import require
from simpo_q._native import SimpoQError
from simpo_q.cli import main as cli
from simpo_q.gguf import metadata_dict, open_gguf
from simpo_q.publish import Page
from simpo_q.quantize_model import quantize_model
from simpo_q.tiny import cached_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).parent.parent
DATA = REPO / "python" / "simpo_q" / "data"
GEMMA_TERMS = resources.files("simpo_q.data").joinpath("gemma-terms-of-use.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def model() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


def _modelfile_blocks(text: str) -> dict[str, list[str]]:
    """Instruction -> values, with Ollama's triple-quoted blocks read whole."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(text):
        line_end = text.find("\n", i)
        line = text[i : line_end if line_end >= 0 else len(text)]
        if not line.strip():
            i = (line_end if line_end >= 0 else len(text)) + 1
            continue
        word, _, rest = line.partition(" ")
        if rest.startswith('"""'):
            end = text.index('"""', i + len(word) + 4)
            out.setdefault(word, []).append(text[i + len(word) + 4 : end])
            i = end + 4
        else:
            out.setdefault(word, []).append(rest)
            i = (line_end if line_end >= 0 else len(text)) + 1
    return out


def _conversations() -> list[tuple[str | None, list[dict]]]:
    """One to four user turns, the assistant answering between them, with and without a
    system prompt; contents without surrounding spaces (Gemma's template trims them, Go's
    text/template has no trim, and Ollama passes contents as typed)."""
    users = ["Hi", "What is 2+2?\nAnswer briefly.", 'Tell me about "quotes" & <tags>', "Thanks! Bye."]
    answers = ["Hello!", "4", "They are <b>markup</b> & 'text'."]
    out = []
    for n in range(1, 5):
        msgs: list[dict] = []
        for k in range(n):
            msgs.append({"role": "user", "content": users[k]})
            if k < n - 1:
                msgs.append({"role": "assistant", "content": answers[k]})
        out.append((None, msgs))
        out.append(("You are a terse assistant.", msgs))
    return out


def test_template_renders_what_the_chat_template_renders(model: Path, tmp_path: Path, go_renderer: Path) -> None:
    """Ollama's TEMPLATE, executed by Go's text/template, gives byte for byte what the model's
    Hugging Face chat template gives with the generation prompt (the leading <bos> aside:
    llama.cpp adds that token itself); a system prompt goes in front of the first user turn
    followed by a space, since Gemma has no system role."""
    from transformers import AutoTokenizer

    assert quantize_model(model, tmp_path / "m.gguf", "Q4_K_M", quiet=True, ollama=True) is not None
    template = _modelfile_blocks((tmp_path / "Modelfile").read_text())["TEMPLATE"][0]
    tok = AutoTokenizer.from_pretrained(str(model))
    cases, expected = [], []
    for system, msgs in _conversations():
        ollama_msgs = ([{"role": "system", "content": system}] if system else []) + msgs
        cases.append({"messages": ollama_msgs})
        hf_msgs = [dict(m) for m in msgs]
        if system:
            hf_msgs[0]["content"] = f"{system} {hf_msgs[0]['content']}"
        text = tok.apply_chat_template(hf_msgs, tokenize=False, add_generation_prompt=True)
        assert text.startswith(tok.bos_token)
        expected.append(text[len(tok.bos_token) :])
    r = subprocess.run(
        [str(go_renderer)],
        input=json.dumps({"template": template, "cases": cases}),
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(r.stdout)
    assert len(got) == len(expected) == 8
    for g, e in zip(got, expected, strict=True):
        assert g == e


def test_modelfile_is_the_whole_page(model: Path, tmp_path: Path) -> None:
    """FROM, TEMPLATE, the page's parameters, SYSTEM and the full Gemma Terms of Use; the
    NOTICE the licence asks for beside it; parameters and system from the command line."""
    rc = cli(
        [
            "--quiet",
            "quantize",
            str(model),
            str(tmp_path / "m.gguf"),
            "--ollama",
            "--parameter",
            "temperature=0.7",
            "--parameter",
            "num_ctx=8192",
            "--system",
            "You are helpful.",
        ]
    )
    assert rc == 0
    mf = (tmp_path / "Modelfile").read_text()
    b = _modelfile_blocks(mf)
    assert b["FROM"] == ["./m.gguf"]
    assert b["PARAMETER"] == [
        "num_ctx 8192",
        "num_predict 4096",
        "repeat_penalty 1",
        "temperature 0.7",
        'stop "<start_of_turn>"',
        'stop "<end_of_turn>"',
    ]
    assert b["SYSTEM"] == ["You are helpful."]
    assert b["LICENSE"] == [GEMMA_TERMS]
    assert (
        "You must provide all third party recipients of Gemma or Model Derivatives a copy of this Agreement"
        in GEMMA_TERMS
        and GEMMA_TERMS.rstrip().endswith("any rights under this Agreement.")
    )
    assert (tmp_path / "NOTICE").read_text() == (
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n"
    )
    # the page's parameters by default
    d = tmp_path / "plain"
    d.mkdir()
    quantize_model(model, d / "m.gguf", quiet=True, ollama=True)
    assert _modelfile_blocks((d / "Modelfile").read_text())["PARAMETER"] == [
        "num_ctx 4096",
        "num_predict 4096",
        "repeat_penalty 1",
        'stop "<start_of_turn>"',
        'stop "<end_of_turn>"',
    ]
    assert "SYSTEM" not in _modelfile_blocks((d / "Modelfile").read_text())


@pytest.mark.parametrize(
    "args,message",
    [
        (["--parameter", "num_ctxx=4096"], r"'num_ctxx' is not an Ollama parameter; known: num_ctx"),
        (["--parameter", "num_ctx=lots"], r"num_ctx: cannot use 'lots'"),
        (["--parameter", "temperature"], r"--parameter 'temperature': expected KEY=VALUE"),
        (
            ["--license", "apache-2.0"],
            r"--license apache-2.0: simpo-q has no text of this licence; give it with "
            r"--license-file",
        ),
        (["--license-file", "/nonexistent/LICENSE"], r"/nonexistent/LICENSE: --license-file not found"),
        (["--system", 'say """ then'], r"--system .*must not contain"),
    ],
)
def test_bad_page_options_fail_before_any_work(model: Path, tmp_path: Path, capsys, args, message) -> None:
    calib = DATA / "calibration.txt"
    rc = cli(["quantize", str(model), str(tmp_path / "m.gguf"), "--ollama", "--imatrix", str(calib), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and __import__("re").search(message, err), err
    assert list(tmp_path.iterdir()) == []  # not even the importance matrix was computed


def test_another_licence_with_its_text(model: Path, tmp_path: Path) -> None:
    lic = tmp_path / "LICENSE.txt"
    lic.write_text("Apache License\nVersion 2.0, January 2004\n")
    out = tmp_path / "out"
    out.mkdir()
    quantize_model(
        model,
        out / "m.gguf",
        quiet=True,
        ollama=True,
        model_card=True,
        page=Page(license="apache-2.0", license_file=lic),
    )
    assert _modelfile_blocks((out / "Modelfile").read_text())["LICENSE"] == [lic.read_text()]
    assert not (out / "NOTICE").exists()  # only Gemma's licence asks for one
    assert metadata_dict(open_gguf(out / "m.gguf"))["general.license"] == "apache-2.0"
    assert yaml.safe_load((out / "README.md").read_text().split("---")[1])["license"] == "apache-2.0"


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_and_general_keys_are_the_converters(model: Path, tmp_path: Path) -> None:
    """The model card says what the file is and how it was made; the GGUF's general.* keys
    are exactly those llama.cpp's converter (gguf-py's Metadata) derives from that card."""
    try:
        import gguf
    except ImportError as e:
        require("gguf package", e)
    calib = DATA / "calibration.txt"
    page = Page(base_model=["google/gemma-2-9b-it"], datasets=["princeton-nlp/gemma2-ultrafeedback-armorm"])
    out = quantize_model(
        model,
        tmp_path / "m.gguf",
        "Q3_K_S",
        quiet=True,
        imatrix=calib,
        imatrix_ctx=64,
        imatrix_chunks=3,
        page=page,
        model_card=True,
    )
    assert out is not None
    card = (tmp_path / "README.md").read_text()
    fm = _front_matter(card)
    assert fm["base_model"] == "google/gemma-2-9b-it" and fm["base_model_relation"] == "quantized"
    assert fm["license"] == "gemma" and fm["datasets"] == ["princeton-nlp/gemma2-ultrafeedback-armorm"]
    assert fm["quantized_by"] == "simpo-q" and "Q3_K_S" in fm["tags"] and "imatrix" in fm["tags"]
    r = open_gguf(out)
    counts: dict[str, int] = {}
    for _, _, t, _, _ in r.tensors:
        counts[t] = counts.get(t, 0) + 1
    assert (
        "tensors: " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) in card
    )
    assert "3 chunks" in card and "ctx 64" in card and "calibration.txt" in card
    assert "quantized directly from the bf16 safetensors" in card and "no f32 file" in card
    assert "identical to what llama.cpp's llama-quantize writes" in card
    assert "Gemma is provided under and subject to the Gemma Terms of Use" in card
    assert "@article{gemma_2024" in card and "meng2024simpo" not in card  # not fine-tuned here

    # what convert_hf_to_gguf.py derives from this card's front matter
    d = tmp_path / "card-only"
    d.mkdir()
    (d / "README.md").write_text(card)
    meta = gguf.Metadata.load(None, d, None, sum(int(__import__("numpy").prod(t[1])) for t in r.tensors))
    w = gguf.GGUFWriter(tmp_path / "ref.gguf", "gemma2")
    meta.name = meta.name or "x"
    meta.set_gguf_meta_model(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    ref = gguf.GGUFReader(tmp_path / "ref.gguf")

    def value(f):
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            return [bytes(f.parts[i]).decode() for i in f.data]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else int(v[0])

    page_keys = ("general.license", "general.base_model", "general.dataset", "general.tags")
    want = {k: value(f) for k, f in ref.fields.items() if k.startswith(page_keys)}
    ours = {k: v for k, v in metadata_dict(r).items() if k.startswith(page_keys)}
    assert want["general.base_model.0.repo_url"] == "https://huggingface.co/google/gemma-2-9b-it"
    assert ours == want
    assert metadata_dict(r)["general.quantized_by"] == "simpo-q"


def test_plain_quantize_keeps_llama_quantizes_metadata(model: Path, tmp_path: Path) -> None:
    """Without a page option, quantize adds no general.* key: its metadata stays the one
    llama-quantize writes from the converted file."""
    a = metadata_dict(open_gguf(quantize_model(model, tmp_path / "a.gguf", quiet=True)))
    assert not any(
        k.startswith(("general.license", "general.base_model", "general.tags", "general.quantized_by")) for k in a
    )


def test_pipeline_card_tells_the_fine_tune_and_its_cost(model: Path, tmp_path: Path) -> None:
    """pipeline writes the whole page: the card names the SimPO settings, the data and the
    steps, the evaluation table, and the recipe's Ollama parameters reach the Modelfile."""
    from simpo_q.pipeline import run_pipeline
    from simpo_q.train.recipe import load_recipe

    r = load_recipe(
        REPO / "recipes" / "tiny.yaml",
        [
            f"model={model}",
            f"output_dir={tmp_path / 'run'}",
            "max_steps=2",
            "eval_steps=1",
            'ollama_parameters={"temperature": 0.5}',
            "ollama_system=Answer in English.",
        ],
    )
    out = run_pipeline(
        r,
        tmp_path / "m.gguf",
        imatrix=DATA / "calibration.txt",
        imatrix_ctx=64,
        imatrix_chunks=2,
        quiet=True,
        eval_text=DATA / "evaluation.txt",
        eval_ctx=64,
        eval_chunks=2,
    )
    assert out is not None
    card = (tmp_path / "README.md").read_text()
    assert "SimPO" in card and "beta 2.0" in card and "gamma_beta_ratio 0.5" in card and "max_steps 2" in card
    assert "`preferences.jsonl`, 2 optimizer steps" in card and "meng2024simpo" in card
    assert "**Held-out preference pairs** (step 2): reward accuracy " in card and "reward margin " in card
    assert "What quantization cost" in card and "Mean KLD" in card and "evaluation.txt" in card
    b = _modelfile_blocks((tmp_path / "Modelfile").read_text())
    assert "temperature 0.5" in b["PARAMETER"] and b["SYSTEM"] == ["Answer in English."]
    md = metadata_dict(open_gguf(out))
    assert md["general.license"] == "gemma" and "simpo" in md["general.tags"]


def test_recipe_parameters_are_checked_at_load(tmp_path: Path) -> None:
    from simpo_q.train.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("model: m\ndata: d\nollama_parameters:\n  num_ctxx: 5\n")
    with pytest.raises(SimpoQError, match=r"r.yaml: ollama_parameters: 'num_ctxx' is not an Ollama parameter"):
        load_recipe(p)


def test_an_existing_readme_is_kept_unless_forced(model: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "README.md").write_text("mine\n")
    assert cli(["quantize", str(model), str(tmp_path / "m.gguf"), "--model-card"]) == 2
    assert "README.md: exists; pass --force to replace it" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
    assert (tmp_path / "README.md").read_text() == "mine\n"
    assert cli(["--quiet", "quantize", str(model), str(tmp_path / "m.gguf"), "--model-card", "--force"]) == 0
    assert (tmp_path / "README.md").read_text().startswith("---\n")
