"""On-policy sampling: the Engine protocol and its implementation on HF ``generate``.

Sampling is *pure* (no top-k, no repetition penalty) unless asked otherwise, because CORD's
objectives assume the rollouts come from the policy's own distribution at the given
temperature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from cord.models.base import PromptBatch


@dataclass
class Rollouts:
    """Completions for a batch of prompts, ``n`` per prompt, grouped.

    ids: (R, T) long, right-padded with the pad id; mask: (R, T) bool, valid tokens (up to and
    including the first end-of-sequence token, or up to a stop string); text: decoded valid
    tokens with special tokens removed; prompt_index[r] = the prompt row of rollout r, with
    rollouts b·n .. b·n+n−1 belonging to prompt b.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    text: list[str]
    prompt_index: list[int]
    n: int = 1
    finished: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


class Engine(Protocol):
    """Anything that samples completions for prompts (HF generate now; vLLM later)."""

    def generate(
        self,
        prompts: PromptBatch,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 200,
        greedy: bool = False,
        seed: int | None = None,
    ) -> Rollouts: ...


class HFEngine:
    """Rollouts through the adapter's ``generate`` (transformers GenerationMixin, KV cache)."""

    def __init__(self, adapter, *, stop_strings: Sequence[str] = (), batch_size: int = 64) -> None:
        self.adapter = adapter
        self.stop_strings = list(stop_strings)
        self.batch_size = batch_size

    def generate(
        self,
        prompts: PromptBatch,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 200,
        greedy: bool = False,
        seed: int | None = None,
    ) -> Rollouts:
        from transformers import GenerationConfig

        adapter = self.adapter
        eos = adapter.eos_token_ids
        pad = adapter.pad_token_id
        gen_cfg = GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None,
            repetition_penalty=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            num_beams=1,
            # placeholders are not text: sampling one would corrupt the next forward's merge
            suppress_tokens=list(getattr(adapter, "placeholder_token_ids", [])) or None,
        )
        expanded = prompts.repeat_interleave(n) if n > 1 else prompts
        devices = [adapter.device] if adapter.device.type == "cuda" else []
        chunks: list[torch.Tensor] = []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            was_training = adapter.model.training
            adapter.model.eval()
            try:
                with torch.no_grad():
                    for start in range(0, len(expanded), self.batch_size):
                        rows = list(range(start, min(start + self.batch_size, len(expanded))))
                        chunk = expanded.select(rows) if len(rows) != len(expanded) else expanded
                        chunks.append(adapter.generate(chunk, generation_config=gen_cfg).cpu())
            finally:
                adapter.model.train(was_training)
        width = max((c.shape[1] for c in chunks), default=0)
        ids = torch.full((len(expanded), max(width, 1)), pad, dtype=torch.long)
        row = 0
        for c in chunks:
            ids[row : row + c.shape[0], : c.shape[1]] = c
            row += c.shape[0]
        mask, finished = self._valid_mask(ids, eos)
        if self.stop_strings:
            mask, finished = self._apply_stop_strings(ids, mask, finished)
        ids = ids.masked_fill(~mask, pad)
        text = [
            adapter.tokenizer.decode(ids[r, : int(mask[r].sum())].tolist(), skip_special_tokens=True)
            for r in range(ids.shape[0])
        ]
        prompt_index = [i // n for i in range(len(expanded))]
        return Rollouts(ids=ids, mask=mask, text=text, prompt_index=prompt_index, n=n, finished=finished)

    @staticmethod
    def _valid_mask(ids: torch.Tensor, eos: list[int]) -> tuple[torch.Tensor, list[bool]]:
        """Valid = up to and including the first EOS (the model must learn to stop)."""
        is_eos = torch.isin(ids, torch.tensor(eos, dtype=ids.dtype))
        # number of EOS strictly before each position
        before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
        mask = before == 0
        return mask, is_eos.any(dim=1).tolist()

    def _apply_stop_strings(self, ids, mask, finished):
        """Cut each rollout right after the token that completes a stop string."""
        tok = self.adapter.tokenizer
        mask = mask.clone()
        finished = list(finished)
        for r in range(ids.shape[0]):
            length = int(mask[r].sum())

            def has_stop(k: int) -> bool:
                text = tok.decode(ids[r, :k].tolist(), skip_special_tokens=True)
                return any(s in text for s in self.stop_strings)

            if length == 0 or not has_stop(length):
                continue
            lo, hi = 1, length  # smallest k with has_stop(k): monotone in k
            while lo < hi:
                mid = (lo + hi) // 2
                if has_stop(mid):
                    hi = mid
                else:
                    lo = mid + 1
            mask[r, lo:] = False
            finished[r] = True
        return mask, finished
