"""Output sensitivities: what a unit of error in each output of each linear layer costs in KL
divergence from the full-precision model, so that the size-budget allocation (allocate.py)
can compare the errors of different layers.

Why the importance matrix alone does not: it weights a layer's input columns (E[aⱼ²]), so
Σⱼ E[aⱼ²]·ΔWᵢⱼ² is the squared error of the layer's *outputs*, but an output error costs very
different amounts in different layers: Gemma-2's post-norms rescale every sublayer's output,
an early layer's error passes through everything after it, a value projection's error goes
straight into the residual stream while a key's is squashed by a softmax. Measured on the
wider benchmark models: by the importance-weighted error alone the budget at Q3_K_M's size
lost to Q3_K_M, and Q2_K as a candidate made things worse; weighted by the sensitivities too,
the budget at Q3_K_S's own size (Q2_K included) has less than half Q3_K_S's KL divergence
(BENCHMARKS.md).

The measure: to second order, the KL divergence of the quantized model from the full one is
½·Σₜ Δzₜᵀ F Δzₜ, with F the Fisher information of the model's own next-token distribution
(zₜ the logits at position t). Back-propagating the cross-entropy of tokens *sampled from the
model itself* (not the text's next tokens) gives gradients δ at each linear output whose
squares estimate that curvature without bias. With output gradients and inputs taken as
independent, an error ΔW of one layer costs about ½·Σᵢ sᵢ·Σⱼ E[aⱼ²]·ΔWᵢⱼ², with
sᵢ = Σₜ δₜᵢ², summed over every token of the calibration chunks. This module computes sᵢ.
"""

from __future__ import annotations

import sys

from simpo_q._native import SimpoQError

SEED = 0  # the sampled tokens are drawn from a fixed generator: the same text gives the same sums


def collect_sensitivity(model, tok, text: str, *, ctx: int, chunks: int | None, where: str, quiet: bool = False):
    """{GGUF tensor name: sᵢ (float64, one per output row)} for every linear layer, over the
    chunks llama-imatrix would make of `text`: one forward and one backward per chunk. `model`:
    a Hugging Face causal LM, or the trainer's SimPOModel, sharded by FSDP2 or not. Under
    torch.distributed every rank must call this: rank r runs chunks r, r+world, …, the sums are
    added onto rank 0, which gets them (the others get None). Each chunk draws its tokens from
    its own seeded generator, so the sums do not depend on the number of ranks. The weights
    get no gradients and are left as they were."""
    import torch
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from simpo_q.arch import adapter_for
    from simpo_q.imatrix import chunk_tokens
    from simpo_q.train.distributed import rank_world
    from simpo_q.train.loop import SimPOModel

    run = model if isinstance(model, SimPOModel) else SimPOModel(model)
    hf = run.hf
    rank, world = rank_world()
    batches = chunk_tokens(tok, text, ctx, chunks, where)
    linears = adapter_for(hf.config.to_dict(), "the model's config").LINEARS
    sums: dict[str, torch.Tensor] = {}
    counting = [True]  # False for the repeated chunk that keeps a rank in step with the others
    hooks = []

    def keep(name: str):
        def on_grad(g):
            if counting[0]:
                sq = g.detach().to(torch.float64).pow(2).reshape(-1, g.shape[-1]).sum(0).cpu()
                sums[name] = sums[name] + sq if name in sums else sq

        def forward(_m, _args, out):
            out.register_hook(on_grad)

        return forward

    for i, layer in enumerate(hf.model.layers):
        for hf_name, gguf in linears.items():
            hooks.append(layer.get_submodule(hf_name).register_forward_hook(keep(f"blk.{i}.{gguf}.weight")))
    # no weight needs a gradient: the graph starts at the embedding's output
    hooks.append(hf.model.embed_tokens.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True)))
    params = list(run.parameters())
    wanted = [p.requires_grad for p in params]
    was_training = run.training
    device = next(hf.parameters()).device
    steps = -(-len(batches) // world)
    bar = tqdm(
        range(steps), desc="sensitivity", unit="chunk", disable=True if quiet or rank != 0 else None, file=sys.stderr
    )
    try:
        for p in params:
            p.requires_grad_(False)
        run.eval()
        for step in bar:
            k = step * world + rank
            counting[0] = k < len(batches)
            k = min(k, len(batches) - 1)
            logits = run(torch.tensor([batches[k]], device=device), None, None, logits=True)[0].float()
            with torch.no_grad():
                probs = torch.softmax(logits, -1).to("cpu", torch.float64)
                gen = torch.Generator().manual_seed(SEED + k)
                sampled = torch.multinomial(probs, 1, generator=gen)[:, 0].to(device)
            torch.nn.functional.cross_entropy(logits, sampled, reduction="sum").backward()
    finally:
        for h in hooks:
            h.remove()
        for p, w in zip(params, wanted, strict=True):
            p.requires_grad_(w)
        run.train(was_training)
    if world > 1:
        names = [f"blk.{i}.{g}.weight" for i in range(len(hf.model.layers)) for g in linears.values()]
        widths = [
            hf.model.layers[i].get_submodule(h).out_features for i in range(len(hf.model.layers)) for h in linears
        ]
        flat = torch.cat([sums.get(n, torch.zeros(w, dtype=torch.float64)) for n, w in zip(names, widths, strict=True)])
        flat = flat.to(device)
        dist.reduce(flat, dst=0)
        if rank != 0:
            return None
        sums = dict(zip(names, flat.cpu().split(widths), strict=True))
    return {name: s.numpy() for name, s in sums.items()}


def memory_needed(src, ctx: int) -> int:
    """Bytes `collect_sensitivity` needs on the CPU for the model `src` (an HFDirectory): the
    float32 weights, and what one chunk's backward keeps (per layer the inputs and outputs of
    its products, norms and attention scores; the logits, their softmax, their gradient and
    the float64 probabilities sampled from). An estimate, to refuse before the long work, not
    a promise."""
    from simpo_q.imatrix_offload import model_bytes

    c = src.config
    hidden, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    per_layer = ctx * (16 * hidden + 4 * inter + 3 * c["num_attention_heads"] * ctx)
    return model_bytes(src, 4) + 4 * (layers * per_layer + 5 * ctx * c["vocab_size"])


def check_memory(model_dir, ctx: int, where: str) -> None:
    """A clear error, before any work, when the sensitivities cannot be measured in memory."""
    from simpo_q.imatrix_offload import available_bytes
    from simpo_q.sources import HFDirectory

    need, free = memory_needed(HFDirectory(model_dir), ctx), available_bytes("cpu")
    if need > free:
        raise SimpoQError(
            f"{where}: a size budget measures each layer's output sensitivity with the whole model in "
            f"memory, about {need / 2**30:.1f} GiB in float32 at --ctx {ctx}; {free / 2**30:.1f} GiB are "
            f"free. Give --imatrix an importance matrix file instead (`simpo-q imatrix --offload` "
            f"collects one layer by layer); the budget then weighs the errors by it alone"
        )
