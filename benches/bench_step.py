"""One SimPO optimizer step of simpo-q against TRL's CPO trainer (loss_type "simpo",
cpo_alpha 0, simpo_gamma = beta × gamma_beta_ratio) on the tiny model and the same 8 pairs:
time per step (mean of steps 2–6) and peak memory growth (VmHWM) in a fresh process each.
TRL does not score the answer's role header (see docs/training.md), so its sequences are
three tokens shorter per answer; everything else is the same work.

    .venv/bin/python benches/bench_step.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
STEPS, PAIRS, BETA, RATIO, LR = 6, 8, 2.0, 0.5, 1e-4


def hwm() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def child(kind: str, model: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = [json.loads(x) for x in (REPO / "python/simpo_q/data/preferences.jsonl").read_text().splitlines()][:PAIRS]
    tok = AutoTokenizer.from_pretrained(model)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="eager")
    times: list[float] = []
    base = hwm()
    if kind == "simpo-q":
        from simpo_q.train import simpo_loss
        from simpo_q.train.data import collate, tokenize_pairs
        from simpo_q.train.loop import SimPOModel

        pairs, _ = tokenize_pairs(rows, tok, max_length=256, max_prompt_length=192)
        b = collate(pairs, tok.pad_token_id)
        model = SimPOModel(m)
        opt = torch.optim.AdamW(model.parameters(), lr=LR)
        for _ in range(STEPS):
            t0 = time.perf_counter()
            lp = model(b["input_ids"], b["attention_mask"], b["labels"], 256)
            losses, _, _ = simpo_loss(lp[:PAIRS], lp[PAIRS:], beta=BETA, gamma_beta_ratio=RATIO)
            losses.mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    else:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        ds = Dataset.from_list(
            [{"prompt": r["chosen"][:-1], "chosen": r["chosen"][-1:], "rejected": r["rejected"][-1:]} for r in rows]
        )

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t0 = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t0)

        cfg = CPOConfig(
            output_dir=str(REPO / ".cache" / "bench-trl"),
            loss_type="simpo",
            cpo_alpha=0.0,
            beta=BETA,
            simpo_gamma=BETA * RATIO,
            max_length=256,
            per_device_train_batch_size=PAIRS,
            max_steps=STEPS,
            report_to=[],
            bf16=False,
            gradient_checkpointing=False,
            learning_rate=LR,
            lr_scheduler_type="constant",
            logging_steps=1000,
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        CPOTrainer(model=m, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()]).train()
    print(json.dumps({"kind": kind, "step_s": sum(times[1:]) / len(times[1:]), "peak_bytes": hwm() - base}))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    sys.path.insert(0, str(REPO / "python"))
    from simpo_q.tiny import cached_tiny_model

    model = str(cached_tiny_model(REPO / ".cache", pretrain_steps=200, quiet=True))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    res = []
    for kind in ("simpo-q", "trl"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, model], capture_output=True, text=True, check=True, env=env
        ).stdout
        res.append(json.loads(out.strip().splitlines()[-1]))
    print(f"# tiny Gemma-2, {PAIRS} pairs per step, fp32 CPU (2 threads), {time.strftime('%Y-%m-%d')}")
    print()
    print("| trainer | time per step (ms) | peak memory growth over the loaded model (MiB) |")
    print("|---|---|---|")
    for r in res:
        print(f"| {r['kind']} | {r['step_s'] * 1e3:.0f} | {r['peak_bytes'] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
