"""GRPO pieces: group-relative advantages and the policy-gradient surrogate."""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATIONS = ("token_mean", "seq_mean", "sum_norm")


def group_advantages(rewards: Tensor, group_size: int, scale_std: bool = False, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages A_i = r_i - mean(r over the group) (optionally / (std + eps)).

    Args:
        rewards: (B * N,) rewards laid out group-contiguous: rows b*N .. b*N + N - 1 are the
            N rollouts of prompt b.
        group_size: N.
        scale_std: divide by the group's standard deviation (Bessel-corrected, as TRL does)
            plus ``eps``. Off by default (CORD's A_i = r_i - mean r).

    Returns:
        (B * N,) float32 advantages, detached. A group whose rewards are all equal gets 0.
    """
    r = rewards.detach().to(torch.float32).reshape(-1)
    if group_size < 1 or r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards cannot be split into groups of {group_size}")
    g = r.reshape(-1, group_size)
    adv = g - g.mean(-1, keepdim=True)
    if scale_std:
        std = g.std(-1, keepdim=True, correction=1 if group_size > 1 else 0)
        adv = adv / (std + eps)
    return adv.reshape(-1)


def _aggregate(per_token: Tensor, mask: Tensor, aggregation: str, max_len: int | None) -> Tensor:
    valid = mask.to(torch.bool)
    m = valid.to(per_token.dtype)
    per_token = per_token.masked_fill(~valid, 0.0)  # padding may hold -inf/nan log-probs
    total = per_token.sum()
    if aggregation == "token_mean":
        return total / m.sum().clamp(min=1.0)
    if aggregation == "seq_mean":
        n = m.sum(-1)
        per_seq = per_token.sum(-1) / n.clamp(min=1.0)
        has = n > 0
        return per_seq[has].sum() / has.sum().clamp(min=1)
    if aggregation == "sum_norm":
        length = per_token.shape[-1] if max_len is None else max_len
        return total / float(per_token.shape[0] * length)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def grpo_surrogate(
    logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    old_logprobs: Tensor | None = None,
    clip_eps: float = 0.2,
    aggregation: str = "token_mean",
    *,
    max_len: int | None = None,
) -> Tensor:
    """Scalar GRPO policy-gradient loss to minimise.

    Args:
        logprobs: (B, T) log pi_theta(y_t | ...) of the rollouts' tokens, with gradient.
        advantages: (B,) one advantage per rollout (broadcast over its tokens) or (B, T)
            per-token advantages; treated as constants.
        mask: (B, T) valid completion tokens.
        old_logprobs: (B, T) log-probs of the policy that sampled the rollouts. None means
            plain on-policy: ratio = exp(logp - logp.detach()), so the per-token loss value
            is -A but its gradient is exactly REINFORCE's -A * grad log pi. Given, the loss is
            PPO-clip: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) with
            ratio = exp(logp - old_logprobs); tokens clipped on the clipped side get no gradient.
        clip_eps: eps of the clip range.
        aggregation: how per-token terms become one number:
            "token_mean": sum over all valid tokens / number of valid tokens in the batch;
            "seq_mean": mean over each sequence's valid tokens, then mean over sequences
              (GRPO paper; sequences without tokens are skipped);
            "sum_norm": sum / (B * max_len), a constant normaliser as in Dr. GRPO, so long
              and short rollouts weigh by their token count; ``max_len`` defaults to T.

    Returns:
        0-d tensor.
    """
    if logprobs.dim() != 2 or tuple(mask.shape) != tuple(logprobs.shape):
        raise ValueError(f"logprobs and mask must both be (B, T); got {tuple(logprobs.shape)} and {tuple(mask.shape)}")
    adv = advantages.detach().to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    if old_logprobs is None:
        ratio = torch.exp(logprobs - logprobs.detach())
        per_token = -ratio * adv
    else:
        ratio = torch.exp(logprobs - old_logprobs.detach().to(logprobs.dtype))
        clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
        per_token = -torch.minimum(ratio * adv, clipped * adv)
    return _aggregate(per_token, mask, aggregation, max_len)
