"""The trainer: every method lowers its own objective, exact resume, teacher modes, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cord import CordError
from cord.config import load_config
from cord.objectives import group_advantages, token_logprobs
from cord.rollout import HFEngine
from cord.train.methods import METHODS
from cord.train.step import run_micro_step
from cord.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(method: str, tmp_path, family: str = "qwen2-audio", *extra: str):
    return load_config(
        ROOT / "configs" / "tiny" / f"{method}.yaml",
        [
            f"model.family={family}",
            f"train.output_dir={tmp_path}/run",
            "train.batch_size=2",
            "train.progress=false",
            "train.tensorboard=false",
            "rollout.max_new_tokens=6",
            "rollout.seq_n=4",
            "data.limit=8",
            *extra,
        ],
    )


class ReplayEngine(HFEngine):
    """Samples once per (seed, n, greedy, modality), then replays: a fixed batch *and* fixed
    rollouts. With ``any_seed`` one batch per (n, greedy, modality) whatever the seed or
    temperature, so the token term's own rollouts equal the sequence group's."""

    def __init__(self, inner: HFEngine, any_seed: bool = False) -> None:
        super().__init__(inner.adapter, stop_strings=inner.stop_strings, batch_size=inner.batch_size)
        self.cache: dict = {}
        self.any_seed = any_seed

    def generate(self, prompts, **kw):
        key = (None if self.any_seed else kw.get("seed"), kw.get("n", 1), kw.get("greedy", False), prompts.modality)
        if key not in self.cache:
            self.cache[key] = super().generate(prompts, **kw)
        return self.cache[key]


def test_shared_rollouts_equal_separate_ones_with_one_student_forward_less(tmp_path):
    """rollout.share_rollouts: the token-level KL runs on the sequence group. On identical
    rollouts the loss and gradients must equal the unshared path, which draws its own, and
    the student's forward on them is done once, not twice."""
    same = ["rollout.seq_n=4", "rollout.token_n=4", "rollout.seq_temperature=1.5", "rollout.token_temperature=1.5"]
    out = {}
    for share in (False, True):
        cfg = tiny_cfg("cord", tmp_path / str(share), "qwen2-audio", *same, f"rollout.share_rollouts={share}")
        trainer = Trainer(cfg)
        trainer.ctx.engine = ReplayEngine(trainer.engine, any_seed=True)
        trainer.ctx.reward_fn = _length_parity_reward
        calls = []
        inner = trainer.adapter.completion_hidden
        trainer.adapter.completion_hidden = lambda *a, **k: calls.append(1) or inner(*a, **k)
        loss, metrics = run_micro_step(trainer.ctx, trainer.micro_examples(0, 0), step=0, micro=0)
        loss.backward()
        out[share] = (float(loss.detach()), [p.grad.clone() for p in trainer.params], len(calls), metrics)
    (l0, g0, c0, m0), (l1, g1, c1, m1) = out[False], out[True]
    assert l1 == pytest.approx(l0, rel=1e-6, abs=1e-9) and l0 != 0.0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in g1)
    assert m1["kl_mean"] == pytest.approx(m0["kl_mean"])
    assert c1 == c0 - 1


def _length_parity_reward(cands, refs):
    return [float(len(c) % 2 == 0) for c in cands]


def _grpo_objective(trainer, examples, roll, rewards) -> float:
    """Σ_i A_i · mean_t log π(y_i,t): what the GRPO gradient ascends, on fixed rollouts."""
    ad = trainer.adapter
    with torch.no_grad():
        prompts = ad.audio_prompts(examples).repeat_interleave(roll.n)
        h = ad.completion_hidden(prompts, roll.ids, roll.mask)
        lp = token_logprobs(h, ad.lm_head().weight, roll.ids, roll.mask,
                            temperature=trainer.cfg.rollout.seq_temperature)
    adv = group_advantages(rewards, roll.n)
    per_seq = (lp * roll.mask).sum(-1) / roll.mask.sum(-1).clamp(min=1)
    return float((adv * per_seq).sum())


