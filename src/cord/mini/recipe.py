"""The miniature's recipe before CORD (:mod:`cord.mini.stages`): :class:`RecipeConfig`, every
knob of the data, Stage A and Stage B, and the pieces both stages' loops share — targets,
masked token CE, the lr schedule, shuffled index batches and seeding."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from cord.mini.adapter import MiniAdapter
from cord.mini.data import DataSettings
from cord.models.base import right_pad

# ------------------------------------------------------------------------------ config


@dataclass
class RecipeConfig:
    """Every knob of data, Stage A and Stage B. :meth:`quick` is the test-sized variant."""

    seed: int = 0
    data: DataSettings = field(default_factory=DataSettings)
    #: torch CPU threads. Fixed by default because the thread count changes float reduction
    #: order and so the trajectory: the same seed reproduces only at the same count. 0 = auto:
    #: 2 on an idle machine, else 1.
    threads: int = 2
    verbose: bool = False
    eval_batch_size: int = 200
    max_new_tokens: int = 24
    # Stage A: text LM, two tasks (solve in two formats, repeat the question)
    a_text_examples: int = 10000
    a_repeat_share: float = 0.3
    #: share of the solve examples whose question is in its spoken form (no punctuation): the
    #: decoder learns to solve from what a recogniser hears, as a real LLM reads ASR output
    a_transcript_share: float = 0.5
    a_max_steps: int = 500
    a_batch_size: int = 64
    a_lr: float = 3e-3
    a_warmup: int = 30
    a_eval_every: int = 50
    a_min_steps: int = 300
    a_target: float = 0.99
    # Stage B: the audio path on audio -> transcript only, language model frozen, fixed length
    b_steps: int = 325
    b_batch_size: int = 32
    b_lr: float = 3e-3
    b_warmup: int = 30
    b_ctc_weight: float = 1.0
    #: weight of the decoder's transcript CE (0: CTC alone, no decoder forward)
    b_ce_weight: float = 0.0
    #: the first steps train CTC alone (the encoder learns to recognise words before the decoder
    #: reads them; those steps are several times cheaper)
    b_ctc_warmup: int = 0
    b_match_scale: bool = True
    #: decay of the exponential moving average of the audio weights kept at the end (0: the raw
    #: final weights)
    b_ema: float = 0.99
    #: evaluate dev every this many steps (0: only at the end); a record, not a stopping rule
    b_eval_every: int = 0
    #: SpecAugment-style masks on training features (frequency bands, time spans)
    b_freq_masks: int = 2
    b_freq_width: int = 10
    b_time_masks: int = 2
    b_time_width: int = 12

    @classmethod
    def quick(cls, seed: int = 0, **overrides: Any) -> "RecipeConfig":
        """Test-sized: 400/60/60/30 clips, Stage A ≤ 450 steps, Stage B 150 steps (the
        pipeline end to end in about 3 minutes; its numbers say nothing about the method).
        Stage A needs about 400 steps to solve in two formats and repeat the question (250
        left held-out text accuracy at 0.62)."""
        base = cls(
            seed=seed,
            data=DataSettings(seed=seed, n_train=400, n_dev=60, n_test=60, n_unseen=30),
            a_text_examples=10000,
            a_max_steps=450,
            a_min_steps=200,
            a_target=0.95,
            b_steps=150,
            b_lr=4e-3,
        )
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        # data as its cache key (test_engine only when not the default)
        return {**json.loads(json.dumps(asdict(self))), "data": self.data.key()}


# ------------------------------------------------------------------ loop pieces


def target_ids(adapter: MiniAdapter, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids of ``text + <eos>`` and their mask."""
    seqs = [adapter.encode(t) + adapter.eos_token_ids[:1] for t in texts]
    return right_pad(seqs, adapter.pad_token_id)


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token CE over valid tokens, number of valid tokens)."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (loss * mask.flatten()).sum(), mask.sum()


def lr_schedule(warmup: int, total: int | None, floor: float = 0.1):
    """Linear warmup, then cosine decay to ``floor`` × lr at ``total`` steps (None: constant)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total is None:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def index_batches(n: int, batch_size: int, rng: random.Random):
    """Endless shuffled epochs of index batches (drop the ragged tail of each epoch)."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for s in range(0, n - batch_size + 1, batch_size):
            yield order[s : s + batch_size]


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
