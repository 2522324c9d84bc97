"""Adapters for the Qwen audio families on transformers 5.x:
``Qwen2AudioForConditionalGeneration`` and ``Qwen2_5OmniThinkerForConditionalGeneration``.

Both put a Whisper-style encoder (128 mel bins, 100 frames/s, 30 s window) in front of a
Qwen2 decoder and mark the audio in the prompt with ``<|audio_bos|><|AUDIO|><|audio_eos|>``,
where ``<|AUDIO|>`` is expanded to one token per encoder output frame (25 per second).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cord.data.audio import SAMPLE_RATE
from cord.data.paired import PairedExample
from cord.models.adapter import AdapterBase
from cord.types import PromptBatch

AUDIO_ITEM = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def whisper_audio_token_count(n_frames: int) -> int:
    """Encoder output length for ``n_frames`` valid mel frames (conv stride 2, then pool 2)."""
    return (((n_frames - 1) // 2 + 1) - 2) // 2 + 1


class QwenAudioAdapter(AdapterBase):
    """Shared logic: prompts, left-padded batching, completion hidden states, generation."""

    family = "qwen-audio"
    audio_item = AUDIO_ITEM
    module_map = {
        "audio_encoder": ("model.audio_tower",),
        "projector": ("model.multi_modal_projector",),
        "language_model": ("model.language_model",),
        "lm_head": ("lm_head",),
    }
    lora_scope = ("model.language_model",)

    def __init__(self, model: nn.Module, tokenizer: Any, feature_extractor: Any, *, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model, tokenizer, feature_extractor, **kwargs)
        self.chat_template = chat_template
        self.audio_token = "<|AUDIO|>"
        self.audio_token_id = tokenizer.convert_tokens_to_ids(self.audio_token)

    # ----------------------------------------------------------------- tokens
    @property
    def eos_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(gen_eos)
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid is not None:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)

    @property
    def end_of_turn_token_id(self) -> int:
        """``<|im_end|>``: what the chat template ends an assistant turn with (SFT targets end
        with it; ``<|endoftext|>`` is the pretraining document separator)."""
        return self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Modality placeholder tokens: never sampled, never targets (a sampled ``<|AUDIO|>``
        would be taken for an audio slot by the model's merge step)."""
        ids = []
        for tok in ("<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.append(tid)
        return ids

    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    # ---------------------------------------------------------------- prompts
    def render(self, user_content: str) -> str:
        """The chat-formatted prompt text with the generation prompt (assistant turn) open."""
        parts = []
        if self.system_prompt:
            parts.append(f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n")
        parts.append(f"<|im_start|>user\n{user_content}<|im_end|>\n<|im_start|>assistant\n")
        return "".join(parts)

    def audio_user_content(self) -> str:
        # as the checkpoint's chat template lays out [audio, text]: "Audio 1: <item>\n", then
        # the text; without an instruction the newline stays before <|im_end|> (the template
        # writes it after every audio item: VoiceBench's official prompt, the audio alone)
        return f"Audio 1: {self.audio_item}\n" + self.instruction.rstrip()

    def text_user_content(self, question: str) -> str:
        # without an instruction the question as it is (the template adds nothing to it)
        return f"{question}\n{self.instruction}".rstrip() if self.instruction else question

    def text_prompt_ids(self, question: str) -> list[int]:
        return self._encode(self.render(self.text_user_content(question)))

    def audio_features(self, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        feats = self.feature_extractor(
            arrays,
            sampling_rate=SAMPLE_RATE,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        return {
            "input_features": feats["input_features"].to(self.model.dtype),
            "feature_attention_mask": feats["attention_mask"].long(),
        }

    def audio_token_count(self, n_frames: int) -> int:
        """Placeholder tokens (= encoder output frames) for ``n_frames`` valid mel frames."""
        return whisper_audio_token_count(n_frames)

    def audio_prompts(self, examples: list[PairedExample]) -> PromptBatch:
        arrays, keep = self.prepare_audio(examples)
        if not arrays:
            return PromptBatch(
                torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 1), dtype=torch.long), "audio", {}, []
            )
        extra = self.audio_features(arrays)
        n_frames = extra["feature_attention_mask"].sum(-1).tolist()
        template = self._encode(self.render(self.audio_user_content()))
        seqs = []
        for n in n_frames:
            count = self.audio_token_count(int(n))
            seq: list[int] = []
            for tid in template:
                seq.extend([tid] * count if tid == self.audio_token_id else [tid])
            seqs.append(seq)
        ids, mask = self._left_pad(seqs)
        return PromptBatch(ids, mask, "audio", extra, keep, audio=list(arrays))

    # ----------------------------------------------------------------- hidden
    def _decoder_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, extra: dict) -> torch.Tensor:
        raise NotImplementedError

    def completion_hidden(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, H) hidden states predicting each completion token (see models.base)."""
        device = self.device
        prompts = prompts.to(device)
        completion_ids = completion_ids.to(device)
        completion_mask = completion_mask.to(device).bool()
        width = prompts.input_ids.shape[1]
        ids = torch.cat([prompts.input_ids, completion_ids.masked_fill(~completion_mask, self.pad_token_id)], dim=1)
        attn = torch.cat([prompts.attention_mask, completion_mask.long()], dim=1)
        if prompts.group > 1 and "input_features" in prompts.extra and self._grouped_families():
            hidden = self._grouped_decoder_hidden(prompts, ids, attn)
        else:
            hidden = self._decoder_hidden(ids, attn, prompts.extra)
        # position width-1+t (last prompt token, then completion tokens) predicts completion token t
        return hidden[:, width - 1 : width - 1 + completion_ids.shape[1]]

    # ------------------------------------------------- a group's audio encoded once
    def _grouped_families(self) -> bool:
        """Whether this family merges audio through :meth:`_audio_embeds` (Qwen2-Audio and the
        Omni thinkers; Voxtral, whose audio rows are chunks, keeps the plain path)."""
        return type(self)._audio_embeds is not QwenAudioAdapter._audio_embeds

    def _audio_embeds(self, core: nn.Module, extra: dict) -> torch.Tensor:
        """(valid audio frames of all rows, H): the encoder + projector output the model's own
        merge scatters into the ``<|AUDIO|>`` slots, rows in order."""
        raise NotImplementedError

    def _embeds_hidden(self, core, input_ids, attention_mask, extra, inputs_embeds) -> torch.Tensor:
        raise NotImplementedError

    def _grouped_decoder_hidden(self, prompts: PromptBatch, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The decoder on every row, with each distinct audio encoded once: rows
        b·g .. b·g+g-1 (g = ``prompts.group``) share row b·g's audio, so the encoder and
        projector run on rows 0, g, 2g, ... and their output is repeated into the merged
        ``inputs_embeds`` exactly where the model's own merge would put it."""
        from cord import CordError

        g = prompts.group
        if len(prompts) % g:
            raise CordError(f"a batch of {len(prompts)} prompts is not made of groups of {g}")
        core = self._generation_model().model
        unique = {k: v[::g] for k, v in prompts.extra.items()}
        feats = self._audio_embeds(core, unique)
        slots = prompts.input_ids == self.audio_token_id  # the prompt's placeholders only
        counts = slots[::g].sum(-1).tolist()
        if sum(counts) != feats.shape[0]:
            raise CordError(f"audio features and <|AUDIO|> slots do not match: {feats.shape[0]} vs {sum(counts)}")
        feats = torch.cat([part for part in feats.split(counts) for _ in range(g)])
        embeds = core.get_input_embeddings()(ids)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, : slots.shape[1]] = slots
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.device, embeds.dtype))
        return self._embeds_hidden(core, ids, attn, prompts.extra, embeds)

    # --------------------------------------------------------------- generate
    def _generation_model(self) -> nn.Module:
        """The transformers model under a possible peft wrapper (LoRA layers stay in it)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def generate(self, prompts: PromptBatch, **kwargs: Any) -> torch.Tensor:
        """transformers ``generate``; returns only the new tokens. The checkpoint's
        ``generation_config`` is set aside during the call: every sampling setting comes from
        the caller (see cord.rollout.sampling)."""
        from cord.rollout.sampling import clean_generation_defaults

        prompts = prompts.to(self.device)
        with clean_generation_defaults(self._generation_model()):
            out = self.model.generate(
                input_ids=prompts.input_ids,
                attention_mask=prompts.attention_mask,
                **prompts.extra,
                **kwargs,
            )
        sequences = out.sequences if hasattr(out, "sequences") else out
        return sequences[:, prompts.input_ids.shape[1] :]

    # ------------------------------------------------- cached decoding (cord.rollout.decode)
    def _prompt_position_ids(self, core: nn.Module, prompts: PromptBatch) -> torch.Tensor:
        """Position ids of the prompt as the training forward uses them: counted over attended
        tokens, so left padding does not shift them."""
        return (prompts.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def _decode_position_ids(self, position: torch.Tensor) -> torch.Tensor:
        return position[:, None]

    def prefill(self, prompts: PromptBatch):
        """Encode each prompt's audio and prefill the decoder once: (hidden (B, H) of the last
        prompt position, DecodeState). No logits are formed here."""
        from cord.rollout.decode import (
            DecodeState,
            cache_kwargs,
            new_cache,
            next_positions,
        )

        prompts = prompts.to(self.device)
        core = self._generation_model().model
        position_ids = self._prompt_position_ids(core, prompts)
        cache = new_cache(self.model.config.get_text_config())
        out = core(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            position_ids=position_ids,
            **cache_kwargs(core, cache),
            **prompts.extra,
        )
        state = DecodeState(cache, prompts.attention_mask.long(), next_positions(position_ids, prompts.attention_mask))
        return out.last_hidden_state[:, -1], state

    def decode(self, state, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (R,) against the cache; returns the new hidden states (R, H)."""
        from cord.rollout.decode import cache_kwargs

        core = self._generation_model().model
        position_ids = self._decode_position_ids(state.position)
        state.advance()
        out = core(
            input_ids=tokens[:, None],
            attention_mask=state.attention_mask,
            position_ids=position_ids,
            **cache_kwargs(core, state.cache),
        )
        return out.last_hidden_state[:, -1]


