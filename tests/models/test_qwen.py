"""What only the Qwen families (qwen2-audio, qwen2.5-omni: the tiny conftest models) have: their
placeholder runs and chat layout, their tiny builders on the meta device. The adapter contract
runs on both in tests/models/test_family_contract.py; loading by path or name, with Qwen2-Audio
as the example, in tests/models/test_loading.py."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_examples


def test_audio_placeholders_are_one_run_of_25_per_second_between_audio_bos_and_eos(tiny_adapter):
    """(The contract checks the count against the encoder's own output length.)"""
    examples = make_examples(3)
    batch = tiny_adapter.audio_prompts(examples)
    n_tokens = (batch.input_ids == tiny_adapter.audio_token_id).sum(-1)
    # 25 audio tokens per second of audio (100 mel frames/s, /4)
    for ex, n in zip(examples, n_tokens.tolist(), strict=True):
        assert abs(n - 25 * len(ex.audio) / 16000) <= 1
    # the placeholders form one run, inside the prompt (bos before, eos after, never last)
    tok = tiny_adapter.tokenizer.convert_tokens_to_ids
    for row, n in zip(batch.input_ids, n_tokens.tolist(), strict=True):
        where = (row == tiny_adapter.audio_token_id).nonzero()[:, 0]
        assert where[-1] - where[0] + 1 == n
        assert row[where[0] - 1] == tok("<|audio_bos|>") and row[where[-1] + 1] == tok("<|audio_eos|>")


def test_text_and_audio_prompts_share_system_prompt_and_instruction(tiny_adapter):
    ex = make_examples(1)[0]
    tok = tiny_adapter.tokenizer
    audio_text = tok.decode(tiny_adapter.audio_prompts([ex]).input_ids[0])
    text_text = tok.decode(tiny_adapter.text_prompts([ex]).input_ids[0])
    assert tiny_adapter.system_prompt in audio_text and tiny_adapter.system_prompt in text_text
    assert audio_text.rstrip().endswith("<|im_start|>assistant") and text_text.rstrip().endswith("<|im_start|>assistant")
    assert ex.question_text.strip() in text_text and ex.question_text.strip() not in audio_text
    assert tiny_adapter.instruction in audio_text and tiny_adapter.instruction in text_text


@pytest.mark.parametrize("family", ["qwen2-audio", "qwen2.5-omni"])
def test_meta_device_builds_without_memory(family):
    from cord.config import ModelConfig
    from cord.models import load_adapter
    from cord.models.qwen_tiny import build_tiny_qwen2_5_omni_thinker, build_tiny_qwen2_audio

    build = build_tiny_qwen2_audio if family == "qwen2-audio" else build_tiny_qwen2_5_omni_thinker
    model, _, _ = build(device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    tiny = load_adapter(ModelConfig(family=family, name_or_path="tiny", dtype="bfloat16", device="meta"))
    assert tiny.device.type == "meta" and {p.dtype for p in tiny.model.parameters()} == {torch.bfloat16}
