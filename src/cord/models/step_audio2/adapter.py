"""The step-audio2 family: its tiny builder, the adapter (prompts, padding, hidden states,
cached decoding) and the loader registered with cord's family registry."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cord import CordError
from cord.data.audio import SAMPLE_RATE
from cord.models.adapter import AdapterBase
from cord.models.base import set_generation_ids
from cord.models.step_audio2.modeling import (
    AUDIO_END,
    AUDIO_PATCH,
    AUDIO_START,
    BOT,
    CHUNK_SAMPLES,
    EOT,
    FAMILY,
    RELEASE_MODEL_TYPE,
    StepAudio2Config,
    StepAudio2ForCausalLM,
    audio_token_count,
)
from cord.models.step_audio2.release import (
    config_from_release,
    load_release_state_dict,
    release_shape,
)
from cord.types import PromptBatch

# --------------------------------------------------------------------------- tiny model
TINY_SPECIAL_TOKENS = ["<|endoftext|>", BOT, EOT, AUDIO_START, AUDIO_END, AUDIO_PATCH, "<tts_start>", "<tts_end>"]
TINY_AUDIO_OUTPUT_TOKENS = 16


def build_tiny_tokenizer():
    """Byte-level tokenizer (256 byte tokens, no merges) then, in the release's order, the
    special tokens and a scaled-down block of audio-output tokens ``<audio_0>`` ...: text ids <
    ``<audio_start>`` < ``<audio_end>`` < ``<audio_patch>`` < ... < ``<audio_0>``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = TINY_SPECIAL_TOKENS + [f"<audio_{i}>" for i in range(TINY_AUDIO_OUTPUT_TOKENS)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token="<|endoftext|>")
    fast.padding_side = "left"
    return fast


