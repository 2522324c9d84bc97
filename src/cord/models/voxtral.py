"""Model family ``voxtral``: Mistral's Voxtral (``VoxtralForConditionalGeneration``, e.g.
``mistralai/Voxtral-Mini-3B-2507``, ``mistralai/Voxtral-Small-24B-2507``): a Whisper-large
encoder (128 mel bins, 30 s window), a 2-layer projector over groups of 4 encoder frames, a
Llama-layout Mistral decoder.

What differs from the Qwen families (whose adapter this one extends for batching, completion
hidden states, ``generate`` and cached decoding):

- **Prompts** (mistral-common's ``InstructTokenizerV7`` layout, built here as token ids):
  ``<s>[INST][BEGIN_AUDIO][AUDIO]×N{instruction}[/INST]`` for the audio prompt and
  ``<s>[INST]{question}\\n{instruction}[/INST]`` for the text prompt; the assistant turn ends
  with ``</s>``. Special tokens are looked up by their strings, so the adapter works with
  both tokenizers transformers gives a checkpoint: ``MistralCommonBackend`` (when
  mistral-common is installed) and the ``TokenizersBackend`` that transformers converts from
  ``tekken.json`` without it. mistral-common is therefore not a dependency of cord.
- **No system prompt**: mistral-common refuses a system message beside audio ("System messages
  are not yet allowed when audio is present"), and the text prompt must match the audio one,
  so ``model.system_prompt`` must stay unset or empty.
- **Audio in 30 s chunks**: each clip is zero-padded to a multiple of 30 s (480,000 samples),
  its log-mel (3,000 frames per chunk) is cut into chunks, and each chunk gives
  1,500 encoder frames / 4 = **375** ``[AUDIO]`` tokens, whatever the speech length inside it
  (mistral-common's ``AudioEncoder``: ``ceil(frames / (1280 / 160))``). The encoder has no
  attention mask: padding is silence the model was trained to hear. A prompt batch keeps
  ``input_features`` as (B, chunks, 128, 3000) with ``audio_chunk_mask`` (B, chunks), so rows
  select and repeat as whole examples; the adapter flattens the valid chunks, in row order,
  for the model (whose ``masked_scatter`` fills placeholders in that order). Features are
  extracted one clip at a time, as the processor does, so they never depend on the batch.
- **Long audio**: longer clips are more chunks (375 tokens per 30 s; the checkpoints were
  trained on up to 30-40 minutes); ``model.max_audio_seconds`` with ``model.long_audio`` is
  the cost bound.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cord import CordError
from cord.data.audio import SAMPLE_RATE
from cord.data.paired import PairedExample
from cord.models.qwen import QwenAudioAdapter
from cord.types import PromptBatch

#: tekken's special tokens by rank (mistral-common ``Tekkenizer.DEPRECATED_SPECIAL_TOKENS``,
#: then the audio tokens at Voxtral's ids 24 and 25)
TEKKEN_SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
    "<SPECIAL_20>", "<SPECIAL_21>", "<SPECIAL_22>", "<SPECIAL_23>", "[AUDIO]", "[BEGIN_AUDIO]",
]


def voxtral_chunks(n_samples: int, chunk_samples: int = 30 * SAMPLE_RATE) -> int:
    """30 s chunks for a clip of ``n_samples`` (it is zero-padded to a whole number of them)."""
    return max(1, math.ceil(n_samples / chunk_samples))


class VoxtralAdapter(QwenAudioAdapter):
    family = "voxtral"
    default_system_prompt = ""
    # module_map and lora_scope: the Qwen adapter's (same module paths: model.audio_tower,
    # model.multi_modal_projector, model.language_model, lm_head)

    def __init__(self, model, tokenizer, feature_extractor, **kwargs) -> None:
        super().__init__(model, tokenizer, feature_extractor, **kwargs)
        if self.system_prompt:
            raise CordError(
                "model.system_prompt is not supported by voxtral: its tokenizer (mistral-common) refuses a system "
                "message beside audio, and the text prompt must match the audio prompt; leave it unset"
            )
        ids = {tok: self._special(tok) for tok in ("<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[BEGIN_AUDIO]")}
        self.bos_id, self.eos_id, self._pad_id = ids["<s>"], ids["</s>"], ids["<pad>"]
        self.inst_id, self.end_inst_id, self.begin_audio_id = ids["[INST]"], ids["[/INST]"], ids["[BEGIN_AUDIO]"]
        self.audio_token_id = int(model.config.audio_token_id)
        self.audio_token = tokenizer.convert_ids_to_tokens(self.audio_token_id)
        audio_cfg = model.config.audio_config
        # 2 conv strides (conv2 stride 2): mel frames per chunk = 2 x encoder positions
        self.chunk_frames = 2 * int(audio_cfg.max_source_positions)
        self.chunk_samples = self.chunk_frames * int(feature_extractor.hop_length)
        # encoder frames are regrouped by intermediate_size / hidden_size (4) before the projector
        self.tokens_per_chunk = int(audio_cfg.max_source_positions) * int(audio_cfg.hidden_size) // int(
            audio_cfg.intermediate_size
        )

    def _special(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid < 0 or (token != "<unk>" and tid == self.tokenizer.unk_token_id):
            raise CordError(f"voxtral tokenizer has no {token} token: not a Voxtral (tekken) tokenizer")
        return tid

    # ----------------------------------------------------------------- tokens
    @property
    def eos_token_ids(self) -> list[int]:
        ids = {self.eos_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
        return sorted(ids)

    @property
    def end_of_turn_token_id(self) -> int:
        return self.eos_id

    @property
    def pad_token_id(self) -> int:
        return self._pad_id

    @property
    def placeholder_token_ids(self) -> list[int]:
        """``[AUDIO]`` and ``[BEGIN_AUDIO]`` (and the image tokens): never sampled or targets."""
        ids = [self.audio_token_id, self.begin_audio_id]
        for tok in ("[IMG]", "[IMG_BREAK]", "[IMG_END]"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                ids.append(tid)
        return sorted(set(ids))

    # ---------------------------------------------------------------- prompts
    def _turn(self, content: list[int]) -> list[int]:
        return [self.bos_id, self.inst_id, *content, self.end_inst_id]

    def text_prompts(self, examples: list[PairedExample]) -> PromptBatch:
        seqs = [self._turn(self._encode(self.text_user_content(ex.question_text))) for ex in examples]
        ids, mask = self._left_pad(seqs)
        return PromptBatch(ids, mask, "text", {}, list(range(len(examples))))

    def audio_features(self, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """(B, chunks, mel, 3000) log-mel features and the (B, chunks) mask of real chunks: each
        clip zero-padded to whole 30 s chunks and featurized alone (VoxtralProcessor's
        ``_retrieve_input_features``)."""
        per_clip = []
        for a in arrays:
            k = voxtral_chunks(len(a), self.chunk_samples)
            padded = np.zeros(k * self.chunk_samples, dtype=np.float32)
            padded[: len(a)] = a
            f = self.feature_extractor(padded, sampling_rate=SAMPLE_RATE, padding="longest", truncation=False,
                                       return_tensors="pt")
            feats = f["input_features"][0]  # (mel, k * chunk_frames)
            per_clip.append(feats.reshape(feats.shape[0], k, self.chunk_frames).transpose(0, 1))
        most = max(f.shape[0] for f in per_clip)
        x = torch.zeros((len(per_clip), most, *per_clip[0].shape[1:]), dtype=torch.float32)
        m = torch.zeros((len(per_clip), most), dtype=torch.long)
        for i, f in enumerate(per_clip):
            x[i, : f.shape[0]] = f
            m[i, : f.shape[0]] = 1
        return {"input_features": x.to(self.model.dtype), "audio_chunk_mask": m}

    def audio_prompts(self, examples: list[PairedExample]) -> PromptBatch:
        arrays, keep = self.prepare_audio(examples)
        if not arrays:
            return PromptBatch(
                torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 1), dtype=torch.long), "audio", {}, []
            )
        extra = self.audio_features(arrays)
        text = self._encode(self.instruction) if self.instruction else []
        seqs = []
        for k in extra["audio_chunk_mask"].sum(-1).tolist():
            audio = [self.begin_audio_id] + [self.audio_token_id] * (self.tokens_per_chunk * int(k))
            seqs.append(self._turn(audio + text))
        ids, mask = self._left_pad(seqs)
        return PromptBatch(ids, mask, "audio", extra, keep)

    # ------------------------------------------------------------ model inputs
    @staticmethod
    def model_inputs(extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's ``input_features`` (total chunks, mel, 3000): the valid chunks in row order."""
        if "input_features" not in extra:
            return {}
        feats, mask = extra["input_features"], extra["audio_chunk_mask"].to(torch.bool)
        return {"input_features": feats[mask.to(feats.device)]}

    def _flat(self, prompts: PromptBatch) -> PromptBatch:
        return PromptBatch(prompts.input_ids, prompts.attention_mask, prompts.modality,
                           self.model_inputs(prompts.extra), list(prompts.keep))

    def _decoder_hidden(self, input_ids, attention_mask, extra):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self._generation_model().model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **self.model_inputs(extra),
        )
        return out.last_hidden_state

    def generate(self, prompts: PromptBatch, **kwargs: Any) -> torch.Tensor:
        return super().generate(self._flat(prompts), **kwargs)

    def prefill(self, prompts: PromptBatch):
        return super().prefill(self._flat(prompts))


