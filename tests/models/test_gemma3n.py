"""What only the ``gemma3n`` family (Gemma 3n audio + text, composed from transformers' gemma3n
modules without the timm vision tower) has, on its tiny offline model: prompts as Gemma 3n's
chat template + processor lay them (188 soft tokens per clip, filled from a ragged encoder
output, each clip encoded alone), logits equal transformers' own model, the engine samples
from the soft-capped distribution the objectives score, the train step gets the soft cap,
checkpoint-name loading, the KV-shared layers LoRA cannot wrap. The adapter contract
(batched == one by one, placeholders == encoder output, both engines == a plain argmax loop,
save/load, LoRA in the decoder, every method's preset) runs on it in
tests/models/test_family_contract.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cord import CordError
from cord.config import LoraConfig, ModelConfig, RolloutConfig
from cord.models import load_adapter
from cord.objectives import token_logprobs
from cord.rollout.engine import make_engine
from tests.conftest import make_examples
from tests.models import family_contract as contract
from tests.models.family_contract import gemma3n_examples as _examples

ROOT = Path(__file__).resolve().parents[2]


def _load(**kw):
    return load_adapter(ModelConfig(family="gemma3n", name_or_path="tiny", dtype="float32", device="cpu", **kw))


@pytest.fixture(scope="module")
def adapter():
    a = _load()
    contract.sharpen(a, attention=False)  # the head (tied to the embeddings): at init logits are ~uniform
    return a


def test_prompts_are_laid_out_as_the_chat_template_and_processor_lay_them(adapter):
    tok = adapter.tokenizer
    exs = _examples()
    audio = adapter.audio_prompts(exs)
    text = adapter.text_prompts(exs)
    instr = adapter.instruction.strip()
    for i, ex in enumerate(exs):
        want_audio = tok("<bos><start_of_turn>user\n\n\n<start_of_audio>" + "<audio_soft_token>" * 188
                         + f"<end_of_audio>\n\n{instr}<end_of_turn>\n<start_of_turn>model\n",
                         add_special_tokens=False)["input_ids"]
        want_text = tok(f"<bos><start_of_turn>user\n{ex.question_text.strip()}\n{instr}<end_of_turn>\n"
                        "<start_of_turn>model\n", add_special_tokens=False)["input_ids"]
        assert audio.input_ids[i][audio.attention_mask[i].bool()].tolist() == want_audio
        assert text.input_ids[i][text.attention_mask[i].bool()].tolist() == want_text
    eot, eos = tok.convert_tokens_to_ids(["<end_of_turn>", "<eos>"])
    assert adapter.end_of_turn_token_id == eot and sorted(adapter.eos_token_ids) == sorted({eos, eot})
    assert adapter.logit_softcap == 30.0
    # every vision/audio-vocabulary id is a placeholder (never sampled)
    cfg = adapter.model.config
    assert adapter.placeholder_token_ids == list(range(cfg.text_config.vocab_size_per_layer_input,
                                                       cfg.text_config.vocab_size))
    assert {cfg.audio_token_id, cfg.eoa_token_id} <= set(adapter.placeholder_token_ids)


def test_system_prompt_goes_in_front_of_the_first_user_turn():
    a = _load(system_prompt="Be brief.")
    ids = a.text_prompts(make_examples(1)).input_ids[0].tolist()
    assert a.tokenizer.decode(ids).startswith("<bos><start_of_turn>user\nBe brief.\n\nHow much")


def test_features_are_the_extractors_one_clip_at_a_time(adapter):
    exs = _examples()
    prompts = adapter.audio_prompts(exs)
    for i, ex in enumerate(exs):
        ref = adapter.feature_extractor([ex.audio], sampling_rate=16000, return_tensors="pt")
        n = int(prompts.extra["audio_frames"][i])
        assert n == ref["input_features"].shape[1]
        torch.testing.assert_close(prompts.extra["input_features"][i, :n], ref["input_features"][0], atol=0, rtol=0)
        assert prompts.extra["input_features_mask"][i, :n].tolist() == ref["input_features_mask"][0].tolist()


def test_audio_is_merged_as_transformers_gemma3n_model_merges_it(adapter):
    """Reference: Gemma3nModel.forward's audio path (get_audio_features, padding embedding of
    the last audio id for masked and missing frames, masked_scatter), written out here."""
    core = adapter.model.model
    cfg = adapter.model.config
    ex = _examples()[2]
    prompts = adapter.audio_prompts([ex])
    feats = adapter.feature_extractor([ex.audio], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        enc = core.audio_tower(feats["input_features"], ~feats["input_features_mask"].bool(), return_dict=True)
        audio = core.embed_audio(inputs_embeds=enc.last_hidden_state)
        pad = core.embed_audio(input_ids=torch.tensor([[cfg.text_config.vocab_size - 1]]))
        audio = torch.where(enc.audio_mel_mask.unsqueeze(-1), pad, audio)
        audio = torch.cat([audio, pad.expand(1, 188 - audio.shape[1], -1)], 1)
        ids = prompts.input_ids
        ref = core.language_model.embed_tokens(ids)
        amask = ids >= cfg.audio_config.vocab_offset
        hard = core.embed_audio(input_ids=torch.where(amask, ids, cfg.audio_config.vocab_offset))
        ref = torch.where(amask.unsqueeze(-1), hard, ref)
        slots = (ids == cfg.audio_token_id).unsqueeze(-1).expand_as(ref)
        ref = ref.masked_scatter(slots, audio)
        got, per_layer = core.embed(ids, **prompts.extra)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    # per-layer inputs: placeholder ids (outside the per-layer table) read row 0, as transformers does
    torch.testing.assert_close(per_layer, core.language_model.get_per_layer_inputs(ids), atol=0, rtol=0)


def test_each_clip_is_encoded_alone_bit_for_bit(adapter):
    """The conformer's output depends on the batch's padding (by ~1e-6 here, 2.6e-4 at E2B
    size), so the clips of a batch are encoded one at a time: each equals its clip alone."""
    core = adapter.model.model
    exs = _examples()
    audio = adapter.audio_prompts(exs)
    with torch.no_grad():
        got = core.audio_embeddings(audio.extra["input_features"], audio.extra["input_features_mask"],
                                    audio.extra["audio_frames"])
        for i, ex in enumerate(exs):
            f = adapter.feature_extractor([ex.audio], sampling_rate=16000, return_tensors="pt")
            enc = core.audio_tower(f["input_features"], ~f["input_features_mask"].bool(), return_dict=True)
            k = int((~enc.audio_mel_mask).sum())
            ref = core.embed_audio(inputs_embeds=enc.last_hidden_state)[0, :k]
            torch.testing.assert_close(got[i, :k], ref, atol=0, rtol=0)


def test_logits_equal_transformers_gemma3n_for_conditional_generation(adapter):
    """The reference: transformers' own Gemma3nForConditionalGeneration (its vision tower, which
    needs timm, replaced by an empty module) with the same weights, fed as Gemma3nProcessor
    feeds one clip; logits (soft-capped) for audio and text prompts."""
    from unittest import mock

    import transformers.models.gemma3n.modeling_gemma3n as mg

    cfg = adapter.model.config
    make = mg.AutoModel.from_config

    def no_vision(c, *args, **kw):
        return torch.nn.Module() if c is cfg.vision_config else make(c, *args, **kw)

    with mock.patch.object(mg.AutoModel, "from_config", side_effect=no_vision):
        ref = mg.Gemma3nForConditionalGeneration(cfg).eval()
    missing, unexpected = ref.load_state_dict(adapter.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("model.embed_vision.") for k in missing)
    exs = _examples()
    for i, ex in enumerate(exs):
        for prompts in (adapter.audio_prompts([ex]), adapter.text_prompts([ex])):
            feats = {}
            if prompts.modality == "audio":
                f = adapter.feature_extractor([ex.audio], sampling_rate=16000, return_tensors="pt")
                feats = {"input_features": f["input_features"], "input_features_mask": f["input_features_mask"]}
            with torch.no_grad():
                want = ref(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, **feats).logits
                got = adapter.model(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask,
                                    **prompts.extra).logits
            assert want.abs().max() > 2.0  # the sharpened head: not near-uniform logits
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_audio_prompts_hold_188_soft_tokens_filled_from_a_ragged_encoder_output(adapter):
    """Every clip gets the whole window of 188 soft tokens (the contract checks the count against
    the encoder's window); the conformer's real output inside it is ragged."""
    audio = adapter.audio_prompts(_examples())
    counts = (audio.input_ids == adapter.audio_token_id).sum(-1).tolist()
    assert counts == [188, 188, 188]
    real = []
    with torch.no_grad():
        emb = adapter.model.model.audio_embeddings(audio.extra["input_features"], audio.extra["input_features_mask"],
                                                   audio.extra["audio_frames"])
        for i in range(3):
            n = int(audio.extra["audio_frames"][i])
            enc = adapter.model.model.audio_tower(audio.extra["input_features"][i : i + 1, :n],
                                                  ~audio.extra["input_features_mask"][i : i + 1, :n], return_dict=True)
            real.append(int((~enc.audio_mel_mask).sum()))
    assert emb.shape[:2] == (3, 188)
    assert real[0] < real[2] < real[1] <= 188  # ragged encoder outputs, filled to the window


def test_vision_tokens_in_a_prompt_are_one_line(adapter):
    cfg = adapter.model.config
    with pytest.raises(CordError, match="vision"):
        adapter.model.model.embed(torch.tensor([[5, cfg.image_token_id]]))


def test_engine_samples_from_the_soft_capped_distribution_the_objectives_score():
    a = _load()
    with torch.no_grad():
        a.lm_head().weight.mul_(40.0)  # logits of tens: a cap of 2 bends them
    a.model.config.text_config.final_logit_softcapping = 2.0
    assert a.logit_softcap == 2.0
    prompts = a.audio_prompts(_examples()[:2])
    roll = make_engine(a, RolloutConfig(engine="hf")).generate(prompts, n=2, temperature=0.8, max_new_tokens=5,
                                                               seed=3)
    with torch.no_grad():
        h = a.completion_hidden(prompts.repeat_interleave(2), roll.ids, roll.mask).double()
    z = h @ a.lm_head().weight.detach().double().T

    def sampled_logprobs(logits):
        logits = logits.clone()
        logits[..., a.placeholder_token_ids] = float("-inf")  # never sampled
        lp = torch.log_softmax(logits / 0.8, -1).gather(-1, roll.ids.unsqueeze(-1)).squeeze(-1)
        return (lp * roll.mask).float()

    torch.testing.assert_close(roll.logprobs, sampled_logprobs(2.0 * torch.tanh(z / 2.0)), atol=1e-4, rtol=1e-4)
    assert (roll.logprobs - sampled_logprobs(z)).abs().max() > 1e-2  # the cap matters here
    # and the objectives' chunked log-probs with the same cap see the same values (up to the
    # placeholders' share of the softmax, which sampling removes)
    with torch.no_grad():
        lp = token_logprobs(h.float(), a.lm_head().weight, roll.ids, roll.mask, temperature=0.8, softcap=2.0)
    full = torch.log_softmax(2.0 * torch.tanh(z / 2.0) / 0.8, -1).gather(-1, roll.ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp, (full * roll.mask).float(), atol=1e-4, rtol=1e-4)


def _trainer(tmp_path, method: str):
    from cord.config import load_config
    from cord.train.trainer import Trainer

    cfg = load_config(ROOT / "configs" / "tiny" / f"{method}.yaml",
                      ["model.family=gemma3n", f"train.output_dir={tmp_path}/run", "train.batch_size=2",
                       "train.progress=false", "train.tensorboard=false", "rollout.max_new_tokens=4", "data.limit=4"])
    trainer = Trainer(cfg)
    with torch.no_grad():
        trainer.adapter.lm_head().weight.mul_(40.0)  # logits of tens: a cap of 2 bends them
    trainer.adapter.model.config.text_config.final_logit_softcapping = 2.0
    return trainer


def test_the_train_steps_sft_loss_is_the_soft_capped_nll(tmp_path):
    from cord.train.step import _targets, run_micro_step

    trainer = _trainer(tmp_path, "sft")
    a = trainer.adapter
    examples = trainer.micro_examples(0, 0)
    loss, _ = run_micro_step(trainer.ctx, examples, step=0, micro=0)
    ids, mask, _ = _targets(a, examples, trainer.cfg.objective.sft_max_tokens)
    with torch.no_grad():
        z = a.completion_hidden(a.audio_prompts(examples), ids, mask).double() @ a.lm_head().weight.double().T
    for cap, same in ((2.0, True), (None, False)):
        logits = z if cap is None else cap * torch.tanh(z / cap)
        nll = -(torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask).sum() / mask.sum()
        assert (float(loss.detach()) == pytest.approx(float(nll), rel=1e-5)) == same, cap


def test_the_train_steps_kl_gets_the_soft_cap(tmp_path, monkeypatch):
    import cord.train.step as step

    trainer = _trainer(tmp_path, "opd")
    seen = []
    inner = step.reverse_kl_per_token
    monkeypatch.setattr(step, "reverse_kl_per_token", lambda *a, **k: seen.append(k["softcap"]) or inner(*a, **k))
    loss, _ = step.run_micro_step(trainer.ctx, trainer.micro_examples(0, 0), step=0, micro=0)
    assert seen == [2.0] and torch.isfinite(loss)


def test_a_reloaded_model_keeps_its_soft_cap(adapter, tmp_path):
    adapter.save_pretrained(str(tmp_path / "m"))
    again = load_adapter(ModelConfig(family="gemma3n", name_or_path=str(tmp_path / "m"), dtype="float32",
                                     device="cpu"))
    assert again.logit_softcap == 30.0


def _release_folder(tmp_path, extra: dict | None = None, drop: str | None = None):
    """A folder laid out as a Gemma3nForConditionalGeneration checkpoint: the model's tensors
    under their names (no lm_head: tied) plus vision tensors, config, tokenizer, extractor."""
    from safetensors.torch import save_file

    from cord.models.gemma3n import build_tiny_gemma3n

    model, tok, fe = build_tiny_gemma3n(seed=1)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    fe.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" and k != drop}
    state["model.vision_tower.timm_model.conv_stem.conv.weight"] = torch.zeros(4, 3, 3, 3)
    state["model.embed_vision.embedding.weight"] = torch.zeros(4, 16)
    state.update(extra or {})
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    return model


def test_a_checkpoint_with_vision_tensors_loads_by_name(tmp_path):
    model = _release_folder(tmp_path)
    a = load_adapter(ModelConfig(family="gemma3n", name_or_path=str(tmp_path), dtype="float32", device="cpu"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(a.model.state_dict()[k], v, atol=0, rtol=0)
    assert a.lm_head().weight.data_ptr() == a.model.model.language_model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("case", ["missing", "unexpected"])
def test_missing_or_unexpected_checkpoint_tensors_are_one_line(tmp_path, case):
    if case == "missing":
        _release_folder(tmp_path, drop="model.embed_audio.embedding_projection.weight")
    else:
        _release_folder(tmp_path, extra={"model.something_else.weight": torch.zeros(2)})
    with pytest.raises(CordError, match=f"gemma3n checkpoint .*{case}"):
        load_adapter(ModelConfig(family="gemma3n", name_or_path=str(tmp_path), dtype="float32", device="cpu"))


def test_long_audio_is_capped_at_the_30_s_window():
    a = _load(max_audio_seconds=60, long_audio="skip")
    assert a.max_audio_seconds == 30.0
    exs = make_examples(2)
    exs[0].audio = np.zeros(16000 * 31, dtype=np.float32)
    assert a.audio_prompts(exs).keep == [1]


def test_lora_leaves_out_the_projections_the_kv_shared_layers_do_not_have():
    """Of 4 layers x 7 projections (the count is the contract's), the 2 KV-shared layers have
    no k_proj / v_proj to wrap."""
    lora = _load(lora=LoraConfig(r=2, alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"]))
    wrapped = [n for n, _ in lora.model.named_modules() if n.endswith(".lora_A")]
    assert len(wrapped) == 4 * 7 - 2 * 2
    assert not [n for n in wrapped if ".layers.3.self_attn.k_proj" in n or ".layers.2.self_attn.v_proj" in n]
