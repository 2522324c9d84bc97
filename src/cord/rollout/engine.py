"""On-policy sampling: the Engine protocol, its implementations, and the one place engines are
built (:func:`make_engine`, selected by ``rollout.engine``).

- ``hf`` (:class:`HFEngine`, default): each prompt's audio is encoded and its prompt prefilled
  once; the KV cache is repeated to the ``n`` decoding rows of its group; only the last prompt
  position is projected to logits; then a token-by-token loop samples from the pure
  distribution of :mod:`cord.rollout.sampling`. Adapters without cached decoding
  (``prefill``/``decode``, see :mod:`cord.rollout.decode`) fall back to ``hf-generate``.
- ``hf-generate`` (:class:`GenerateEngine`): transformers ``generate`` on the prompts repeated
  ``n`` times (the engine before the prefill-once one), with every inherited sampling setting
  neutralised. Same distribution, more compute; kept as the reference and the fallback.

Sampling is *pure* (no top-k, no repetition penalty, nothing from the checkpoint's
``generation_config``) because CORD's objectives assume the rollouts come from the policy's own
distribution at the given temperature; only ``rollout.top_p < 1`` truncates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch

from cord import CordError
from cord.models.base import PromptBatch
from cord.rollout.sampling import pure_generation_config, sampling_logits


@dataclass
class Rollouts:
    """Completions for a batch of prompts, ``n`` per prompt, grouped.

    ids: (R, T) long, right-padded with the pad id; mask: (R, T) bool, valid tokens (up to and
    including the first end-of-sequence token, or up to a stop string); text: decoded valid
    tokens with special tokens removed; prompt_index[r] = the prompt row of rollout r, with
    rollouts b·n .. b·n+n−1 belonging to prompt b. logprobs: (R, T) float32 log-probability of
    each valid token under the distribution it was sampled from (temperature, top_p, no
    placeholder tokens), 0 elsewhere; None when the engine does not report them (greedy).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    text: list[str]
    prompt_index: list[int]
    n: int = 1
    finished: list[bool] = field(default_factory=list)
    logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


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


class _EngineBase:
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
        if n < 1 or max_new_tokens < 1:
            raise CordError(f"rollouts need n >= 1 and max_new_tokens >= 1 (got n={n}, max_new_tokens={max_new_tokens})")
        if not greedy and temperature <= 0:
            raise CordError(f"sampling temperature must be > 0 (got {temperature}); use greedy=True for argmax")
        if not 0 < top_p <= 1:
            raise CordError(f"top_p must be in (0, 1] (got {top_p})")
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


class GenerateEngine(_EngineBase):
    """``hf-generate``: transformers ``generate`` on each prompt repeated ``n`` times, in chunks
    of ``batch_size`` rows, with a pure-sampling generation config (see module docstring)."""

    def _sample(self, prompts, n, temperature, top_p, max_new_tokens, greedy):
        adapter = self.adapter
        gen_cfg = pure_generation_config(
            greedy=greedy, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            eos_token_id=adapter.eos_token_ids, pad_token_id=adapter.pad_token_id,
            suppress_tokens=list(getattr(adapter, "placeholder_token_ids", [])),
        )
        expanded = prompts.repeat_interleave(n) if n > 1 else prompts
        chunks = []
        for start in range(0, len(expanded), self.batch_size):
            rows = list(range(start, min(start + self.batch_size, len(expanded))))
            chunk = expanded.select(rows) if len(rows) != len(expanded) else expanded
            chunks.append(adapter.generate(chunk, generation_config=gen_cfg).cpu())
        return chunks, None