@pytest.mark.parametrize("family", ["qwen2-audio", "qwen2.5-omni"])
@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_lowers_its_objective_on_a_fixed_batch(method, family, tmp_path):
    cfg = tiny_cfg(method, tmp_path, family, "train.lr=2e-3", "objective.top_k=2")
    trainer = Trainer(cfg)
    # Move the student away from the (frozen-copy) teacher: at random init both are near
    # uniform and the KL is ~1e-4, too flat for a meaningful descent check.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    trainer.ctx.engine = ReplayEngine(trainer.engine)
    trainer.ctx.reward_fn = _length_parity_reward
    examples = trainer.micro_examples(0, 0)

    def objective() -> float:
        loss, m = run_micro_step(trainer.ctx, examples, step=0, micro=0)
        if METHODS[method].token is None:  # GRPO alone: the surrogate's value is constant
            key = next(k for k in trainer.ctx.engine.cache if k[1] == cfg.rollout.seq_n)
            roll = trainer.ctx.engine.cache[key]
            rewards = torch.tensor(_length_parity_reward(roll.text, None))
            assert rewards.std() > 0, "the fixed batch needs reward variance"
            return -_grpo_objective(trainer, examples, roll, rewards)
        return m["loss_tok"]

    before = objective()
    for _ in range(3):
        loss, _ = run_micro_step(trainer.ctx, examples, step=0, micro=0)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    after = objective()
    assert after < before - 1e-4 * max(1.0, abs(before)), (method, before, after)


