"""The adapter contract, one set of checks for every family of the registry
(cord.models.registry.BUILTIN_FAMILIES: each builds a tiny offline model, real classes at toy
size, random weights), run on each family's tiny model in fp32:

- batched completion hidden states (and log-probs) equal each example's alone, with ragged
  audio and ragged completions (1e-5);
- completion position t sees the prompt and the completion tokens before t, nothing else;
- the head over completion_hidden is the model's own full forward at the completion positions;
- the text prompt holds no placeholders; the audio prompt holds one per encoder output; both
  end alike (instruction, assistant turn);
- greedy generation through both engines ("hf" with its prefill-once path, "hf-generate")
  equals a plain full-forward argmax loop, and cached decoding gives a full recompute's logits;
- save and reload (as saved, and on the meta device) give the same model;
- the module map covers every parameter but vision towers; LoRA stays in the decoder (off any
  experts) and trains only its own weights;
- every method's preset trains 2 steps on the tiny model, and its export loads back.

What differs between families (examples, encoder, full forward, presets) is in
tests/models/family_contract.py; what only one family has is in tests/models/test_<family>.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cord.config import LoraConfig, RolloutConfig
from cord.models import registry
from cord.models.base import module_map_of, part_of
from cord.rollout.engine import make_engine
from tests.models import family_contract as contract
from tests.models.family_contract import FAMILIES, METHODS, Family


def test_every_builtin_family_has_its_side_of_the_contract():
    """A family added to the registry is run through the contract (its entry below)."""
    assert set(FAMILIES) == set(registry.BUILTIN_FAMILIES) <= set(registry.families())


@pytest.fixture(scope="module", params=sorted(FAMILIES), ids=str)
def spec(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def adapter(spec):
    """The family's tiny model, sharpened (see family_contract.sharpen); shared by the module's
    tests, which do not change it."""
    a = spec.adapter()
    contract.sharpen(a, attention=spec.sharpen_attention)
    return a


def _prompts(adapter, modality: str, exs):
    return adapter.audio_prompts(exs) if modality == "audio" else adapter.text_prompts(exs)


def _logprobs(adapter, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logits = contract.softcapped(adapter, adapter.lm_head()(hidden))
    return torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]


# ----------------------------------------------------------------------------- hidden states
@pytest.mark.parametrize("modality", ["audio", "text"])
def test_batched_completion_hidden_equals_one_by_one(spec, adapter, modality):
    exs = spec.examples()
    batch = _prompts(adapter, modality, exs)
    if modality == "text" or spec.audio_prompt_lengths_differ:  # so the batch has left padding
        assert len(set(batch.attention_mask.sum(-1).tolist())) > 1
    ids, mask = spec.completions(adapter, len(exs))
    with torch.no_grad():
        hidden = adapter.completion_hidden(batch, ids, mask)
        assert hidden.shape == (len(exs), ids.shape[1], adapter.lm_head().in_features)
        lp = _logprobs(adapter, hidden, ids)
        for i in range(len(exs)):
            alone = _prompts(adapter, modality, exs[i : i + 1])
            assert alone.attention_mask.all()  # no padding at all when alone
            valid = mask[i]
            one = adapter.completion_hidden(alone, ids[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(hidden[i][valid], one[0][valid], atol=1e-5, rtol=1e-5)
            # the row taken out of the batch, its left padding kept
            row = adapter.completion_hidden(batch.select([i]), ids[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(hidden[i][valid], row[0][valid], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lp[i][valid], _logprobs(adapter, one, ids[i : i + 1])[0][valid],
                                       atol=1e-5, rtol=1e-5)
            # and with the completion cut to its own length (no right padding either)
            k = int(valid.sum())
            cut = adapter.completion_hidden(alone, ids[i : i + 1, :k], mask[i : i + 1, :k])
            torch.testing.assert_close(hidden[i, :k], cut[0], atol=1e-5, rtol=1e-5)


def test_completion_positions_read_the_completion_not_the_prompt(spec, adapter):
    """Position t of completion_hidden sees exactly the prompt and the completion tokens < t:
    changing completion token j changes positions t > j and none at t <= j. A slice one
    position late (t would see token t) or early (into the prompt's last tokens, placeholders
    for a prompt ending in audio) breaks one of the two."""
    exs = spec.examples()
    batch = adapter.audio_prompts(exs)
    assert not torch.isin(batch.input_ids[:, -1], torch.tensor(adapter.placeholder_token_ids)).any()
    ids, mask = spec.completions(adapter, len(exs))
    vocab = adapter.lm_head().weight.shape[0]
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[adapter.placeholder_token_ids] = False
    with torch.no_grad():
        ref = adapter.completion_hidden(batch, ids, mask)
        for j in range(ids.shape[1]):
            changed = ids.clone()
            for i in range(len(exs)):  # the next id that is not a placeholder
                nxt = (int(ids[i, j]) + 1) % vocab
                while not allowed[nxt] or nxt == int(ids[i, j]):
                    nxt = (nxt + 1) % vocab
                changed[i, j] = nxt
            moved = (adapter.completion_hidden(batch, changed, mask) - ref).abs().amax(-1)  # (B, T)
            for i in range(len(exs)):
                if not mask[i, j]:
                    continue
                valid = mask[i].nonzero()[:, 0]
                before, after = valid[valid <= j], valid[valid > j]
                assert moved[i, before].max() <= 1e-6, (i, j)
                if len(after):
                    assert moved[i, after].min() > 1e-4, (i, j)


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_completion_hidden_is_the_full_forward_at_completion_positions(spec, adapter, modality):
    """The head (soft-capped where the family caps) over completion_hidden of one prompt equals
    the model's own forward over prompt + completion, logits and log-probs, every position."""
    prompt = _prompts(adapter, modality, spec.examples()[1:2])
    ids, mask = spec.completions(adapter, 2, 3)
    ids, mask = ids[1:2], mask[1:2]
    P = prompt.input_ids.shape[1]
    with torch.no_grad():
        z = contract.softcapped(adapter, adapter.lm_head()(adapter.completion_hidden(prompt, ids, mask)))
        full = spec.logits(adapter, torch.cat([prompt.input_ids, ids], 1),
                           torch.cat([prompt.attention_mask, mask.long()], 1), prompt.extra, P)
    full = full[:, P - 1 : P - 1 + ids.shape[1]]
    valid = mask[0]
    torch.testing.assert_close(z[0][valid], full[0][valid], atol=1e-4, rtol=1e-4)
    mine = torch.log_softmax(z[0], -1).gather(-1, ids[0, :, None])[:, 0]
    ref = torch.log_softmax(full[0], -1).gather(-1, ids[0, :, None])[:, 0]
    torch.testing.assert_close(mine[valid], ref[valid], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------- prompts
def test_text_prompt_has_no_placeholders_and_audio_prompt_matches_the_encoder(spec, adapter):
    exs = spec.examples()
    text = adapter.text_prompts(exs)
    assert not torch.isin(text.input_ids, torch.tensor(adapter.placeholder_token_ids)).any()
    assert not text.extra
    audio = adapter.audio_prompts(exs)
    slot = getattr(adapter, spec.audio_token)
    assert slot in adapter.placeholder_token_ids
    counts = (audio.input_ids == slot).sum(-1).tolist()
    with torch.no_grad():
        for i, ex in enumerate(exs):
            assert counts[i] == spec.encoder_tokens(adapter, adapter.audio_prompts([ex])) > 0, i
    # the same instruction and assistant turn: the prompts end alike
    n = spec.shared_tail
    assert audio.input_ids[0][-n:].tolist() == text.input_ids[0][-n:].tolist()


# ---------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("modality", ["audio", "text"])
def test_greedy_generation_through_both_engines_equals_a_plain_argmax_loop(spec, adapter, modality):
    """Greedy generation through the "hf" and "hf-generate" engines equals a full-forward
    argmax loop, and the hf engine takes its prefill-once path (2 prompts per call, 3 prompts)."""
    prompts = _prompts(adapter, modality, spec.examples()[:3])
    steps = 8
    ref = contract.argmax_loop(adapter, spec, prompts, steps)
    prefills = []
    adapter.prefill = lambda p, _f=type(adapter).prefill: prefills.append(len(p)) or _f(adapter, p)
    try:
        for name in ("hf", "hf-generate"):
            engine = make_engine(adapter, RolloutConfig(engine=name), batch_size=2)
            out = engine.generate(prompts, n=1, greedy=True, max_new_tokens=steps)
            assert [out.ids[r][out.mask[r]].tolist() for r in range(len(prompts))] == ref, name
    finally:
        del adapter.prefill
    assert prefills == [2, 1]


def test_cached_decoding_gives_the_logits_of_a_full_recompute_at_every_step(spec, adapter):
    """prefill + decode (the hf engine's cache path) against completion_hidden over the tokens
    so far, every step, ragged audio prompts in one batch."""
    prompts = adapter.audio_prompts(spec.examples())
    head = adapter.lm_head()
    steps = 6
    with torch.no_grad():
        hidden, state = adapter.prefill(prompts)
        cached, tokens = [], []
        for _ in range(steps):
            logits = head(hidden)
            cached.append(logits)
            logits = logits.clone()
            logits[:, adapter.placeholder_token_ids] = float("-inf")
            tok = logits.argmax(-1)
            tokens.append(tok)
            hidden = adapter.decode(state, tok)
        seq = torch.stack(tokens, dim=1)
        full = head(adapter.completion_hidden(prompts, seq, torch.ones_like(seq, dtype=torch.bool)))
    for t in range(steps):
        torch.testing.assert_close(cached[t], full[:, t], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- save and load
def test_save_and_reload_gives_identical_hidden_states(spec, adapter, tmp_path):
    """The reloaded model is the saved (sharpened) one, not a fresh tiny build; another tiny
    seed gives another model, so the equality means something."""
    exs = spec.examples()[:2]
    ids, mask = spec.completions(adapter, 2)
    adapter.save_pretrained(str(tmp_path / "m"))
    again = spec.adapter(name_or_path=str(tmp_path / "m"), tiny_seed=123)
    other = spec.adapter(tiny_seed=123)
    modalities = ["audio", "text"] if spec.same_text_prompts_after_reload else ["audio"]
    with torch.no_grad():
        for modality in modalities:
            a, b = _prompts(adapter, modality, exs), _prompts(again, modality, exs)
            assert b.input_ids.tolist() == a.input_ids.tolist(), modality
            torch.testing.assert_close(again.completion_hidden(b, ids, mask), adapter.completion_hidden(a, ids, mask),
                                       atol=0, rtol=0)
        prompts = adapter.audio_prompts(exs)
        assert not torch.allclose(other.completion_hidden(prompts, ids, mask), adapter.completion_hidden(prompts, ids, mask))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-export"])
def test_a_saved_model_loads_onto_the_meta_device_without_memory(spec, tmp_path, lora):
    """A folder cord wrote loads on ``meta`` with every parameter there, in the asked dtype,
    with the saved model's parameter names and shapes (a LoRA export: base + adapter)."""
    from cord.models.export import export_model

    lora_cfg = LoraConfig(r=2, alpha=4, dropout=0.0) if lora else None
    trained = spec.adapter(lora=lora_cfg)
    export_model(trained, tmp_path / "model")
    saved = spec.adapter(name_or_path=str(tmp_path / "model"), dtype="bfloat16", device="meta", lora=lora_cfg)
    devices = {p.device.type for p in saved.model.parameters()}
    assert devices == {"meta"}, devices
    base = {(n, p.dtype) for n, p in saved.model.named_parameters() if "lora_" not in n}
    assert {d for _, d in base} == {torch.bfloat16}
    shapes = {n: tuple(p.shape) for n, p in saved.model.named_parameters()}
    assert shapes == {n: tuple(p.shape) for n, p in trained.model.named_parameters()}


# ----------------------------------------------------------------------- module map and LoRA
def test_module_map_covers_every_parameter_but_vision_and_lora_stays_in_the_decoder(spec):
    a = spec.adapter()
    mm = module_map_of(a)
    parts = {n: part_of(n, mm) for n, _ in a.model.named_parameters()}
    unmapped = sorted(n for n, p in parts.items() if p is None)
    assert all(n.startswith(("model.visual.", "model.vision_tower.")) for n in unmapped), unmapped[:5]
    assert set(parts.values()) - {None} == spec.parts
    assert torch.is_tensor(a.lm_head().weight)
    lora = spec.adapter(lora=LoraConfig(r=2, alpha=4, target_modules=contract.LORA_TARGETS))
    wrapped = [n for n, _ in lora.model.named_modules() if n.endswith(".lora_A")]
    assert len(wrapped) == spec.lora_modules
    assert all(".language_model." in n and ".experts." not in n for n in wrapped)


def test_lora_with_the_default_targets_trains_only_its_own_weights_in_the_decoder(spec):
    lora = spec.adapter(lora=LoraConfig(r=4))
    lora_names = [n for n, _ in lora.model.named_parameters() if "lora_" in n]
    assert lora_names and all(".language_model." in n for n in lora_names)
    assert {n for n, p in lora.model.named_parameters() if p.requires_grad} == set(lora_names)
    exs = spec.examples()[:2]
    ids, mask = spec.completions(lora, 2)
    hidden = lora.completion_hidden(lora.audio_prompts(exs), ids, mask)
    assert hidden.shape[:2] == ids.shape
    hidden.sum().backward()
    assert any(p.grad is not None for n, p in lora.model.named_parameters() if "lora_B" in n)


# ----------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("method", [m if m == "cord" else pytest.param(m, marks=pytest.mark.slow) for m in METHODS])
def test_every_method_preset_trains_two_steps_on_the_tiny_model(spec, method, tmp_path, capsys):
    """configs/<folder>/<method>.yaml trains 2 finite, unskipped steps on the family's tiny
    model, and what it exports loads back (with its LoRA adapter where the preset trains one).
    ``cord`` (every term) runs in the fast lane, the other methods with the slow tests."""
    from cord.cli import main
    from cord.config import load_config

    preset = contract.ROOT / "configs" / spec.presets / f"{method}.yaml"
    out = tmp_path / "run"
    argv = ["train", "--config", str(preset), "--set", f"train.output_dir={out}"]
    for s in (*contract.FAST, *spec.preset_sets):
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(not r["skipped"] and math.isfinite(r["loss"]) for r in rows)
    cfg = load_config(preset)
    assert cfg.model.family == spec.name
    reloaded = spec.adapter(name_or_path=str(out / "model"))
    assert hasattr(reloaded.model, "disable_adapter") == (cfg.model.lora is not None)
