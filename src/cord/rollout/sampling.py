"""Pure sampling: the next-token distribution the objectives assume, and nothing else.

CORD's objectives take the rollouts to be drawn from p_θ(·|x) at temperature T. transformers'
``generate`` fills every unset field of a ``GenerationConfig`` from the checkpoint's
``generation_config`` and then from its global defaults (``top_k=50``), so a plain
``generate(do_sample=True)`` samples from a truncated, penalised distribution. Here the
distribution is built explicitly: logits of the placeholder tokens removed (a sampled
``<|AUDIO|>`` would be taken for an audio slot), divided by T, and — only when the cord
config asks (``rollout.top_p < 1``) — nucleus-filtered exactly like transformers'
``TopPLogitsWarper``. No top-k, min-p, typical-p, epsilon/eta cut-off, repetition penalty,
n-gram ban, bad words or forced tokens, whatever the checkpoint says.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch


def sampling_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    suppress: Sequence[int] = (),
    greedy: bool = False,
) -> torch.Tensor:
    """(R, V) logits of the distribution that is sampled from (log-softmax gives its
    log-probs); float32. Greedy: only the suppression applies (argmax is taken on it)."""
    scores = logits.float()
    if suppress:
        scores = scores.clone()
        scores[:, list(suppress)] = float("-inf")
    if greedy:
        return scores
    if temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        # transformers' TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p,
        # always keeping the most likely token
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return scores


def pure_generation_config(
    *,
    greedy: bool,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    eos_token_id: list[int],
    pad_token_id: int,
    suppress_tokens: Sequence[int] = (),
):
    """A ``GenerationConfig`` whose every logits processor is off unless cord asks for it.

    transformers fills each ``None`` field from the model's ``generation_config`` and then from
    its defaults (``top_k=50``), so neutral values are set explicitly where one exists; the
    fields whose only neutral value is ``None`` (bad words, sequence bias, forced tokens, ...)
    are handled by :func:`clean_generation_defaults` around the call.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=0 if not greedy else None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        length_penalty=1.0,
        min_length=0,
        renormalize_logits=False,
        remove_invalid_values=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_token_id),
        pad_token_id=pad_token_id,
        num_beams=1,
        num_return_sequences=1,
        use_cache=True,
        # placeholders are not text: sampling one would corrupt the next forward's merge
        suppress_tokens=list(suppress_tokens) or None,
    )


@contextlib.contextmanager
def clean_generation_defaults(module) -> Iterator[None]:
    """Replace ``module.generation_config`` by one that holds only the special-token ids for
    the duration of a ``generate`` call, so no sampling setting leaks in from a checkpoint's
    ``generation_config.json``."""
    from transformers import GenerationConfig

    old = getattr(module, "generation_config", None)
    if old is None:
        yield
        return
    keep = {k: getattr(old, k, None) for k in ("eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id")}
    module.generation_config = GenerationConfig(**{k: v for k, v in keep.items() if v is not None})
    try:
        yield
    finally:
        module.generation_config = old
