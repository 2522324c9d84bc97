"""Family ``step-audio2``: Step-Audio 2 mini (``stepfun-ai/Step-Audio-2-mini``, Apache-2.0) as a
native cord model — transformers' own blocks, no ``trust_remote_code``.

The released checkpoint ships its model as remote code (``modeling_step_audio_2.py``, written for
transformers 4.49) whose forward returns logits only, without hidden states or a KV cache. Here
the same network is composed of transformers' building blocks, and only the small parts are
written in cord:

==========================  ==============================================================
part                        built from
==========================  ==============================================================
mel front end               ``WhisperFeatureExtractor(feature_size=128)`` (n_fft 400, hop 160)
                            on each 25 s chunk, cut to the reference's frame count
audio encoder               :class:`StepAudio2Encoder`: ``nn.Conv1d`` ×2 (k 3; stride 1, 2),
                            learned positions, 32 × transformers' ``Qwen2AudioEncoderLayer``
                            (= Whisper's pre-norm block), ``AvgPool1d(2)``, ``LayerNorm``
adapter (projector)         :class:`StepAudio2Projector`: Conv1d(k 3, s 2, p 1) → GELU →
                            Linear 1280→2048 → ReLU → Linear 2048→3584
language model              transformers' ``Qwen2ForCausalLM`` (28 layers, width 3584,
                            vocabulary 158,720) with its KV cache
==========================  ==============================================================

Reading of the reference (read, not copied): ``modeling_step_audio_2.py`` of the checkpoint
(classes ``AudioEncoder``, ``Adaptor``, ``StepAudio2ForCausalLM``, functions
``log_mel_spectrogram``, ``compute_token_num``), ``configuration_step_audio_2.py``, and
``stepaudio2.py`` of github.com/stepfun-ai/Step-Audio2 (chat format, 25 s chunking, token ids
151688/151689/151690, text ids < 151688, audio-output ids >= 151696).

**Exactness.** The reference encodes all chunks of one conversation as one padded batch, and
three of its details depend on that padded length ``T`` (the longest chunk's mel frames of the
example): which encoder positions are attended (its key mask is sampled at offset
``(T + 1) % 2``), where the adapter conv's zero padding starts (after ``conv2_len(T) // 2``
pooled rows) and the conv2 input's zero padding (after ``T`` frames). cord computes each chunk
with that example's ``T`` whatever else is in the batch, so results equal the reference's and do
not depend on batch composition (the tests check batched = one by one).

Not verified here (no weights on this machine): the released tokenizer loading with plain
``AutoTokenizer`` (a Qwen2 BPE with added tokens is expected), ``<|BOT|>``/``<|EOT|>`` ids, and
that the checkpoint's tensor names are exactly :data:`CHECKPOINT_RULES`' (taken from the
reference modules' attribute names and the vLLM port's loader). ``cord check-model --family
step-audio2`` compares against the reference for users who have the weights.

Checkpoint names → cord modules (:data:`CHECKPOINT_RULES`, applied by :func:`native_name`)::

    model.<rest>                              language_model.model.<rest>
    lm_head.weight                            language_model.lm_head.weight
    encoder.conv1|conv2.<p>                   audio_tower.conv1|conv2.<p>
    encoder.positional_embedding.weight       audio_tower.embed_positions.weight
    encoder.blocks.<i>.attn.query|key|value|out.<p>
                                              audio_tower.layers.<i>.self_attn.q_proj|k_proj|v_proj|out_proj.<p>
    encoder.blocks.<i>.attn_ln.<p>            audio_tower.layers.<i>.self_attn_layer_norm.<p>
    encoder.blocks.<i>.mlp.0|mlp.2.<p>        audio_tower.layers.<i>.fc1|fc2.<p>
    encoder.blocks.<i>.mlp_ln.<p>             audio_tower.layers.<i>.final_layer_norm.<p>
    encoder.after_norm.<p>                    audio_tower.layer_norm.<p>
    adapter.conv|linear1|linear2.<p>          projector.conv|linear1|linear2.<p>
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel, Qwen2ForCausalLM
from transformers.configuration_utils import SubConfigSpec
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoderLayer

from cord import CordError
from cord.data.audio import SAMPLE_RATE
from cord.models.base import left_pad, policy_audio
from cord.types import PromptBatch

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


# --------------------------------------------------------------------------- checkpoint names
#: (checkpoint regex, native replacement), first match wins; see the module docstring
CHECKPOINT_RULES: list[tuple[str, str]] = [
    (r"^model\.(.+)$", r"language_model.model.\1"),
    (r"^lm_head\.(.+)$", r"language_model.lm_head.\1"),
    (r"^encoder\.(conv1|conv2)\.(weight|bias)$", r"audio_tower.\1.\2"),
    (r"^encoder\.positional_embedding\.weight$", r"audio_tower.embed_positions.weight"),
    (r"^encoder\.blocks\.(\d+)\.attn\.query\.(.+)$", r"audio_tower.layers.\1.self_attn.q_proj.\2"),
    (r"^encoder\.blocks\.(\d+)\.attn\.key\.(.+)$", r"audio_tower.layers.\1.self_attn.k_proj.\2"),
    (r"^encoder\.blocks\.(\d+)\.attn\.value\.(.+)$", r"audio_tower.layers.\1.self_attn.v_proj.\2"),
    (r"^encoder\.blocks\.(\d+)\.attn\.out\.(.+)$", r"audio_tower.layers.\1.self_attn.out_proj.\2"),
    (r"^encoder\.blocks\.(\d+)\.attn_ln\.(.+)$", r"audio_tower.layers.\1.self_attn_layer_norm.\2"),
    (r"^encoder\.blocks\.(\d+)\.mlp\.0\.(.+)$", r"audio_tower.layers.\1.fc1.\2"),
    (r"^encoder\.blocks\.(\d+)\.mlp\.2\.(.+)$", r"audio_tower.layers.\1.fc2.\2"),
    (r"^encoder\.blocks\.(\d+)\.mlp_ln\.(.+)$", r"audio_tower.layers.\1.final_layer_norm.\2"),
    (r"^encoder\.after_norm\.(.+)$", r"audio_tower.layer_norm.\1"),
    (r"^adapter\.(conv|linear1|linear2)\.(.+)$", r"projector.\1.\2"),
]
#: checkpoint tensors that are not weights (old transformers saved rotary tables)
IGNORED_CHECKPOINT_KEYS = re.compile(r".*\.rotary_emb\.inv_freq$")

_NATIVE_RULES: list[tuple[str, str]] = [
    (r"^language_model\.model\.(.+)$", r"model.\1"),
    (r"^language_model\.lm_head\.(.+)$", r"lm_head.\1"),
    (r"^audio_tower\.(conv1|conv2)\.(weight|bias)$", r"encoder.\1.\2"),
    (r"^audio_tower\.embed_positions\.weight$", r"encoder.positional_embedding.weight"),
    (r"^audio_tower\.layers\.(\d+)\.self_attn\.q_proj\.(.+)$", r"encoder.blocks.\1.attn.query.\2"),
    (r"^audio_tower\.layers\.(\d+)\.self_attn\.k_proj\.(.+)$", r"encoder.blocks.\1.attn.key.\2"),
    (r"^audio_tower\.layers\.(\d+)\.self_attn\.v_proj\.(.+)$", r"encoder.blocks.\1.attn.value.\2"),
    (r"^audio_tower\.layers\.(\d+)\.self_attn\.out_proj\.(.+)$", r"encoder.blocks.\1.attn.out.\2"),
    (r"^audio_tower\.layers\.(\d+)\.self_attn_layer_norm\.(.+)$", r"encoder.blocks.\1.attn_ln.\2"),
    (r"^audio_tower\.layers\.(\d+)\.fc1\.(.+)$", r"encoder.blocks.\1.mlp.0.\2"),
    (r"^audio_tower\.layers\.(\d+)\.fc2\.(.+)$", r"encoder.blocks.\1.mlp.2.\2"),
    (r"^audio_tower\.layers\.(\d+)\.final_layer_norm\.(.+)$", r"encoder.blocks.\1.mlp_ln.\2"),
    (r"^audio_tower\.layer_norm\.(.+)$", r"encoder.after_norm.\1"),
    (r"^projector\.(conv|linear1|linear2)\.(.+)$", r"adapter.\1.\2"),
]


def _rename(name: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def native_name(checkpoint_name: str) -> str | None:
    """The cord parameter a release tensor loads into (None: no rule matches)."""
    return _rename(checkpoint_name, CHECKPOINT_RULES)


def checkpoint_name(native: str) -> str | None:
    """The release's name for a cord parameter (the inverse of :func:`native_name`)."""
    return _rename(native, _NATIVE_RULES)