class HFEngine(_EngineBase):
    """``hf`` (default): encode and prefill each prompt once, repeat its KV cache to the ``n``
    rows of its group, decode token by token with pure sampling; sampling log-probs on the
    returned :class:`Rollouts`. At most ``max(batch_size, n)`` decoding rows at a time (whole
    groups). Falls back to :class:`GenerateEngine` for adapters without ``prefill``."""

    def _sample(self, prompts, n, temperature, top_p, max_new_tokens, greedy):
        adapter = self.adapter
        if not (hasattr(adapter, "prefill") and hasattr(adapter, "decode")):
            return GenerateEngine._sample(self, prompts, n, temperature, top_p, max_new_tokens, greedy)
        per_chunk = max(1, self.batch_size // n)
        chunks, lps = [], []
        for start in range(0, len(prompts), per_chunk):
            rows = list(range(start, min(start + per_chunk, len(prompts))))
            chunk = prompts.select(rows) if len(rows) != len(prompts) else prompts
            ids, lp = decode_loop(adapter, chunk, n=n, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, greedy=greedy)
            chunks.append(ids.cpu())
            lps.append(lp.cpu())
        return chunks, (None if greedy else lps)


def apply_head(adapter):
    """hidden -> float32 logits through the adapter's lm_head and, where the family has one, its
    final logit soft cap c·tanh(z/c) (``adapter.logit_softcap``, e.g. Gemma 3n's 30.0), formed
    exactly as the objectives form them (:func:`cord.objectives.head_logits`: float32
    accumulation, cap in float32). A bf16 ``lm_head(hidden)`` would round the logits to bf16
    (steps of 0.125 near |z| ≈ 20, the cap applied in bf16): the sampled distribution would
    differ from the one the loss trains by ~1e-2 nats per token, a systematic off-policy error."""
    from cord.objectives.divergence import head_logits

    head = adapter.lm_head()
    cap = getattr(adapter, "logit_softcap", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        return head_logits(hidden, head.weight, head.bias, softcap=cap)

    return logits


def decode_loop(
    adapter,
    prompts: PromptBatch,
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    greedy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, T) new token ids (pad after a row's EOS) and (R, T) float32 sampling log-probs for
    the ``n`` rollouts of each prompt: one prefill per prompt, the cache repeated ``n`` times."""
    eos = torch.tensor(adapter.eos_token_ids, dtype=torch.long)
    pad = adapter.pad_token_id
    suppress = list(getattr(adapter, "placeholder_token_ids", []))
    head = apply_head(adapter)
    hidden, state = adapter.prefill(prompts)
    logits = head(hidden)  # (B, V): logits of the last prompt position only
    if n > 1:
        logits = logits.repeat_interleave(n, dim=0)
        state.repeat_interleave(n)
    device = logits.device
    eos = eos.to(device)
    unfinished = torch.ones(logits.shape[0], dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    logps: list[torch.Tensor] = []
    for t in range(max_new_tokens):
        scores = sampling_logits(logits, temperature=temperature, top_p=top_p, suppress=suppress, greedy=greedy)
        if greedy:
            tok = scores.argmax(dim=-1)
            lp = torch.zeros(tok.shape, dtype=torch.float32, device=device)
        else:
            logp = torch.log_softmax(scores, dim=-1)
            tok = torch.multinomial(logp.exp(), num_samples=1).squeeze(1)
            lp = logp.gather(1, tok[:, None]).squeeze(1)
        tok = torch.where(unfinished, tok, torch.full_like(tok, pad))
        tokens.append(tok)
        logps.append(torch.where(unfinished, lp, torch.zeros_like(lp)))
        unfinished = unfinished & ~torch.isin(tok, eos)
        if t == max_new_tokens - 1 or not bool(unfinished.any()):
            break
        logits = head(adapter.decode(state, tok))
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


def _vllm_engine(adapter, **kwargs):
    from cord.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(adapter, **kwargs)


#: ``rollout.engine`` → engine class (or factory)
ENGINES: dict[str, Any] = {"hf": HFEngine, "hf-generate": GenerateEngine, "vllm": _vllm_engine}


def make_engine(adapter, cfg, *, batch_size: int | None = None, stop_strings: Sequence[str] | None = None) -> Engine:
    """The engine ``cfg.rollout.engine`` names (``cfg``: a CordConfig or a RolloutConfig), on
    ``adapter``, with the rollout section's ``stop_strings`` and ``batch_size`` unless given."""
    ro = getattr(cfg, "rollout", cfg)
    name = getattr(ro, "engine", "hf")
    if name not in ENGINES:
        raise CordError(f"unknown rollout.engine {name!r} (one of {', '.join(ENGINES)})")
    extra = {"settings": getattr(ro, "vllm", None)} if name == "vllm" else {}
    return ENGINES[name](
        adapter,
        stop_strings=list(ro.stop_strings) if stop_strings is None else list(stop_strings),
        batch_size=ro.batch_size if batch_size is None else batch_size,
        **extra,
    )
