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
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn


@dataclass
class PromptBatch:
    """A left-padded batch of prompts.

    input_ids, attention_mask: (B, P). ``extra`` holds modality tensors the model's forward
    needs (e.g. ``input_features`` (B, mel, frames) and ``feature_attention_mask`` (B, frames)
    for Whisper-style encoders); ``modality`` is "audio" or "text". ``keep`` lists, for each
    row, the index of the example it came from (examples whose audio was skipped by the
    long-audio policy are absent). ``group`` (set by :meth:`repeat_interleave`) says that rows
    ``b·group .. b·group+group-1`` are copies of one prompt: an adapter may encode each
    distinct audio once and reuse it for its group (the Qwen adapters do); others ignore it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    modality: str
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    keep: list[int] = field(default_factory=list)
    group: int = 1
    #: the 16 kHz mono float32 waveform of each row, after the long-audio policy (what the
    #: features were computed from), for engines that encode audio themselves (vLLM); None
    #: for text prompts and adapters that do not record it
    audio: list[Any] | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> "PromptBatch":
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.modality,
            {k: v.to(device) for k, v in self.extra.items()},
            list(self.keep),
            self.group,
            self.audio,
        )

    def select(self, rows: list[int] | torch.Tensor) -> "PromptBatch":
        """Rows ``rows`` of this batch (left padding kept as is)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        extra = {k: v.index_select(0, idx.to(v.device)) for k, v in self.extra.items()}
        keep = [self.keep[i] for i in idx.tolist()] if self.keep else []
        audio = [self.audio[i] for i in idx.tolist()] if self.audio is not None else None
        return PromptBatch(self.input_ids[idx], self.attention_mask[idx], self.modality, extra, keep, audio=audio)

    def repeat_interleave(self, n: int) -> "PromptBatch":
        """Each row repeated ``n`` times in place: rows b*n .. b*n+n-1 come from row b (the
        result's ``group`` records it; :meth:`select` forgets it)."""
        rows = torch.arange(len(self)).repeat_interleave(n)
        out = self.select(rows)
        out.group = self.group * n
        return out


#: The trainable parts of an LALM, as ``train.trainable`` names them.
PARTS = ("language_model", "audio_encoder", "projector", "lm_head")

#: Wrapper prefixes that are not part of a family's module paths: peft's ``PeftModel``
#: (``base_model.model.``), ``torch.compile`` (``_orig_mod.``), DDP (``module.``).
_WRAPPER_PREFIXES = ("base_model.model.", "_orig_mod.", "module.")


def unwrapped_name(name: str) -> str:
    """``name`` (a parameter or module path) without wrapper prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


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
