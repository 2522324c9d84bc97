"""The trainer: each method's loss and gradient against an independent float64 computation,
device placement, rank-consistent metrics, the global batch, teacher mode, SFT targets,
cached references, timings, exact resume. Several processes: tests/train/test_distributed.py."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cord.train.step as step_mod
import cord.train.trainer as trainer_mod
from cord import CordError
from cord.config import load_config
from cord.data.paired import PairedExample
from cord.rollout import Rollouts, make_engine
from cord.types import METHODS
from cord.train.step import METRIC_KEYS, _rollout_seed, _targets, end_of_turn_id, run_micro_step, sync_clock
from cord.train.trainer import REDUCED_KEYS, Trainer

ROOT = Path(__file__).resolve().parents[2]


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


class ReplayEngine:
    """Wraps an engine: samples once per (seed, n, greedy, modality, prompts), then replays — a fixed
    batch *and* fixed rollouts. With ``any_seed`` one batch per (n, greedy, modality) whatever
    the seed or temperature, so the token term's own rollouts equal the sequence group's.
    ``calls`` lists every request's key and number of prompts."""

    def __init__(self, inner, any_seed: bool = False) -> None:
        self.inner = inner
        self.adapter = inner.adapter
        self.stop_strings = list(getattr(inner, "stop_strings", []))
        self.batch_size = getattr(inner, "batch_size", 64)
        self.cache: dict = {}
        self.calls: list = []
        self.any_seed = any_seed

    def sync_weights(self, step: int) -> None:
        self.inner.sync_weights(step)

    def generate(self, prompts, **kw):
        key = (None if self.any_seed else kw.get("seed"), kw.get("n", 1), kw.get("greedy", False), prompts.modality,
               len(prompts))
        self.calls.append((key, len(prompts)))
        if key not in self.cache:
            self.cache[key] = self.inner.generate(prompts, **kw)
        return self.cache[key]


