"""One CORD step on one micro-batch, as plain code (docs/architecture.md, "One step, as data").

    audio prompt x_a ──rollouts y~p_θ(·|x_a)──┐
    text prompt  x_t ──────────────────────────┼─ student hidden (grad) on x_a ⊕ y
                                               ├─ teacher hidden (no grad) on x_t ⊕ y
                                               └─ judge(y, greedy answer from x_t) → r
    L = Σ w_t KL_t / n_tokens  +  λ · GRPO(r)

Devices: rollouts, targets and rewards are made on the CPU (decoding, tokenizing, judging);
every tensor that enters an objective is moved to the adapter's device first.
Metrics: every path returns the same keys (:data:`METRIC_KEYS`; NaN where a term is absent),
so all processes run the same collectives whatever their micro-batch held.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from cord import CordError
from cord.config import CordConfig
from cord.judges import make_reward_fn
from cord.models.base import right_pad
from cord.objectives import (
    cord_loss,
    forward_kl_per_token,
    position_decay_weights,
    reverse_kl_per_token,
    token_logprobs,
)
from cord.rollout import Engine, Rollouts, make_engine
from cord.types import METHODS, PromptBatch

#: The metrics of one micro-batch, the same keys on every path (NaN: not computed here).
METRIC_KEYS: tuple[str, ...] = (
    "loss", "loss_tok", "loss_seq", "nll",
    "kl_mean", "kl_weighted", "kl_p80", "topk_weight_share",
    "reward_mean", "reward_std", "adv_std", "agreement",
    "completion_tokens", "completion_len", "skipped_long_audio", "targets_truncated",
    "time_rollout", "time_teacher", "time_student",
)


def sync_clock(device: torch.device | str | None) -> float:
    """``time.perf_counter()`` once the device's queued work is done. CUDA runs kernels
    asynchronously, so without the synchronize a phase's time would be its launch time and
    the wait would be billed to whichever phase synchronizes next."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def frozen_copy(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A deep copy of ``model`` without gradients; its parameters cast to ``dtype`` (ties kept:
    a shared parameter is copied once)."""
    memo: dict[int, Any] = {}
    if dtype is not None:
        for p in model.parameters():  # deepcopy takes these from the memo instead of copying
            memo[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
    copied = copy.deepcopy(model, memo)
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


class Teacher:
    """The text-conditioned teacher: the same network under stop-gradient.

    ``frozen``: the initial weights. With LoRA that is the model with its adapter disabled
    (no second copy in memory). With full fine-tuning a frozen copy is kept — unless nothing
    on the text path trains (only the audio encoder/projector), where the live model *is*
    the initial text model and no copy is needed. ``live``: current weights, no grad.
    Either way the teacher runs in eval mode (no dropout), like the sampler.
    """

    def __init__(self, adapter, mode: str, text_path_trains: bool, dtype: torch.dtype | None = None) -> None:
        """``dtype``: the frozen copy's parameters in this dtype (made one by one from the
        student's, so the full-precision model is never held twice; e.g. bf16 under FSDP)."""
        self.student = adapter
        self.mode = mode
        self.uses_lora = hasattr(adapter.model, "disable_adapter")
        self.adapter = adapter
        self.kind = "live"
        if mode == "frozen" and text_path_trains:
            if self.uses_lora:
                self.kind = "adapter-disabled"
            else:
                self.kind = "frozen-copy"
                frozen = copy.copy(adapter)
                frozen.model = frozen_copy(adapter.model, dtype).eval()
                for p in frozen.model.parameters():
                    p.requires_grad_(False)
                self.adapter = frozen

    @property
    def static(self) -> bool:
        """True when the teacher's outputs never change during training (frozen weights)."""
        return self.mode == "frozen"

    @contextlib.contextmanager
    def scope(self):
        """Run teacher computations inside this context: no grad, eval mode (no dropout; the
        previous mode is restored on exit), adapter off if LoRA."""
        model = self.adapter.model
        was_training = model.training
        ctx = self.student.model.disable_adapter() if self.kind == "adapter-disabled" else contextlib.nullcontext()
        model.eval()
        try:
            with torch.no_grad(), ctx:
                yield self.adapter
        finally:
            model.train(was_training)

    def parameters(self):
        return self.adapter.model.parameters()


