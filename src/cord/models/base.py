"""The adapter contract: what every LALM family gives the rest of cord.

An adapter turns a :class:`~cord.data.paired.PairedExample` into two prompts (audio and
text, same system prompt and instruction), batches them with left padding, and returns the
hidden states of *completion positions only* for ``prompt ⊕ completion`` — never logits over
all positions. Objectives project those hidden states through :meth:`LALMAdapter.lm_head`
in chunks (see ``cord.objectives``).

Alignment contract: for completions ``y`` of shape (B, T) (right-padded, mask (B, T)),
``completion_hidden(prompts, y, mask)[b, t]`` is the hidden state that predicts ``y[b, t]``,
whatever the prompt lengths, padding or batch composition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class PromptBatch:
    """A left-padded batch of prompts.

    input_ids, attention_mask: (B, P). ``extra`` holds modality tensors the model's forward
    needs (e.g. ``input_features`` (B, mel, frames) and ``feature_attention_mask`` (B, frames)
    for Whisper-style encoders); ``modality`` is "audio" or "text". ``keep`` lists, for each
    row, the index of the example it came from (examples whose audio was skipped by the
    long-audio policy are absent).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    modality: str
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    keep: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> "PromptBatch":
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.modality,
            {k: v.to(device) for k, v in self.extra.items()},
            list(self.keep),
        )

    def select(self, rows: list[int] | torch.Tensor) -> "PromptBatch":
        """Rows ``rows`` of this batch (left padding kept as is)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        extra = {k: v.index_select(0, idx.to(v.device)) for k, v in self.extra.items()}
        keep = [self.keep[i] for i in idx.tolist()] if self.keep else []
        return PromptBatch(self.input_ids[idx], self.attention_mask[idx], self.modality, extra, keep)

    def repeat_interleave(self, n: int) -> "PromptBatch":
        """Each row repeated ``n`` times in place: rows b*n .. b*n+n-1 come from row b."""
        rows = torch.arange(len(self)).repeat_interleave(n)
        return self.select(rows)


@runtime_checkable
class LALMAdapter(Protocol):
    """What a model family provides. See the module docstring for the alignment contract."""

    family: str
    model: nn.Module
    tokenizer: Any

    @property
    def eos_token_ids(self) -> list[int]: ...

    @property
    def pad_token_id(self) -> int: ...

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Modality placeholder ids that must never be sampled or used as targets."""

    def audio_prompts(self, examples: list) -> PromptBatch:
        """Audio prompt for each example: chat template with an audio item + the instruction."""

    def text_prompts(self, examples: list) -> PromptBatch:
        """Text prompt: same system prompt and instruction, the question as text."""

    def completion_hidden(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, H) final-layer hidden states predicting each completion token."""

    def lm_head(self) -> nn.Linear:
        """The output projection (weight (V, H), optional bias)."""

    def generate(self, prompts: PromptBatch, **generate_kwargs: Any) -> torch.Tensor:
        """HF ``generate`` on the prompts; returns only the new tokens (B, T_new)."""


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts: (B, P) ids and 0/1 mask, padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Completions / targets: (B, T) ids and bool mask, padded on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def policy_audio(examples: list, max_seconds: float, policy: str) -> tuple[list, list[int]]:
    """Validate each example's audio (16 kHz mono) and apply the long-audio policy.
    Returns the kept arrays and the indices of their examples."""
    import numpy as np

    from cord import CordError
    from cord.data.audio import apply_length_policy

    arrays, keep = [], []
    for i, ex in enumerate(examples):
        if ex.audio is None:
            raise CordError(f"example {ex.id!r} has no audio; an audio prompt needs 16 kHz mono audio")
        audio = np.asarray(ex.audio, dtype=np.float32)
        if audio.ndim != 1:
            raise CordError(f"example {ex.id!r}: audio must be mono (samples,), got shape {audio.shape}")
        kept = apply_length_policy(audio, max_seconds, policy, name=f"audio of {ex.id!r}")
        if kept is not None:
            arrays.append(kept)
            keep.append(i)
    return arrays, keep
