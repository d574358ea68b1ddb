"""SimPO: the objective against the official formula and TRL, the chunked log-probabilities
against the full-logits computation, FSDP2 on two CPU processes against one process,
kill-and-resume, and learning on the bundled pairs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from simpo_q._native import SimpoQError
from simpo_q.tiny import cached_tiny_model
from simpo_q.train import naive_sequence_logps, sequence_logps, simpo_loss
from simpo_q.train.data import collate, read_rows, tokenize_pairs
from simpo_q.train.recipe import load_recipe

REPO = Path(__file__).parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_simpo_loss_is_the_official_formula(loss_type: str, ls: float) -> None:
    g = torch.Generator().manual_seed(0)
    c, r = -torch.rand(64, generator=g) * 3, -torch.rand(64, generator=g) * 3
    beta, ratio = 10.0, 0.5
    losses, rc, rr = simpo_loss(c, r, beta=beta, gamma_beta_ratio=ratio, label_smoothing=ls, loss_type=loss_type)
    d = c - r - ratio
    want = (
        (-(1 - ls) * F.logsigmoid(beta * d) - ls * F.logsigmoid(-beta * d))
        if loss_type == "sigmoid"
        else torch.relu(1 - beta * d)
    )
    assert torch.allclose(losses, want, rtol=0, atol=1e-6)
    assert torch.equal(rc, beta * c) and torch.equal(rr, beta * r)
    with pytest.raises(ValueError, match="loss_type"):
        simpo_loss(c, r, beta=1, gamma_beta_ratio=0, loss_type="ipo")


def test_simpo_loss_equals_trl_cpo_simpo() -> None:
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(1)
    c, r = -torch.rand(32, generator=g) * 2, -torch.rand(32, generator=g) * 2
    for beta, ratio, ls in [(10.0, 0.5, 0.0), (2.0, 0.25, 0.05)]:
        fake = SimpleNamespace(
            alpha=0.0,
            loss_type="simpo",
            simpo_gamma=beta * ratio,
            beta=beta,
            label_smoothing=ls,
            accelerator=SimpleNamespace(device="cpu"),
            cpo_alpha=0.0,
        )
        tl, tc, tr = CPOTrainer.cpo_loss(fake, c, r)
        ol, oc, orr = simpo_loss(c, r, beta=beta, gamma_beta_ratio=ratio, label_smoothing=ls)
        assert torch.allclose(ol, tl, atol=1e-6) and torch.allclose(oc, tc) and torch.allclose(orr, tr)


@pytest.mark.parametrize("softcap", [30.0, None])
def test_sequence_logps_equals_full_logits(model_dir: Path, softcap) -> None:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    m.config.final_logit_softcapping = softcap
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 3000, (4, 48), generator=g)
    att = torch.ones_like(ids)
    att[3, 33:] = 0
    labels = ids.clone()
    labels[:, :12] = -100
    labels[3, 33:] = -100
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    grads = []
    vals = []
    for fn in (
        lambda: sequence_logps(m, ids, att, labels, chunk_tokens=13),
        lambda: naive_sequence_logps(m, ids, att, labels),
    ):
        m.zero_grad()
        v = fn()
        (v * w).sum().backward()
        vals.append(v.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert torch.allclose(vals[0], vals[1], rtol=1e-5, atol=1e-6)
    for n in grads[1]:
        ref = grads[1][n]
        assert float((grads[0][n] - ref).abs().max()) <= 1e-5 * float(ref.abs().max()) + 1e-9, n


def test_tokenization_follows_the_official_layout(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [
        {
            "prompt": "Hi?",
            "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yes."}],
            "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "No."}],
        }
    ]
    (pair,), bad = tokenize_pairs(rows, tok, max_length=512, max_prompt_length=256)
    assert not bad
    assert pair.prompt[0] == tok.bos_token_id and pair.prompt.count(tok.bos_token_id) == 1
    assert tok.decode(pair.prompt) == "<bos><start_of_turn>user\nHi?<end_of_turn>\n"
    assert tok.decode(pair.chosen) == "<start_of_turn>model\nYes.<end_of_turn>\n<eos>"
    b = collate([pair], tok.pad_token_id)
    scored = b["labels"][0][b["labels"][0] != -100].tolist()
    assert scored == pair.chosen and b["input_ids"].shape[0] == 2


def test_bad_rows_are_counted_and_truncation_is_keep_end(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)

    def row(c, r, prompt="Q?"):
        return {
            "prompt": prompt,
            "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": c}],
            "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": r}],
        }

    rows = [row("a", "b"), {"prompt": "x"}, row("", "b"), row("same", "same"), row("a " * 300, "b", "long " * 50)]
    pairs, bad = tokenize_pairs(rows, tok, max_length=64, max_prompt_length=40)
    assert bad == {"missing or malformed prompt/chosen/rejected": 1, "empty response": 1, "identical responses": 1}
    long = pairs[1]
    assert len(long.prompt) == 40 and len(long.chosen) == 24 and len(long.rejected) <= 24
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(SimpoQError, match=r"bad.jsonl:2: not valid JSON"):
        read_rows(tmp_path / "bad.jsonl")


def _run(args: list[str], env_extra=None) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]


def _weights(out: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(str(out / "final" / "model.safetensors")).items()}


def _recipe(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--set",
        f"model={model_dir}",
        "--set",
        f"output_dir={out}",
        "--set",
        "eval_steps=0",
        "--set",
        "save_dtype=float32",
        "--set",
        "threads=1",
        *extra,
    ]


@pytest.mark.slow
def test_fsdp2_two_processes_equal_one(model_dir: Path, tmp_path: Path) -> None:
    """Same global batch (8 pairs: 2 ranks x 2 pairs x 2 accumulation vs 1 x 4 x 2), FSDP2 on
    gloo against one process. Losses and gradient norms agree to ~1e-6; AdamW then turns the
    reduction-order noise of gradients that cancel to near zero into steps of up to ~lr/10,
    so the learning rate is kept small enough (3e-5) for the 1e-5 weight bound to be meaningful,
    and the update as a whole must agree to 1e-3 relative."""
    common = ["--set", "max_steps=3", "--set", "gradient_accumulation_steps=2", "--set", "learning_rate=3e-5"]
    _run(
        [
            sys.executable,
            "-m",
            "simpo_q",
            "--quiet",
            "train",
            str(REPO / "recipes" / "tiny.yaml"),
            *_recipe(model_dir, tmp_path / "one", *common, "--set", "per_device_train_batch_size=4"),
        ]
    )
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            "-m",
            "simpo_q",
            "--quiet",
            "train",
            str(REPO / "recipes" / "tiny.yaml"),
            *_recipe(model_dir, tmp_path / "two", *common, "--set", "per_device_train_batch_size=2"),
        ]
    )
    a, b, w0 = _weights(tmp_path / "one"), _weights(tmp_path / "two"), _weights_of(model_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert np.max(np.abs(a[k] - b[k])) <= 1e-5, k
    da = np.concatenate([(a[k] - w0[k]).ravel() for k in a])
    db = np.concatenate([(b[k] - w0[k]).ravel() for k in a])
    assert np.abs(da).max() > 2e-5, "training did not move the weights"
    assert np.linalg.norm(da - db) / np.linalg.norm(da) < 1e-3
    ma = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(ma, mb, strict=True):
        assert abs(x["loss"] - y["loss"]) < 1e-5 and abs(x["grad_norm"] - y["grad_norm"]) < 1e-4 * x["grad_norm"]


def _weights_of(d: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(str(d / "model.safetensors")).items()}


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(model_dir: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "simpo_q", "--quiet", "train", str(REPO / "recipes" / "tiny.yaml")]
    common = ["--set", "max_steps=6", "--set", "save_steps=3"]
    _run([*base, *_recipe(model_dir, tmp_path / "full", *common)])
    _run([*base, *_recipe(model_dir, tmp_path / "cut", *common, "--set", "stop_after_steps=3")])
    assert not (tmp_path / "cut" / "final").exists()
    _run([*base, *_recipe(model_dir, tmp_path / "cut", *common)])
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_reward_accuracy_and_margin_rise_on_held_out_pairs(model_dir: Path, tmp_path: Path) -> None:
    r = load_recipe(
        REPO / "recipes" / "tiny.yaml", [f"model={model_dir}", f"output_dir={tmp_path / 'run'}", "threads=2"]
    )
    from simpo_q.train.loop import train

    train(r, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ev = [x for x in rows if "eval_rewards/accuracies" in x]
    tr = [x for x in rows if "loss" in x]
    assert ev[0]["step"] == 0 and ev[-1]["step"] == r.max_steps
    assert ev[-1]["eval_rewards/margins"] > ev[0]["eval_rewards/margins"] + 0.3
    assert ev[-1]["eval_rewards/accuracies"] > ev[0]["eval_rewards/accuracies"]
    first = np.mean([x["rewards/accuracies"] for x in tr[:10]])
    last = np.mean([x["rewards/accuracies"] for x in tr[-10:]])
    assert last > first
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_plan_prints_memory_and_time(capsys) -> None:
    from simpo_q.cli import main as cli

    assert cli(["plan", str(REPO / "recipes" / "gemma-2-9b-it-simpo.yaml"), "--gpus", "8", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "9.24B parameters" in out and "optimizer AdamW" in out and "estimated step time" in out
    assert "fits" in out
    # without --gpus: the GPUs the recipe is written for (8 for the 9B one, 1 for one that says none)
    assert cli(["plan", str(REPO / "recipes" / "gemma-2-9b-it-simpo.yaml")]) == 0
    assert "8 GPUs of 80 GB" in capsys.readouterr().out
    tiny = cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True)
    assert cli(["plan", str(REPO / "recipes" / "tiny.yaml"), "--set", f"model={tiny}"]) == 0
    out = capsys.readouterr().out
    assert "1 GPU of 80 GB" in out and "1.97M parameters" in out


def test_recipe_errors(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("beta: 2\nwat: 1\n")
    with pytest.raises(SimpoQError, match=r"r.yaml: unknown recipe key 'wat'"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("beta: 2\n")
    with pytest.raises(SimpoQError, match=r"--set beta: cannot use 'x'|beta: cannot use 'x'"):
        load_recipe(tmp_path / "r.yaml", ["beta=x"])
    with pytest.raises(SimpoQError, match=r"r.yaml: save_dtype: 'bf16' is not one of bfloat16"):
        load_recipe(tmp_path / "r.yaml", ["save_dtype=bf16"])
    with pytest.raises(SimpoQError, match=r"r.yaml: loss_type: 'ipo' is not one of sigmoid, hinge"):
        load_recipe(tmp_path / "r.yaml", ["loss_type=ipo"])
    shutil.rmtree(tmp_path)


def test_parquet_and_datasets_inputs_equal_jsonl(model_dir: Path, tmp_path: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    src = REPO / "python" / "simpo_q" / "data" / "preferences.jsonl"
    rows = read_rows(src)
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hfdir"))
    want, _ = tokenize_pairs(rows, tok, max_length=256, max_prompt_length=192)
    for path in (tmp_path / "p.parquet", tmp_path / "hfdir"):
        got, _ = tokenize_pairs(read_rows(path), tok, max_length=256, max_prompt_length=192)
        assert got == want, path


def test_gradient_checkpointing_changes_nothing(model_dir: Path) -> None:
    from simpo_q.train.loop import SimPOModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    pairs, _ = tokenize_pairs(
        read_rows(REPO / "python" / "simpo_q" / "data" / "preferences.jsonl")[:4],
        tok,
        max_length=256,
        max_prompt_length=192,
    )
    b = collate(pairs, tok.pad_token_id)
    grads = []
    for ckpt in (False, True):
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
        if ckpt:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf.train()
        m = SimPOModel(hf)
        lp = m(b["input_ids"], b["attention_mask"], b["labels"], 64)
        losses, _, _ = simpo_loss(lp[:4], lp[4:], beta=2.0, gamma_beta_ratio=0.5)
        losses.mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-8), n


def test_bf16_run_trains(model_dir: Path, tmp_path: Path) -> None:
    from simpo_q.train.loop import train

    r = load_recipe(
        REPO / "recipes" / "tiny.yaml",
        [
            f"model={model_dir}",
            f"output_dir={tmp_path / 'b'}",
            "bf16=true",
            "max_steps=3",
            "eval_steps=0",
            "gradient_checkpointing=true",
        ],
    )
    train(r, quiet=True)
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(x["loss"]) for x in rows)


def test_pipeline_quantizes_the_weights_in_memory(model_dir: Path, tmp_path: Path) -> None:
    """train → imatrix → GGUF from the in-memory fp32 weights equals quantizing the saved
    fp32 final directory with the same importance matrix: no intermediate file involved."""
    from simpo_q.gguf import metadata_dict, open_gguf
    from simpo_q.pipeline import recipe_page, run_pipeline
    from simpo_q.quantize_model import quantize_model

    r = load_recipe(
        REPO / "recipes" / "tiny.yaml",
        [f"model={model_dir}", f"output_dir={tmp_path / 'run'}", "max_steps=4", "eval_steps=0", "save_dtype=float32"],
    )
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    out = run_pipeline(r, tmp_path / "m.gguf", imatrix=calib, imatrix_ctx=128, imatrix_chunks=2, quiet=True)
    assert out is not None and (tmp_path / "Modelfile").exists() and (tmp_path / "NOTICE").exists()
    # the same page (licence, tags, training) as the pipeline's, so that all metadata but the name compare
    ref = quantize_model(
        tmp_path / "run" / "final",
        tmp_path / "ref.gguf",
        imatrix=tmp_path / "m.imatrix.gguf",
        quiet=True,
        page=recipe_page(r),
    )
    a, b = open_gguf(out), open_gguf(ref)
    assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
    ma = metadata_dict(a)
    assert ma["quantize.imatrix.chunks_count"] == 2 and ma["general.file_type"] == 11
    assert ma["general.name"] == "run"  # the run's name, not its "final" directory's
    assert {k: v for k, v in ma.items() if k != "general.name"} == {
        k: v for k, v in metadata_dict(b).items() if k != "general.name"
    }
    assert (tmp_path / "run" / "final" / "tokenizer.model").exists()


def test_pipeline_imatrix_is_the_trained_models(model_dir: Path, tmp_path: Path) -> None:
    """The pipeline collects importance on the model in memory: the same sums and counts as
    llama-imatrix's procedure run on the saved fp32 final directory."""
    from simpo_q import imatrix as im
    from simpo_q.pipeline import run_pipeline

    r = load_recipe(
        REPO / "recipes" / "tiny.yaml",
        [f"model={model_dir}", f"output_dir={tmp_path / 'run'}", "max_steps=2", "eval_steps=0", "save_dtype=float32"],
    )
    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    run_pipeline(r, tmp_path / "m.gguf", imatrix=calib, imatrix_ctx=128, imatrix_chunks=3, quiet=True)
    got = im.load(tmp_path / "m.imatrix.gguf")
    ref = im.collect(tmp_path / "run" / "final", calib, ctx=128, chunks=3, quiet=True)
    base = im.collect(model_dir, calib, ctx=128, chunks=3, quiet=True)
    assert got.names() == ref.names() and len(got) == 7 * 2 and got.chunk_count == 3
    moved = 0.0
    for n in ref.names():
        (a, ca), (b, cb), (c, _) = got.entry(n), ref.entry(n), base.entry(n)
        assert ca == cb == 3 * 128
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
        moved = max(moved, float(np.max(np.abs(b - c) / np.maximum(c, 1e-9))))
    assert moved > 1e-4, "the statistics are the untrained model's"


