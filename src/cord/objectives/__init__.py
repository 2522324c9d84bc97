"""Objectives: chunked full-vocabulary divergences, CORD token weights, GRPO, the combined loss.

Public API (shapes in each docstring):

* ``reverse_kl_per_token`` / ``forward_kl_per_token``: (B, T) KL per completion position
  from hidden states and lm_head weights, chunked over positions, never holding (N, V).
* ``token_logprobs``: (B, T) log-probabilities of given token ids, chunked the same way.
* ``head_logits``: (R, V) float32 logits of a few positions, formed as the objectives form them
  (what the rollout engine samples from).
* ``sampled_token_logratio``: the k1 sampled-token estimator (a REINFORCE reward, not a loss).
* ``token_weights`` (= ``topk_kl_mask`` boost x ``position_decay_weights``): CORD's weights.
* ``group_advantages``, ``grpo_surrogate``: GRPO's sequence-level pieces.
* ``cord_loss``: L = L_tok + lam * L_seq with metrics; ``weighted_token_loss``: L_tok alone.
"""

from .divergence import (
    forward_kl_per_token,
    head_logits,
    reverse_kl_per_token,
    sampled_token_logratio,
    token_logprobs,
)
from .grpo import AGGREGATIONS, group_advantages, grpo_surrogate
from .loss import NORMALIZATIONS, cord_loss, weighted_token_loss
from .weights import position_decay_weights, token_weights, topk_kl_mask

__all__ = [
    "AGGREGATIONS",
    "NORMALIZATIONS",
    "cord_loss",
    "forward_kl_per_token",
    "group_advantages",
    "head_logits",
    "grpo_surrogate",
    "position_decay_weights",
    "reverse_kl_per_token",
    "sampled_token_logratio",
    "token_logprobs",
    "token_weights",
    "topk_kl_mask",
    "weighted_token_loss",
]
