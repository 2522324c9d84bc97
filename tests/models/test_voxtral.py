"""The adapter contract for the ``voxtral`` family (VoxtralForConditionalGeneration) on its tiny
offline model (real transformers class, real audio geometry: 128 mel bins, 30 s chunks of 375
tokens; tekken tokenizer read by transformers' tekken.json converter): prompts laid out as
mistral-common lays them, features as VoxtralProcessor makes them, batched == one by one with
a two-chunk clip in the batch, placeholders == encoder output, both engines == a plain argmax
loop, save/load, LoRA in the decoder, and every method's preset runs 2 steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cord import CordError
from cord.config import LoraConfig, ModelConfig
from cord.models import load_adapter
from cord.models.base import module_map_of, part_of
from tests.models import family_contract as contract
from tests.conftest import make_examples


def _load(**kw):
    kw.setdefault("max_audio_seconds", 60)
    return load_adapter(ModelConfig(family="voxtral", name_or_path="tiny", dtype="float32", device="cpu", **kw))


def _examples():
    """0.4 s, 31.4 s and 1.5 s of audio: the middle clip is two 30 s chunks (so flattening the
    chunks column by column instead of row by row would misplace them)."""
    exs = make_examples(3)
    exs[1].audio = np.concatenate([exs[1].audio] * 33)
    return exs


@pytest.fixture(scope="module")
def adapter():
    a = _load()
    contract.sharpen(a)
    return a


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


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_batched_completion_hidden_equals_one_by_one(adapter, modality):
    exs = _examples()
    contract.check_batched_equals_one_by_one(adapter, exs, modality, *contract.completions(3))


def test_completion_hidden_is_the_full_forward_at_completion_positions(adapter):
    exs = _examples()
    prompts = adapter.audio_prompts(exs[1:2])
    contract.check_completion_hidden_is_the_full_forward(adapter, prompts, *contract.completions(1),
                                                         model_inputs=adapter.model_inputs)


def test_text_prompt_has_no_placeholders_and_audio_prompt_matches_the_encoder(adapter):
    exs = _examples()
    text = adapter.text_prompts(exs)
    assert not torch.isin(text.input_ids, torch.tensor(adapter.placeholder_token_ids)).any() and not text.extra
    audio = adapter.audio_prompts(exs)
    counts = (audio.input_ids == adapter.audio_token_id).sum(-1).tolist()
    for i, ex in enumerate(exs):
        one = adapter.audio_prompts([ex])
        with torch.no_grad():
            feats = adapter.model_inputs(one.extra)["input_features"]
            emb = adapter.model.model.get_audio_features(feats).pooler_output
        assert counts[i] == emb.shape[0] > 0
    assert counts == [375, 750, 375]
    assert (audio.input_ids == adapter.begin_audio_id).sum(-1).tolist() == [1, 1, 1]
    # same instruction: the prompts share their tail
    assert audio.input_ids[0][-8:].tolist() == text.input_ids[0][-8:].tolist()


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_greedy_generation_through_both_engines_equals_a_plain_argmax_loop(adapter, modality):
    exs = _examples()
    prompts = adapter.audio_prompts(exs) if modality == "audio" else adapter.text_prompts(exs)
    contract.check_both_engines_equal_the_argmax_loop(adapter, prompts, 6, model_inputs=adapter.model_inputs)


def test_save_and_reload_gives_identical_hidden_states(adapter, tmp_path):
    exs = _examples()[:2]
    ids, mask = contract.completions(2)
    adapter.save_pretrained(str(tmp_path / "m"))
    again = load_adapter(ModelConfig(family="voxtral", name_or_path=str(tmp_path / "m"), dtype="float32", device="cpu",
                                     max_audio_seconds=60))
    contract.check_save_and_reload(adapter, again, exs, ids, mask)


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


def test_module_map_covers_every_parameter_and_lora_stays_in_the_decoder():
    a = _load()
    mm = module_map_of(a)
    parts = {n: part_of(n, mm) for n, _ in a.model.named_parameters()}
    assert None not in parts.values()
    assert set(parts.values()) == {"audio_encoder", "projector", "language_model", "lm_head"}
    lora = _load(lora=LoraConfig(r=2, alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"]))
    wrapped = [n for n, _ in lora.model.named_modules() if n.endswith(".lora_A")]
    assert len(wrapped) == 2 * 7 and all(".language_model." in n for n in wrapped)


@pytest.mark.slow
def test_every_method_preset_runs_two_steps_on_the_tiny_model(tmp_path, capsys):
    contract.check_every_method_preset_runs_two_steps("voxtral", tmp_path, capsys)