def config_from_release(data: dict) -> StepAudio2Config:
    """cord's config from a release ``config.json`` (``text_config`` + ``audio_encoder_config``,
    as ``configuration_step_audio_2.py`` reads them)."""
    text = dict(data.get("text_config") or {})
    audio = dict(data.get("audio_encoder_config") or {})
    try:
        text_cfg = dict(
            model_type="qwen2",
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"],
            num_key_value_heads=text.get("num_key_value_heads", text.get("num_attention_groups")),
            hidden_act=text.get("hidden_act", "silu"),
            max_position_embeddings=text.get("max_position_embeddings", text.get("max_seq_len", 16384)),
            rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            rope_theta=text.get("rope_theta", 1_000_000.0),
            tie_word_embeddings=False,
            pad_token_id=text.get("pad_token_id", 151643),
        )
        if text.get("rope_scaling"):
            text_cfg["rope_scaling"] = text["rope_scaling"]
        width = audio["n_audio_state"]
        audio_cfg = dict(
            model_type="qwen2_audio_encoder",
            num_mel_bins=audio.get("n_mels", 128),
            d_model=width,
            encoder_attention_heads=audio["n_audio_head"],
            encoder_ffn_dim=4 * width,  # the reference's blocks: n_mlp = 4 * n_state
            encoder_layers=audio["n_audio_layer"],
            max_source_positions=audio.get("n_audio_ctx", 1500),
            activation_function="gelu",
        )
    except KeyError as e:
        raise CordError(
            f"Step-Audio2 config.json lacks {e.args[0]!r} (in text_config / audio_encoder_config)"
        ) from None
    if audio.get("llm_dim", text_cfg["hidden_size"]) != text_cfg["hidden_size"]:
        raise CordError(
            f"Step-Audio2 config: audio llm_dim {audio['llm_dim']} != text hidden_size {text_cfg['hidden_size']}"
        )
    return StepAudio2Config(
        text_config=text_cfg,
        audio_config=audio_cfg,
        adapter_kernel_size=audio.get("kernel_size", 3),
        adapter_stride=audio.get("adapter_stride", 2),
    )