@dataclass
class StepContext:
    """Everything a step needs; built once by the trainer."""

    cfg: CordConfig
    adapter: Any
    engine: Engine
    teacher: Teacher
    autocast: Any = field(default_factory=lambda: contextlib.nullcontext)
    #: (audio rollout texts, reference texts) -> 0/1 rewards; default: the configured judge
    reward_fn: Any = None
    #: example id -> greedy text-prompt answer of a static (frozen) teacher
    reference_cache: dict[str, str] = field(default_factory=dict)
    #: engine -> engine for a teacher that is not the policy (sharded: gathers its layers
    #: once per generate call, cord.train.sharding.GatheredEngine); None: as is
    wrap_engine: Any = None
    #: keep a static teacher's reference answers (False when sharded: every process must run
    #: the same generate calls, the same collectives, whatever its examples were before)
    cache_references: bool = True

    def engine_for(self, t_adapter) -> Engine:
        """The rollout engine of ``t_adapter``: the policy's own when it samples with the model as
        it is at call time (the teacher may be that model with its LoRA adapter disabled), else
        an ``hf`` engine — for a teacher copy, or when the policy's engine holds its own copy of
        the policy's weights (vLLM), which are not the frozen teacher's. Built once per adapter."""
        if t_adapter is self.adapter and (getattr(self.engine, "reads_model_weights", True)
                                          or self.teacher.kind == "live"):
            return self.engine
        held = self._teacher_engines.get(id(t_adapter))
        if held is None or held[0] is not t_adapter:
            ro = self.cfg.rollout
            engine = make_engine(t_adapter, ro if ro.engine != "vllm" else ro.model_copy(update={"engine": "hf"}))
            if t_adapter is not self.adapter and self.wrap_engine is not None:
                engine = self.wrap_engine(engine)
            held = self._teacher_engines[id(t_adapter)] = (t_adapter, engine)
        return held[1]

    _teacher_engines: dict = field(default_factory=dict)

    def rewards(self, candidates: list[str], references: list[str], questions: list[str]) -> torch.Tensor:
        """(R,) float32 rewards on the CPU (the caller moves them to the device)."""
        if self.reward_fn is not None:
            return torch.as_tensor(self.reward_fn(candidates, references), dtype=torch.float32)
        if self._judge is None:
            self._judge = make_reward_fn(self.cfg.judge, generate_text=self.self_generate)
        return torch.tensor(self._judge(candidates, references, questions), dtype=torch.float32)

    _judge: Any = None

    def text_references(self, examples: list, text: PromptBatch) -> list[str]:
        """The teacher's greedy answer to each example's text prompt (the reward's reference).
        A frozen teacher's answers never change, so they are generated once per example id
        and cached; a live teacher's are generated every time."""
        cache = self.reference_cache if self.teacher.static and self.cache_references else None
        missing = [i for i, ex in enumerate(examples) if cache is None or ex.id not in cache]
        fresh: dict[int, str] = {}
        if missing:
            prompts = text if len(missing) == len(examples) else text.select(missing)
            with self.teacher.scope() as t_adapter:
                ref_engine = self.engine_for(t_adapter)
                out = ref_engine.generate(prompts, greedy=True, max_new_tokens=self.cfg.rollout.max_new_tokens).text
            fresh = dict(zip(missing, out, strict=True))
            if cache is not None:
                for i, ref in fresh.items():
                    cache[examples[i].id] = ref
        return [fresh[i] if i in fresh else cache[ex.id] for i, ex in enumerate(examples)]

    def self_generate(self, prompts: list[str]) -> list[str]:
        """The "self" judge: the teacher (the policy under a text prompt) answers ``prompts``."""
        from cord.data.paired import PairedExample

        examples = [PairedExample(f"judge-{i}", p, None) for i, p in enumerate(prompts)]
        with self.teacher.scope() as t_adapter:
            engine = self.engine_for(t_adapter)
            return engine.generate(t_adapter.text_prompts(examples), greedy=True, max_new_tokens=16).text


def _head(adapter):
    """(weight, bias, logit soft cap or None) of the adapter's output head."""
    head = adapter.lm_head()
    return head.weight, head.bias, getattr(adapter, "logit_softcap", None)