def test_pipeline_under_fsdp2_streams_weights_to_rank_0(model_dir: Path, tmp_path: Path) -> None:
    """Two FSDP2 ranks: importance and output sensitivities collected on the sharded model
    (chunks split over the ranks, 5 chunks so one rank runs a padding forward), types chosen
    under a size budget, weights gathered one at a time into
    rank 0's quantizer and read from there in blocks of rows (a small block size, so that every
    matrix of the tiny model is split, as gemma-2-9b's embedding is). The GGUF equals
    quantizing the saved fp32 model with that imatrix, and the imatrix equals a one-process
    collection up to summation order."""
    from simpo_q import imatrix as im
    from simpo_q.gguf import open_gguf
    from simpo_q.quantize_model import quantize_model
    from simpo_q.sensitivity import collect_sensitivity

    calib = REPO / "python" / "simpo_q" / "data" / "calibration.txt"
    cli = tmp_path / "small_blocks.py"
    blocked = tmp_path / "blocked.txt"  # the tensors rank 0 wrote in blocks
    cli.write_text(
        "import sys\nimport simpo_q.gguf_out as g\ng.BLOCK_BYTES = 3 * 1024 + 17\nreal = g.encode_blocks\n"
        "def spy(p, *a):\n"
        f"    open({str(blocked)!r}, 'a').write(p.name + '\\n')\n"
        "    return real(p, *a)\n"
        "g.encode_blocks = spy\nfrom simpo_q.cli import main\nsys.exit(main())\n"
    )
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29537",
            str(cli),
            "--quiet",
            "pipeline",
            str(REPO / "recipes" / "tiny.yaml"),
            str(tmp_path / "m.gguf"),
            "--imatrix",
            str(calib),
            "--ctx",
            "128",
            "--chunks",
            "5",
            "--target-bpw",
            "4.6",
            *_recipe(model_dir, tmp_path / "run", "--set", "max_steps=2", "--set", "per_device_train_batch_size=2"),
        ]
    )
    got = im.load(tmp_path / "m.imatrix.gguf")
    ref = im.collect(tmp_path / "run" / "final", calib, ctx=128, chunks=5, quiet=True)
    assert got.names() == ref.names() and got.chunk_count == 5
    for n in ref.names():
        (a, ca), (b, cb) = got.entry(n), ref.entry(n)
        assert ca == cb == 5 * 128
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # the budget's output sensitivities too were measured on the sharded model, chunks split
    # over the ranks: the same choice of types as from one process on the saved model
    tok, hf = im.load_model(tmp_path / "run" / "final", quiet=True)
    sens = collect_sensitivity(hf, tok, calib.read_text(), ctx=128, chunks=5, where="cal", quiet=True)
    want = quantize_model(
        tmp_path / "run" / "final",
        tmp_path / "ref.gguf",
        imatrix=tmp_path / "m.imatrix.gguf",
        target_bpw=4.6,
        sensitivity=sens,
        quiet=True,
    )
    assert (tmp_path / "m.tensor-types.txt").read_text() == (tmp_path / "ref.tensor-types.txt").read_text()
    assert "=q2_k" in (tmp_path / "ref.tensor-types.txt").read_text()
    a, b = open_gguf(tmp_path / "m.gguf"), open_gguf(want)
    assert [t[:3] for t in a.tensors] == [t[:3] for t in b.tensors]
    for name, *_ in b.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
    assert (tmp_path / "Modelfile").exists() and (tmp_path / "NOTICE").exists()
    assert {"token_embd.weight", "blk.1.ffn_down.weight"} <= set(blocked.read_text().split())


