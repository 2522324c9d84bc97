"""The ``vllm`` rollout engine (cord.rollout.vllm_engine), in the vLLM lane:

    bash scripts/setup.sh --vllm && .venv-vllm/bin/python -m pytest -m vllm

Skipped where vLLM is not installed (the main suite). The tiny Qwen2-Audio is sharpened (query/key
projections x12, head x8) so a wrong position, cache row or weight shows in the tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cord.config import ModelConfig, RolloutConfig
from cord.models import load_adapter
from cord.rollout.engine import HFEngine, make_engine
from tests.conftest import make_examples

vllm = pytest.importorskip("vllm", reason="the vLLM lane: bash scripts/setup.sh --vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]


def _sharp(adapter):
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(12.0)
        adapter.lm_head().weight.mul_(8.0)
    return adapter


@pytest.fixture(scope="module")
def pair():
    """A sharpened tiny Qwen2-Audio and its vLLM engine (started once for the module)."""
    adapter = _sharp(load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu")))
    engine = make_engine(adapter, RolloutConfig(engine="vllm"))
    yield adapter, engine
    engine.close()


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_greedy_is_token_identical_to_the_hf_engine(pair, modality):
    adapter, engine = pair
    exs = make_examples(3)
    prompts = adapter.audio_prompts(exs) if modality == "audio" else adapter.text_prompts(exs)
    got = engine.generate(prompts, n=2, greedy=True, max_new_tokens=12)
    ref = HFEngine(adapter).generate(prompts, n=2, greedy=True, max_new_tokens=12)
    assert got.mask.sum() > 20
    assert torch.equal(got.ids, ref.ids) and torch.equal(got.mask, ref.mask) and got.text == ref.text


def test_sampled_logprobs_equal_the_trainers_token_logprobs(pair):
    """Each sampled token's log-prob from vLLM equals cord's token_logprobs on the training
    forward (fp32) at the sampling temperature with the placeholders excluded, to 1e-5."""
    from cord.objectives import token_logprobs

    adapter, engine = pair
    prompts = adapter.audio_prompts(make_examples(3))
    T = 1.5
    out = engine.generate(prompts, n=3, temperature=T, max_new_tokens=10, seed=3)
    with torch.no_grad():
        h = adapter.completion_hidden(prompts.repeat_interleave(3), out.ids, out.mask)
        head = adapter.lm_head()
        lp = token_logprobs(h, head.weight, out.ids, out.mask, bias=head.bias, temperature=T)
        z = (h.double() @ head.weight.double().T) / T
        lse_all = torch.logsumexp(z, -1)
        z[..., adapter.placeholder_token_ids] = float("-inf")
        lp = lp.double() + lse_all - torch.logsumexp(z, -1)  # renormalised without placeholders
    diff = (lp - out.logprobs.double()).abs()[out.mask]
    assert out.mask.sum() > 30 and float(diff.max()) < 1e-5, float(diff.max())


def test_a_seeded_call_samples_the_same_tokens_again(pair):
    adapter, engine = pair
    prompts = adapter.audio_prompts(make_examples(2))
    a = engine.generate(prompts, n=4, temperature=1.5, max_new_tokens=8, seed=11)
    b = engine.generate(prompts, n=4, temperature=1.5, max_new_tokens=8, seed=11)
    c = engine.generate(prompts, n=4, temperature=1.5, max_new_tokens=8, seed=12)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.ids, c.ids)


def test_first_token_frequencies_match_softmax_without_placeholders(pair):
    """2,000 first tokens at T = 1.5 from one audio prompt: a chi-square test against
    softmax(logits / T) with the placeholder tokens removed (the ``hf`` engine's distribution)."""
    from scipy import stats

    adapter, engine = pair
    prompts = adapter.audio_prompts(make_examples(1))
    n, T = 2000, 1.5
    out = engine.generate(prompts, n=n, temperature=T, max_new_tokens=1, seed=5)
    with torch.no_grad():
        h = adapter.completion_hidden(prompts, out.ids[:1, :1], torch.ones(1, 1, dtype=torch.bool))[0, 0]
        z = (h.double() @ adapter.lm_head().weight.double().T) / T
    z[adapter.placeholder_token_ids] = float("-inf")
    p = torch.softmax(z, -1).numpy()
    counts = np.bincount(out.ids[:, 0].numpy(), minlength=p.size)
    assert counts[adapter.placeholder_token_ids].sum() == 0
    keep = p * n >= 5  # pool the rare tokens into one cell
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(p[keep] * n, p[~keep].sum() * n)
    if expected[-1] < 5:
        observed, expected = observed[:-1], expected[:-1] * n / expected[:-1].sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_long_unequal_prompts_with_seeds_sample_and_repeat(pair):
    """(Kept with the other tests of the module's engine, before the tests that start and stop
    engines of their own: stopping one tears down vLLM's process-wide parallel groups.)
    8 prompts of 180-880 tokens (2-30 s clips) x 4 seeded samples: more prompt tokens than one
    scheduling step's chunk would hold (vLLM's chunked prefill rewinds a seeded generator,
    which a CPU generator cannot), and the same tokens on a rerun."""
    from cord.data.paired import PairedExample

    adapter, engine = pair
    rng = np.random.default_rng(0)
    exs = [PairedExample(f"p{i}", "What is 3 + 4?", (0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32))
           for i, s in enumerate(np.linspace(2, 30, 8))]
    prompts = adapter.audio_prompts(exs)
    assert int(prompts.attention_mask.sum(-1).max()) > 800
    a = engine.generate(prompts, n=4, temperature=1.5, max_new_tokens=6, seed=0)
    b = engine.generate(prompts, n=4, temperature=1.5, max_new_tokens=6, seed=0)
    assert a.ids.shape[0] == 32 and torch.equal(a.ids, b.ids)


def test_after_a_real_optimizer_step_the_engine_generates_with_the_new_weights(tmp_path):
    """A LoRA cord step through the trainer, then the step's sync: vLLM's greedy equals the
    hf engine's on the updated model (and differs from before the update)."""
    from cord.config import load_config
    from cord.train.trainer import Trainer

    cfg = load_config(ROOT / "configs" / "tiny" / "cord.yaml", [
        f"train.output_dir={tmp_path}", "rollout.engine=vllm", "model.lora.r=4", "train.lr=0.3",
        "rollout.max_new_tokens=6", "rollout.seq_n=2", "data.limit=4", "train.progress=false",
        "train.tensorboard=false"])
    trainer = Trainer(cfg)
    _sharp(trainer.adapter)
    adapter, engine = trainer.adapter, trainer.engine
    prompts = adapter.audio_prompts(make_examples(2))
    before = engine.generate(prompts, greedy=True, max_new_tokens=10)
    trainer.train_step()
    engine.sync_weights(trainer.step)
    after = engine.generate(prompts, greedy=True, max_new_tokens=10)
    ref = HFEngine(adapter).generate(prompts, greedy=True, max_new_tokens=10)
    assert engine.sync_count >= 2  # the start and this step
    assert torch.equal(after.ids, ref.ids) and not torch.equal(after.ids, before.ids)
    engine.close()


def _train(out: Path, method: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cord.cli", "train", "--config", str(ROOT / "configs" / "tiny" / f"{method}.yaml"),
         "--set", f"train.output_dir={out}", "--set", "rollout.engine=vllm", "--set", "train.progress=false",
         "--set", "train.tensorboard=false", "--set", "data.limit=4", "--set", "rollout.max_new_tokens=8",
         *[a for kv in extra for a in ("--set", kv)]],
        capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("method", ["cord", "grpo"])
def test_cord_train_runs_two_steps_on_the_vllm_engine(tmp_path, method):
    run = _train(tmp_path, method, "train.max_steps=2")
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["completion_tokens"] > 0 and m["loss"] is not None for m in lines)


def test_a_resumed_vllm_run_equals_an_uninterrupted_one(tmp_path):
    straight = _train(tmp_path / "straight", "cord", "train.max_steps=3")
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = _train(tmp_path / "resumed", "cord", "train.max_steps=2", "train.save_every=1")
    assert first.returncode == 0, first.stderr[-2000:]
    second = _train(tmp_path / "resumed", "cord", "train.max_steps=3", "train.save_every=1")
    assert second.returncode == 0, second.stderr[-2000:]
    a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    keys = ("loss", "kl_mean", "reward_mean", "completion_tokens")
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]


def test_the_acceptance_scripts_vllm_check_passes_on_cpu(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cord_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    report = mod.run(["--cpu-smoke", "--only", "vllm", "--workdir", str(tmp_path)])
    assert report["checks"] == {"vllm": "pass"} and report["vllm"]["greedy_equal"]
