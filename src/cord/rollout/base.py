"""What every rollout engine is: the :class:`Engine` protocol the trainer and evaluator call, and
:class:`EngineBase`, the seeding, batching and cutting of rollouts the engines share (the HF
engines in :mod:`cord.rollout.engine`, vLLM in :mod:`cord.rollout.vllm_engine`)."""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from cord import CordError
from cord.types import PromptBatch, Rollouts


class Engine(Protocol):
    """Anything that samples completions for prompts (HF now; a vLLM-like server later).

    ``sync_weights(step)`` is called by the trainer once per optimizer step, before that step's
    rollouts, with the number of optimizer steps taken so far: an engine that holds its own copy
    of the weights refreshes it there. ``stop_strings`` and ``batch_size`` are the engine's
    settings (``rollout.stop_strings``, ``rollout.batch_size``)."""

    stop_strings: list[str]
    batch_size: int

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

    def sync_weights(self, step: int) -> None: ...


def check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int, greedy: bool) -> None:
    """One line for sampling settings no engine can honour."""
    if n < 1 or max_new_tokens < 1:
        raise CordError(f"rollouts need n >= 1 and max_new_tokens >= 1 (got n={n}, max_new_tokens={max_new_tokens})")
    if not greedy and temperature <= 0:
        raise CordError(f"sampling temperature must be > 0 (got {temperature}); use greedy=True for argmax")
    if not 0 < top_p <= 1:
        raise CordError(f"top_p must be in (0, 1] (got {top_p})")


class EngineBase:
    """Seeding, eval mode, assembling and cutting rollouts: shared by the HF engines."""

    #: True: samples with the training model itself, so it sees whatever that model is at call
    #: time (e.g. the frozen teacher: the same model with its LoRA adapter disabled)
    reads_model_weights = True

    def __init__(self, adapter, *, stop_strings: Sequence[str] = (), batch_size: int = 64) -> None:
        self.adapter = adapter
        self.stop_strings = list(stop_strings)
        self.batch_size = int(batch_size)

    def sync_weights(self, step: int) -> None:
        """The HF engines sample with the training model itself: nothing to copy."""

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
        check_sampling(n, temperature, top_p, max_new_tokens, greedy)
        adapter = self.adapter
        devices = [adapter.device] if adapter.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            was_training = adapter.model.training
            adapter.model.eval()
            try:
                with torch.no_grad():
                    chunks, lp_chunks = self._sample(prompts, n, temperature, top_p, max_new_tokens, greedy)
            finally:
                adapter.model.train(was_training)
        return self._assemble(chunks, lp_chunks, n, len(prompts) * n)

    def _sample(self, prompts, n, temperature, top_p, max_new_tokens, greedy):
        raise NotImplementedError

    def _assemble(self, chunks: list[torch.Tensor], lp_chunks: list[torch.Tensor] | None, n: int, rows: int) -> Rollouts:
        adapter = self.adapter
        eos, pad = adapter.eos_token_ids, adapter.pad_token_id
        width = max((c.shape[1] for c in chunks), default=0)
        ids = torch.full((rows, max(width, 1)), pad, dtype=torch.long)
        logprobs = torch.zeros(ids.shape, dtype=torch.float32) if lp_chunks is not None else None
        row = 0
        for i, c in enumerate(chunks):
            ids[row : row + c.shape[0], : c.shape[1]] = c
            if logprobs is not None:
                logprobs[row : row + c.shape[0], : c.shape[1]] = lp_chunks[i]
            row += c.shape[0]
        mask, finished = self._valid_mask(ids, eos)
        if self.stop_strings:
            mask, finished = self._apply_stop_strings(ids, mask, finished)
        ids = ids.masked_fill(~mask, pad)
        if logprobs is not None:
            logprobs = logprobs.masked_fill(~mask, 0.0)
        text = [
            adapter.tokenizer.decode(ids[r, : int(mask[r].sum())].tolist(), skip_special_tokens=True)
            for r in range(ids.shape[0])
        ]
        prompt_index = [i // n for i in range(rows)]
        return Rollouts(ids=ids, mask=mask, text=text, prompt_index=prompt_index, n=n, finished=finished,
                        logprobs=logprobs)

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
