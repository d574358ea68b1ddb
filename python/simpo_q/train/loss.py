"""The SimPO objective and a length-normalised log-probability that never holds the full
[batch, seq, vocab] logits: the LM head, Gemma-2's final softcapping and the log-softmax run
chunk by chunk over the scored tokens only, and the backward recomputes each chunk."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simpo_q._native import SimpoQError


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
):
    """The official definition: Δ = c̄ − r̄ − γ/β; sigmoid: −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ);
    hinge: relu(1 − βΔ). Returns (per-pair losses, β·c̄, β·r̄)."""
    logits = (chosen_logps - rejected_logps) - gamma_beta_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        raise SimpoQError(f"loss_type: {loss_type!r} is not 'sigmoid' or 'hinge'")
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()


class _ChunkedTokenLogp(torch.autograd.Function):
    """log p(target) for rows of hidden states, through the head weight and softcapping,
    `chunk` rows at a time; backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, h, weight, target, softcap, chunk):
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            z = (h[s : s + chunk] @ weight.t()).float()
            if softcap:
                z = torch.tanh(z / softcap) * softcap
            out[s : s + chunk] = z.gather(1, target[s : s + chunk, None])[:, 0] - torch.logsumexp(z, dim=1)
        ctx.save_for_backward(h, weight, target)
        ctx.softcap, ctx.chunk = softcap, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, target = ctx.saved_tensors
        softcap, chunk = ctx.softcap, ctx.chunk
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for s in range(0, h.shape[0], chunk):
            hc = h[s : s + chunk]
            raw = (hc @ weight.t()).float()
            z = torch.tanh(raw / softcap) * softcap if softcap else raw
            # d logp / dz = onehot(target) − softmax(z), scaled by the upstream gradient
            g = -torch.softmax(z, dim=1)
            g.scatter_add_(1, target[s : s + chunk, None], torch.ones_like(g[:, :1]))
            g *= grad_out[s : s + chunk, None]
            if softcap:
                g *= 1 - (z / softcap) ** 2  # d(c·tanh(x/c))/dx = 1 − tanh²
            if grad_h is not None:
                grad_h[s : s + chunk] = (g.to(weight.dtype) @ weight).to(h.dtype)
            if grad_w is not None:
                grad_w += g.t() @ hc.float()
        return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None


def token_logps(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, softcap: float | None, chunk_tokens: int = 1024
):
    """(per-token log-probs of the scored tokens [N], their batch row [N]) where position t's
    hidden state scores label t+1 (labels −100 are not scored)."""
    h = hidden[:, :-1]
    tgt = labels[:, 1:]
    rows, cols = (tgt != -100).nonzero(as_tuple=True)
    lp = _ChunkedTokenLogp.apply(h[rows, cols], weight, tgt[rows, cols], softcap or 0.0, chunk_tokens)
    return lp, rows


def average_logps(lp: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    total = torch.zeros(batch, dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)
    count = torch.zeros(batch, dtype=lp.dtype, device=lp.device).index_add(0, rows, torch.ones_like(lp))
    return total / count  # as the official trainer: no clamp, a row with nothing to score is an error upstream


def model_token_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *, chunk_tokens: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of every label token, its batch row) from a Hugging Face causal LM: its body,
    then the chunked head (with the config's final softcapping, if it has one: Gemma-2)."""
    out = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return token_logps(out.last_hidden_state, model.lm_head.weight, labels, softcap=softcap, chunk_tokens=chunk_tokens)


def sequence_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *, chunk_tokens: int = 1024
) -> torch.Tensor:
    """Average log-probability of each sequence's label tokens (length-normalised, as SimPO's
    c̄ and r̄), without materialising the [batch, seq, vocab] logits."""
    lp, rows = model_token_logps(model, input_ids, attention_mask, labels, chunk_tokens=chunk_tokens)
    return average_logps(lp, rows, input_ids.shape[0])


def naive_sequence_logps(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """The official trainer's computation: full logits, log_softmax over the vocabulary,
    gather, masked mean. The reference sequence_logps is tested against."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    logits = logits[:, :-1]
    tgt = labels[:, 1:].clone()
    mask = tgt != -100
    tgt[~mask] = 0
    lp = torch.log_softmax(logits, dim=-1).gather(2, tgt[..., None])[..., 0]
    return (lp * mask).sum(-1) / mask.sum(-1)
