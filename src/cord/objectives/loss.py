"""CORD's combined objective L = L_tok + lam * L_seq, and its metrics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .grpo import group_advantages, grpo_surrogate
from .weights import token_weights, topk_kl_mask

NORMALIZATIONS = ("tokens", "weights", "sequences")


def weighted_token_loss(kl: Tensor, weights: Tensor, mask: Tensor, normalization: str = "tokens") -> Tensor:
    """L_tok from (B, T) per-token KL (with grad) and constant (B, T) weights.

    normalization:
        "tokens": sum_t w_t D_t / (number of valid completion tokens in the batch) (CORD's default);
        "weights": sum_t w_t D_t / sum_t w_t (a weighted mean over the batch);
        "sequences": per sequence sum_t w_t D_t / sum_t w_t, then the mean over sequences
            that have at least one valid token.
    """
    valid = mask.to(torch.bool)
    w = weights.detach().to(kl.dtype).masked_fill(~valid, 0.0)
    wd = w * kl.masked_fill(~valid, 0.0)
    if normalization == "tokens":
        return wd.sum() / valid.sum().clamp(min=1).to(kl.dtype)
    if normalization == "weights":
        return wd.sum() / w.sum().clamp(min=torch.finfo(kl.dtype).tiny)
    if normalization == "sequences":
        has = valid.any(-1)
        per_seq = wd.sum(-1) / w.sum(-1).clamp(min=torch.finfo(kl.dtype).tiny)
        return per_seq[has].sum() / has.sum().clamp(min=1).to(kl.dtype)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _pop_std(x: Tensor) -> float:
    return float(x.float().std(correction=0)) if x.numel() else math.nan


def cord_loss(
    kl: Tensor | None,
    mask: Tensor | None,
    *,
    alpha: float,
    top_k: int,
    beta: float,
    lam: float,
    seq_logprobs: Tensor | None = None,
    seq_mask: Tensor | None = None,
    advantages: Tensor | None = None,
    rewards: Tensor | None = None,
    old_logprobs: Tensor | None = None,
    clip_eps: float = 0.2,
    normalization: str = "tokens",
    aggregation: str = "token_mean",
    group_size: int | None = None,
    max_len: int | None = None,
    adv_std_norm: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """CORD's objective: L = L_tok + lam * L_seq.

    Token level (skipped when ``kl`` is None, e.g. GRPO alone):
        kl: (B, T) per-token reverse KL from ``reverse_kl_per_token`` (with grad);
        mask: (B, T) valid completion positions;
        w = token_weights(kl, mask, alpha, top_k, beta) (constants; alpha = beta = 1 is
        uniform OPD); L_tok = weighted_token_loss(kl, w, mask, normalization).
    Sequence level (skipped when ``seq_logprobs`` is None, e.g. OPD alone):
        seq_logprobs: (B', T') log-probs of the rollouts' tokens (with grad), from
        ``token_logprobs``; seq_mask: (B', T') their valid tokens (defaults to ``mask``);
        advantages: (B',) or (B', T'); when None (the trainer's route) they are computed from
        ``rewards`` with ``group_advantages(rewards, group_size, scale_std=adv_std_norm)``;
        old_logprobs / clip_eps / aggregation / max_len: see ``grpo_surrogate``.
        L_seq = grpo_surrogate(...).
    ``rewards`` (B',) is also reported in the metrics when given.

    With a trainable lm_head, compute ``kl`` with
    ``reverse_kl_per_token(..., grad_hint=position_decay_weights(mask, beta))`` so its
    backward recomputes only the top-K positions (see ``cord.objectives.divergence``).

    Returns:
        (loss, metrics). ``loss`` is a 0-d tensor to minimise. ``metrics`` holds python
        floats: kl_mean (mean D over valid tokens), kl_weighted (sum w D / sum w), kl_p80
        (80th percentile of D over valid tokens, linear interpolation as numpy's default),
        topk_weight_share (share of the total weight on the top-K positions), reward_mean,
        reward_std, adv_std (population std, ddof=0), loss_tok, loss_seq, loss. Metrics of a
        level that is absent are nan; loss_tok / loss_seq are 0 then.
    """
    if kl is None and seq_logprobs is None:
        raise ValueError("cord_loss needs kl (token level) and/or seq_logprobs (sequence level)")
    nan = math.nan
    metrics = dict(kl_mean=nan, kl_weighted=nan, kl_p80=nan, topk_weight_share=nan,
                   reward_mean=nan, reward_std=nan, adv_std=nan)
    device = (kl if kl is not None else seq_logprobs).device
    loss_tok = torch.zeros((), device=device)
    loss_seq = torch.zeros((), device=device)

    if kl is not None:
        if kl.dim() != 2:
            raise ValueError(f"kl must be (B, T), got shape {tuple(kl.shape)}")
        valid = torch.ones_like(kl, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        w = token_weights(kl, valid, alpha=alpha, top_k=top_k, beta=beta)
        loss_tok = weighted_token_loss(kl, w, valid, normalization)
        with torch.no_grad():
            d = kl.detach().float()
            dv = d[valid]
            wf = w.float()
            if dv.numel():
                metrics["kl_mean"] = float(dv.mean())
                metrics["kl_p80"] = float(torch.quantile(dv, 0.8))
                total_w = float(wf.sum())
                if total_w > 0:
                    metrics["kl_weighted"] = float((wf * d).sum()) / total_w
                    top = topk_kl_mask(d, valid, top_k)
                    metrics["topk_weight_share"] = float(wf[top].sum()) / total_w

    if rewards is not None:
        r = rewards.detach().float().reshape(-1)
        metrics["reward_mean"] = float(r.mean()) if r.numel() else nan
        metrics["reward_std"] = _pop_std(r)

    if seq_logprobs is not None:
        smask = seq_mask if seq_mask is not None else mask
        if smask is None:
            smask = torch.ones_like(seq_logprobs, dtype=torch.bool)
        if advantages is None:
            if rewards is None or group_size is None:
                raise ValueError("the sequence term needs advantages, or rewards and group_size to compute them")
            advantages = group_advantages(rewards, group_size, scale_std=adv_std_norm)
        metrics["adv_std"] = _pop_std(advantages.detach())
        loss_seq = grpo_surrogate(seq_logprobs, advantages, smask, old_logprobs=old_logprobs,
                                  clip_eps=clip_eps, aggregation=aggregation, max_len=max_len)

    loss = loss_tok + lam * loss_seq if seq_logprobs is not None else loss_tok
    metrics["loss_tok"] = float(loss_tok.detach())
    metrics["loss_seq"] = float(loss_seq.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
