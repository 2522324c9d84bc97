"""The adapter contract for the families added as plug-ins (issue #19): Qwen3-Omni's thinker
(MoE) so far. Each on its tiny offline model (real transformers class, random weights):
batched completion hidden states equal one by one (ragged audio, fp32, 1e-5); the text prompt
has no audio placeholders and the audio prompt has exactly as many as the encoder outputs;
greedy generation through both engines equals a plain full-forward argmax loop; save/load;
LoRA stays in the decoder; and every method's preset runs 2 steps on the tiny model."""

from __future__ import annotations

import pytest
import torch

from cord.config import LoraConfig, ModelConfig
from cord.models import load_adapter
from cord.models.base import module_map_of, part_of
from cord.rollout.engine import GenerateEngine, HFEngine
from tests.models import family_contract as contract
from tests.conftest import make_examples

NEW_FAMILIES = ["qwen3-omni"]


def _load(family: str, **kw):
    return load_adapter(ModelConfig(family=family, name_or_path="tiny", dtype="float32", device="cpu", **kw))


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def adapter(request):
    a = _load(request.param)
    contract.sharpen(a)
    return a


def _encoder_tokens(adapter, prompts) -> int:
    """How many embeddings the family's encoder (+ projector) produces for this one-clip batch."""
    core = adapter.model.model
    with torch.no_grad():
        if adapter.family == "qwen3-omni":
            out = core.get_audio_features(prompts.extra["input_features"], prompts.extra["feature_attention_mask"])
            return out.last_hidden_state.shape[0]
    raise AssertionError(adapter.family)


def _completions(n: int, seed: int = 0):
    return contract.completions(n, seed, low=0, high=256)


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_batched_completion_hidden_equals_one_by_one(adapter, modality):
    exs = make_examples(3)  # 0.4 s, 0.95 s, 1.5 s of audio; questions of 1-3 sentences
    contract.check_batched_equals_one_by_one(adapter, exs, modality, *_completions(3))


def test_completion_hidden_is_the_full_forward_at_completion_positions(adapter):
    exs = make_examples(2)
    prompts = adapter.audio_prompts(exs[1:])
    contract.check_completion_hidden_is_the_full_forward(adapter, prompts, *_completions(1))


def test_text_prompt_has_no_placeholders_and_audio_prompt_matches_the_encoder(adapter):
    exs = make_examples(3)
    text = adapter.text_prompts(exs)
    placeholders = torch.tensor(adapter.placeholder_token_ids)
    assert not torch.isin(text.input_ids, placeholders).any()
    assert not text.extra
    audio = adapter.audio_prompts(exs)
    counts = (audio.input_ids == adapter.audio_token_id).sum(-1).tolist()
    for i, ex in enumerate(exs):
        assert counts[i] == _encoder_tokens(adapter, adapter.audio_prompts([ex])) > 0
    assert counts == sorted(counts) and counts[0] < counts[-1]  # longer audio, more tokens
    # same system prompt and instruction: the prompts share their chat-template tail
    tail = adapter.tokenizer.decode(text.input_ids[0][-8:])
    assert adapter.tokenizer.decode(audio.input_ids[0][-8:]) == tail


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_greedy_generation_through_the_engines_equals_a_plain_argmax_loop(adapter, modality):
    exs = make_examples(3)
    prompts = adapter.audio_prompts(exs) if modality == "audio" else adapter.text_prompts(exs)
    ref = contract.argmax_loop(adapter, prompts, 8)
    assert hasattr(adapter, "prefill")  # the hf engine's prefill-once path, not its fallback
    for engine in (HFEngine(adapter, batch_size=2), GenerateEngine(adapter)):
        out = engine.generate(prompts, n=1, greedy=True, max_new_tokens=8)
        assert [out.ids[r][out.mask[r]].tolist() for r in range(3)] == ref, type(engine).__name__


def test_save_and_reload_gives_identical_hidden_states(adapter, tmp_path):
    exs = make_examples(2)
    ids, mask = _completions(2)
    adapter.save_pretrained(str(tmp_path / "m"))
    again = load_adapter(ModelConfig(family=adapter.family, name_or_path=str(tmp_path / "m"), dtype="float32", device="cpu"))
    contract.check_save_and_reload(adapter, again, exs, ids, mask, same_text_prompts=False)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_module_map_covers_every_parameter_but_vision_and_lora_stays_in_the_decoder(family):
    a = _load(family)
    mm = module_map_of(a)
    parts = {n: part_of(n, mm) for n, _ in a.model.named_parameters()}
    assert all(p is not None or n.startswith(("model.visual.", "model.vision_tower.")) for n, p in parts.items())
    assert {"audio_encoder", "language_model", "lm_head"} <= set(parts.values())
    lora = _load(family, lora=LoraConfig(r=2, alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj"]))
    wrapped = [n for n, _ in lora.model.named_modules() if n.endswith(".lora_A")]
    assert wrapped and all(".language_model." in n and ".experts." not in n for n in wrapped)


def test_qwen3_omni_router_loss_is_never_computed_and_experts_train_in_full_fine_tuning(monkeypatch):
    import transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe as m

    from cord.train.setup import select_trainable

    a = _load("qwen3-omni")
    assert a.model.config.text_config.output_router_logits is False
    monkeypatch.setattr(m, "load_balancing_loss_func", lambda *x, **k: (_ for _ in ()).throw(AssertionError("aux")))
    ids, mask = _completions(2)
    a.completion_hidden(a.audio_prompts(make_examples(2)), ids, mask).sum().backward()
    params = select_trainable(a.model, ["language_model"], lora=False, module_map=module_map_of(a))
    names = {n for n, p in a.model.named_parameters() if p.requires_grad}
    assert any(".experts." in n for n in names) and len(params) == len(names)
    assert not any(n.startswith(("model.audio_tower", "model.visual", "lm_head")) for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_method_preset_runs_two_steps_on_the_tiny_model(family, tmp_path, capsys):
    contract.check_every_method_preset_runs_two_steps(family, tmp_path, capsys)


def test_lora_that_peft_would_put_on_the_experts_is_one_line():
    from cord import CordError
    from cord.models.qwen3_omni import Qwen3OmniThinkerAdapter, build_tiny_qwen3_omni_thinker
    from cord.models.registry import apply_lora

    model, tok, fe = build_tiny_qwen3_omni_thinker(mlp_only_layers=[1])  # a dense mlp.gate_proj exists
    adapter = Qwen3OmniThinkerAdapter(model, tok, fe)
    with pytest.raises(CordError, match="put LoRA inside experts"):
        apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "gate_proj", "up_proj"]), adapter=adapter)
    model, tok, fe = build_tiny_qwen3_omni_thinker(mlp_only_layers=[1])
    ok = apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), adapter=adapter)
    assert not any(".experts." in n for n, _ in ok.named_parameters() if ".lora_" in n)
