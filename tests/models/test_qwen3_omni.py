"""What only the ``qwen3-omni`` family (Qwen3-Omni's thinker, MoE) has, on its tiny offline
model: the router's auxiliary loss is never computed, the experts train in full fine-tuning,
LoRA that peft would put inside the experts is refused, longer audio gives more placeholders.
The adapter contract (batched == one by one, placeholders == encoder output, both engines ==
a plain argmax loop, save/load, LoRA in the decoder off the experts, every method's preset)
runs on it in tests/models/test_family_contract.py."""

from __future__ import annotations

import pytest

from cord.config import LoraConfig, ModelConfig
from cord.models import load_adapter
from cord.models.base import module_map_of
from tests.conftest import make_examples
from tests.models.family_contract import completions


def _load(family: str, **kw):
    return load_adapter(ModelConfig(family=family, name_or_path="tiny", dtype="float32", device="cpu", **kw))


def _completions(n: int, seed: int = 0):
    return completions(n, seed, low=0, high=256)


def test_longer_audio_gives_more_placeholders():
    a = _load("qwen3-omni")
    audio = a.audio_prompts(make_examples(3))  # 0.4 s, 0.95 s, 1.5 s of audio
    counts = (audio.input_ids == a.audio_token_id).sum(-1).tolist()
    assert counts == sorted(counts) and counts[0] < counts[-1]


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
