"""Step-Audio 2 mini's network as a native cord model: constants, config, encoder, projector and
the causal LM (see :mod:`cord.models.step_audio2` for the design and its exactness)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel, Qwen2ForCausalLM
from transformers.configuration_utils import SubConfigSpec
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoderLayer

from cord import CordError
from cord.data.audio import SAMPLE_RATE

FAMILY = "step-audio2"
#: the reference cuts audio into chunks of this length (stepaudio2.py: 16000 * 25 samples)
CHUNK_SECONDS = 25.0
CHUNK_SAMPLES = int(CHUNK_SECONDS * SAMPLE_RATE)
#: the release's ids (its tokenizer resolves the names; these are the fallbacks and docs)
AUDIO_START_ID, AUDIO_END_ID, AUDIO_PATCH_ID, AUDIO_OUTPUT_START_ID = 151688, 151689, 151690, 151696
AUDIO_START, AUDIO_END, AUDIO_PATCH = "<audio_start>", "<audio_end>", "<audio_patch>"
BOT, EOT = "<|BOT|>", "<|EOT|>"
#: the release's model_type (config.json of stepfun-ai/Step-Audio-2-mini)
RELEASE_MODEL_TYPE = "step_audio_2"


# --------------------------------------------------------------------------- config
class StepAudio2Config(PreTrainedConfig):
    """cord's config for the native model (what ``save_pretrained`` writes). A release
    ``config.json`` (model_type ``step_audio_2``) is converted by :func:`config_from_release`."""

    model_type = "cord_step_audio2"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "audio_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="qwen2_audio_encoder",
            init_kwargs={
                "d_model": 1280,
                "encoder_attention_heads": 20,
                "encoder_ffn_dim": 5120,
                "encoder_layers": 32,
                "num_mel_bins": 128,
                "max_source_positions": 1500,
                "activation_function": "gelu",
            },
        ),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    adapter_hidden_size: int = 2048
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    audio_start_token_id: int = AUDIO_START_ID
    audio_end_token_id: int = AUDIO_END_ID
    audio_patch_token_id: int = AUDIO_PATCH_ID
    #: first audio-output (speech) token id: it and every id above are never text
    audio_output_start_id: int = AUDIO_OUTPUT_START_ID


def conv2_len(frames: int) -> int:
    """Encoder rows after conv2 (k 3, s 2, p 1) for ``frames`` mel frames."""
    return (frames - 1) // 2 + 1


def audio_token_count(n_frames: int) -> int:
    """``<audio_patch>`` tokens for a chunk with ``n_frames`` valid mel frames (the reference's
    ``compute_token_num(n_frames + 2)``): encoder (conv stride 2, pool 2), then the adapter
    conv (k 3, s 2, p 1)."""
    pooled = (n_frames + 1) // 2 // 2
    return (pooled - 1) // 2 + 1


# --------------------------------------------------------------------------- modules
class StepAudio2Encoder(nn.Module):
    """The Whisper-style audio encoder (reference: ``AudioEncoder``), with transformers'
    ``Qwen2AudioEncoderLayer`` as its blocks. Module names follow transformers' Qwen2-Audio
    encoder (the checkpoint's are mapped by :data:`CHECKPOINT_RULES`)."""

    def __init__(self, config) -> None:
        super().__init__()
        d = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, d)
        self.embed_positions.requires_grad_(False)  # as in the reference (requires_grad_(False))
        self.layers = nn.ModuleList([Qwen2AudioEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.avg_pooler = nn.AvgPool1d(2, stride=2)
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, ref_frames: torch.Tensor) -> torch.Tensor:
        """features (N, mel, F): chunks, zero after each chunk's ``lengths + 2`` frames;
        lengths (N,): valid mel frames; ref_frames (N,): the reference's padded length ``T`` of
        each chunk's batch (see the module docstring). Returns (N, F2 // 2, D) pooled rows,
        zero from the reference's pooled length on."""
        n, _, frames = features.shape
        rows = conv2_len(frames)
        if rows > self.embed_positions.num_embeddings:
            raise CordError(
                f"audio chunk of {frames} mel frames is longer than the encoder's "
                f"{2 * self.embed_positions.num_embeddings} (chunks are at most {CHUNK_SECONDS:g} s)"
            )
        dev = features.device
        x = nn.functional.gelu(self.conv1(features.to(self.conv1.weight.dtype)))
        # the reference's conv2 sees zero padding after its T frames, not conv1 of zero frames
        col = torch.arange(frames, device=dev)
        x = x * (col[None, :] < ref_frames[:, None]).to(x.dtype)[:, None, :]
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.embed_positions.weight[:rows].to(x.dtype)
        # keys: row j is attended iff mel frame (T + 1) % 2 + 2j is valid (the reference's mask)
        j = torch.arange(rows, device=dev)
        keys = ((ref_frames[:, None] + 1) % 2 + 2 * j[None, :]) < lengths[:, None]
        bias = torch.zeros(keys.shape, dtype=x.dtype, device=dev).masked_fill(~keys, torch.finfo(x.dtype).min)
        mask = bias[:, None, None, :].expand(n, 1, rows, rows)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.avg_pooler(x.transpose(1, 2)).transpose(1, 2)
        x = self.layer_norm(x)
        # the adapter conv of the reference sees zero padding after conv2_len(T) // 2 rows
        pooled = torch.div(torch.div(ref_frames - 1, 2, rounding_mode="floor") + 1, 2, rounding_mode="floor")
        keep = torch.arange(x.shape[1], device=dev)[None, :] < pooled[:, None]
        return x * keep.to(x.dtype)[:, :, None]


class StepAudio2Projector(nn.Module):
    """The adapter (reference: ``Adaptor``): Conv1d(k 3, s 2, p 1) → GELU → Linear → ReLU → Linear."""

    def __init__(self, config: StepAudio2Config) -> None:
        super().__init__()
        d = config.audio_config.d_model
        self.conv = nn.Conv1d(d, d, config.adapter_kernel_size, config.adapter_stride, padding=1)
        self.linear1 = nn.Linear(d, config.adapter_hidden_size)
        self.act = nn.ReLU()
        self.linear2 = nn.Linear(config.adapter_hidden_size, config.text_config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear2(self.act(self.linear1(x)))


class StepAudio2ForCausalLM(PreTrainedModel):
    """Audio encoder + adapter + ``Qwen2ForCausalLM``. ``embed`` merges the adapter outputs into
    the ``<audio_patch>`` positions; everything after that is the transformers decoder."""

    config: StepAudio2Config
    config_class = StepAudio2Config
    base_model_prefix = ""
    input_modalities = ("audio", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "Qwen2AudioEncoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True

    def __init__(self, config: StepAudio2Config) -> None:
        super().__init__(config)
        # the encoder's key mask is a 4-D bias: eager or sdpa (flash attention takes no bias)
        impl = getattr(config.text_config, "_attn_implementation", None) or "sdpa"
        config.audio_config._attn_implementation = "eager" if impl == "eager" else "sdpa"
        self.audio_tower = StepAudio2Encoder(config.audio_config)
        self.projector = StepAudio2Projector(config)
        self.language_model = Qwen2ForCausalLM(config.text_config)
        self.post_init()

    @property
    def generation_config(self):
        """The decoder's (``Qwen2ForCausalLM``) generation config: generation runs there."""
        return self.language_model.generation_config

    @generation_config.setter
    def generation_config(self, value) -> None:
        if "language_model" in self._modules:
            self.language_model.generation_config = value

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def audio_embeddings(self, input_features: torch.Tensor, feature_lens: torch.Tensor) -> list[torch.Tensor]:
        """Per example (row of ``feature_lens`` (B, C)), the adapter outputs of its chunks in
        order, concatenated: (sum of audio_token_count, H)."""
        present = feature_lens > 0
        ref = (feature_lens.amax(dim=1, keepdim=True) + 2).expand_as(feature_lens)
        feats = input_features[present]
        if feats.shape[0] == 0:
            return [input_features.new_zeros((0, self.config.text_config.hidden_size))] * feature_lens.shape[0]
        out = self.projector(self.audio_tower(feats, feature_lens[present], ref[present]))
        counts = [audio_token_count(int(n)) for n in feature_lens[present].tolist()]
        chunks = [out[i, :c] for i, c in enumerate(counts)]
        per_row, i = [], 0
        for row in present.tolist():
            k = sum(row)
            per_row.append(torch.cat(chunks[i : i + k]) if k else out.new_zeros((0, out.shape[-1])))
            i += k
        return per_row

    def embed(self, input_ids: torch.Tensor, input_features=None, feature_lens=None) -> torch.Tensor:
        """Token embeddings with the audio in place of the ``<audio_patch>`` tokens."""
        embeds = self.get_input_embeddings()(input_ids)
        if input_features is None:
            return embeds
        audio = self.audio_embeddings(input_features, feature_lens)
        slots = input_ids == self.config.audio_patch_token_id
        have = slots.sum(dim=1).tolist()
        want = [a.shape[0] for a in audio]
        if have != want:
            raise CordError(f"step-audio2: prompts hold {have} <audio_patch> tokens but the audio gives {want}")
        flat = torch.cat(audio).to(embeds.dtype)
        return embeds.masked_scatter(slots[..., None].expand_as(embeds), flat)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_lens: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """Logits over all positions (``CausalLMOutputWithPast``); cord's training path uses
        the decoder's hidden states instead (see :class:`StepAudio2Adapter`)."""
        embeds = self.embed(input_ids, input_features, feature_lens)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                   **kwargs)