def build_tiny_step_audio2(seed: int = 0, device: str | torch.device = "cpu"):
    """(model, tokenizer, feature_extractor): a random miniature with the release's structure
    (width 32 decoder, 2 layers; width 16 encoder, 1 layer, 1500 positions; adapter 48)."""
    from transformers import WhisperFeatureExtractor

    tokenizer = build_tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    vocab = (len(tokenizer) + 63) // 64 * 64
    config = StepAudio2Config(
        text_config=dict(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=4096, rope_theta=1_000_000.0, tie_word_embeddings=False,
            eos_token_id=ids(EOT), pad_token_id=tokenizer.pad_token_id,
        ),
        audio_config=dict(d_model=16, encoder_attention_heads=2, encoder_ffn_dim=64, encoder_layers=1,
                          num_mel_bins=128, max_source_positions=1500),
        adapter_hidden_size=48,
        audio_start_token_id=ids(AUDIO_START),
        audio_end_token_id=ids(AUDIO_END),
        audio_patch_token_id=ids(AUDIO_PATCH),
        audio_output_start_id=ids("<audio_0>"),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = StepAudio2ForCausalLM(config).eval()
    set_generation_ids(model.language_model.generation_config, tokenizer, tokenizer.convert_tokens_to_ids(EOT))
    return model, tokenizer, WhisperFeatureExtractor(feature_size=128)


# --------------------------------------------------------------------------- adapter
class StepAudio2Adapter(AdapterBase):
    """The cord adapter contract (see cord.models.base) for :class:`StepAudio2ForCausalLM`.

    Prompt (stepaudio2.py's chat format; turns are concatenated without separators, the user
    role is ``human``)::

        <|BOT|>system\\n{system}<|EOT|><|BOT|>human\\n{X}\\n{instruction}<|EOT|><|BOT|>assistant\\n

    with ``X`` = one ``<audio_start>`` + N × ``<audio_patch>`` + ``<audio_end>`` per 25 s chunk
    (audio prompt) or the question text (text prompt). Audio longer than
    ``max_audio_seconds`` follows ``long_audio`` (error / skip / truncate) first.
    """

    family = FAMILY
    module_map = {
        "audio_encoder": ("audio_tower",),
        "projector": ("projector",),
        "language_model": ("language_model.model",),
        "lm_head": ("language_model.lm_head",),
    }
    lora_scope = ("language_model.model",)

    def __init__(self, model, tokenizer, feature_extractor, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, feature_extractor, **kwargs)
        cfg = self.core().config
        self.audio_start_id = cfg.audio_start_token_id
        self.audio_end_id = cfg.audio_end_token_id
        self.audio_patch_id = cfg.audio_patch_token_id
        self.audio_output_start_id = cfg.audio_output_start_id
        self.vocab_size = cfg.text_config.vocab_size

    # ----------------------------------------------------------------- tokens
    @property
    def end_of_turn_token_id(self) -> int:
        """``<|EOT|>``: ends every turn (the reference stops generation on it)."""
        eot = self.token_id(EOT)
        if eot is None:
            raise CordError(f"the Step-Audio2 tokenizer has no {EOT} token")
        return eot

    @property
    def eos_token_ids(self) -> list[int]:
        ids = {self.end_of_turn_token_id}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def fallback_pad_id(self) -> int:
        return self.end_of_turn_token_id

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Never sampled, never targets: the audio-input markers (``<audio_start>``,
        ``<audio_end>``, ``<audio_patch>``) and every audio-output (speech) id from
        ``<audio_0>`` to the end of the vocabulary (158,720 − 151,696 = 7,024 ids in the release)."""
        eos = set(self.eos_token_ids)
        ids = [self.audio_start_id, self.audio_end_id, self.audio_patch_id]
        ids += range(self.audio_output_start_id, self.vocab_size)
        return [i for i in ids if i not in eos]

    def lm_head(self) -> nn.Linear:
        return self.core().get_output_embeddings()

    # ---------------------------------------------------------------- prompts
    def _prompt(self, content: list[int]) -> list[int]:
        # each piece tokenized on its own, as the reference does (stepaudio2.py)
        ids: list[int] = []
        if self.system_prompt:
            ids += self._encode(f"{BOT}system\n{self.system_prompt}{EOT}")
        ids += self._encode(f"{BOT}human\n")
        ids += content
        if self.instruction:
            ids += self._encode(f"\n{self.instruction}")
        ids += self._encode(EOT) + self._encode(f"{BOT}assistant\n")
        return ids

    def text_prompt_ids(self, question: str) -> list[int]:
        return self._prompt(self._encode(question))

    def chunk_features(self, audio: np.ndarray) -> list[torch.Tensor]:
        """Log-mel features of each 25 s chunk: (128, n + 2) with n = ceil(samples / 160), the
        frames the reference computes (its ``log_mel_spectrogram(chunk, padding=479)``: the chunk
        followed by zeros, STFT with a 400-point Hann window every 160 samples, Slaney mel,
        log10 floored at max − 8, (x + 4) / 4 — Whisper's recipe)."""
        chunks = [audio[i : i + CHUNK_SAMPLES] for i in range(0, max(len(audio), 1), CHUNK_SAMPLES)]
        feats = self.feature_extractor(chunks, sampling_rate=SAMPLE_RATE, return_attention_mask=True,
                                       padding="max_length", return_tensors="pt")
        lengths = feats["attention_mask"].sum(-1).tolist()
        return [feats["input_features"][i, :, : int(n) + 2] for i, n in enumerate(lengths)]

    def audio_features(self, arrays: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
        """``input_features`` (B, C, 128, F) zero-padded over chunks and frames and
        ``feature_lens`` (B, C) valid frames (0: no chunk); and each example's chunk lengths."""
        per = [self.chunk_features(a) for a in arrays]
        n_chunks = max(len(p) for p in per)
        frames = max(f.shape[-1] for p in per for f in p)
        mel = per[0][0].shape[0]
        features = torch.zeros((len(per), n_chunks, mel, frames), dtype=torch.float32)
        lens = torch.zeros((len(per), n_chunks), dtype=torch.long)
        for b, p in enumerate(per):
            for c, f in enumerate(p):
                features[b, c, :, : f.shape[-1]] = f
                lens[b, c] = f.shape[-1] - 2
        dtype = next(self.model.parameters()).dtype
        chunk_lens = [[int(x) for x in r if x] for r in lens.tolist()]
        return {"input_features": features.to(dtype), "feature_lens": lens}, chunk_lens

    def audio_prompts(self, examples: list) -> PromptBatch:
        arrays, keep = self.prepare_audio(examples)
        if not arrays:
            return PromptBatch(torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 1), dtype=torch.long),
                               "audio", {}, [])
        extra, chunk_lens = self.audio_features(arrays)
        seqs = []
        for lens in chunk_lens:
            content: list[int] = []
            for n in lens:
                content += [self.audio_start_id] + [self.audio_patch_id] * audio_token_count(n) + [self.audio_end_id]
            seqs.append(self._prompt(content))
        ids, mask = self._left_pad(seqs)
        return PromptBatch(ids, mask, "audio", extra, keep)

    # ----------------------------------------------------------------- hidden
    def _embed(self, core: StepAudio2ForCausalLM, input_ids: torch.Tensor, extra: dict) -> torch.Tensor:
        return core.embed(input_ids, extra.get("input_features"), extra.get("feature_lens"))

    def completion_hidden(self, prompts: PromptBatch, completion_ids: torch.Tensor,
                          completion_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) hidden states predicting each completion token (see cord.models.base)."""
        device = self.device
        prompts = prompts.to(device)
        completion_ids = completion_ids.to(device)
        completion_mask = completion_mask.to(device).bool()
        width = prompts.input_ids.shape[1]
        ids = torch.cat([prompts.input_ids, completion_ids.masked_fill(~completion_mask, self.pad_token_id)], dim=1)
        attn = torch.cat([prompts.attention_mask, completion_mask.long()], dim=1)
        core = self.core()
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # left padding does not shift positions
        out = core.language_model.model(inputs_embeds=self._embed(core, ids, prompts.extra), attention_mask=attn,
                                        position_ids=position_ids, use_cache=False)
        return out.last_hidden_state[:, width - 1 : width - 1 + completion_ids.shape[1]]

    # --------------------------------------------------------------- generate
    def generate(self, prompts: PromptBatch, **kwargs: Any) -> torch.Tensor:
        """transformers ``generate`` of the Qwen2 decoder on the merged embeddings (KV-cached);
        returns only the new tokens. Sampling settings come from the caller only."""
        from cord.rollout.sampling import clean_generation_defaults

        prompts = prompts.to(self.device)
        core = self.core()
        lm = core.language_model
        embeds = self._embed(core, prompts.input_ids, prompts.extra)
        with clean_generation_defaults(lm):
            out = lm.generate(inputs_embeds=embeds, attention_mask=prompts.attention_mask, **kwargs)
        return out.sequences if hasattr(out, "sequences") else out

    def prefill(self, prompts: PromptBatch):
        """Encode the audio and prefill the decoder once: (hidden (B, H) of the last prompt
        position, DecodeState); see cord.rollout.decode."""
        from cord.rollout.decode import (
            DecodeState,
            cache_kwargs,
            new_cache,
            next_positions,
        )

        prompts = prompts.to(self.device)
        core = self.core()
        decoder = core.language_model.model
        position_ids = (prompts.attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(core.config.text_config)
        out = decoder(inputs_embeds=self._embed(core, prompts.input_ids, prompts.extra),
                      attention_mask=prompts.attention_mask, position_ids=position_ids,
                      **cache_kwargs(decoder, cache))
        state = DecodeState(cache, prompts.attention_mask.long(), next_positions(position_ids, prompts.attention_mask))
        return out.last_hidden_state[:, -1], state

    def decode(self, state, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row (R,) against the cache; the new hidden states (R, H)."""
        from cord.rollout.decode import cache_kwargs

        decoder = self.core().language_model.model
        position_ids = state.position[:, None]
        state.advance()
        out = decoder(input_ids=tokens[:, None], attention_mask=state.attention_mask, position_ids=position_ids,
                      **cache_kwargs(decoder, state.cache))
        return out.last_hidden_state[:, -1]


# --------------------------------------------------------------------------- loading
def _materialize(config: StepAudio2Config, state_dict: dict, device: torch.device, dtype: torch.dtype,
                 attn_implementation: str | None):
    """The model from ``state_dict`` through transformers' loader (buffers such as the rotary
    tables are built as a checkpoint load builds them; straight onto ``device``)."""
    from cord.models.registry import from_pretrained_on

    return from_pretrained_on(StepAudio2ForCausalLM, None, config=config, state_dict=state_dict, device=device,
                              dtype=dtype, attn_implementation=attn_implementation).eval()


def _resolve(name: str) -> Path:
    """A local folder for ``name`` (a hub name is downloaded: config, weights, tokenizer)."""
    from cord.models.registry import check_model_path

    local = check_model_path(name)
    if os.path.isdir(local):
        return Path(local)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(local, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                             "*.tiktoken", "merges*", "vocab*"]))
    except Exception as e:  # noqa: BLE001 - any hub failure is one line
        raise CordError(f"cannot load model '{name}': {str(e).strip().splitlines()[0]}") from None


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))  # never trust_remote_code
    except Exception as e:  # noqa: BLE001
        raise CordError(f"cannot load the tokenizer of {path} without remote code: {str(e).strip().splitlines()[0]}") \
            from None
    tok.padding_side = "left"
    return tok