def test_pipeline_checks_the_imatrix_argument_before_training(model_dir: Path, tmp_path: Path) -> None:
    from simpo_q._native import SimpoQError
    from simpo_q.pipeline import run_pipeline

    r = load_recipe(REPO / "recipes" / "tiny.yaml", [f"model={model_dir}", f"output_dir={tmp_path / 'run'}"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for bad, msg in ((tmp_path / "nope.txt", "not found"), (empty, "empty")):
        with pytest.raises(SimpoQError, match=msg):
            run_pipeline(r, tmp_path / "m.gguf", imatrix=bad, quiet=True)
    assert not (tmp_path / "run").exists()


def test_final_directory_is_never_partial(model_dir: Path, tmp_path: Path) -> None:
    """A save that fails half way (here: after the weights, before the tokenizer) leaves no
    `final` directory and no temporary one; a later save replaces an earlier one whole."""
    import simpo_q.train.checkpoint as ck
    from simpo_q.train.checkpoint import save_final
    from simpo_q.train.loop import SimPOModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = SimPOModel(hf)
    out = tmp_path / "final"
    real = ck._write_tokenizer

    def dies_after_weights(tok, source, path):
        assert (path / "model.safetensors").exists()
        raise OSError("disk full")

    ck._write_tokenizer = dies_after_weights
    try:
        with pytest.raises(OSError, match="disk full"):
            save_final(model, tok, out, 0, "float32", str(model_dir))
    finally:
        ck._write_tokenizer = real
    assert list(tmp_path.iterdir()) == []
    save_final(model, tok, out, 0, "float32", str(model_dir))
    (out / "stale-file").write_text("from an earlier save")
    save_final(model, tok, out, 0, "float32", str(model_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert not (out / "stale-file").exists() and (out / "tokenizer.model").exists()
    assert np.array_equal(_weights_of(out)["model.norm.weight"], hf.model.norm.weight.detach().numpy())


def _saved_bytes_of_forward(model, b) -> int:
    seen: dict[int, int] = {}
    params = {p.untyped_storage()._cdata for p in model.parameters()}

    def pack(x):
        s = x.untyped_storage()
        if s._cdata not in params:
            seen[s._cdata] = s.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        model(b["input_ids"], b["attention_mask"], b["labels"], 64)
    return sum(seen.values())


def test_trainer_model_really_checkpoints(model_dir: Path) -> None:
    """The trainer's model keeps only each layer's input for backward when the recipe asks for
    gradient checkpointing (from_pretrained returns eval mode, where HF silently skips it),
    and the meta-device count `plan` relies on equals what the real model keeps."""
    from simpo_q.train.loop import build_model
    from simpo_q.train.plan import saved_bytes
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    pairs, _ = tokenize_pairs(
        read_rows(REPO / "python" / "simpo_q" / "data" / "preferences.jsonl")[:4],
        tok,
        max_length=128,
        max_prompt_length=96,
    )
    b = collate(pairs[:2], tok.pad_token_id)
    seqs, t = b["input_ids"].shape
    kept = {}
    for ckpt in (False, True):
        r = load_recipe(REPO / "recipes" / "tiny.yaml", [f"model={model_dir}", f"gradient_checkpointing={ckpt}"])
        kept[ckpt] = _saved_bytes_of_forward(build_model(r, torch.device("cpu"), 1), b)
    c = json.loads((model_dir / "config.json").read_text())
    shape = (json.dumps(c, sort_keys=True), seqs, t, False)
    assert kept[True] < kept[False] / 4
    # the model's own bytes minus the head's (the chunked head saves a little outside the layers)
    for ckpt in (False, True):
        counted = saved_bytes(*shape, ckpt, c["num_hidden_layers"])
        assert counted <= kept[ckpt] <= counted + seqs * t * c["hidden_size"] * 4, (ckpt, counted, kept[ckpt])


def test_pipeline_failure_on_rank_0_ends_every_rank(model_dir: Path, tmp_path: Path) -> None:
    """Rank 0's quantizer refuses an importance matrix of another model while the other rank
    waits to serve weights: the run ends (non-zero, the reason printed), nobody hangs, and no
    GGUF is left behind."""
    from simpo_q._native import Imatrix

    other = Imatrix(128)
    other.set_entry("blk.0.attn_q.weight", np.ones(7, np.float32), 128)
    other.save(str(tmp_path / "other.imatrix.gguf"), "gguf")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29539",
            "-m",
            "simpo_q",
            "--quiet",
            "pipeline",
            str(REPO / "recipes" / "tiny.yaml"),
            str(tmp_path / "m.gguf"),
            "--imatrix",
            str(tmp_path / "other.imatrix.gguf"),
            *_recipe(model_dir, tmp_path / "run", "--set", "max_steps=1", "--set", "per_device_train_batch_size=2"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode != 0
    assert "7 columns, the tensor has 256" in p.stderr
    assert not (tmp_path / "m.gguf").exists()
    assert not [f for f in tmp_path.iterdir() if f.name.startswith("m.gguf")]


def test_pipeline_checks_the_file_type_before_training(model_dir: Path, tmp_path: Path) -> None:
    from simpo_q._native import SimpoQError
    from simpo_q.pipeline import run_pipeline

    r = load_recipe(REPO / "recipes" / "tiny.yaml", [f"model={model_dir}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(SimpoQError, match="unknown file type 'Q9_K'"):
        run_pipeline(r, tmp_path / "m.gguf", ftype="Q9_K", quiet=True)
    assert not (tmp_path / "run").exists()


def test_computed_buffers_equal_the_loaded_models(model_dir: Path) -> None:
    """Under FSDP2 the ranks build the model on the meta device; its buffers (rotary
    frequencies, embedding scale: not in the checkpoint) are recomputed, and must be exactly
    what from_pretrained gives."""
    from simpo_q.train.loop import _load_hf, computed_buffers

    r = load_recipe(REPO / "recipes" / "tiny.yaml", [f"model={model_dir}"])
    real = dict(_load_hf(r, meta=False).named_buffers())
    got = computed_buffers(_load_hf(r, meta=True))
    assert got.keys() == real.keys() and len(got) >= 3
    for k in real:
        assert torch.equal(got[k], real[k]), k


def test_final_directory_streams_in_shards_that_hf_loads(model_dir: Path, tmp_path: Path) -> None:
    """The streamed final model, split into several files with Hugging Face's index, loads
    with from_pretrained as the weights in memory rounded to bf16, and says bf16 in its
    config; the tied head is not stored."""
    import json as _json

    import simpo_q.train.checkpoint as ck
    from simpo_q.train.checkpoint import save_final
    from simpo_q.train.loop import SimPOModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 1e-2)  # something other than the source's bf16 values
    old = ck.SHARD_BYTES
    ck.SHARD_BYTES = 1_000_000
    try:
        save_final(
            SimPOModel(hf), AutoTokenizer.from_pretrained(model_dir), tmp_path / "final", 0, "bfloat16", str(model_dir)
        )
    finally:
        ck.SHARD_BYTES = old
    out = tmp_path / "final"
    index = _json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((out / f).exists() for f in files)
    assert "lm_head.weight" not in index["weight_map"]
    assert _json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    got = dict(back.named_parameters())
    for n, p in hf.named_parameters():
        assert torch.equal(got[n], p.detach().to(torch.bfloat16).float()), n


def test_fsdp2_on_one_process_equals_plain(model_dir: Path, tmp_path: Path) -> None:
    """`fsdp: always` runs the FSDP2 path (meta skeleton, shards, DTensor gradients) on a
    single process, outside torchrun too, as on a one-GPU machine; it trains to the weights
    of the plain single process."""
    base = [sys.executable, "-m", "simpo_q", "--quiet", "train", str(REPO / "recipes" / "tiny.yaml")]
    common = ["--set", "max_steps=2", "--set", "learning_rate=3e-5"]
    _run([*base, *_recipe(model_dir, tmp_path / "plain", *common)])
    _run([*base, *_recipe(model_dir, tmp_path / "fsdp", *common, "--set", "fsdp=always")])
    a, b, w0 = _weights(tmp_path / "plain"), _weights(tmp_path / "fsdp"), _weights_of(model_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert np.max(np.abs(a[k] - b[k])) <= 1e-5, k
    assert max(float(np.abs(a[k] - w0[k]).max()) for k in a) > 2e-5, "training did not move the weights"


def test_logging_steps_averages_the_interval(model_dir: Path, tmp_path: Path) -> None:
    from simpo_q.train.loop import train

    r = load_recipe(
        REPO / "recipes" / "tiny.yaml",
        [
            f"model={model_dir}",
            f"output_dir={tmp_path / 'run'}",
            "max_steps=5",
            "logging_steps=2",
            "eval_steps=0",
            "threads=1",
        ],
    )
    train(r, quiet=True)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [2, 4, 5] and [x["steps"] for x in rows] == [2, 2, 1]
    assert all(x["tokens"] > 0 and x["loss"] == x["loss"] for x in rows)


def test_resume_says_its_step_and_what_changed(model_dir: Path, tmp_path: Path, capsys) -> None:
    """A resumed run names the step it continues from and every setting that differs from
    the checkpoint's (which records them)."""
    from simpo_q.train.loop import train

    common = [f"model={model_dir}", f"output_dir={tmp_path / 'run'}", "max_steps=4", "save_steps=2", "eval_steps=0"]
    train(load_recipe(REPO / "recipes" / "tiny.yaml", [*common, "stop_after_steps=2"]), quiet=True)
    train(load_recipe(REPO / "recipes" / "tiny.yaml", [*common, "learning_rate=1e-4"]))
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'checkpoint'}: resuming from step 2" in err
    assert "settings changed since it was saved: learning_rate 0.0003 -> 0.0001; stop_after_steps 2 -> -1" in err
