"""Family step-audio2 (cord.models.step_audio2) on its tiny model, fp32, CPU.

The central check compares cord's native model with a second implementation written here in
plain torch after the released ``modeling_step_audio_2.py`` (its module names, its d^-0.25
scaling of q and k, its -1e10 key bias sampled at offset (T + 1) % 2, its conversation-padded
chunk batch, its torch.stft front end with 479 padding samples, transformers' Qwen2Model): the
tiny model is written in the checkpoint's naming, loaded by cord through the name mapping and by
the reference by name, and both must give the same logits. The adapter contract (batched ==
one by one with multi-chunk audio, placeholders == encoder output, cached decoding == a full
recompute, both engines == a plain argmax loop, save/load, LoRA in the decoder, every
method's preset) runs on it in tests/models/test_family_contract.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cord import CordError
from cord.cli import main
from cord.config import ModelConfig
from cord.data.paired import PairedExample
from cord.models.registry import load_adapter
from cord.models.step_audio2 import (
    CHUNK_SAMPLES,
    EOT,
    StepAudio2Adapter,
    audio_token_count,
    build_tiny_step_audio2,
    checkpoint_name,
    native_name,
    save_release,
)
from cord.rollout.engine import GenerateEngine, HFEngine
from tests.models.family_contract import step_audio2_clip as clip
from tests.models.family_contract import step_audio2_examples as examples

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["cord", "forward_kl", "grpo", "grpo_opd", "opd", "opd_weighted", "sft"]


def tiny(**kw) -> StepAudio2Adapter:
    cfg = dict(family="step-audio2", name_or_path="tiny", dtype="float32", device="cpu", max_audio_seconds=60.0)
    cfg.update(kw)
    return load_adapter(ModelConfig(**cfg))


@pytest.fixture(scope="module")
def adapter() -> StepAudio2Adapter:
    return tiny()


# ------------------------------------------------------------------ the reference, in plain torch
class RefAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key = nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.value, self.out = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, bias):
        b, t, d = x.shape
        s = (d // self.heads) ** -0.25

        def split(z):
            return z.view(b, t, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.query(x)) * s, split(self.key(x)) * s, split(self.value(x))
        w = torch.softmax((q @ k.transpose(-1, -2) + bias).float(), dim=-1)
        return self.out((w @ v).transpose(1, 2).reshape(b, t, d))


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attn, self.attn_ln = RefAttention(d, heads), nn.LayerNorm(d)
        self.mlp, self.mlp_ln = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)), nn.LayerNorm(d)

    def forward(self, x, bias):
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


class RefEncoder(nn.Module):
    def __init__(self, mels: int, ctx: int, d: int, heads: int, layers: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([RefBlock(d, heads) for _ in range(layers)])
        self.avg_pooler = nn.AvgPool1d(2, 2)
        self.after_norm = nn.LayerNorm(d)

    def forward(self, x, x_len):
        T = x.shape[-1]
        x = nn.functional.gelu(self.conv2(nn.functional.gelu(self.conv1(x)))).transpose(1, 2)
        valid = torch.arange(T)[None, :] < x_len[:, None]
        valid = valid[:, (T + 1) % 2 :: 2]
        bias = (1.0 - valid.float()) * -1.0e10
        x = x + self.positional_embedding.weight[: x.shape[1]]
        for block in self.blocks:
            x = block(x, bias[:, None, None, :])
        x = self.after_norm(self.avg_pooler(x.transpose(1, 2)).transpose(1, 2))
        return x, (x_len + 1) // 2 // 2


class RefAdaptor(nn.Module):
    def __init__(self, d: int, hidden: int, llm: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, d, 3, 2, padding=1)
        self.linear1, self.linear2 = nn.Linear(d, hidden), nn.Linear(hidden, llm)

    def forward(self, x):
        x = nn.functional.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear2(torch.relu(self.linear1(x)))


class Reference(nn.Module):
    """forward(input_ids, wavs, wav_lens, attention_mask) -> .logits, names as the release."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file
        from transformers import Qwen2Config, Qwen2Model

        super().__init__()
        cfg = json.loads((folder / "config.json").read_text())
        t, a = cfg["text_config"], cfg["audio_encoder_config"]
        self.model = Qwen2Model(Qwen2Config(
            vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
            num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
            num_key_value_heads=t["num_key_value_heads"], rms_norm_eps=t["rms_norm_eps"], rope_theta=t["rope_theta"],
            max_position_embeddings=t["max_position_embeddings"]))
        self.encoder = RefEncoder(a["n_mels"], a["n_audio_ctx"], a["n_audio_state"], a["n_audio_head"],
                                  a["n_audio_layer"])
        weights = load_file(str(folder / "model.safetensors"))
        self.adapter = RefAdaptor(a["n_audio_state"], weights["adapter.linear1.weight"].shape[0], a["llm_dim"])
        self.lm_head = nn.Linear(t["hidden_size"], t["vocab_size"], bias=False)
        self.load_state_dict(weights, strict=True)
        self.eval()

    def forward(self, input_ids, wavs=None, wav_lens=None, attention_mask=None):
        h = self.model.embed_tokens(input_ids)
        if wavs is not None:
            out, lens = self.encoder(wavs, wav_lens)
            out = self.adapter(out)
            lens = (lens - 1) // 2 + 1
            starts = torch.nonzero(input_ids == AUDIO_START_TINY)
            h = h.clone()
            for i, (row, s) in enumerate(starts.tolist()):
                h[row, s + 1 : s + 1 + lens[i]] = out[i, : lens[i]]
        x = self.model(inputs_embeds=h, attention_mask=attention_mask).last_hidden_state

        class Out:
            logits = self.lm_head(x)

        return Out