class Qwen2AudioAdapter(QwenAudioAdapter):
    family = "qwen2-audio"

    def _decoder_hidden(self, input_ids, attention_mask, extra):
        # Positions count only attended tokens, so left padding does not shift them.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        out = base.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **extra,
        )
        return out.last_hidden_state

    def _audio_embeds(self, core, extra):
        # Qwen2AudioModel.forward's own audio path: Whisper encoder under a bidirectional mask
        # of the valid frames, the projector, then the valid frames of each row
        from transformers.masking_utils import create_bidirectional_mask

        tower = core.audio_tower
        feats = extra["input_features"].to(tower.device)
        fmask = extra["feature_attention_mask"].to(tower.device)
        feat_len, out_len = tower._get_feat_extract_output_lengths(fmask.sum(-1))
        rows, _, frames = feats.shape
        width = (frames - 2) // 2 + 1
        valid = (torch.arange(width, device=feat_len.device)[None] < feat_len[:, None]).long()
        dummy = torch.zeros((rows, width, 1), dtype=core.get_input_embeddings().weight.dtype, device=feats.device)
        mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=valid)
        out = core.multi_modal_projector(tower(feats, attention_mask=mask).last_hidden_state)
        keep = torch.arange(out.shape[1], device=out.device)[None] < out_len.to(out.device)[:, None]
        return out[keep]

    def _embeds_hidden(self, core, input_ids, attention_mask, extra, inputs_embeds):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = core(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False)
        return out.last_hidden_state


