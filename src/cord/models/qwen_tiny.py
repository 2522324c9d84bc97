"""Tiny offline builders of the Qwen audio families (``qwen2-audio``, ``qwen2.5-omni``;
``name_or_path: tiny``): the real HF model classes at toy size, a tokenizer built in code with the
Qwen special tokens, and the real feature extractor class. No network.

Used by the tests, the tiny presets (configs/tiny/) and anyone who wants to try cord on a
laptop. The tokenizer is byte-level BPE with no merges (every byte is a token), so any text
round-trips and the vocabulary stays small; Qwen3-Omni's tiny builder and the benchmarks use it
too. (The other families' tiny builders live in their own modules.)
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

from cord.models.base import set_generation_ids, tokenizer_vocab_size

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_bos|>",
    "<|AUDIO|>",
    "<|audio_eos|>",
    # Qwen2.5-Omni's vision tokens: the thinker's rope index needs their ids to exist
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
]


def build_byte_tokenizer(special_tokens: list[str] = QWEN_SPECIAL_TOKENS) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) plus ``special_tokens``."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in special_tokens if t not in ("<|im_end|>", "<|endoftext|>")],
    )
    fast.add_special_tokens({"additional_special_tokens": [t for t in special_tokens if t not in ("<|im_end|>", "<|endoftext|>")]})
    fast.padding_side = "left"
    return fast


def build_tiny_qwen2_audio(seed: int = 0, device: str | torch.device = "cpu"):
    """(model, tokenizer, feature_extractor) for a toy Qwen2AudioForConditionalGeneration,
    built on ``device`` (``"meta"``: shapes only, no memory)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    tokenizer = build_byte_tokenizer()
    audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    config = Qwen2AudioConfig(
        audio_config=dict(d_model=64, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128),
        text_config=_text_config(tokenizer, model_type="qwen2"),
        audio_token_index=audio_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration(config).eval()
    set_generation_ids(model.generation_config, tokenizer)
    return model, tokenizer, WhisperFeatureExtractor(feature_size=128)


def _text_config(tokenizer, **extra) -> dict:
    """The toy decoder both tiny families share: 2 layers, width 64, 2 heads of 32 (vLLM's CPU
    attention needs heads of at least 32: the vLLM engine's tests run these models), GQA 2:1."""
    return dict(
        vocab_size=tokenizer_vocab_size(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_tiny_qwen2_5_omni_thinker(seed: int = 0, device: str | torch.device = "cpu"):
    """(model, tokenizer, feature_extractor) for a toy Qwen2_5OmniThinkerForConditionalGeneration,
    built on ``device`` (``"meta"``: shapes only, no memory)."""
    from transformers import (
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    tokenizer = build_byte_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            d_model=64,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            num_mel_bins=128,
            output_dim=64,
            n_window=50,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=64,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[0],
        ),
        text_config=_text_config(
            tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
        ),
        audio_token_index=ids("<|AUDIO|>"),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        user_token_id=ids("<|im_start|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    set_generation_ids(model.generation_config, tokenizer)
    return model, tokenizer, WhisperFeatureExtractor(feature_size=128)