class CannedEngine:
    """Rollouts without running a model, returned on the CPU as the real engines return them."""

    def __init__(self, adapter) -> None:
        self.adapter, self.stop_strings, self.batch_size = adapter, [], 64

    def sync_weights(self, step: int) -> None:
        pass

    def generate(self, prompts, *, n=1, greedy=False, seed=None, **kw):
        rows = len(prompts) * n
        g = torch.Generator().manual_seed(0 if seed is None else seed % 2**31)
        ids = torch.randint(0, 250, (rows, 4), generator=g)
        mask = torch.ones(rows, 4, dtype=torch.bool)
        mask[::2, 3] = False
        ids = ids.masked_fill(~mask, self.adapter.pad_token_id)
        return Rollouts(ids=ids, mask=mask, text=[str(i % 3) for i in range(rows)],
                        prompt_index=[i // n for i in range(rows)], n=n, finished=[True] * rows)


def _length_parity_reward(cands, refs):
    return [float(len(c) % 2 == 0) for c in cands]


def _pair_reward(cands, refs):
    """A pseudo-random 0/1 function of (candidate, reference): a reference attached to the
    wrong group changes the rewards."""
    return [float(zlib.crc32(f"{c}|{r}".encode()) % 2) for c, r in zip(cands, refs, strict=True)]


def _long_audio_examples(n: int) -> list[PairedExample]:
    return [PairedExample(f"long{i}", "What is 3 + 4?", np.zeros(16000 * 31, np.float32), answer="7")
            for i in range(n)]


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
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in g1)
    assert m1["kl_mean"] == pytest.approx(m0["kl_mean"])
    assert c1 == c0 - 1


# ------------------------------------------------------------------------------------------
# Each method's loss, from its definition, in float64


def _naive_loss(trainer, examples, method: str) -> torch.Tensor:
    """The method's loss written out from docs/architecture.md in float64 with full-vocabulary logits and
    python loops. Its rollouts and references are drawn again here with the seeds the step
    uses (seeded sampling is reproducible): what run_micro_step must equal."""
    cfg = trainer.cfg
    obj, ro = cfg.objective, cfg.rollout
    assert obj.normalization == "tokens" and obj.aggregation == "token_mean" and not obj.adv_std_norm
    spec = METHODS[method]
    ad, teacher = trainer.adapter, trainer.teacher
    assert ad.lm_head().bias is None
    audio, text = ad.audio_prompts(examples), ad.text_prompts(examples)

    def logp(h, head, temperature):
        return torch.log_softmax((h.double() @ head.double().t()) / temperature, dim=-1)

    def sample(prompts, purpose, n, temperature, by_teacher=False):
        with teacher.scope() if by_teacher else torch.no_grad() as t:
            engine = make_engine(t if by_teacher else ad, cfg)
            return engine.generate(prompts, n=n, temperature=temperature, top_p=ro.top_p,
                                   max_new_tokens=ro.max_new_tokens, seed=_rollout_seed(cfg, 0, 0, purpose))

    if spec.token == "sft":
        im_end = ad.tokenizer.convert_tokens_to_ids("<|im_end|>")
        seqs = [ad.tokenizer(ex.solution or ex.answer, add_special_tokens=False)["input_ids"] + [im_end]
                for ex in examples]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [ad.pad_token_id] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[j < len(s) for j in range(width)] for s in seqs])
        lp = logp(ad.completion_hidden(audio, ids, mask), ad.lm_head().weight, 1.0)
        tok = lp.gather(-1, ids[..., None])[..., 0]
        return -(tok * mask).sum() / mask.sum()

    loss = torch.zeros((), dtype=torch.float64)
    if spec.token is not None:  # reverse KL on audio rollouts, or forward KL on teacher samples
        n = ro.token_n
        if spec.token == "reverse_kl":
            roll = sample(audio, 2, n, ro.token_temperature)
        else:
            roll = sample(text, 3, n, ro.token_temperature, by_teacher=True)
        ls = logp(ad.completion_hidden(audio.repeat_interleave(n), roll.ids, roll.mask),
                  ad.lm_head().weight, obj.temperature)
        with teacher.scope() as t:
            lt = logp(t.completion_hidden(text.repeat_interleave(n), roll.ids, roll.mask),
                      t.lm_head().weight, obj.temperature)
        if spec.token == "reverse_kl":
            kl = (ls.exp() * (ls - lt)).sum(-1)
        else:
            kl = (lt.exp() * (lt - ls)).sum(-1)
        alpha, beta = (obj.alpha, obj.beta) if spec.weighted else (1.0, 1.0)
        total, count = torch.zeros((), dtype=torch.float64), 0
        for b in range(kl.shape[0]):
            valid = [t for t in range(kl.shape[1]) if roll.mask[b, t]]
            ranked = sorted(valid, key=lambda t: -float(kl[b, t]))
            top = set(ranked[: obj.top_k])
            for j, t in enumerate(valid):
                w_pos = beta - (beta - 1.0) * j / max(len(valid) - 1, 1)
                total = total + (alpha if t in top else 1.0) * w_pos * kl[b, t]
            count += len(valid)
        loss = loss + total / count
    if spec.seq:
        roll = sample(audio, 1, ro.seq_n, ro.seq_temperature)
        if obj.reward_reference == "text":
            with teacher.scope() as t:
                refs = make_engine(t, cfg).generate(text, greedy=True, max_new_tokens=ro.max_new_tokens).text
        else:
            refs = [ex.answer for ex in examples]
        r = torch.tensor(trainer.ctx.reward_fn(roll.text, [refs[i // ro.seq_n] for i in range(len(roll.text))]),
                         dtype=torch.float64)
        adv = r.reshape(-1, ro.seq_n)
        adv = (adv - adv.mean(-1, keepdim=True)).reshape(-1)
        lp = logp(ad.completion_hidden(audio.repeat_interleave(ro.seq_n), roll.ids, roll.mask),
                  ad.lm_head().weight, ro.seq_temperature)
        tok = lp.gather(-1, roll.ids[..., None])[..., 0]
        # on-policy ratio exp(lp - sg(lp)) = 1: value -A per token, gradient -A ∇lp
        per_token = -torch.exp(tok - tok.detach()) * adv[:, None]
        lam = obj.lam if spec.token is not None else 1.0
        loss = loss + lam * (per_token * roll.mask).sum() / roll.mask.sum()
    return loss


@pytest.mark.parametrize(("method", "family", "reference"), [
    *((m, f, "ground_truth") for f in ("qwen2-audio", "qwen2.5-omni") for m in METHODS),
    ("cord", "qwen2-audio", "text"),
])
def test_each_method_loss_and_gradient_equal_an_independent_float64_computation(method, family, reference, tmp_path):
    """What run_micro_step wires together (which prompts the student and the teacher see,
    temperatures, rewards against the right references and rollouts, top-K and position
    weights, λ, SFT targets ending with <|im_end|>) against the method written out naively.
    The dataset answers differ between examples (the tiny random teacher's greedy answers do
    not), so a reference given to the wrong group changes the rewards."""
    cfg = tiny_cfg(method, tmp_path, family, "objective.top_k=2", "rollout.token_n=2",
                   f"objective.reward_reference={reference}")
    trainer = Trainer(cfg)
    # Move the student away from the (frozen-copy) teacher: at random init both are near
    # uniform and the KL is ~1e-4, too flat to tell a wrong wiring from a right one.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    trainer.ctx.reward_fn = _pair_reward
    examples = trainer.micro_examples(0, 0)

    loss, metrics = run_micro_step(trainer.ctx, examples, step=0, micro=0)
    loss.backward()
    got = [p.grad.clone() for p in trainer.params]
    trainer.optimizer.zero_grad(set_to_none=True)
    naive = _naive_loss(trainer, examples, method)
    naive.backward()
    want = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in trainer.params]

    assert float(loss) == pytest.approx(float(naive), rel=1e-5, abs=1e-7)
    assert metrics["loss"] == pytest.approx(float(naive), rel=1e-5, abs=1e-7)
    scale = max(float(w.abs().max()) for w in want)
    assert scale > 1e-4, "the gradient must not vanish on this batch"
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-5 * scale)


# ------------------------------------------------------------------------------------------
# Devices: every tensor entering an objective or a collective is on the adapter's device


@pytest.mark.parametrize("method", list(METHODS))
def test_every_objective_input_is_on_the_adapter_device(method, tmp_path, monkeypatch):
    """The CPU stand-in for a GPU: after the rollouts (made on the CPU, as the engines return
    them) the model lives on the ``meta`` device; every tensor that reaches an objective must
    be there too. Rewards built on the CPU and multiplied with device log-probs fail here,
    as they fail on a GPU."""
    cfg = tiny_cfg(method, tmp_path, "qwen2-audio", "model.lora.r=2")  # adapter-disabled teacher: one model
    trainer = Trainer(cfg)
    ad = trainer.adapter
    trainer.ctx.engine = CannedEngine(ad)
    trainer.ctx.reward_fn = lambda cands, refs: [float(i % 2) for i in range(len(cands))]
    ad.model.to("meta")
    meta = torch.device("meta")
    hidden_size = ad.lm_head().weight.shape[1]
    entered: list[str] = []

    def checked(name, result):
        def fn(*args, **kwargs):
            for i, a in enumerate([*args, *kwargs.values()]):
                if isinstance(a, torch.Tensor):
                    assert a.device == meta, f"{name}: argument {i} is on {a.device}, the model on {meta}"
            entered.append(name)
            return result(*args, **kwargs)
        return fn

    def fake_hidden(prompts, ids, mask):  # the real forward needs values; the objectives' inputs do not
        assert len(prompts) == ids.shape[0] == mask.shape[0]
        return torch.zeros(ids.shape[0], ids.shape[1], hidden_size, device=ad.device, requires_grad=True)

    ad.completion_hidden = fake_hidden
    zero = lambda: torch.zeros((), device=meta, requires_grad=True)  # noqa: E731
    monkeypatch.setattr(step_mod, "token_logprobs", checked("token_logprobs",
                        lambda h, w, ids, mask, **k: torch.zeros(ids.shape, device=meta)))
    for name in ("reverse_kl_per_token", "forward_kl_per_token"):
        monkeypatch.setattr(step_mod, name, checked(name, lambda s, w, t, tw, mask, **k: torch.zeros(mask.shape,
                                                                                                   device=meta)))
    monkeypatch.setattr(step_mod, "position_decay_weights",
                        checked("position_decay_weights", step_mod.position_decay_weights))
    monkeypatch.setattr(step_mod, "cord_loss", checked("cord_loss", lambda *a, **k: (
        zero(), {"loss": 0.0, "loss_tok": 0.0, "loss_seq": 0.0})))
    monkeypatch.setattr(step_mod, "sft_loss", checked("sft_loss", lambda lp, mask: (
        zero(), {"loss": 0.0, "loss_tok": 0.0, "loss_seq": 0.0, "nll": 0.0})))

    loss, metrics = run_micro_step(trainer.ctx, trainer.micro_examples(0, 0), step=0, micro=0)
    assert loss.device == meta
    assert entered[-1] == ("sft_loss" if method == "sft" else "cord_loss")
    assert "token_logprobs" in entered or METHODS[method].token in ("reverse_kl", "forward_kl")
    assert set(metrics) == set(METRIC_KEYS)


def test_metrics_all_reduce_runs_on_the_adapter_device(tmp_path, monkeypatch):
    """NCCL reduces device tensors only: the metrics tensor must be on the model's device
    (``meta`` stands in for a GPU; the fake collective stops the step once it has looked)."""
    trainer = Trainer(tiny_cfg("opd", tmp_path))
    trainer.adapter.model.to("meta")
    trainer.world = 2

    class Reached(Exception):
        pass

    def all_reduce(t, op=None, **kw):
        assert t.device.type == "meta", f"the metrics all-reduce got a tensor on {t.device}"
        raise Reached

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    with pytest.raises(Reached):
        trainer._reduce_metrics([{"loss": 1.0, "time_rollout": 0.5}])


# ------------------------------------------------------------------------------------------
# Metrics: the same keys on every path; the reduction


def test_a_micro_batch_whose_audio_is_all_skipped_reports_the_same_metric_keys(tmp_path):
    """Processes all-reduce the same fixed key list, so a process whose micro-batch was all
    skipped (long audio) must not report other keys than one that trained."""
    for method in ("cord", "sft"):
        trainer = Trainer(tiny_cfg(method, tmp_path / method, "qwen2-audio", "model.long_audio=skip"))
        trainer.ctx.reward_fn = _length_parity_reward
        skipped_loss, skipped = run_micro_step(trainer.ctx, _long_audio_examples(2), step=0, micro=0)
        loss, trained = run_micro_step(trainer.ctx, trainer.micro_examples(0, 0), step=0, micro=1)
        assert set(skipped) == set(trained) == set(METRIC_KEYS), method
        assert skipped["skipped_long_audio"] == 2.0 and trained["skipped_long_audio"] == 0.0
        assert math.isnan(skipped["loss"]) and math.isfinite(trained["loss"])
        assert float(skipped_loss.detach()) == 0.0 and skipped_loss.requires_grad


def test_a_step_whose_whole_global_batch_was_skipped_leaves_the_weights_alone(tmp_path):
    """Zero gradients still move AdamW's weights (its momentum): no update, no bad step."""
    trainer = Trainer(tiny_cfg("sft", tmp_path, "qwen2-audio", "model.long_audio=skip"))
    trainer.train_step()  # a real step first: the optimizer now has momentum
    before = [p.detach().clone() for p in trainer.params]
    trainer.micro_examples = lambda step, micro: _long_audio_examples(trainer.micro_batch)
    with pytest.warns(UserWarning, match="every example of the global batch was skipped"):
        metrics = trainer.train_step()
    assert metrics["skipped"] and metrics["skipped_long_audio"] == 2.0 and trainer.bad_steps == 0
    assert trainer.step == 2 and math.isnan(metrics["loss"])
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.params, strict=True))