AUDIO_START_TINY = build_tiny_step_audio2()[1].convert_tokens_to_ids("<audio_start>")


def reference_mel(audio: np.ndarray) -> torch.Tensor:
    """The reference's front end: 479 zeros appended, torch.stft (Hann 400, hop 160), last
    frame dropped, Slaney mel (transformers' filter bank = librosa's), log10, max - 8, (x+4)/4."""
    from transformers.audio_utils import mel_filter_bank

    x = nn.functional.pad(torch.from_numpy(audio), (0, 479))
    power = torch.stft(x, 400, 160, window=torch.hann_window(400), return_complex=True)[..., :-1].abs() ** 2
    fb = torch.from_numpy(mel_filter_bank(num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0,
                                          max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                                          mel_scale="slaney")).float()
    spec = torch.clamp(fb.T @ power, min=1e-10).log10()
    return (torch.maximum(spec, spec.max() - 8.0) + 4.0) / 4.0


@pytest.fixture(scope="module")
def release(tmp_path_factory, adapter) -> Path:
    return save_release(adapter.model, adapter.tokenizer, tmp_path_factory.mktemp("release"))


# ----------------------------------------------------------------------------------- tests
def test_prompt_format_is_the_reference_chat_template(adapter):
    ex = PairedExample("q", "What is 2+3?", clip(16000, 0))
    text = adapter.text_prompts([ex])
    got = adapter.tokenizer.decode(text.input_ids[0])
    assert got == ("<|BOT|>system\nYou are a helpful assistant.<|EOT|><|BOT|>human\nWhat is 2+3?\n"
                   "Answer the question. Put the final answer after 'The answer is'.<|EOT|><|BOT|>assistant\n")
    audio = adapter.audio_prompts([ex])
    got = adapter.tokenizer.decode(audio.input_ids[0])
    n = audio_token_count(100)  # 1 s = 100 frames -> 13 patches
    assert n == 13
    assert ("<|BOT|>human\n<audio_start>" + "<audio_patch>" * n + "<audio_end>\nAnswer the question.") in got
    # several 25 s chunks: one <audio_start> ... <audio_end> per chunk
    long = adapter.audio_prompts([PairedExample("l", "x", clip(CHUNK_SAMPLES + 2000, 1))])
    ids = long.input_ids[0].tolist()
    assert ids.count(adapter.audio_start_id) == 2 and ids.count(adapter.audio_end_id) == 2
    assert ids.count(adapter.audio_patch_id) == audio_token_count(2500) + audio_token_count(13) == 313 + 2


