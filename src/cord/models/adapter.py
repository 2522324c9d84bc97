"""The base every Hugging Face-style family adapter builds on: what the contract
(:mod:`cord.models.base`) asks of every family and is the same in all of them — the fields a
loader passes, token lookups, padding, the long-audio policy, text prompts from a chat layout,
saving, the device. A family says only what differs: its module map and LoRA scope, its chat
layout (:meth:`AdapterBase.prompt_ids`), its audio features and placeholders, its decoder
calls (see :class:`cord.models.qwen.QwenAudioAdapter`, :class:`cord.models.step_audio2.StepAudio2Adapter`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cord.models.base import left_pad, policy_audio
from cord.types import PromptBatch


class AdapterBase:
    family = "?"
    default_system_prompt = "You are a helpful assistant."
    #: the trainable parts by module path (see cord.models.base.LALMAdapter)
    module_map: dict[str, tuple[str, ...]] = {}
    lora_scope: tuple[str, ...] = ()
    lora_exclude: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, tokenizer: Any, feature_extractor: Any, *, system_prompt: str | None = None,
                 instruction: str = "", long_audio: str = "error", max_audio_seconds: float = 30.0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.system_prompt = self.default_system_prompt if system_prompt is None else system_prompt
        self.instruction = instruction
        self.long_audio = long_audio
        self.max_audio_seconds = max_audio_seconds
        self.skipped_long_audio = 0

    @classmethod
    def from_config(cls, model: nn.Module, tokenizer: Any, feature_extractor: Any, cfg: Any, **kwargs: Any):
        """The adapter with the prompt and long-audio settings of ``cfg`` (a ModelConfig)."""
        return cls(model, tokenizer, feature_extractor, system_prompt=cfg.system_prompt, instruction=cfg.instruction,
                   long_audio=cfg.long_audio, max_audio_seconds=cfg.max_audio_seconds, **kwargs)

    # ----------------------------------------------------------------- tokens
    def token_id(self, token: str) -> int | None:
        """The tokenizer's id of ``token``; None when it does not know it."""
        tid = self.tokenizer.convert_tokens_to_ids(token)
        return tid if isinstance(tid, int) and tid != self.tokenizer.unk_token_id else None

    def fallback_pad_id(self) -> int:
        """The pad id of a tokenizer without one."""
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return self.fallback_pad_id() if pid is None else pid

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def core(self) -> nn.Module:
        """The family's model under a possible peft wrapper (LoRA layers stay in it)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def save_pretrained(self, directory: str) -> None:
        """Weights (or the peft adapter), config, tokenizer and feature extractor, loadable
        again with ``model.name_or_path: <directory>`` (and ``model.lora`` for an adapter)."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)

    # ---------------------------------------------------------------- prompts
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_pad(seqs, self.pad_token_id)

    def text_prompt_ids(self, question: str) -> list[int]:
        """The chat-formatted text prompt of ``question``, assistant turn open."""
        raise NotImplementedError

    def text_prompts(self, examples: list) -> PromptBatch:
        ids, mask = self._left_pad([self.text_prompt_ids(ex.question_text) for ex in examples])
        return PromptBatch(ids, mask, "text", {}, list(range(len(examples))))

    def prepare_audio(self, examples: list) -> tuple[list[np.ndarray], list[int]]:
        """Apply the long-audio policy; returns the kept audio arrays and their example indices."""
        arrays, keep = policy_audio(examples, self.max_audio_seconds, self.long_audio)
        self.skipped_long_audio += len(examples) - len(keep)
        return arrays, keep
