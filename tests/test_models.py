"""The adapter contract on both Qwen families' tiny models."""

from __future__ import annotations

import warnings

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


def _encoder_output_lengths(adapter, extra) -> torch.Tensor:
    """Audio frames the model's own encoder emits per clip (the model's formula, not cord's)."""
    base = adapter.model.get_base_model() if hasattr(adapter.model, "get_base_model") else adapter.model
    tower = base.model.audio_tower
    return tower._get_feat_extract_output_lengths(extra["feature_attention_mask"].sum(-1))[1]


def test_audio_placeholders_match_the_encoder_output_length(tiny_adapter):
    examples = make_examples(3)
    batch = tiny_adapter.audio_prompts(examples)
    n_tokens = (batch.input_ids == tiny_adapter.audio_token_id).sum(-1)
    assert torch.equal(n_tokens, _encoder_output_lengths(tiny_adapter, batch.extra).to(n_tokens.dtype))
    # 25 audio tokens per second of audio (100 mel frames/s, /4)
    for ex, n in zip(examples, n_tokens.tolist(), strict=True):
        assert abs(n - 25 * len(ex.audio) / 16000) <= 1
    # the placeholders form one run, inside the prompt (bos before, eos after, never last)
    tok = tiny_adapter.tokenizer.convert_tokens_to_ids
    for row, n in zip(batch.input_ids, n_tokens.tolist(), strict=True):
        where = (row == tiny_adapter.audio_token_id).nonzero()[:, 0]
        assert where[-1] - where[0] + 1 == n
        assert row[where[0] - 1] == tok("<|audio_bos|>") and row[where[-1] + 1] == tok("<|audio_eos|>")
    text = tiny_adapter.text_prompts(examples)
    assert not (text.input_ids == tiny_adapter.audio_token_id).any()


def test_completion_positions_read_the_completion_not_the_prompt(tiny_adapter):
    """Position t of completion_hidden must see exactly the prompt and completion tokens < t:
    changing completion token j changes positions t > j and none at t <= j. A slice one
    position late (t would see token t) or early (into the prompt's last tokens, placeholders
    for a prompt ending in audio) breaks one of the two."""
    examples = make_examples(3)
    batch = tiny_adapter.audio_prompts(examples)
    assert not (batch.input_ids[:, -1] == tiny_adapter.audio_token_id).any()
    t = 5
    ids, mask = _completions(3, t, 250)
    with torch.no_grad():
        ref = tiny_adapter.completion_hidden(batch, ids, mask)
        for j in range(t):
            changed = ids.clone()
            changed[:, j] = (ids[:, j] + 1) % 250
            moved = (tiny_adapter.completion_hidden(batch, changed, mask) - ref).abs().amax(-1)  # (B, T)
            for i in range(3):
                if not mask[i, j]:
                    continue
                valid = mask[i].nonzero()[:, 0]
                before, after = valid[valid <= j], valid[valid > j]
                assert moved[i, before].max() <= 1e-6, (i, j)
                if len(after):
                    assert moved[i, after].min() > 1e-4, (i, j)


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


# ------------------------------------------------------------------ loading (issue 11 item 10)


def test_checkpoint_loads_straight_onto_the_device_in_the_target_dtype(tmp_path, monkeypatch):
    """from_pretrained gets device_map={"": device} and dtype; no full host copy is moved
    afterwards (no .to on the loaded model)."""
    import transformers

    from cord.config import ModelConfig
    from cord.models import load_adapter

    load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu")).save_pretrained(
        str(tmp_path)
    )
    cls = transformers.Qwen2AudioForConditionalGeneration
    real = cls.from_pretrained
    calls, moves = [], []

    def spy(klass, *args, **kwargs):
        calls.append(kwargs)
        model = real(*args, **kwargs)
        plain_to = model.to
        model.to = lambda *a, **k: moves.append((a, k)) or plain_to(*a, **k)
        return model

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    adapter = load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(tmp_path), dtype="bfloat16", device="cpu"))
    assert len(calls) == 1
    assert calls[0]["device_map"] == {"": torch.device("cpu")} and calls[0]["dtype"] == torch.bfloat16
    assert moves == []
    assert {p.dtype for p in adapter.model.parameters()} == {torch.bfloat16}


