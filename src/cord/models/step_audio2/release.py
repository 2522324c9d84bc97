"""The released checkpoint (stepfun-ai/Step-Audio-2-mini) to and from cord's native model:
tensor names (:data:`CHECKPOINT_RULES`), config conversion, loading and saving release folders."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from cord import CordError
from cord.models.step_audio2.modeling import (
    RELEASE_MODEL_TYPE,
    StepAudio2Config,
    StepAudio2ForCausalLM,
)

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


def release_shape(directory: Path, key: str, default: int) -> list[int]:
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