def test_mel_front_end_equals_the_reference_stft(adapter):
    for n in (2000, 16000, CHUNK_SAMPLES):
        audio = clip(n, 3)
        ours = adapter.chunk_features(audio)[0]
        ref = reference_mel(audio)
        assert ours.shape == ref.shape == (128, -(-n // 160) + 2)
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_native_logits_equal_the_reference_implementation(adapter, release):
    """cord (loaded from the release layout through CHECKPOINT_RULES) = the reference forward,
    one conversation at a time as the reference runs, including the padded-batch details."""
    ours = tiny(name_or_path=str(release))
    ref = Reference(release)
    worst = 0.0
    for ex in examples():
        p = ours.audio_prompts([ex])
        mels = [reference_mel(ex.audio[i : i + CHUNK_SAMPLES]) for i in range(0, len(ex.audio), CHUNK_SAMPLES)]
        wavs = torch.zeros((len(mels), 128, max(m.shape[1] for m in mels)))
        for i, m in enumerate(mels):
            wavs[i, :, : m.shape[1]] = m
        lens = torch.tensor([m.shape[1] - 2 for m in mels])
        with torch.no_grad():
            r = ref(p.input_ids, wavs, lens, p.attention_mask).logits
            core = ours.core()
            h = core.language_model.model(inputs_embeds=core.embed(p.input_ids, **p.extra),
                                          attention_mask=p.attention_mask).last_hidden_state
            mine = ours.lm_head()(h)
        worst = max(worst, float((mine - r).abs().max()))
        torch.testing.assert_close(mine, r, atol=1e-5, rtol=0)
    assert worst < 1e-5


def test_audio_changes_the_hidden_states(adapter):
    """The audio reaches the decoder (a silent clip of the same length gives other states)."""
    ex = examples()[0]
    silent = PairedExample("s", ex.question_text, np.zeros_like(ex.audio))
    y, m = torch.tensor([[5, 6]]), torch.ones((1, 2), dtype=torch.bool)
    with torch.no_grad():
        a = adapter.completion_hidden(adapter.audio_prompts([ex]), y, m)
        b = adapter.completion_hidden(adapter.audio_prompts([silent]), y, m)
    assert float((a - b).abs().max()) > 1e-3


def test_audio_output_tokens_are_never_sampled(adapter):
    ids = adapter.placeholder_token_ids
    tok = adapter.tokenizer
    assert tok.convert_tokens_to_ids("<audio_patch>") in ids and tok.convert_tokens_to_ids("<audio_start>") in ids
    assert set(range(tok.convert_tokens_to_ids("<audio_0>"), adapter.vocab_size)) <= set(ids)
    assert tok.convert_tokens_to_ids(EOT) not in ids and len(set(ids)) == len(ids)
    assert all(i >= tok.convert_tokens_to_ids("<audio_start>") for i in ids)  # text ids are never suppressed
    # make the audio-output rows dominate the head: greedy and sampled rollouts still avoid them
    model = tiny().model
    a2 = StepAudio2Adapter(model, adapter.tokenizer, adapter.feature_extractor)
    with torch.no_grad():
        a2.lm_head().weight[ids] *= 500.0
    prompts = a2.audio_prompts(examples()[:2])
    for engine in (HFEngine(a2), GenerateEngine(a2)):
        for greedy in (True, False):
            r = engine.generate(prompts, n=2, greedy=greedy, max_new_tokens=5, seed=0)
            assert not torch.isin(r.ids[r.mask], torch.tensor(ids)).any()


def test_long_audio_policy_applies_beyond_max_audio_seconds():
    long = PairedExample("l", "q", clip(16000 * 40, 0))
    short = PairedExample("s", "q", clip(16000, 1))
    a = tiny(max_audio_seconds=30.0, long_audio="skip")
    assert a.audio_prompts([long, short]).keep == [1] and a.skipped_long_audio == 1
    t = tiny(max_audio_seconds=30.0, long_audio="truncate").audio_prompts([long])
    assert t.extra["feature_lens"].tolist() == [[2500, 500]]  # 30 s: a 25 s and a 5 s chunk
    with pytest.raises(CordError, match="30"):
        tiny(max_audio_seconds=30.0, long_audio="error").audio_prompts([long])
    # 40 s with a larger maximum: two chunks, no policy
    assert tiny(max_audio_seconds=60.0).audio_prompts([long]).extra["feature_lens"].tolist() == [[2500, 1500]]


def test_checkpoint_names_round_trip(adapter):
    names = list(adapter.model.state_dict())
    release_names = [checkpoint_name(n) for n in names]
    assert None not in release_names
    assert [native_name(n) for n in release_names] == names
    assert "encoder.blocks.0.attn.query.weight" in release_names
    assert "encoder.positional_embedding.weight" in release_names
    assert "adapter.linear2.bias" in release_names and "model.layers.1.mlp.down_proj.weight" in release_names
    assert "lm_head.weight" in release_names and "encoder.blocks.0.mlp.2.weight" in release_names


def test_release_layout_loads_with_identical_logits(adapter, release):
    from safetensors.torch import load_file

    keys = set(load_file(str(release / "model.safetensors")))
    assert "encoder.after_norm.weight" in keys and not any(k.startswith("audio_tower") for k in keys)
    loaded = tiny(name_or_path=str(release))
    exs = examples()[:2]
    y, m = torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.ones((2, 3), dtype=torch.bool)
    with torch.no_grad():
        for make in ("audio_prompts", "text_prompts"):
            a = adapter.completion_hidden(getattr(adapter, make)(exs), y, m)
            b = loaded.completion_hidden(getattr(loaded, make)(exs), y, m)
            assert torch.equal(a, b)


def test_a_cord_saved_folder_is_marked_as_cord_s_own_layout(adapter, tmp_path):
    """(The contract checks that it reloads to the same model.)"""
    adapter.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "cord_step_audio2"


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_checkpoint_key_mismatch_is_one_clear_error(release, tmp_path, change):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "bad"
    shutil.copytree(release, folder)
    w = load_file(str(folder / "model.safetensors"))
    if change == "missing":
        del w["encoder.blocks.0.attn.key.weight"]
    else:
        w["encoder.blocks.0.attn.rel_pos.weight"] = torch.zeros(2)
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(CordError) as e:
        tiny(name_or_path=str(folder))
    msg = str(e.value)
    assert f"{change} keys ['encoder.blocks.0.attn." in msg and "CHECKPOINT_RULES" in msg and "\n" not in msg


def test_not_a_step_audio2_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    build_tiny_step_audio2()[1].save_pretrained(str(tmp_path))
    with pytest.raises(CordError, match="not a Step-Audio2 model"):
        tiny(name_or_path=str(tmp_path))


# ----------------------------------------------------------------------------- check-model
def test_check_model_agrees_with_a_faithful_reference(adapter, release):
    from cord.models.step_audio2.check import Reference as CheckReference
    from cord.models.step_audio2.check import compare

    ours = tiny(name_or_path=str(release), instruction="")
    lines: list[str] = []
    result = compare(ours, CheckReference(Reference(release), reference_mel),
                     audio=[("a", clip(2000, 1)), ("b", clip(CHUNK_SAMPLES + 2000, 2))], question="2+2?",
                     max_new_tokens=4, out=lines.append)
    assert result["agree"] and result["mel_max_abs_diff"] < 2e-5
    assert all(r["max_abs_logit_diff"] < 1e-5 for r in result["rows"]) and len(result["rows"]) == 3
    assert len(lines) == 4 and "mel front end" in lines[-1]
    # a reference that differs (one weight changed) is reported as differing
    broken = Reference(release)
    with torch.no_grad():
        broken.lm_head.weight[:, :] = torch.randn_like(broken.lm_head.weight)
    result = compare(ours, CheckReference(broken, reference_mel), audio=[("a", clip(2000, 1))], question="2+2?",
                     max_new_tokens=4, out=lines.append)
    assert max(r["max_abs_logit_diff"] for r in result["rows"]) > 1e-2


def test_check_model_cli_refusals(capsys):
    assert main(["check-model", "--family", "qwen2-audio", "--model", "x", "--trust-remote-code"]) == 2
    assert "--family must be one of step-audio2" in capsys.readouterr().err
    assert main(["check-model", "--family", "step-audio2", "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert "--trust-remote-code" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------- presets
def test_presets_are_the_paper_settings():
    from cord.config import load_config

    for m in METHODS:
        cfg = load_config(ROOT / "configs" / "step-audio2-mini" / f"{m}.yaml")
        assert cfg.model.family == "step-audio2" and cfg.model.name_or_path == "stepfun-ai/Step-Audio-2-mini"
        assert cfg.objective.method == m and cfg.model.lora.dropout == 0.0 and cfg.train.lr == 3e-5
        assert (cfg.rollout.seq_n, cfg.rollout.seq_temperature, cfg.objective.top_k) == (4, 1.5, 20)