def test_reduce_metrics_means_skip_nan_totals_add_up(tmp_path):
    """One process, three micro-batches (one all skipped): means over the micro-batches that
    have a value, totals for counts, sums for times; the key set is fixed."""
    trainer = Trainer(tiny_cfg("sft", tmp_path, "qwen2-audio", "train.batch_size=3", "train.grad_accum=3"))
    nan = float("nan")
    base = {k: nan for k in REDUCED_KEYS}
    recs = [
        {**base, "loss": 1.0, "kl_mean": nan, "completion_tokens": 10.0, "skipped_long_audio": 0.0,
         "targets_truncated": 1.0, "time_rollout": 0.5, "time_backward": 0.1, "loss_finite": 1.0},
        {**base, "loss": 3.0, "kl_mean": 2.0, "completion_tokens": 6.0, "skipped_long_audio": 1.0,
         "targets_truncated": 0.0, "time_rollout": 0.25, "time_backward": 0.1, "loss_finite": 1.0},
        {**base, "completion_tokens": 0.0, "skipped_long_audio": 2.0, "targets_truncated": 0.0,
         "time_rollout": 0.0, "time_backward": 0.0, "loss_finite": 1.0},
    ]
    out = trainer._reduce_metrics(recs)
    assert set(out) == set(REDUCED_KEYS)
    assert out["loss"] == 2.0 and out["kl_mean"] == 2.0 and math.isnan(out["reward_mean"])
    assert out["completion_tokens"] == 16.0 and out["skipped_long_audio"] == 3.0 and out["targets_truncated"] == 1.0
    assert out["time_rollout"] == 0.75 and out["loss_finite"] == 1.0