class Qwen25OmniThinkerAdapter(QwenAudioAdapter):
    family = "qwen2.5-omni"
    # the audio tower ends in its own projection (audio_tower.proj); no separate projector
    module_map = {
        "audio_encoder": ("model.audio_tower",),
        "language_model": ("model.language_model",),
        "lm_head": ("lm_head",),
    }
    default_system_prompt = (
        "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
        "auditory and visual inputs, as well as generating text and speech."
    )

    def audio_user_content(self) -> str:
        # The Omni chat template puts the audio item inline, without an "Audio 1:" label.
        return f"{self.audio_item}{self.instruction}".rstrip()

    def _prompt_position_ids(self, core, prompts):
        # the thinker's own 3-D (mrope) positions, exactly as its forward computes them for the
        # training pass (get_rope_index on ids, mask and audio lengths): (3, B, P)
        fmask = prompts.extra.get("feature_attention_mask")
        position_ids, _ = core.get_rope_index(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            use_audio_in_video=False,
            audio_seqlens=None if fmask is None else fmask.sum(-1),
        )
        return position_ids

    def _decode_position_ids(self, position):
        # text tokens after the prompt: the same position on all three rope axes
        return position[None, :, None].expand(3, -1, 1)

    def _decoder_hidden(self, input_ids, attention_mask, extra):
        # The thinker computes its own 3-D (mrope) positions from input_ids and the mask.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        out = base.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
        return out.last_hidden_state

    def _audio_embeds(self, core, extra):
        # the thinker's own get_audio_features: valid frames of all rows, flattened in order
        return core.get_audio_features(extra["input_features"], extra["feature_attention_mask"],
                                       return_dict=True).last_hidden_state

    def _embeds_hidden(self, core, input_ids, attention_mask, extra, inputs_embeds):
        # no input_features: the audio is already in inputs_embeds; input_ids and the feature
        # mask still give the thinker its 3-D (mrope) positions, as in the plain forward
        out = core(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                   feature_attention_mask=extra["feature_attention_mask"], use_cache=False)
        return out.last_hidden_state


def _register() -> None:
    from cord.models.registry import hf_family_loader, register_family
    from cord.models.qwen_tiny import build_tiny_qwen2_5_omni_thinker, build_tiny_qwen2_audio

    register_family(
        "qwen2-audio", hf_family_loader(Qwen2AudioAdapter, "Qwen2AudioForConditionalGeneration", build_tiny_qwen2_audio)
    )
    register_family(
        "qwen2.5-omni",
        hf_family_loader(
            Qwen25OmniThinkerAdapter, "Qwen2_5OmniThinkerForConditionalGeneration", build_tiny_qwen2_5_omni_thinker
        ),
    )


_register()