def _rollout_seed(cfg: CordConfig, step: int, micro: int, purpose: int) -> int:
    # Seeded by (run seed, step, global micro-batch index, purpose) so that rollouts do not
    # depend on the number of processes or on whether the run was resumed.
    return (cfg.train.seed * 1_000_003 + step * 10_007 + micro * 101 + purpose) % (2**63 - 1)


def end_of_turn_id(adapter) -> int:
    """The token an assistant turn ends with: the adapter's ``end_of_turn_token_id`` (the chat
    template's, e.g. ``<|im_end|>``), else its first EOS id for families without one."""
    eot = getattr(adapter, "end_of_turn_token_id", None)
    return int(adapter.eos_token_ids[0] if eot is None else eot)


def _targets(adapter, examples, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reference solutions (or answers) tokenized and right-padded, each ending with the
    end-of-turn token, at most ``max_tokens`` tokens. A longer target is cut to its first
    ``max_tokens`` tokens *without* the end-of-turn token (the model is not taught to stop
    mid-solution); the third value counts them."""
    eot = end_of_turn_id(adapter)
    seqs, truncated = [], 0
    for ex in examples:
        text = ex.solution or ex.answer
        if not text:
            raise CordError(f"example {ex.id!r} has neither a solution nor an answer to train on (method sft)")
        ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + 1 <= max_tokens:
            seqs.append(ids + [eot])
        else:
            seqs.append(ids[:max_tokens])
            truncated += 1
    ids, mask = right_pad(seqs, adapter.pad_token_id)
    return ids, mask, truncated


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood over the valid target tokens, and its metrics."""
    loss = -(logprobs * mask).sum() / mask.sum().clamp(min=1)
    value = float(loss.detach())
    return loss, {"loss": value, "loss_tok": value, "loss_seq": 0.0, "nll": value}


@dataclass
class MicroBatch:
    """What every term of one micro-step shares: the prompts of the examples the long-audio
    policy kept, the output head, the step's seeds, and the running timings and counts."""

    ctx: StepContext
    step: int
    micro: int
    kept: list
    audio: PromptBatch
    text: PromptBatch
    head: tuple  # (weight, bias, soft cap or None), see _head
    timings: dict[str, float]
    extra: dict[str, float]
    n_tokens: int = 0

    def clock(self) -> float:
        return sync_clock(self.ctx.adapter.device)

    def seed(self, purpose: int) -> int:
        return _rollout_seed(self.ctx.cfg, self.step, self.micro, purpose)


@dataclass
class SequenceTerm:
    """GRPO's inputs: the judged group of rollouts and the policy's log-probs on them."""

    roll: Rollouts
    hidden: torch.Tensor  # the student's hidden states on the rollouts (shared with the token term)
    logprobs: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor


@dataclass
class TokenTerm:
    """The per-token divergence D_t on the token-level rollouts, and their valid positions."""

    kl: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def run_micro_step(ctx: StepContext, examples: list, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss (with grad) and metrics for one micro-batch, as the paper's step reads: the
    sequence term's rollouts and rewards, then the token term (or SFT's likelihood), then
    L = L_tok + λ·L_seq (:func:`cord.objectives.cord_loss`). Backward is the caller's."""
    spec = METHODS[ctx.cfg.objective.method]
    m = start_micro_batch(ctx, examples, step, micro)
    if not m.kept:
        zero = torch.zeros((), device=ctx.adapter.device, requires_grad=True)
        return zero, _finish({}, m.timings, 0, torch.zeros(0), m.extra)
    seq = sequence_term(m) if spec.seq else None
    if spec.token == "sft":
        return sft_term(m)
    tok = token_term(m, spec.token, spec.weighted, seq) if spec.token is not None else None
    obj, ro = ctx.cfg.objective, ctx.cfg.rollout
    loss, metrics = cord_loss(
        None if tok is None else tok.kl, None if tok is None else tok.mask,
        alpha=obj.alpha if spec.weighted else 1.0, top_k=obj.top_k, beta=obj.beta if spec.weighted else 1.0,
        lam=obj.lam if spec.token is not None else 1.0,
        seq_logprobs=None if seq is None else seq.logprobs, seq_mask=None if seq is None else seq.mask,
        rewards=None if seq is None else seq.rewards,
        group_size=ro.seq_n if spec.seq else None, clip_eps=obj.clip_eps,
        normalization=obj.normalization, aggregation=obj.aggregation,
        adv_std_norm=obj.adv_std_norm,
    )
    if tok is not None:
        lengths = tok.lengths
    else:
        lengths = seq.roll.mask.sum(-1).float() if seq is not None else torch.zeros(0)
    return loss, _finish(metrics, m.timings, m.n_tokens, lengths, m.extra)


def start_micro_batch(ctx: StepContext, examples: list, step: int, micro: int) -> MicroBatch:
    """The audio prompts (the long-audio policy may drop examples) and the kept examples' text
    prompts; ``kept`` is empty when every example was dropped (then nothing else is built)."""
    adapter = ctx.adapter
    audio = adapter.audio_prompts(examples)
    kept = [examples[i] for i in audio.keep]
    extra = {"skipped_long_audio": float(len(examples) - len(kept)), "targets_truncated": 0.0}
    timings = {"rollout": 0.0, "teacher": 0.0, "student": 0.0}
    if not kept:
        return MicroBatch(ctx, step, micro, kept, audio, audio, (None, None, None), timings, extra)
    return MicroBatch(ctx, step, micro, kept, audio, adapter.text_prompts(kept), _head(adapter), timings, extra)


def sequence_term(m: MicroBatch) -> SequenceTerm:
    """A group of ``rollout.seq_n`` audio rollouts at ``seq_temperature``, judged against the
    reference (the text-conditioned greedy answer, or the dataset's), and the policy's
    log-probs of them at the sampling temperature."""
    ctx, adapter = m.ctx, m.ctx.adapter
    obj, ro = ctx.cfg.objective, ctx.cfg.rollout
    device = adapter.device
    weight, bias, softcap = m.head
    t0 = m.clock()
    roll = ctx.engine.generate(m.audio, n=ro.seq_n, temperature=ro.seq_temperature, top_p=ro.top_p,
                               max_new_tokens=ro.max_new_tokens, seed=m.seed(1))
    if obj.reward_reference == "text":
        refs = ctx.text_references(m.kept, m.text)
    else:
        refs = [ex.answer for ex in m.kept]
    m.timings["rollout"] += m.clock() - t0
    rewards_cpu = ctx.rewards(roll.text, [refs[i] for i in roll.prompt_index],
                              [m.kept[i].question_text for i in roll.prompt_index])
    m.extra["agreement"] = float(rewards_cpu.float().mean())
    rewards = rewards_cpu.to(device=device, dtype=torch.float32)
    t0 = m.clock()
    with ctx.autocast():
        hidden = adapter.completion_hidden(m.audio.repeat_interleave(ro.seq_n), roll.ids, roll.mask)
        # the policy that sampled the group is p_θ at the sampling temperature
        logprobs = token_logprobs(hidden, weight, roll.ids.to(device), roll.mask.to(device), bias=bias,
                                  temperature=ro.seq_temperature, chunk_size=obj.chunk_size, softcap=softcap)
    mask = roll.mask.to(device)
    m.timings["student"] += m.clock() - t0
    m.n_tokens += int(roll.mask.sum())
    return SequenceTerm(roll, hidden, logprobs, mask, rewards)


def sft_term(m: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """SFT: the likelihood of each example's reference solution from its audio prompt (or its
    text prompt, ``objective.sft_prompt: text``)."""
    ctx, adapter = m.ctx, m.ctx.adapter
    obj = ctx.cfg.objective
    device = adapter.device
    weight, bias, softcap = m.head
    ids, mask, truncated = _targets(adapter, m.kept, obj.sft_max_tokens)
    if truncated:
        warnings.warn(f"{truncated} of {len(m.kept)} SFT targets are longer than objective.sft_max_tokens="
                      f"{obj.sft_max_tokens} tokens and were cut (their ends, and final answers, are not "
                      "trained); raise objective.sft_max_tokens", stacklevel=3)
    m.extra["targets_truncated"] = float(truncated)
    t0 = m.clock()
    ids_d, mask_d = ids.to(device), mask.to(device)
    with ctx.autocast():
        h = adapter.completion_hidden(m.text if obj.sft_prompt == "text" else m.audio, ids, mask)
        lp = token_logprobs(h, weight, ids_d, mask_d, bias=bias, chunk_size=obj.chunk_size, softcap=softcap)
    loss, metrics = sft_loss(lp, mask_d)
    m.timings["student"] += m.clock() - t0
    m.n_tokens += int(mask.sum())
    return loss, _finish(metrics, m.timings, m.n_tokens, mask.sum(-1).float(), m.extra)


def token_term(m: MicroBatch, kind: str, weighted: bool, seq: SequenceTerm | None) -> TokenTerm:
    """D_t on token-level rollouts: ``reverse_kl`` on the student's own audio rollouts
    (``rollout.token_n`` of them, or the sequence term's group when ``rollout.share_rollouts``),
    ``forward_kl`` on the teacher's samples from the text prompt; the teacher's hidden states
    on x_t ⊕ y, the student's (with grad) on x_a ⊕ y."""
    ctx, adapter, teacher = m.ctx, m.ctx.adapter, m.ctx.teacher
    obj, ro = ctx.cfg.objective, ctx.cfg.rollout
    device = adapter.device
    weight, bias, softcap = m.head
    t0 = m.clock()
    shared = kind == "reverse_kl" and ro.share_rollouts and seq is not None
    if kind == "reverse_kl":
        if shared:
            roll, n = seq.roll, ro.seq_n
        else:
            roll, n = ctx.engine.generate(
                m.audio, n=ro.token_n, temperature=ro.token_temperature, top_p=ro.top_p,
                max_new_tokens=ro.max_new_tokens, seed=m.seed(2),
            ), ro.token_n
    else:  # off-policy: the teacher samples from the text prompt
        with teacher.scope() as t_adapter:
            t_engine = ctx.engine_for(t_adapter)
            roll = t_engine.generate(
                m.text, n=ro.token_n, temperature=ro.token_temperature, top_p=ro.top_p,
                max_new_tokens=ro.max_new_tokens, seed=m.seed(3),
            )
        n = ro.token_n
    m.timings["rollout"] += m.clock() - t0
    a_rep: PromptBatch = m.audio.repeat_interleave(n) if n > 1 else m.audio
    t_rep: PromptBatch = m.text.repeat_interleave(n) if n > 1 else m.text
    t0 = m.clock()
    with teacher.scope() as t_adapter, ctx.autocast():
        t_hidden = t_adapter.completion_hidden(t_rep, roll.ids, roll.mask)
        t_weight, t_bias, _ = _head(t_adapter)
    m.timings["teacher"] += m.clock() - t0
    t0 = m.clock()
    kl_fn = reverse_kl_per_token if kind == "reverse_kl" else forward_kl_per_token
    kl_mask = roll.mask.to(device)
    # With a trainable lm_head, a guess of the incoming gradient (the position weights)
    # lets the chunked KL build the head's gradient in its forward pass instead of
    # recomputing every chunk in backward; exact whatever the guess.
    hint = None
    if weight.requires_grad and obj.normalization != "sequences":
        hint = position_decay_weights(kl_mask, obj.beta if weighted else 1.0)
    with ctx.autocast():
        # shared rollouts: the student's hidden states on them are the sequence term's
        # (same prompts, same completions), so one forward serves both terms
        s_hidden = seq.hidden if shared else adapter.completion_hidden(a_rep, roll.ids, roll.mask)
        kl = kl_fn(s_hidden, weight, t_hidden, t_weight.detach(), kl_mask, student_bias=bias,
                   teacher_bias=None if t_bias is None else t_bias.detach(),
                   temperature=obj.temperature, chunk_size=obj.chunk_size, grad_hint=hint, softcap=softcap)
    m.timings["student"] += m.clock() - t0
    m.n_tokens += int(roll.mask.sum())
    return TokenTerm(kl, kl_mask, roll.mask.sum(-1).float())


def _finish(metrics, timings, n_tokens, lengths, extra) -> dict[str, float]:
    """The micro-batch's metrics under exactly :data:`METRIC_KEYS` (NaN where absent)."""
    out = {k: math.nan for k in METRIC_KEYS}
    out.update(metrics)
    out.update(extra)
    out.update({f"time_{k}": float(v) for k, v in timings.items()})
    out["completion_tokens"] = float(n_tokens)
    out["completion_len"] = float(lengths.float().mean()) if lengths.numel() else math.nan
    unknown = set(out) - set(METRIC_KEYS)
    if unknown:  # every process must reduce the same keys (the trainer's all-reduce)
        raise KeyError(f"metrics {sorted(unknown)} are not in cord.train.step.METRIC_KEYS")
    return out
