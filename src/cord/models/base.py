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

import re
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from cord.types import PromptBatch, unwrapped_name  # noqa: F401  (PromptBatch: part of the adapter contract)

#: The trainable parts of an LALM, as ``train.trainable`` names them.
PARTS = ("language_model", "audio_encoder", "projector", "lm_head")

def part_of(name: str, module_map: Mapping[str, Sequence[str]]) -> str | None:
    """The part (a key of ``module_map``) that parameter ``name`` belongs to: the part whose
    module path is the longest prefix of the name (so ``language_model.lm_head`` beats
    ``language_model``); None when no path is a prefix (e.g. a vision tower)."""
    name = unwrapped_name(name)
    best, best_len = None, -1
    for part, paths in module_map.items():
        for path in paths:
            if (name == path or name.startswith(path + ".")) and len(path) > best_len:
                best, best_len = part, len(path)
    return best


def lora_target_regex(scope: Sequence[str], names: Sequence[str], exclude: Sequence[str] = ()) -> str:
    """The peft ``target_modules`` regex (matched with ``re.fullmatch`` on module paths) for
    modules called one of ``names`` under one of the ``scope`` module paths, and under no
    module called one of ``exclude`` (e.g. an MoE's ``experts``)."""
    inside = "|".join(re.escape(p) for p in scope)
    leaf = "|".join(re.escape(n) for n in names)
    guard = rf"(?!(?:.*\.)?(?:{'|'.join(re.escape(e) for e in exclude)})\.)" if exclude else ""
    return rf"{guard}(?:{inside})\.(?:[^.]+\.)*(?:{leaf})"


def module_map_of(adapter: Any) -> Mapping[str, Sequence[str]]:
    """The adapter's module map (see :class:`LALMAdapter`), checked."""
    from cord import CordError

    module_map = getattr(adapter, "module_map", None)
    if not module_map:
        raise CordError(
            f"adapter {type(adapter).__name__} has no module_map: a family must say which modules are its "
            f"{', '.join(PARTS)} (see docs/architecture.md, 'Adding a model family')"
        )
    unknown = sorted(set(module_map) - set(PARTS))
    if unknown:
        raise CordError(f"adapter {type(adapter).__name__}: module_map names unknown parts {unknown} (parts: {PARTS})")
    return module_map


@runtime_checkable
class LALMAdapter(Protocol):
    """What a model family provides. See the module docstring for the alignment contract.

    ``module_map`` says which modules of ``model`` (dotted paths, as the family's transformers
    class names them, without peft's wrapper) are each trainable part: ``{"audio_encoder":
    ("model.audio_tower",), "projector": (...), "language_model": (...), "lm_head": (...)}``;
    the trainer's ``train.trainable`` selects parameters through it. ``lora_scope`` lists the
    module paths LoRA may target (the decoder: encoders have q/k/v projections with the same
    names) and ``lora_exclude`` module names it never enters (an MoE's ``experts``).
    """

    family: str
    model: nn.Module
    tokenizer: Any
    module_map: Mapping[str, Sequence[str]]
    lora_scope: Sequence[str]
    lora_exclude: Sequence[str]

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


def set_generation_ids(generation_config: Any, tokenizer: Any, eos_token_id: int | list[int] | None = None) -> None:
    """Point ``generation_config`` at the tokenizer: end of sequence = ``eos_token_id`` (default:
    the tokenizer's), pad = the tokenizer's pad, no forced bos. Every family's loader and tiny
    builder calls this."""
    generation_config.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.bos_token_id = None


def tokenizer_vocab_size(tokenizer) -> int:
    """The tokenizer's size rounded up to a multiple of 64 (a tiny model's vocabulary)."""
    return (len(tokenizer) + 63) // 64 * 64