# ------------------------------------------------------------------------------------------
# The global batch


def test_batch_size_is_the_global_batch_split_over_processes_and_accumulation(tmp_path):
    cfg = tiny_cfg("sft", tmp_path, "qwen2-audio", "train.batch_size=4", "train.grad_accum=2")
    trainer = Trainer(cfg)
    assert trainer.global_batch == 4 and trainer.micro_batch == 2
    stream = [trainer.data[trainer.order[4 + j]].id for j in range(4)]  # step 1's global batch
    one = [ex.id for m in range(2) for ex in trainer.micro_examples(1, m)]
    assert one == stream
    # two processes x 2 accumulation steps: process r runs micro-batches a*2 + r, one prompt each,
    # and together they cover the same global batch in the same order
    trainer.world = 2
    assert trainer.micro_batch == 1
    per_micro = {a * 2 + r: [ex.id for ex in trainer.micro_examples(1, a * 2 + r)] for a in range(2) for r in range(2)}
    assert [i for m in sorted(per_micro) for i in per_micro[m]] == stream

    with pytest.raises(CordError, match=r"train.batch_size=3 is the global batch .* multiple of 2"):
        Trainer(tiny_cfg("sft", tmp_path, "qwen2-audio", "train.batch_size=3", "train.grad_accum=2"))
    two = SimpleNamespace(num_processes=2, process_index=0, device=torch.device("cpu"))
    with pytest.raises(CordError, match=r"over 2 process\(es\) x train.grad_accum=2 = 4 micro-batches"):
        Trainer(tiny_cfg("sft", tmp_path, "qwen2-audio", "train.batch_size=6", "train.grad_accum=2",
                         f"data.train={tmp_path}/not-there"), accelerator=two)  # before the data is read