def build_tiny_voxtral(seed: int = 0, device: str | torch.device = "cpu"):
    """(model, tokenizer, feature_extractor) for a toy VoxtralForConditionalGeneration: the real
    audio geometry (128 mel bins, 1,500 encoder positions per 30 s chunk, frames regrouped by 4,
    so 375 tokens per chunk) at width 32, a 2-layer Llama decoder, and a tekken tokenizer
    (256 byte tokens after the special tokens) read by transformers' own tekken.json converter,
    as a checkpoint is without mistral-common."""
    from transformers import (
        VoxtralConfig,
        VoxtralForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    from cord.models.base import tokenizer_vocab_size

    tokenizer = build_tekken_tokenizer()
    config = VoxtralConfig(
        audio_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                          num_mel_bins=128, max_source_positions=1500),
        text_config=dict(vocab_size=tokenizer_vocab_size(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=11),
        audio_token_id=tokenizer.convert_tokens_to_ids("[AUDIO]"),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = VoxtralForConditionalGeneration(config).eval()
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = 2, 11, 1
    return model, tokenizer, WhisperFeatureExtractor(feature_size=128)


def write_tekken_json(path: str, n_special: int = 32) -> None:
    """A tekken.json (format of the Voxtral releases: ``config``, ``vocab``, ``special_tokens``)
    with 256 single-byte tokens and ``n_special`` special tokens (``<SPECIAL_i>`` fillers)."""
    import base64
    import json

    specials = TEKKEN_SPECIAL_TOKENS + [f"<SPECIAL_{i}>" for i in range(len(TEKKEN_SPECIAL_TOKENS), n_special)]
    tekken = {
        "config": {
            # a tiktoken-style split pattern (with single-byte tokens the ids do not depend on it)
            "pattern": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                       r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
                       r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            "num_vocab_tokens": 256,
            "default_vocab_size": 256 + n_special,
            "default_num_special_tokens": n_special,
            "version": "v7",
        },
        "vocab": [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None}
                  for i in range(256)],
        "special_tokens": [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(specials)],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tekken, f)


def build_tekken_tokenizer():
    """The tiny tekken tokenizer, through transformers' tekken.json conversion."""
    import os
    import tempfile

    from transformers import TokenizersBackend

    with tempfile.TemporaryDirectory() as d:
        write_tekken_json(os.path.join(d, "tekken.json"))
        tok = TokenizersBackend.from_pretrained(d, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                                unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def _register() -> None:
    from cord.models.registry import hf_family_loader, register_family

    register_family("voxtral", hf_family_loader(VoxtralAdapter, "VoxtralForConditionalGeneration", build_tiny_voxtral))


_register()