def release_config_dict(config: StepAudio2Config) -> dict:
    """The release-format ``config.json`` for ``config`` (used to write a tiny model in the
    checkpoint's layout; the inverse of :func:`config_from_release`)."""
    t, a = config.text_config, config.audio_config
    return {
        "architectures": ["StepAudio2ForCausalLM"],
        "model_type": RELEASE_MODEL_TYPE,
        "text_config": {
            "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
            "num_attention_groups": t.num_key_value_heads, "num_key_value_heads": t.num_key_value_heads,
            "max_seq_len": t.max_position_embeddings, "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_parameters["rope_theta"],
            "pad_token_id": t.pad_token_id,
        },
        "audio_encoder_config": {
            "n_mels": a.num_mel_bins, "n_audio_ctx": a.max_source_positions, "n_audio_state": a.d_model,
            "n_audio_head": a.encoder_attention_heads, "n_audio_layer": a.encoder_layers,
            "llm_dim": t.hidden_size, "kernel_size": config.adapter_kernel_size,
            "adapter_stride": config.adapter_stride,
        },
    }


def save_release(model: StepAudio2ForCausalLM, tokenizer: Any, directory: str | os.PathLike) -> Path:
    """Write ``model`` as the release lays it out: release ``config.json``, ``model.safetensors``
    under the checkpoint's tensor names, tokenizer. (Tests and conversions; cord's own
    ``save_pretrained`` writes native names.)"""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, value in model.state_dict().items():
        ck = checkpoint_name(name)
        if ck is None:
            raise CordError(f"no checkpoint name for parameter {name}")
        tensors[ck] = value.detach().contiguous().cpu()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(release_config_dict(model.config), indent=2), encoding="utf-8")
    tokenizer.save_pretrained(str(directory))
    return directory


