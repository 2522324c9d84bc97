"""On-policy sampling: the HF engines and the one place engines are built (:func:`make_engine`,
selected by ``rollout.engine``); the protocol they share is :mod:`cord.rollout.base`.

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

from typing import Any, Sequence

import torch

from cord import CordError
from cord.rollout.base import Engine, EngineBase
from cord.rollout.sampling import pure_generation_config, sampling_logits
from cord.types import PromptBatch


class GenerateEngine(EngineBase):
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


class HFEngine(EngineBase):
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
