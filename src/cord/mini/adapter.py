"""The miniature's adapter: the adapter contract (cord.models.base) for :class:`MiniLALM`
(:mod:`cord.mini.model`), on :class:`cord.models.adapter.AdapterBase` — the two prompt tasks,
the log-mel features (cached per clip), the decoder calls and the saved format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cord import CordError
from cord.data.audio import SAMPLE_RATE
from cord.mini.model import (
    AUDIO,
    CONFIG_NAME,
    REPEAT,
    SEP,
    TASKS,
    WEIGHTS_NAME,
    MiniLALM,
)
from cord.models.adapter import AdapterBase
from cord.types import PromptBatch


class MiniAdapter(AdapterBase):
    """The adapter contract (cord.models.base) for the miniature, on
    :class:`cord.models.adapter.AdapterBase` (the loader's fields, pad id, device, peft unwrap
    (:meth:`core`: the :class:`MiniLALM`, its language model holding any LoRA layers), encoding,
    left padding, the long-audio policy). What is its own: the two prompt tasks, the log-mel
    features (cached per clip), the decoder calls and the saved format.

    The model has no system prompt or instruction: it is trained from scratch on the fixed
    prompts described in the module docstring (``model.system_prompt`` and
    ``model.instruction`` are not used).
    """

    family = "mini"
    module_map = {
        "audio_encoder": ("audio_encoder",),
        "projector": ("projector",),
        "language_model": ("language_model",),
        "lm_head": ("language_model.lm_head",),
    }
    lora_scope = ("language_model.model",)

    def __init__(self, model: MiniLALM, tokenizer: Any, feature_extractor: Any = None, *,
                 feature_cache_size: int = 50_000, **kwargs: Any) -> None:
        if feature_extractor is None:
            from transformers import WhisperFeatureExtractor

            # Whisper's own log-mel recipe (80 bins, 25 ms window, log10, clamp to max − 8,
            # scaled) from a maintained class instead of a hand-written STFT (a 20 ms hop was
            # tried to halve the first conv's cost: the encoder then learned far more slowly).
            # It runs on one clip at a time (no padding), so a clip's features never depend on
            # its batch; audio_prompts pads afterwards and masks the padding.
            feature_extractor = WhisperFeatureExtractor(
                feature_size=model.config.n_mels, hop_length=model.config.hop_length
            )
        super().__init__(model, tokenizer, feature_extractor, **kwargs)
        # no prompt text to put them in; without an instruction, cord eval refuses an item
        # whose question is about its clip (cord.eval.runner) instead of dropping the question
        del self.system_prompt, self.instruction
        self.sep_token_id = tokenizer.convert_tokens_to_ids(SEP)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO)
        self.repeat_token_id = tokenizer.convert_tokens_to_ids(REPEAT)
        self._features: dict[bytes, torch.Tensor] = {}
        self._cache_size = feature_cache_size

    # ----------------------------------------------------------------- tokens
    @property
    def eos_token_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id]

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Never sampled: a sampled <audio> would be taken for an audio slot."""
        return [self.audio_token_id]

    def lm_head(self) -> nn.Linear:
        return self.core().get_output_embeddings()

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` (no special tokens added)."""
        return self._encode(text)

    # ---------------------------------------------------------------- prompts
    def _task_suffix(self, task: str) -> list[int]:
        """The prompt's last tokens for ``task`` (one of :data:`TASKS`)."""
        if task == "solve":
            return [self.sep_token_id]
        if task == "repeat":
            return [self.repeat_token_id, self.sep_token_id]
        raise CordError(f"unknown mini prompt task {task!r} (one of {', '.join(TASKS)})")

    def text_prompt_ids(self, question: str, task: str = "solve") -> list[int]:
        return self._encode(question) + self._task_suffix(task)

    def text_prompts(self, examples: list, task: str = "solve") -> PromptBatch:
        """Text prompts; ``task``: "solve" (the trainer's and ``cord eval``'s) or "repeat"."""
        ids, mask = self._left_pad([self.text_prompt_ids(ex.question_text, task) for ex in examples])
        return PromptBatch(ids, mask, "text", {}, list(range(len(examples))))

    def clip_features(self, audio: np.ndarray) -> torch.Tensor:
        """(mel, frames) log-mel of one 16 kHz clip; cached by content (Stage B and the trainer
        see the same clips every epoch)."""
        key = hashlib.blake2b(np.ascontiguousarray(audio).view(np.uint8), digest_size=16).digest()
        hit = self._features.get(key)
        if hit is not None:
            return hit
        feats = self.feature_extractor(
            audio, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt", device="cpu"
        )["input_features"][0]
        if len(self._features) >= self._cache_size:
            self._features.pop(next(iter(self._features)))
        self._features[key] = feats
        return feats

    def audio_prompts(self, examples: list, task: str = "solve", augment=None) -> PromptBatch:
        """Audio prompts; ``task``: "solve" (the trainer's and ``cord eval``'s) or "repeat";
        ``augment(features, mask)``: applied to the padded features before anything reads them
        (Stage B's SpecAugment; with ``words`` tokens the count of audio tokens depends on it)."""
        suffix = self._task_suffix(task)
        arrays, keep = self.prepare_audio(examples)
        if not arrays:
            empty = torch.zeros((0, 1), dtype=torch.long)
            return PromptBatch(empty, empty.clone(), "audio", {}, [])
        feats = [self.clip_features(a) for a in arrays]
        n_frames = max(f.shape[1] for f in feats)
        features = torch.zeros(len(feats), feats[0].shape[0], n_frames)
        fmask = torch.zeros(len(feats), n_frames, dtype=torch.long)
        for i, f in enumerate(feats):
            features[i, :, : f.shape[1]] = f
            fmask[i, : f.shape[1]] = 1
        if augment is not None:
            features = augment(features, fmask)
        counts = self.core().audio_token_counts(features, fmask)
        ids, mask = self._left_pad([[self.audio_token_id] * n + suffix for n in counts])
        extra = {"input_features": features.to(self.core().dtype), "feature_attention_mask": fmask}
        return PromptBatch(ids, mask, "audio", extra, keep)

    # ----------------------------------------------------------------- hidden
    def decoder_hidden(self, input_ids, attention_mask, extra, inputs_embeds=None, n_prompt=None) -> torch.Tensor:
        """(B, L, H) last-layer hidden states of the decoder for a left-padded batch
        (``inputs_embeds``: precomputed :meth:`MiniLALM.embed` output; ``n_prompt``: prompt
        columns, the only ones that hold audio placeholders)."""
        if inputs_embeds is None:
            inputs_embeds = self.core().embed(input_ids, extra, n_prompt=n_prompt)
        embeds = inputs_embeds
        # positions count only attended tokens, so left padding does not shift them
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self._language_model().model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def _language_model(self):
        # through the (possibly peft-wrapped) model, so LoRA layers are used when present
        return self.model.language_model

    def completion_hidden(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, H) hidden states predicting each completion token (see cord.models.base)."""
        ids, attn, extra = self.joined(prompts, completion_ids, completion_mask)
        hidden = self.decoder_hidden(ids, attn, extra, n_prompt=prompts.input_ids.shape[1])
        return self.completion_slice(hidden, prompts, completion_ids.shape[1])

    def joined(self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor):
        """(ids, attention_mask, extra) of ``prompt ⊕ completion`` on the model's device."""
        device = self.device
        prompts = prompts.to(device)
        completion_ids = completion_ids.to(device)
        completion_mask = completion_mask.to(device).bool()
        ids = torch.cat([prompts.input_ids, completion_ids.masked_fill(~completion_mask, self.pad_token_id)], dim=1)
        attn = torch.cat([prompts.attention_mask, completion_mask.long()], dim=1)
        return ids, attn, prompts.extra

    @staticmethod
    def completion_slice(hidden: torch.Tensor, prompts: PromptBatch, n_completion: int) -> torch.Tensor:
        # position width-1+t (the <sep>, then completion tokens) predicts completion token t
        width = prompts.input_ids.shape[1]
        return hidden[:, width - 1 : width - 1 + n_completion]

    # --------------------------------------------------------------- generate
    def generate(self, prompts: PromptBatch, **kwargs: Any) -> torch.Tensor:
        """Qwen2 ``generate`` with a KV cache from the merged input embeddings; returns only the
        new tokens (B, T_new). Positions come from the attention mask (left padding safe)."""
        from cord.rollout.sampling import clean_generation_defaults

        prompts = prompts.to(self.device)
        embeds = self.core().embed(prompts.input_ids, prompts.extra)
        lm = self._language_model()
        with clean_generation_defaults(lm.get_base_model() if hasattr(lm, "get_base_model") else lm):
            out = lm.generate(
                input_ids=prompts.input_ids, inputs_embeds=embeds, attention_mask=prompts.attention_mask, **kwargs
            )
        sequences = out.sequences if hasattr(out, "sequences") else out
        return sequences[:, prompts.input_ids.shape[1] :]

    def prefill(self, prompts: PromptBatch):
        """Encode each clip and prefill the decoder once (cord.rollout.decode): the last prompt
        position's hidden state (B, H) and the DecodeState; no logits."""
        from cord.rollout.decode import (
            DecodeState,
            cache_kwargs,
            new_cache,
            next_positions,
        )

        prompts = prompts.to(self.device)
        embeds = self.core().embed(prompts.input_ids, prompts.extra)
        position_ids = (prompts.attention_mask.cumsum(-1) - 1).clamp(min=0)
        decoder = self._language_model().model
        cache = new_cache(self.core().language_model.config)
        out = decoder(inputs_embeds=embeds, attention_mask=prompts.attention_mask, position_ids=position_ids,
                      **cache_kwargs(decoder, cache))
        state = DecodeState(cache, prompts.attention_mask.long(), next_positions(position_ids, prompts.attention_mask))
        return out.last_hidden_state[:, -1], state

    def decode(self, state, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row (R,) against the cache; the new hidden states (R, H)."""
        from cord.rollout.decode import cache_kwargs

        decoder = self._language_model().model
        position_ids = state.position[:, None]
        state.advance()
        out = decoder(input_ids=tokens[:, None], attention_mask=state.attention_mask, position_ids=position_ids,
                      **cache_kwargs(decoder, state.cache))
        return out.last_hidden_state[:, -1]

    # ------------------------------------------------------------------- save
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write weights (safetensors), ``mini_config.json`` and the tokenizer to ``directory``
        (via a temporary sibling, renamed into place). Load back with family ``mini`` and
        ``name_or_path: <directory>``.

        A LoRA-wrapped model (a peft model, or cord.models.export's base-and-adapter stand-in)
        is written as cord.models.export describes: the base weights (LoRA tensors dropped,
        every part trained in full as trained) plus the unmerged adapter, which
        ``load_adapter`` applies again on load."""
        import shutil

        from safetensors.torch import save_file

        from cord.models.export import ADAPTER_CONFIG, base_state_dict, is_peft_model

        peft = getattr(self.model, "peft_model", None)  # export's _BaseAndAdapter
        if peft is None and is_peft_model(self.model):
            peft = self.model
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        core = peft.get_base_model() if peft is not None else self.core()
        state = base_state_dict(peft) if peft is not None else core.state_dict()
        if core.config.tie_embeddings:  # one matrix: stored once, as the input embeddings
            state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps({"family": "mini", "model": asdict(core.config)}, indent=2))
        self.tokenizer.save_pretrained(str(tmp))
        if peft is not None:
            peft.save_pretrained(str(tmp), save_embedding_layers=False)
            cfg_path = tmp / ADAPTER_CONFIG  # the base is this folder, not a hub model
            data = json.loads(cfg_path.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = None
            cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
        return directory