# ------------------------------------------------------------------------------------------
# Teacher mode, SFT targets, cached references, timings


@pytest.mark.parametrize("teacher", ["live", "frozen"])
def test_teacher_runs_in_eval_mode_and_the_training_mode_is_restored(teacher, tmp_path):
    """The teacher's forward is deterministic (no dropout): with LoRA dropout 0.5 a live
    teacher in train mode would give two different answers to the same input."""
    cfg = tiny_cfg("opd", tmp_path, "qwen2-audio", "model.lora.r=4", "model.lora.dropout=0.5",
                   f"objective.teacher={teacher}")
    trainer = Trainer(cfg)
    ad = trainer.adapter
    with torch.no_grad():  # LoRA's B starts at zero: give the adapter (and its dropout) an effect
        for n, p in ad.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    seen = []
    inner = ad.completion_hidden

    def record(prompts, ids, mask):
        seen.append((prompts.modality, ad.model.training))
        return inner(prompts, ids, mask)

    ad.completion_hidden = record
    run_micro_step(trainer.ctx, trainer.micro_examples(0, 0), step=0, micro=0)
    assert ("text", False) in seen and ("text", True) not in seen  # the teacher's forward
    assert ("audio", True) in seen  # the student's, in the trainer's mode
    assert ad.model.training
    examples = trainer.micro_examples(0, 0)
    ids, mask = torch.randint(0, 200, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    with trainer.teacher.scope() as t:
        a = t.completion_hidden(t.text_prompts(examples), ids, mask)
        b = t.completion_hidden(t.text_prompts(examples), ids, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ad.model.training


def test_sft_targets_end_with_the_end_of_turn_token_and_long_ones_are_cut_and_counted(tmp_path, monkeypatch):
    trainer = Trainer(tiny_cfg("sft", tmp_path, "qwen2-audio", "objective.sft_max_tokens=12"))
    ad = trainer.adapter
    im_end, endoftext = ad.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    # the real Qwen checkpoints' order: <|endoftext|> (151643) sorts before <|im_end|> (151645)
    monkeypatch.setattr(type(ad), "eos_token_ids", property(lambda self: [endoftext, im_end]))
    assert end_of_turn_id(ad) == im_end
    assert end_of_turn_id(SimpleNamespace(eos_token_ids=[5, 9])) == 5  # a family without one: its EOS
    audio = np.zeros(16000, np.float32)
    short = PairedExample("s", "What is 3 + 4?", audio, answer="7", solution="3+4=7")
    long = PairedExample("l", "What is 3 + 4?", audio, answer="7", solution="x" * 30 + " so the answer is 7")
    ids, mask, truncated = _targets(ad, [short, long], 12)
    enc = ad.tokenizer("3+4=7", add_special_tokens=False)["input_ids"]
    assert ids[0, : len(enc) + 1].tolist() == enc + [im_end] and int(mask[0].sum()) == len(enc) + 1
    assert int(mask[1].sum()) == 12 and im_end not in ids[1].tolist() and truncated == 1
    with pytest.warns(UserWarning, match="objective.sft_max_tokens=12"):
        _, metrics = run_micro_step(trainer.ctx, [short, long], step=0, micro=0)
    assert metrics["targets_truncated"] == 1.0
    assert metrics["completion_tokens"] == len(enc) + 1 + 12


def test_sft_from_the_text_prompt_is_the_text_conditioned_likelihood_of_the_solution(tmp_path):
    """objective.sft_prompt=text trains each solution from the question as text: its loss is the
    token-mean NLL of the solution after the chat-formatted text prompt, computed here with
    the plain HF model in float64 (no audio anywhere); the default audio prompt gives another."""
    trainer = Trainer(tiny_cfg("sft", tmp_path, "qwen2-audio", "objective.sft_prompt=text"))
    ad = trainer.adapter
    rng = np.random.default_rng(0)
    examples = [PairedExample("a", "What is 3 plus 4?", rng.standard_normal(8000).astype(np.float32) * 0.1,
                              answer="7", solution="3 + 4 = 7. The answer is 7."),
                PairedExample("b", "What is 9 minus 2?", rng.standard_normal(12000).astype(np.float32) * 0.1,
                              answer="7", solution="9 - 2 = 7. The answer is 7.")]
    loss, _ = run_micro_step(trainer.ctx, examples, step=0, micro=0)
    eot = end_of_turn_id(ad)
    model = ad.model.double()
    nll, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            prompt = ad.text_prompt_ids(ex.question_text)
            target = ad.tokenizer(ex.solution, add_special_tokens=False)["input_ids"] + [eot]
            logits = model(input_ids=torch.tensor([prompt + target])).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            for j, tok in enumerate(target):
                nll -= float(logp[len(prompt) - 1 + j, tok])
                count += 1
    model.float()
    assert float(loss.detach()) == pytest.approx(nll / count, rel=1e-4)
    trainer.cfg.objective.sft_prompt = "audio"
    audio_loss, _ = run_micro_step(trainer.ctx, examples, step=0, micro=0)
    assert abs(float(audio_loss.detach()) - nll / count) > 1e-3


@pytest.mark.parametrize("teacher", ["frozen", "live"])
def test_greedy_references_of_a_frozen_teacher_are_generated_once_per_example(teacher, tmp_path):
    cfg = tiny_cfg("grpo", tmp_path, "qwen2-audio", "model.lora.r=2", f"objective.teacher={teacher}")
    trainer = Trainer(cfg)
    engine = trainer.ctx.engine = ReplayEngine(trainer.engine)
    refs_seen = []
    trainer.ctx.reward_fn = lambda cands, refs: refs_seen.append(list(refs)) or _length_parity_reward(cands, refs)
    examples = trainer.micro_examples(0, 0)

    def greedy_rows():
        return [rows for (key, rows) in engine.calls if key[2]]

    run_micro_step(trainer.ctx, examples, step=0, micro=0)
    assert greedy_rows() == [2]
    run_micro_step(trainer.ctx, examples, step=1, micro=0)
    assert refs_seen[1] == refs_seen[0]
    if teacher == "live":  # the live teacher's answers change as it trains: never cached
        assert greedy_rows() == [2, 2]
        return
    assert greedy_rows() == [2]
    assert trainer.ctx.reference_cache == {ex.id: r for ex, r in zip(examples, refs_seen[0][:: cfg.rollout.seq_n],
                                                                     strict=True)}
    # a batch with one new example generates that one only
    other = trainer.micro_examples(1, 0)[0]
    assert other.id not in trainer.ctx.reference_cache
    run_micro_step(trainer.ctx, [examples[0], other], step=2, micro=0)
    assert greedy_rows() == [2, 1]


def test_phase_timings_synchronize_cuda_before_reading_the_clock(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(torch.device(device)))
    sync_clock(torch.device("cuda", 1))
    assert synced == [torch.device("cuda", 1)]
    sync_clock(torch.device("cpu"))
    sync_clock(torch.device("meta"))
    assert len(synced) == 1
    # every phase of the step and of the trainer reads the clock through it, on the model's device
    trainer = Trainer(tiny_cfg("opd", tmp_path))
    devices = []

    def clock(device):
        devices.append(torch.device(device))
        return sync_clock(device)

    monkeypatch.setattr(step_mod, "sync_clock", clock)
    monkeypatch.setattr(trainer_mod, "sync_clock", clock)
    trainer.train_step()
    assert len(devices) >= 8 and set(devices) == {trainer.adapter.device}


# ------------------------------------------------------------------------------------------
# The loop: resume, checkpoints, teacher kinds, errors


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
    for (n, p), (n2, q) in zip(trainer.adapter.model.named_parameters(), exported.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_frozen_teacher_copy_unchanged_and_lora_teacher_is_adapter_disabled(tmp_path):
    cfg = tiny_cfg("opd", tmp_path, "qwen2-audio", "train.lr=1e-2")
    trainer = Trainer(cfg)
    assert trainer.teacher.kind == "frozen-copy"
    before = [p.clone() for p in trainer.teacher.parameters()]
    trainer.fit(export=False)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.teacher.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.adapter.model.parameters(), strict=True))

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
    # a preset's data folder that does not exist yet: one line with both ways forward
    with pytest.raises(CordError, match=r"no paired dataset.*cord synth.*data\.train=builtin:tiny-arith"):
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


def _count_reference_generations(trainer) -> list[int]:
    """Calls that generate the teacher's greedy references (StepContext.engine_for is asked
    for the teacher's engine only when some reference is not cached)."""
    calls: list[int] = []
    real = trainer.ctx.engine_for

    def engine_for(t_adapter):
        calls.append(trainer.step)
        return real(t_adapter)

    trainer.ctx.engine_for = engine_for
    return calls


def test_resume_keeps_the_frozen_teachers_references(tmp_path):
    """Issue #27: the frozen teacher's greedy-reference cache was not in checkpoints, so a
    resumed run generated again, in other batches (other padding), the references that the
    uninterrupted run had cached; with them in the checkpoint the resumed run does the same
    work and reaches the same weights."""
    from safetensors.torch import load_file

    from cord.train.checkpoint import REFERENCES, read_references

    common = ["train.max_steps=4", "train.save_every=2", "rollout.seq_n=2", "data.limit=4"]
    full = Trainer(tiny_cfg("grpo", tmp_path / "a", "qwen2-audio", *common))
    assert full.teacher.static and full.cfg.objective.reward_reference == "text"
    full_calls = _count_reference_generations(full)
    full.fit(export=False)
    assert full_calls == [0, 1]  # epoch 1 (steps 1-2) fills the cache; epoch 2 reuses it
    assert len(full.ctx.reference_cache) == 4

    part = Trainer(tiny_cfg("grpo", tmp_path / "b", "qwen2-audio", *common[1:], "train.max_steps=2"))
    part.fit(export=False)
    saved = read_references(tmp_path / "b" / "run" / "checkpoints" / "step-00000002")
    assert (tmp_path / "b" / "run" / "checkpoints" / "step-00000002" / REFERENCES).is_file()
    assert saved == [part.ctx.reference_cache] and len(saved[0]) == 4

    resumed = Trainer(tiny_cfg("grpo", tmp_path / "b", "qwen2-audio", *common))
    resumed_calls = _count_reference_generations(resumed)
    assert resumed.fit(export=False)["resumed_from"].endswith("step-00000002")
    assert resumed_calls == []  # nothing generated again
    assert resumed.ctx.reference_cache == full.ctx.reference_cache
    a = _strip_times((tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines())
    b = _strip_times((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines())
    assert a == b
    ckpt = Path("run") / "checkpoints" / "step-00000004" / "trainable.safetensors"
    ta, tb = load_file(str(tmp_path / "a" / ckpt)), load_file(str(tmp_path / "b" / ckpt))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
