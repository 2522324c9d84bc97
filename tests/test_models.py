"""The adapter contract on both Qwen families' tiny models."""

from __future__ import annotations

import pytest
import torch

from cord.models.qwen import whisper_audio_token_count
from tests.conftest import make_examples


def _prompts(adapter, modality, examples):
    return adapter.audio_prompts(examples) if modality == "audio" else adapter.text_prompts(examples)


def _completions(b: int, t: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    for i in range(b):  # ragged, right-padded completions
        mask[i, t - i :] = False if i else True
    return ids, mask


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_batched_completion_hidden_equals_one_by_one(tiny_adapter, modality):
    examples = make_examples(3)
    batch = _prompts(tiny_adapter, modality, examples)
    # prompts really differ in length, so the batch has left padding
    assert len(set(batch.attention_mask.sum(-1).tolist())) == 3
    ids, mask = _completions(3, 6, 250)
    head = tiny_adapter.lm_head()
    with torch.no_grad():
        hidden = tiny_adapter.completion_hidden(batch, ids, mask)
        assert hidden.shape == (3, 6, tiny_adapter.model.config.get_text_config().hidden_size)
        lp = torch.log_softmax(head(hidden), -1).gather(-1, ids[..., None])[..., 0]
        for i, ex in enumerate(examples):
            alone = _prompts(tiny_adapter, modality, [ex])
            assert alone.attention_mask.all()  # no padding at all when alone
            h1 = tiny_adapter.completion_hidden(alone, ids[i : i + 1], mask[i : i + 1])
            lp1 = torch.log_softmax(head(h1), -1).gather(-1, ids[i : i + 1, :, None])[..., 0]
            valid = mask[i]
            torch.testing.assert_close(hidden[i][valid], h1[0][valid], atol=1e-5, rtol=0)
            torch.testing.assert_close(lp[i][valid], lp1[0][valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_completion_logprob_matches_plain_full_forward(tiny_adapter, modality):
    ex = make_examples(2)[1]
    prompt = _prompts(tiny_adapter, modality, [ex])
    ids, mask = _completions(1, 7, 250, seed=3)
    with torch.no_grad():
        hidden = tiny_adapter.completion_hidden(prompt, ids, mask)
        mine = torch.log_softmax(tiny_adapter.lm_head()(hidden)[0], -1).gather(-1, ids[0, :, None])[:, 0]
        full_ids = torch.cat([prompt.input_ids, ids], 1)
        out = tiny_adapter.model(input_ids=full_ids, attention_mask=torch.ones_like(full_ids), **prompt.extra)
        p = prompt.input_ids.shape[1]
        ref = torch.log_softmax(out.logits[0, p - 1 : -1], -1).gather(-1, ids[0, :, None])[:, 0]
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=0)


def test_audio_placeholders_expand_to_encoder_length_and_stay_out_of_completions(tiny_adapter):
    examples = make_examples(3)
    batch = tiny_adapter.audio_prompts(examples)
    n_tokens = (batch.input_ids == tiny_adapter.audio_token_id).sum(-1)
    frames = batch.extra["feature_attention_mask"].sum(-1)
    expected = torch.tensor([whisper_audio_token_count(int(f)) for f in frames])
    assert torch.equal(n_tokens, expected)
    # 25 audio tokens per second of audio (100 mel frames/s, /4)
    for ex, n in zip(examples, n_tokens.tolist()):
        assert abs(n - 25 * len(ex.audio) / 16000) <= 1
    # completion positions are exactly the last T positions of prompt ⊕ completion: none of
    # them can be a placeholder or prompt token, whatever completion we append
    ids, mask = _completions(3, 5, 250)
    hidden = tiny_adapter.completion_hidden(batch, ids, mask)
    assert hidden.shape[1] == ids.shape[1]
    text = tiny_adapter.text_prompts(examples)
    assert not (text.input_ids == tiny_adapter.audio_token_id).any()


def test_text_and_audio_prompts_share_system_prompt_and_instruction(tiny_adapter):
    ex = make_examples(1)[0]
    tok = tiny_adapter.tokenizer
    audio_text = tok.decode(tiny_adapter.audio_prompts([ex]).input_ids[0])
    text_text = tok.decode(tiny_adapter.text_prompts([ex]).input_ids[0])
    assert tiny_adapter.system_prompt in audio_text and tiny_adapter.system_prompt in text_text
    assert audio_text.rstrip().endswith("<|im_start|>assistant") and text_text.rstrip().endswith("<|im_start|>assistant")
    assert ex.question_text.strip() in text_text and ex.question_text.strip() not in audio_text
    assert tiny_adapter.instruction in audio_text and tiny_adapter.instruction in text_text


def test_save_and_reload_gives_identical_outputs(tiny_adapter, tmp_path):
    from cord.config import ModelConfig
    from cord.models import load_adapter

    tiny_adapter.save_pretrained(str(tmp_path))
    again = load_adapter(ModelConfig(family=tiny_adapter.family, name_or_path=str(tmp_path), dtype="float32", device="cpu"))
    ex = make_examples(1)
    ids, mask = _completions(1, 4, 250)
    with torch.no_grad():
        a = tiny_adapter.completion_hidden(tiny_adapter.audio_prompts(ex), ids, mask)
        b = again.completion_hidden(again.audio_prompts(ex), ids, mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_unknown_family_names_the_nearest():
    from cord import CordError
    from cord.config import ModelConfig
    from cord.models import load_adapter

    with pytest.raises(CordError, match="did you mean 'qwen2-audio'"):
        load_adapter(ModelConfig(family="qwen2_audio", name_or_path="tiny"))


def test_lora_wraps_language_model_only_and_keeps_contract():
    from cord.config import LoraConfig, ModelConfig
    from cord.models import load_adapter

    adapter = load_adapter(
        ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu", lora=LoraConfig(r=4))
    )
    lora_names = [n for n, _ in adapter.model.named_parameters() if "lora_" in n]
    assert lora_names and all("language_model" in n for n in lora_names)
    trainable = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert set(trainable) == set(lora_names)
    examples = make_examples(2)
    ids, mask = _completions(2, 4, 250)
    hidden = adapter.completion_hidden(adapter.audio_prompts(examples), ids, mask)
    assert hidden.shape[:2] == (2, 4)
    hidden.sum().backward()
    assert any(p.grad is not None for n, p in adapter.model.named_parameters() if "lora_B" in n)


def test_lora_with_unknown_targets_is_one_clear_error():
    from cord import CordError
    from cord.config import LoraConfig, ModelConfig
    from cord.models import load_adapter

    with pytest.raises(CordError, match="match no module"):
        load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", lora=LoraConfig(target_modules=["qkv"])))