def _feature_extractor(path: Path):
    from transformers import WhisperFeatureExtractor

    if (path / "preprocessor_config.json").is_file():
        try:
            fe = WhisperFeatureExtractor.from_pretrained(str(path))
            if fe.feature_size == 128:
                return fe
        except (OSError, ValueError, TypeError):
            pass
    return WhisperFeatureExtractor(feature_size=128)


def load_model(name_or_path: str, *, device: torch.device, dtype: torch.dtype, attn_implementation: str | None = None):
    """(model, tokenizer, feature_extractor) from a release folder / hub name (config.json with
    model_type ``step_audio_2``: tensors renamed by :data:`CHECKPOINT_RULES`) or from a folder
    cord wrote (native names)."""
    from cord.models.export import base_only_kwargs

    path = _resolve(name_or_path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CordError(f"model folder {name_or_path} has no config.json")
    data = json.loads(cfg_file.read_text(encoding="utf-8"))
    kind = data.get("model_type")
    tokenizer = _tokenizer(path)
    if kind == RELEASE_MODEL_TYPE:
        config = config_from_release(data)
        # the adapter's hidden width is fixed in the reference's code (2048), not in config.json
        config.adapter_hidden_size = release_shape(path, "adapter.linear1.weight", config.adapter_hidden_size)[0]
        ids = tokenizer.convert_tokens_to_ids
        for field, token in (("audio_start_token_id", AUDIO_START), ("audio_end_token_id", AUDIO_END),
                             ("audio_patch_token_id", AUDIO_PATCH), ("audio_output_start_id", "<audio_0>")):
            tid = ids(token)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                setattr(config, field, tid)
        with torch.device("meta"):
            expected = set(StepAudio2ForCausalLM(config).state_dict())
        state = load_release_state_dict(path, expected, dtype)
        model = _materialize(config, state, device, dtype, attn_implementation)
    elif kind == StepAudio2Config.model_type:
        from cord.models.registry import from_pretrained_on

        model = from_pretrained_on(StepAudio2ForCausalLM, str(path), device=device, dtype=dtype,
                                   attn_implementation=attn_implementation, **base_only_kwargs(path)).eval()
    else:
        raise CordError(f"{name_or_path} is not a Step-Audio2 model (config.json model_type {kind!r}; expected "
                        f"{RELEASE_MODEL_TYPE!r} or {StepAudio2Config.model_type!r})")
    set_generation_ids(model.language_model.generation_config, tokenizer, tokenizer.convert_tokens_to_ids(EOT))
    return model, tokenizer, _feature_extractor(path)


def load(cfg) -> StepAudio2Adapter:
    """The family loader: ``cfg`` is a :class:`cord.config.ModelConfig`."""
    from cord.models.registry import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.name_or_path == "tiny":
        # drawn on the CPU in fp32 (same weights on every device), then loaded like a checkpoint
        model, tokenizer, fe = build_tiny_step_audio2(seed=cfg.tiny_seed,
                                                      device="meta" if device.type == "meta" else "cpu")
        model = _materialize(model.config, model.state_dict(), device, dtype, cfg.attn_implementation)
        set_generation_ids(model.language_model.generation_config, tokenizer, tokenizer.convert_tokens_to_ids(EOT))
    else:
        model, tokenizer, fe = load_model(cfg.name_or_path, device=device, dtype=dtype,
                                          attn_implementation=cfg.attn_implementation)
    return StepAudio2Adapter.from_config(model, tokenizer, fe, cfg)


def _register() -> None:
    from cord.models.registry import register_family

    register_family(FAMILY, load)


_register()
