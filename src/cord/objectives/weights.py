"""CORD's token weights: w_t = w_t^KL * w_t^pos, constants (no gradient flows through them).

* w_t^pos = beta - (beta - 1) (t - 1) / (T - 1), t = 1..T over the valid positions of a
  sequence (T = its number of valid completion tokens): linear from beta at the first
  valid token to 1 at the last; a one-token sequence gets beta. Positions are ranked among
  the valid ones, so a mask need not be a prefix.
* w_t^KL = alpha at the top-K positions of the sequence by D_t, else 1. Ties go to the
  earlier position; a sequence with T <= K has every valid token boosted.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _as_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    if mask is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {tuple(like.shape)}")
    return mask.to(torch.bool)


def position_decay_weights(mask: Tensor, beta: float = 2.0) -> Tensor:
    """(B, T) mask -> (B, T) float32 w^pos: beta at each row's first valid token, 1 at its last, 0 at invalid."""
    m = mask.to(torch.bool)
    if m.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(m.shape)}")
    rank = (m.cumsum(-1) - 1).to(torch.float32)  # 0-based rank among valid positions
    n_valid = m.sum(-1, keepdim=True).to(torch.float32)
    frac = rank / (n_valid - 1).clamp(min=1.0)  # a one-token row has rank 0 -> beta
    return (beta - (beta - 1.0) * frac) * m


def topk_kl_mask(kl: Tensor, mask: Tensor | None, top_k: int) -> Tensor:
    """(B, T) bool: the ``top_k`` valid positions of each row with the largest KL.

    Ties are broken by position (earlier wins) through a stable sort; rows with fewer than
    ``top_k`` valid positions have all of them selected.
    """
    if kl.dim() != 2:
        raise ValueError(f"kl must be (B, T), got shape {tuple(kl.shape)}")
    m = _as_mask(mask, kl)
    if top_k <= 0:
        return torch.zeros_like(m)
    key = kl.detach().float().masked_fill(~m, float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    k = m.sum(-1, keepdim=True).clamp(max=top_k)  # valid rows sort first: KL values are finite
    chosen_sorted = torch.arange(kl.shape[-1], device=kl.device).unsqueeze(0) < k
    chosen = torch.zeros_like(m).scatter(-1, order, chosen_sorted)
    return chosen & m


def token_weights(kl: Tensor, mask: Tensor | None, alpha: float = 2.0, top_k: int = 20, beta: float = 2.0) -> Tensor:
    """CORD token weights, detached.

    Args:
        kl: (B, T) per-token divergence D_t (e.g. from ``reverse_kl_per_token``); only its
            order within each row matters.
        mask: (B, T) valid completion positions (None = all).
        alpha: boost of the top-K positions (1 = no boost).
        top_k: K, positions boosted per sequence.
        beta: position decay start (1 = flat).

    Returns:
        (B, T) float32 w_t = (alpha if t in top-K else 1) * w_t^pos, 0 at invalid positions.
        ``alpha = beta = 1`` gives uniform on-policy distillation.
    """
    m = _as_mask(mask, kl)
    with torch.no_grad():
        top = topk_kl_mask(kl, m, top_k)
        w_kl = torch.where(top, torch.tensor(float(alpha), device=kl.device), torch.tensor(1.0, device=kl.device))
        return (w_kl * position_decay_weights(m, beta)).detach()
