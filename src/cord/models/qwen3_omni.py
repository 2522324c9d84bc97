"""Model family ``qwen3-omni``: the thinker of Qwen3-Omni (``Qwen3OmniMoeThinkerForConditionalGeneration``,
e.g. ``Qwen/Qwen3-Omni-30B-A3B-Instruct``), text out only (the talker is not loaded).

What differs from Qwen2.5-Omni (whose adapter this one extends):

- **Tokens**: the audio item is ``<|audio_start|><|audio_pad|><|audio_end|>``; ``<|audio_pad|>``
  is expanded to the encoder's output length, ``_get_feat_extract_output_lengths``: the mel
  frames are cut into chunks of ``2·n_window`` (100 frames = 1 s), each chunk gives 13 tokens,
  the tail chunk ``((((n-1)//2+1)-1)//2+1-1)//2+1``.
- **Audio window**: the encoder has no 30 s window: it encodes 1 s chunks and attends within
  ``n_window_infer`` frames (8 s), and the processor pads to the longest clip without
  truncating. So the long-audio policy (``model.long_audio`` at ``model.max_audio_seconds``)
  is a cost bound chosen by the user, not the encoder's limit; each second costs 13 tokens.
  Features are extracted one clip at a time (each clip followed by zeros, as the processor's
  padding does for all but the longest clip of its batch), so a clip's features never depend
  on its batch.
- **MoE decoder**: the router's load-balancing loss is never computed (the adapter calls the
  thinker's base model, not the causal-LM forward that adds ``router_aux_loss_coef``·aux, and
  ``output_router_logits`` stays False): CORD's objective is the loss. The experts are fused
  parameter tensors (``experts.gate_up_proj``/``down_proj``), not ``nn.Linear``, so LoRA cannot
  target them; ``lora_exclude = ("experts",)`` keeps it that way if a later transformers
  makes them modules. LoRA's ``gate_proj/up_proj/down_proj`` match no module of the released
  checkpoints (every layer is MoE), so LoRA on this family trains attention. (peft maps a
  dense layer's ``mlp.gate_proj`` target onto the fused experts of MoE models; cord refuses
  that in one line, see ``apply_lora``.) Hidden states are still only read at
  completion positions; no prompt-wide logits are formed.
- **System prompt**: none by default (the Qwen3-Omni chat template adds none).

The hf engine's cached decoding (``prefill``/``decode``) is inherited from the Qwen adapter
with the thinker's own 3-D rope positions, and tested against a plain argmax loop.
"""

from __future__ import annotations

import numpy as np
import torch

from cord.data.audio import SAMPLE_RATE
from cord.models.qwen import Qwen25OmniThinkerAdapter

QWEN3_OMNI_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_start|>",
    "<|audio_pad|>",
    "<|audio_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def qwen3_omni_audio_token_count(n_frames: int, n_window: int = 50) -> int:
    """Encoder output length for ``n_frames`` valid mel frames (transformers'
    ``_get_feat_extract_output_lengths`` of the thinker, as an int)."""
    chunk = n_window * 2
    tail = n_frames % chunk
    feat = (tail - 1) // 2 + 1
    return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (n_frames // chunk) * 13


class Qwen3OmniThinkerAdapter(Qwen25OmniThinkerAdapter):
    family = "qwen3-omni"
    default_system_prompt = ""
    audio_item = "<|audio_start|><|audio_pad|><|audio_end|>"
    # the audio tower ends in its own projection (audio_tower.proj1/proj2); no separate projector
    module_map = {
        "audio_encoder": ("model.audio_tower",),
        "language_model": ("model.language_model",),
        "lm_head": ("lm_head",),
    }
    lora_scope = ("model.language_model",)
    lora_exclude = ("experts",)

    def __init__(self, model, tokenizer, feature_extractor, **kwargs) -> None:
        super().__init__(model, tokenizer, feature_extractor, **kwargs)
        self.audio_token = "<|audio_pad|>"
        self.audio_token_id = tokenizer.convert_tokens_to_ids(self.audio_token)
        self.n_window = int(model.config.audio_config.n_window)

    @property
    def placeholder_token_ids(self) -> list[int]:
        ids = []
        for tok in ("<|audio_pad|>", "<|image_pad|>", "<|video_pad|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.append(tid)
        return ids

    def audio_token_count(self, n_frames: int) -> int:
        return qwen3_omni_audio_token_count(n_frames, self.n_window)

    def audio_features(self, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        fe = self.feature_extractor
        hop = fe.hop_length
        feats, masks = [], []
        for a in arrays:
            # the clip, then at least half an FFT window of zeros: its last frames see zeros
            # whatever else is in the batch
            length = (len(a) + fe.n_fft // 2 + hop - 1) // hop * hop + hop
            f = fe([a], sampling_rate=SAMPLE_RATE, return_attention_mask=True, padding="max_length",
                   max_length=length, truncation=False, return_tensors="pt")
            feats.append(f["input_features"][0])
            masks.append(f["attention_mask"][0])
        width = max(f.shape[-1] for f in feats)
        x = torch.zeros((len(feats), feats[0].shape[0], width), dtype=torch.float32)
        m = torch.zeros((len(feats), width), dtype=torch.long)
        for i, (f, k) in enumerate(zip(feats, masks)):
            x[i, :, : f.shape[-1]] = f
            m[i, : k.shape[-1]] = k.long()
        return {"input_features": x.to(self.model.dtype), "feature_attention_mask": m}


def build_tiny_qwen3_omni_thinker(seed: int = 0, device: str | torch.device = "cpu", mlp_only_layers=()):
    """(model, tokenizer, feature_extractor) for a toy Qwen3OmniMoeThinkerForConditionalGeneration
    (2 decoder layers, MoE with 4 experts, top-2, like the released checkpoints: no dense MLP
    layer unless ``mlp_only_layers`` names some), built on ``device``."""
    from transformers import (
        Qwen3OmniMoeThinkerConfig,
        Qwen3OmniMoeThinkerForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    from cord.models.base import set_generation_ids, tokenizer_vocab_size
    from cord.models.qwen_tiny import build_byte_tokenizer

    tokenizer = build_byte_tokenizer(QWEN3_OMNI_SPECIAL_TOKENS)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3OmniMoeThinkerConfig(
        audio_config=dict(
            d_model=64, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128,
            output_dim=64, n_window=50, n_window_infer=800, downsample_hidden_size=16,
        ),
        vision_config=dict(
            depth=1, hidden_size=64, intermediate_size=64, num_heads=2, out_hidden_size=64,
            deepstack_visual_indexes=[0], num_position_embeddings=16,
        ),
        text_config=dict(
            vocab_size=tokenizer_vocab_size(tokenizer), hidden_size=64, intermediate_size=64, moe_intermediate_size=16,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
            num_experts=4, num_experts_per_tok=2, mlp_only_layers=list(mlp_only_layers),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6],
                             "mrope_interleaved": True},
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        audio_token_id=ids("<|audio_pad|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        audio_start_token_id=ids("<|audio_start|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        user_token_id=ids("<|im_start|>"),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3OmniMoeThinkerForConditionalGeneration(config).eval()
    set_generation_ids(model.generation_config, tokenizer)
    return model, tokenizer, WhisperFeatureExtractor(feature_size=128)


def _register() -> None:
    from cord.models.registry import hf_family_loader, register_family

    register_family(
        "qwen3-omni",
        hf_family_loader(Qwen3OmniThinkerAdapter, "Qwen3OmniMoeThinkerForConditionalGeneration",
                         build_tiny_qwen3_omni_thinker),
    )


_register()
