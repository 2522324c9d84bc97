"""Cached decoding, the part an adapter provides: prefill a prompt batch once, then one token
per step against its KV cache.

An adapter that supports it has

- ``prefill(prompts) -> (hidden (B, H), DecodeState)``: the audio encoder, projector and the
  decoder over the whole (left-padded) prompt, once per prompt; ``hidden`` is the final-layer
  state of the last prompt position only (no prompt-wide logits);
- ``decode(state, tokens (R,)) -> hidden (R, H)``: one new token per row, appended to the
  state's cache, mask and positions.

:meth:`DecodeState.repeat_interleave` expands a prefilled batch to ``n`` decoding rows per
prompt (rows b·n … b·n+n−1 from prompt b) by repeating the KV cache, so the prompt is never
recomputed per sample.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DecodeState:
    """cache: the decoder's KV cache (a transformers ``Cache``); attention_mask: (R, L) 0/1
    over prompt ⊕ generated tokens; position: (R,) the position id the next fed token takes;
    extra: anything else an adapter needs between steps."""

    cache: Any
    attention_mask: torch.Tensor
    position: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    def repeat_interleave(self, n: int) -> "DecodeState":
        """Each row repeated ``n`` times in place (the cache is expanded in place too)."""
        if n == 1:
            return self
        repeat_cache(self.cache, n)
        self.attention_mask = self.attention_mask.repeat_interleave(n, dim=0)
        self.position = self.position.repeat_interleave(n, dim=0)
        return self

    def advance(self) -> None:
        """Account for one fed token per row: one more attended column, next position."""
        ones = torch.ones_like(self.attention_mask[:, :1])
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        self.position = self.position + 1


def repeat_cache(cache: Any, n: int) -> None:
    """Repeat every layer's keys and values ``n`` times along the batch, in place."""
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(n)
        return
    for layer in getattr(cache, "layers", []):  # pragma: no cover - older cache layouts
        layer.keys = layer.keys.repeat_interleave(n, dim=0)
        layer.values = layer.values.repeat_interleave(n, dim=0)


def new_cache(config: Any = None) -> Any:
    """An empty ``DynamicCache`` (sized from the text config where the installed
    transformers accepts one)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config) if config is not None else DynamicCache()
    except TypeError:  # pragma: no cover - transformers without the config argument
        return DynamicCache()


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the name ``module.forward`` takes: ``cache`` in transformers
    ≥ 5.2x, ``past_key_values`` before (and accepted, deprecated, until 5.40)."""
    params = inspect.signature(module.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return {name: cache, "use_cache": True}


def next_positions(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) the position the first generated token takes: one past the largest position of the
    row's attended prompt tokens (``position_ids``: (B, P), or (k, B, P) for multimodal rope)."""
    pos = position_ids if position_ids.dim() == 2 else position_ids.amax(dim=0)
    valid = attention_mask.to(torch.bool)
    return pos.masked_fill(~valid, -1).amax(dim=-1) + 1