def test_tiny_model_in_bf16_is_the_model_a_bf16_checkpoint_loads(tmp_path):
    """The tiny path loads like a checkpoint: weights in bf16, the buffers transformers keeps
    in fp32 (rotary inv_freq) stay fp32, so a saved-and-reloaded tiny model computes the same."""
    from cord.config import ModelConfig
    from cord.models import load_adapter

    tiny = load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="bfloat16", device="cpu"))
    assert {p.dtype for p in tiny.model.parameters()} == {torch.bfloat16}
    inv_freq = [b for n, b in tiny.model.named_buffers() if n.endswith("inv_freq")]
    assert inv_freq and all(b.dtype == torch.float32 for b in inv_freq)
    tiny.save_pretrained(str(tmp_path))
    again = load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(tmp_path), dtype="bfloat16", device="cpu"))
    ex = make_examples(2)
    ids, mask = _completions(2, 4, 250)
    with torch.no_grad():
        a = tiny.completion_hidden(tiny.audio_prompts(ex), ids, mask)
        b = again.completion_hidden(again.audio_prompts(ex), ids, mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


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


#: every family loaded from a saved folder (transformers 5.25 refuses ``device_map`` on ``meta``)
SAVED_FAMILIES = ["qwen2-audio", "qwen2.5-omni", "qwen3-omni", "voxtral", "gemma3n", "step-audio2"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-export"])
@pytest.mark.parametrize("family", SAVED_FAMILIES)
def test_a_saved_model_loads_onto_the_meta_device_without_memory(tmp_path, family, lora):
    """A folder cord wrote loads on ``meta`` with every parameter there, in the asked dtype,
    with the saved model's parameter names and shapes (a LoRA export: base + adapter)."""
    from cord.config import LoraConfig, ModelConfig
    from cord.models import load_adapter
    from cord.models.export import export_model

    lora_cfg = LoraConfig(r=2, alpha=4, dropout=0.0) if lora else None
    trained = load_adapter(ModelConfig(family=family, name_or_path="tiny", dtype="float32", device="cpu",
                                       lora=lora_cfg))
    export_model(trained, tmp_path / "model")
    saved = load_adapter(ModelConfig(family=family, name_or_path=str(tmp_path / "model"), dtype="bfloat16",
                                     device="meta", lora=lora_cfg))
    devices = {p.device.type for p in saved.model.parameters()}
    assert devices == {"meta"}, devices
    base = {(n, p.dtype) for n, p in saved.model.named_parameters() if "lora_" not in n}
    assert {d for _, d in base} == {torch.bfloat16}
    shapes = {n: tuple(p.shape) for n, p in saved.model.named_parameters()}
    assert shapes == {n: tuple(p.shape) for n, p in trained.model.named_parameters()}


# ----------------------------------------------------- bad model paths (issue 12 item 5)


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "~/no-such-model-dir", "runs/x/model"])
def test_missing_local_model_path_is_one_clear_line(name):
    from cord import CordError
    from cord.config import ModelConfig
    from cord.models import load_adapter

    with pytest.raises(CordError) as err:
        load_adapter(ModelConfig(family="qwen2-audio", name_or_path=name, device="cpu"))
    msg = str(err.value)
    assert msg.startswith(f"model path {name} does not exist") and "hub name" in msg and "\n" not in msg
    assert "Repo id" not in msg


def test_folder_without_a_model_and_an_invalid_hub_name_are_one_line(tmp_path):
    from cord import CordError
    from cord.config import ModelConfig
    from cord.models import load_adapter

    with pytest.raises(CordError, match="has no config.json: not a saved model"):
        load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(tmp_path), device="cpu"))
    for name in ("not a name!", "org/no-such-model-cord-test"):  # offline in tests (conftest)
        with pytest.raises(CordError, match=r"cannot load model .* \(and no local folder has that name\)") as err:
            load_adapter(ModelConfig(family="qwen2-audio", name_or_path=name, device="cpu"))
        assert "\n" not in str(err.value)


# ------------------------------------------------------- presets (issue 11 item 5)

PRESET_DIRS = ["tiny", "mini", "qwen2-audio-7b", "qwen2.5-omni-7b", "qwen3-omni", "step-audio2-mini", "voxtral",
               "gemma3n"]


def _presets():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    # _*.yaml: parts presets name in base:; reproduce.yaml: `cord reproduce`'s config (tests/test_reproduce.py)
    found = sorted(p for d in PRESET_DIRS for p in (root / d).glob("*.yaml")
                   if not p.name.startswith("_") and p.name != "reproduce.yaml")
    # every folder of cord presets is covered (configs/accelerate holds accelerate's own files)
    assert {p.name for p in root.iterdir() if p.is_dir()} == {*PRESET_DIRS, "accelerate"}
    return found


def test_every_shipped_preset_loads_and_has_no_lora_dropout():
    from cord.config import load_config

    presets = _presets()
    assert len(presets) >= 20
    with_lora = 0
    for path in presets:
        cfg = load_config(path)
        if cfg.model.lora is not None:
            with_lora += 1
            assert cfg.model.lora.dropout == 0.0, path
    assert with_lora >= 14  # the 7B presets train LoRA adapters


def test_lora_dropout_with_an_on_policy_method_warns_at_validation():
    from cord.config import load_config
    from cord.types import METHODS

    on_policy = {name for name, spec in METHODS.items() if spec.seq or spec.token == "reverse_kl"}
    assert on_policy == {"opd", "opd_weighted", "grpo", "grpo_opd", "cord"}
    for method in METHODS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_config(None, [f"objective.method={method}", "model.lora.dropout=0.05"])
            load_config(None, [f"objective.method={method}", "model.lora.dropout=0"])
        hits = [w for w in caught if "no longer on-policy" in str(w.message)]
        assert len(hits) == (method in on_policy), method
        if hits:
            assert "model.lora.dropout=0.05" in str(hits[0].message) and repr(method) in str(hits[0].message)
