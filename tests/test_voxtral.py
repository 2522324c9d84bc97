"""The adapter contract for the ``voxtral`` family (VoxtralForConditionalGeneration) on its tiny
offline model (real transformers class, real audio geometry: 128 mel bins, 30 s chunks of 375
tokens; tekken tokenizer read by transformers' tekken.json converter): prompts laid out as
mistral-common lays them, features as VoxtralProcessor makes them, batched == one by one with
a two-chunk clip in the batch, placeholders == encoder output, both engines == a plain argmax
loop, save/load, LoRA in the decoder, and every method's preset runs 2 steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cord import CordError
from cord.cli import main
from cord.config import LoraConfig, ModelConfig, RolloutConfig
from cord.models import load_adapter
from cord.models.base import module_map_of, part_of
from cord.rollout.engine import make_engine
from tests.conftest import make_examples

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["sft", "forward_kl", "opd", "opd_weighted", "grpo", "grpo_opd", "cord"]


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
    with torch.no_grad():  # sharpen attention and head: at init a wrong position barely shows
        for name, p in a.model.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(12.0)
        a.lm_head().weight.mul_(8.0)
    return a


def _completions(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(40, 250, (n, 7), generator=g)
    mask = torch.ones(n, 7, dtype=torch.bool)
    for i in range(n):
        mask[i, 3 + 2 * i:] = False  # ragged: 3, 5, 7 tokens
    return ids, mask


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
    make = adapter.audio_prompts if modality == "audio" else adapter.text_prompts
    ids, mask = _completions(3)
    with torch.no_grad():
        batched = adapter.completion_hidden(make(exs), ids, mask)
        for i in range(3):
            alone = adapter.completion_hidden(make(exs[i : i + 1]), ids[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(batched[i][mask[i]], alone[0][mask[i]], atol=1e-5, rtol=1e-5)


def test_completion_hidden_is_the_full_forward_at_completion_positions(adapter):
    exs = _examples()
    prompts = adapter.audio_prompts(exs[1:2])
    ids, mask = _completions(1)
    with torch.no_grad():
        h = adapter.completion_hidden(prompts, ids, mask)
        full = adapter.model(
            input_ids=torch.cat([prompts.input_ids, ids], 1),
            attention_mask=torch.cat([prompts.attention_mask, mask.long()], 1),
            **adapter.model_inputs(prompts.extra),
        ).logits
    P = prompts.input_ids.shape[1]
    torch.testing.assert_close(adapter.lm_head()(h)[0, :3], full[0, P - 1 : P + 2], atol=1e-4, rtol=1e-4)


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


def _argmax_loop(adapter, prompts, steps: int) -> list[list[int]]:
    """Greedy decoding by full forwards, no cache: the reference for the engines."""
    out = []
    for r in range(len(prompts)):
        one = prompts.select([r])
        ids, attn = one.input_ids, one.attention_mask
        got = []
        for _ in range(steps):
            with torch.no_grad():
                res = adapter.model(input_ids=ids, attention_mask=attn, **adapter.model_inputs(one.extra))
            logits = res.logits[0, -1]
            logits[adapter.placeholder_token_ids] = float("-inf")
            tok = int(logits.argmax())
            got.append(tok)
            if tok in adapter.eos_token_ids:
                break
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)
            attn = torch.cat([attn, torch.ones(1, 1, dtype=attn.dtype)], 1)
        out.append(got)
    return out


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_greedy_generation_through_both_engines_equals_a_plain_argmax_loop(adapter, modality):
    exs = _examples()
    prompts = adapter.audio_prompts(exs) if modality == "audio" else adapter.text_prompts(exs)
    ref = _argmax_loop(adapter, prompts, 6)
    prefills = []
    adapter.prefill = lambda p, _f=type(adapter).prefill: prefills.append(len(p)) or _f(adapter, p)
    try:
        for name in ("hf", "hf-generate"):
            engine = make_engine(adapter, RolloutConfig(engine=name), batch_size=2)
            out = engine.generate(prompts, n=1, greedy=True, max_new_tokens=6)
            assert [out.ids[r][out.mask[r]].tolist() for r in range(3)] == ref, name
    finally:
        del adapter.prefill
    assert prefills == [2, 1]  # the hf engine took its prefill-once path (2 prompts per call)


def test_save_and_reload_gives_identical_hidden_states(adapter, tmp_path):
    exs = _examples()[:2]
    ids, mask = _completions(2)
    adapter.save_pretrained(str(tmp_path / "m"))
    again = load_adapter(ModelConfig(family="voxtral", name_or_path=str(tmp_path / "m"), dtype="float32", device="cpu",
                                     max_audio_seconds=60))
    with torch.no_grad():
        a = adapter.completion_hidden(adapter.audio_prompts(exs), ids, mask)
        b = again.completion_hidden(again.audio_prompts(exs), ids, mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert again.text_prompts(exs).input_ids.tolist() == adapter.text_prompts(exs).input_ids.tolist()


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


FAST = ["model.name_or_path=tiny", "model.dtype=float32", "model.device=cpu", "data.train=builtin:tiny-arith",
        "data.limit=4", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=2", "train.progress=false",
        "train.tensorboard=false", "train.bf16=false", "rollout.max_new_tokens=4", "rollout.seq_n=2"]


@pytest.mark.slow
def test_every_method_preset_runs_two_steps_on_the_tiny_model(tmp_path, capsys):
    for method in METHODS:
        out = tmp_path / method
        argv = ["train", "--config", str(ROOT / "configs" / "voxtral" / f"{method}.yaml"),
                "--set", f"train.output_dir={out}"]
        for s in FAST:
            argv += ["--set", s]
        assert main(argv) == 0, capsys.readouterr().err
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2], method
        assert all(not r["skipped"] and math.isfinite(r["loss"]) for r in rows), method