def _checkpoint_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CordError(f"{directory} holds no *.safetensors weights")
    return files


def _release_shape(directory: Path, key: str, default: int) -> list[int]:
    """The shape of tensor ``key`` in a release folder (read from the safetensors header)."""
    from safetensors import safe_open

    for path in _checkpoint_files(directory):
        with safe_open(str(path), framework="pt") as f:
            if key in f.keys():
                return list(f.get_slice(key).get_shape())
    return [default]


def load_release_state_dict(directory: str | os.PathLike, expected: set[str], dtype: torch.dtype) -> dict:
    """The release tensors under cord's names, cast to ``dtype``; a CordError names every
    missing or unexpected key (first five of each, with counts)."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for path in _checkpoint_files(Path(directory)):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if IGNORED_CHECKPOINT_KEYS.match(key):
                    continue
                name = native_name(key)
                if name is None or name not in expected:
                    unexpected.append(key)
                    continue
                t = f.get_tensor(key)
                state[name] = t.to(dtype) if t.is_floating_point() else t
    missing = sorted(checkpoint_name(n) or n for n in expected - set(state))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        if unexpected:
            unexpected.sort()
            parts.append(f"unexpected keys {unexpected[:5]}"
                         + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
        raise CordError(
            f"checkpoint {directory} does not match Step-Audio2 ({'; '.join(parts)}); the name mapping is "
            "cord.models.step_audio2.CHECKPOINT_RULES"
        )
    return state


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
    _set_generation_ids(model, tokenizer)
    return model, tokenizer, WhisperFeatureExtractor(feature_size=128)


def _set_generation_ids(model, tokenizer) -> None:
    eot = tokenizer.convert_tokens_to_ids(EOT)
    gc = model.language_model.generation_config
    gc.eos_token_id = eot
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = None


# --------------------------------------------------------------------------- adapter
class StepAudio2Adapter:
    """The cord adapter contract (see cord.models.base) for :class:`StepAudio2ForCausalLM`.

    Prompt (stepaudio2.py's chat format; turns are concatenated without separators, the user
    role is ``human``)::

        <|BOT|>system\\n{system}<|EOT|><|BOT|>human\\n{X}\\n{instruction}<|EOT|><|BOT|>assistant\\n

    with ``X`` = one ``<audio_start>`` + N × ``<audio_patch>`` + ``<audio_end>`` per 25 s chunk
    (audio prompt) or the question text (text prompt). Audio longer than
    ``max_audio_seconds`` follows ``long_audio`` (error / skip / truncate) first.
    """

    family = FAMILY
    default_system_prompt = "You are a helpful assistant."
    module_map = {
        "audio_encoder": ("audio_tower",),
        "projector": ("projector",),
        "language_model": ("language_model.model",),
        "lm_head": ("language_model.lm_head",),
    }
    lora_scope = ("language_model.model",)
    lora_exclude: tuple[str, ...] = ()

    def __init__(self, model, tokenizer, feature_extractor, *, system_prompt: str | None = None,
                 instruction: str = "", long_audio: str = "error", max_audio_seconds: float = 30.0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.system_prompt = self.default_system_prompt if system_prompt is None else system_prompt
        self.instruction = instruction
        self.long_audio = long_audio
        self.max_audio_seconds = max_audio_seconds
        self.skipped_long_audio = 0
        cfg = self._core().config
        self.audio_start_id = cfg.audio_start_token_id
        self.audio_end_id = cfg.audio_end_token_id
        self.audio_patch_id = cfg.audio_patch_token_id
        self.audio_output_start_id = cfg.audio_output_start_id
        self.vocab_size = cfg.text_config.vocab_size

    # ----------------------------------------------------------------- tokens
    def _id(self, token: str) -> int | None:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        return tid if isinstance(tid, int) and tid != self.tokenizer.unk_token_id else None

    @property
    def end_of_turn_token_id(self) -> int:
        """``<|EOT|>``: ends every turn (the reference stops generation on it)."""
        eot = self._id(EOT)
        if eot is None:
            raise CordError(f"the Step-Audio2 tokenizer has no {EOT} token")
        return eot

    @property
    def eos_token_ids(self) -> list[int]:
        ids = {self.end_of_turn_token_id}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    @property
    def pad_token_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return self.end_of_turn_token_id if pid is None else pid

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Never sampled, never targets: the audio-input markers (``<audio_start>``,
        ``<audio_end>``, ``<audio_patch>``) and every audio-output (speech) id from
        ``<audio_0>`` to the end of the vocabulary (158,720 − 151,696 = 7,024 ids in the release)."""
        eos = set(self.eos_token_ids)
        ids = [self.audio_start_id, self.audio_end_id, self.audio_patch_id]
        ids += range(self.audio_output_start_id, self.vocab_size)
        return [i for i in ids if i not in eos]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def lm_head(self) -> nn.Linear:
        return self._core().get_output_embeddings()

    def _core(self) -> StepAudio2ForCausalLM:
        """The cord model under a possible peft wrapper (LoRA layers stay in it)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def save_pretrained(self, directory: str) -> None:
        """Weights (native names) or the peft adapter, config, tokenizer, feature extractor:
        loadable with ``model.family: step-audio2, model.name_or_path: <directory>``."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)

    # ---------------------------------------------------------------- prompts
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

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

    def text_prompts(self, examples: list) -> PromptBatch:
        seqs = [self._prompt(self._encode(ex.question_text)) for ex in examples]
        ids, mask = left_pad(seqs, self.pad_token_id)
        return PromptBatch(ids, mask, "text", {}, list(range(len(examples))))

    def prepare_audio(self, examples: list) -> tuple[list[np.ndarray], list[int]]:
        arrays, keep = policy_audio(examples, self.max_audio_seconds, self.long_audio)
        self.skipped_long_audio += len(examples) - len(keep)
        return arrays, keep

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
        ids, mask = left_pad(seqs, self.pad_token_id)
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
        core = self._core()
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
        core = self._core()
        lm = core.language_model
        embeds = self._embed(core, prompts.input_ids, prompts.extra)
        with clean_generation_defaults(lm):
            out = lm.generate(inputs_embeds=embeds, attention_mask=prompts.attention_mask, **kwargs)
        return out.sequences if hasattr(out, "sequences") else out

    def prefill(self, prompts: PromptBatch):
        """Encode the audio and prefill the decoder once: (hidden (B, H) of the last prompt
        position, DecodeState); see cord.rollout.decode."""
        from cord.rollout.decode import DecodeState, cache_kwargs, new_cache, next_positions

        prompts = prompts.to(self.device)
        core = self._core()
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

        decoder = self._core().language_model.model
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
        config.adapter_hidden_size = _release_shape(path, "adapter.linear1.weight", config.adapter_hidden_size)[0]
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
    _set_generation_ids(model, tokenizer)
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
        _set_generation_ids(model, tokenizer)
    else:
        model, tokenizer, fe = load_model(cfg.name_or_path, device=device, dtype=dtype,
                                          attn_implementation=cfg.attn_implementation)
    return StepAudio2Adapter(model, tokenizer, fe, system_prompt=cfg.system_prompt, instruction=cfg.instruction,
                             long_audio=cfg.long_audio, max_audio_seconds=cfg.max_audio_seconds)


def _register() -> None:
    from cord.models.registry import register_family

    register_family(FAMILY, load)


_register()
