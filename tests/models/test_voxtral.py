"""What only the ``voxtral`` family (VoxtralForConditionalGeneration) has, on its tiny offline
model (real transformers class, real audio geometry: 128 mel bins, 30 s chunks of 375 tokens;
tekken tokenizer read by transformers' tekken.json converter): prompts laid out as
mistral-common lays them, features as VoxtralProcessor makes them, 375 placeholders per chunk,
a release folder with only tekken.json. The adapter contract (batched == one by one with a
two-chunk clip in the batch, placeholders == encoder output, both engines == a plain argmax
loop, save/load, LoRA in the decoder, every method's preset) runs on it in
tests/models/test_family_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cord import CordError
from cord.config import ModelConfig
from cord.models import load_adapter
from tests.conftest import make_examples
from tests.models.family_contract import voxtral_examples as _examples


def _load(**kw):
    kw.setdefault("max_audio_seconds", 60)
    return load_adapter(ModelConfig(family="voxtral", name_or_path="tiny", dtype="float32", device="cpu", **kw))


@pytest.fixture(scope="module")
def adapter():
    return _load()


def test_prompts_are_laid_out_as_mistral_common_lays_them(adapter):
    tok = adapter.tokenizer
    exs = _examples()
    audio = adapter.audio_prompts(exs)
    text = adapter.text_prompts(exs)
    instr = adapter.instruction
    for i, ex in enumerate(exs):
        n = 375 * (2 if i == 1 else 1)  # mistral-common: ceil(padded samples / 160 / 8) per clip
        # the reference parses the special tokens from a string (InstructTokenizerV7's layout,
        # as its Voxtral chat template renders it); the adapter assembles ids
        want_audio = tok("<s>[INST][BEGIN_AUDIO]" + "[AUDIO]" * n + instr + "[/INST]", add_special_tokens=False)
        want_text = tok(f"<s>[INST]{ex.question_text}\n{instr}[/INST]", add_special_tokens=False)
        assert audio.input_ids[i][audio.attention_mask[i].bool()].tolist() == want_audio["input_ids"]
        assert text.input_ids[i][text.attention_mask[i].bool()].tolist() == want_text["input_ids"]
    assert tok.convert_ids_to_tokens([1, 2, 3, 4, 11, 24, 25]) == [
        "<s>", "</s>", "[INST]", "[/INST]", "<pad>", "[AUDIO]", "[BEGIN_AUDIO]"]  # Voxtral's tekken ids
    assert adapter.eos_token_ids == [2] and adapter.end_of_turn_token_id == 2 and adapter.pad_token_id == 11


def test_features_are_the_processors_one_clip_at_a_time(adapter):
    from transformers import VoxtralProcessor

    proc = VoxtralProcessor(adapter.feature_extractor, adapter.tokenizer)
    exs = _examples()
    prompts = adapter.audio_prompts(exs)
    assert prompts.extra["audio_chunk_mask"].tolist() == [[1, 0], [1, 1], [1, 0]]
    for i, ex in enumerate(exs):
        padded = np.pad(ex.audio, (0, -len(ex.audio) % 480000))  # mistral-common's AudioEncoder.pad
        ref = proc._retrieve_input_features([padded], 3000, sampling_rate=16000, padding=True, truncation=False,
                                            pad_to_multiple_of=480000, return_tensors="pt")
        got = prompts.extra["input_features"][i][prompts.extra["audio_chunk_mask"][i].bool()]
        torch.testing.assert_close(got, ref, atol=0, rtol=0)


def test_audio_prompts_hold_375_placeholders_per_30_s_chunk_after_one_begin_audio(adapter):
    """Voxtral's geometry (the contract checks the counts against the encoder itself)."""
    audio = adapter.audio_prompts(_examples())
    assert (audio.input_ids == adapter.audio_token_id).sum(-1).tolist() == [375, 750, 375]
    assert (audio.input_ids == adapter.begin_audio_id).sum(-1).tolist() == [1, 1, 1]


def test_a_checkpoint_folder_with_only_tekken_json_loads_without_mistral_common(tmp_path):
    """As a Voxtral release is read here: config + weights + tekken.json (+ feature extractor),
    no tokenizer.json; transformers converts tekken.json itself."""
    from cord.models.voxtral import build_tiny_voxtral, write_tekken_json

    model, _, fe = build_tiny_voxtral()
    model.save_pretrained(tmp_path)
    fe.save_pretrained(tmp_path)
    write_tekken_json(str(tmp_path / "tekken.json"))
    a = load_adapter(ModelConfig(family="voxtral", name_or_path=str(tmp_path), dtype="float32", device="cpu"))
    ref = _load()
    exs = make_examples(2)
    assert a.audio_prompts(exs).input_ids.tolist() == ref.audio_prompts(exs).input_ids.tolist()
    assert a.text_prompts(exs).input_ids.tolist() == ref.text_prompts(exs).input_ids.tolist()
    assert (a.eos_token_ids, a.pad_token_id) == ([2], 11)


def test_a_system_prompt_is_one_line():
    with pytest.raises(CordError, match="system_prompt is not supported by voxtral"):
        _load(system_prompt="You are helpful.")