def _strip_times(lines):
    out = []
    for line in lines:
        d = json.loads(line)
        out.append({k: v for k, v in d.items() if not k.startswith("time_") and k not in ("step_time", "tokens_per_s")})
    return out


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    common = ["train.max_steps=4", "train.save_every=2", "rollout.seq_n=2"]
    full = tiny_cfg("cord", tmp_path / "a", "qwen2-audio", *common)
    Trainer(full).fit(export=False)
    # interrupted: 2 steps (as if killed after the step-2 checkpoint), then resumed to 4
    part = tiny_cfg("cord", tmp_path / "b", "qwen2-audio", *common[1:], "train.max_steps=2")
    Trainer(part).fit(export=False)
    resumed = tiny_cfg("cord", tmp_path / "b", "qwen2-audio", *common)
    summary = Trainer(resumed).fit(export=False)
    assert summary["resumed_from"].endswith("step-00000002")
    a = _strip_times((tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines())
    b = _strip_times((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines())
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    assert a == b
    from safetensors.torch import load_file

    ta = load_file(str(tmp_path / "a" / "run" / "checkpoints" / "step-00000004" / "trainable.safetensors"))
    tb = load_file(str(tmp_path / "b" / "run" / "checkpoints" / "step-00000004" / "trainable.safetensors"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_checkpoints_keep_last_k_and_are_loadable_models(tmp_path):
    cfg = tiny_cfg("opd", tmp_path, "qwen2-audio", "train.max_steps=3", "train.save_every=1", "train.keep_last=2")
    Trainer(cfg).fit()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    for key in ("step", "loss", "loss_tok", "loss_seq", "kl_mean", "kl_weighted", "completion_len",
                "time_rollout", "time_teacher", "time_student", "time_backward", "tokens_per_s", "grad_norm", "lr"):
        assert key in first, key
    from cord.models import load_adapter

    exported = load_adapter(cfg.model.model_copy(update={"name_or_path": str(tmp_path / "run" / "model")}))
    trainer = Trainer(cfg)
    trainer.resume(None)
    for (n, p), (n2, q) in zip(trainer.adapter.model.named_parameters(), exported.model.named_parameters()):
        assert torch.equal(p, q), n


def test_frozen_teacher_copy_unchanged_and_lora_teacher_is_adapter_disabled(tmp_path):
    cfg = tiny_cfg("opd", tmp_path, "qwen2-audio", "train.lr=1e-2")
    trainer = Trainer(cfg)
    assert trainer.teacher.kind == "frozen-copy"
    before = [p.clone() for p in trainer.teacher.parameters()]
    trainer.fit(export=False)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.teacher.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.adapter.model.parameters()))

    lora = tiny_cfg("opd", tmp_path / "l", "qwen2-audio", "train.lr=1e-2", "model.lora.r=4")
    trainer = Trainer(lora)
    assert trainer.teacher.kind == "adapter-disabled"
    from cord.models import load_adapter

    base = load_adapter(lora.model.model_copy(update={"lora": None}))
    trainer.fit(export=False)
    examples = trainer.micro_examples(0, 0)
    ids = torch.randint(0, 200, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.bool)
    with trainer.teacher.scope() as t:
        th = t.completion_hidden(t.text_prompts(examples), ids, mask)
    with torch.no_grad():
        bh = base.completion_hidden(base.text_prompts(examples), ids, mask)
        sh = trainer.adapter.completion_hidden(trainer.adapter.text_prompts(examples), ids, mask)
    torch.testing.assert_close(th, bh, atol=1e-6, rtol=0)
    assert not torch.allclose(sh, bh, atol=1e-4)  # the adapter did learn something


def test_only_audio_side_trains_then_teacher_needs_no_copy(tmp_path):
    cfg = tiny_cfg("opd", tmp_path, "qwen2-audio", "train.trainable=[audio_encoder,projector]")
    trainer = Trainer(cfg)
    assert trainer.teacher.kind == "live"
    names = [n for n, p in trainer.adapter.model.named_parameters() if p.requires_grad]
    assert names and all("audio_tower" in n or "projector" in n for n in names)


def test_bad_inputs_fail_before_heavy_work(tmp_path):
    with pytest.raises(CordError, match="no paired dataset"):
        Trainer(tiny_cfg("cord", tmp_path, "qwen2-audio", f"data.train={tmp_path}/missing"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.jsonl").write_text('{"id": "a", "question": "q", "audio": "a.wav"}\n{oops\n')
    with pytest.raises(CordError, match="malformed JSON"):
        Trainer(tiny_cfg("cord", tmp_path, "qwen2-audio", f"data.train={bad}"))
    with pytest.raises(CordError, match="lm_head cannot train with model.lora"):
        Trainer(tiny_cfg("cord", tmp_path, "qwen2-audio", "model.lora.r=2", "train.trainable=[lm_head]"))


def test_nan_guard_skips_then_stops(tmp_path):
    cfg = tiny_cfg("sft", tmp_path, "qwen2-audio", "train.max_steps=5", "train.max_bad_steps=1")
    trainer = Trainer(cfg)
    with torch.no_grad():
        trainer.adapter.lm_head().weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(CordError, match="max_bad_steps=1"):
        trainer.fit(export=False)
    assert trainer.bad_steps == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


DDP_SCRIPT = r"""
import sys, torch
from cord.config import load_config
from cord.train.trainer import Trainer
from safetensors.torch import save_file
cfg = load_config(sys.argv[1], sys.argv[3:])
t = Trainer(cfg)
t.train_step()
if t.rank == 0:
    save_file({n: p.detach().contiguous() for n, p in t.adapter.model.named_parameters() if p.requires_grad}, sys.argv[2])
"""


def test_two_gloo_processes_equal_one_process_with_same_global_batch(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    config = ROOT / "configs" / "tiny" / "cord.yaml"
    common = [f"train.output_dir={tmp_path}/o", "train.batch_size=1", "rollout.max_new_tokens=5",
              "rollout.seq_n=2", "data.limit=8", "train.progress=false", "train.tensorboard=false", "train.lr=1e-2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, str(script), str(config), str(tmp_path / "one.st"), *common,
                          "train.grad_accum=2"], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    import socket

    with socket.socket() as sock:  # a free port on the loopback for the gloo rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={port}",
                          str(script), str(config), str(tmp_path / "two.st"), *common, "train.grad_accum=1"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "one.st")), load_file(str(tmp_path / "two.st"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    init = Trainer(load_config(config, common)).adapter.model.state_dict()
    moved = sum(not torch.equal(a[k], init[k]) for k in a if k in init)
    assert moved > 0
