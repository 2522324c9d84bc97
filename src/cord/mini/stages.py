"""The miniature's staged recipe before CORD, shaped like the paper's: the language model learns
to reason from text (Stage A); the audio path learns only to *hear* (Stage B); reasoning from
speech is first trained in Stage C (the arms, :mod:`cord.mini.demo`).

**Stage A** trains the language model on text prompts, teacher-forced, on two tasks mixed by
``a_repeat_share``: solving (worked solutions in two equivalent formats in fixed proportions,
:data:`cord.mini.task.STAGE_A_FORMATS`, so the text teacher holds a real distribution over
solutions) and repeating the question (its transcript). It stops once greedy dev text accuracy
of both tasks reaches ``a_target`` (or at ``a_max_steps``).

**Stage B** freezes the language model and trains only the audio encoder and projector, on a
task other than reasoning — audio → transcript:

    L_B = CE(transcript | audio prompt with <repeat>) + ctc_weight · CTC(transcript | encoder frames)

(SpecAugment masks on the training features; the CTC term stands in for the ASR pretraining a
real LALM's Whisper encoder brings). It never sees a solution. It runs a fixed ``b_steps``
(to be chosen on dev data so that a clear solve gap is left on the training voices while the
transcript is mostly right; the default is not yet established by a pilot, docs/demo/recipe.md) at a constant lr after warmup, and keeps the exponential
moving average of its weights (``b_ema``) at the last step: no best-of-N checkpoint, so no
winner's curse. :func:`stage_b_loss` is that objective; the demo's control arm continues it
(:func:`cord.mini.control.run_control`).

Both stages are plain seeded loops. Their models are written with ``MiniAdapter.save_pretrained``
to ``OUT/stage_a`` and ``OUT/stage_b``; load them with
``ModelConfig(family="mini", name_or_path="OUT/stage_b", dtype="float32", device="cpu")``.
No test split is read here: ``stages.json`` holds dev numbers only (the demo evaluates test).
"""

from __future__ import annotations

import json
import math
import platform
import random
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cord.data.paired import PairedExample
from cord.mini.data import DataSettings, build_datasets, load_split, text_examples
from cord.mini.model import MiniAdapter, build_mini
from cord.mini.task import parse_answer, solution_format, transcript
from cord.models.base import right_pad

# ------------------------------------------------------------------------------ config


@dataclass
class RecipeConfig:
    """Every knob of data, Stage A and Stage B. :meth:`quick` is the test-sized variant."""

    seed: int = 0
    data: DataSettings = field(default_factory=DataSettings)
    #: torch CPU threads. Fixed by default because the thread count changes float reduction
    #: order and so the trajectory: the same seed reproduces only at the same count. 0 = auto:
    #: 2 on an idle machine, else 1.
    threads: int = 2
    verbose: bool = False
    eval_batch_size: int = 200
    max_new_tokens: int = 24
    # Stage A: text LM, two tasks (solve in two formats, repeat the question)
    a_text_examples: int = 10000
    a_repeat_share: float = 0.3
    a_max_steps: int = 500
    a_batch_size: int = 64
    a_lr: float = 3e-3
    a_warmup: int = 30
    a_eval_every: int = 50
    a_min_steps: int = 300
    a_target: float = 0.99
    # Stage B: the audio path on audio -> transcript only, language model frozen, fixed length
    b_steps: int = 600
    b_batch_size: int = 32
    b_lr: float = 3e-3
    b_warmup: int = 30
    b_ctc_weight: float = 1.0
    #: weight of the decoder's transcript CE (0: CTC alone, no decoder forward)
    b_ce_weight: float = 1.0
    #: the first steps train CTC alone (the encoder learns to recognise words before the decoder
    #: reads them; those steps are several times cheaper)
    b_ctc_warmup: int = 0
    b_match_scale: bool = True
    #: decay of the exponential moving average of the audio weights kept at the end (0: the raw
    #: final weights)
    b_ema: float = 0.99
    #: evaluate dev every this many steps (0: only at the end); a record, not a stopping rule
    b_eval_every: int = 0
    #: SpecAugment-style masks on training features (frequency bands, time spans)
    b_freq_masks: int = 2
    b_freq_width: int = 10
    b_time_masks: int = 2
    b_time_width: int = 12

    @classmethod
    def quick(cls, seed: int = 0, **overrides: Any) -> "RecipeConfig":
        """Test-sized: 400/60/60/30 clips, Stage A ≤ 450 steps, Stage B 150 steps (the
        pipeline end to end in about 3 minutes; its numbers say nothing about the method).
        Stage A needs about 400 steps to solve in two formats and repeat the question (250
        left held-out text accuracy at 0.62)."""
        base = cls(
            seed=seed,
            data=DataSettings(seed=seed, n_train=400, n_dev=60, n_test=60, n_unseen=30),
            a_text_examples=10000,
            a_max_steps=450,
            a_min_steps=200,
            a_target=0.95,
            b_steps=150,
            b_lr=4e-3,
        )
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        # data as its cache key (test_engine only when not the default)
        return {**json.loads(json.dumps(asdict(self))), "data": self.data.key()}


# ---------------------------------------------------------------------------- helpers


def greedy_outputs(adapter: MiniAdapter, examples: list[PairedExample], modality: str, *, task: str = "solve",
                   batch_size: int = 200, max_new_tokens: int = 24) -> list[str]:
    """Greedy completions (text) of ``examples`` for ``task`` through :class:`cord.rollout.HFEngine`."""
    from cord.rollout import HFEngine

    engine = HFEngine(adapter, batch_size=batch_size)
    out: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = (adapter.text_prompts(chunk, task=task) if modality == "text"
                   else adapter.audio_prompts(chunk, task=task))
        if len(prompts.keep) != len(chunk):
            raise ValueError("greedy_outputs: the long-audio policy dropped clips; the miniature's are all short")
        out += engine.generate(prompts, greedy=True, max_new_tokens=max_new_tokens).text
    return out


def greedy_accuracy(
    adapter: MiniAdapter,
    examples: list[PairedExample],
    modality: str,
    *,
    batch_size: int = 200,
    max_new_tokens: int = 24,
) -> tuple[float, list[dict[str, Any]]]:
    """Greedy exact-final-answer accuracy of the solve task.

    Returns (accuracy, per-item [{id, modality, question, output, predicted, answer, correct}]);
    ``predicted`` is the number after the last "The answer is", or None."""
    texts = greedy_outputs(adapter, examples, modality, batch_size=batch_size, max_new_tokens=max_new_tokens)
    items = []
    for ex, text in zip(examples, texts):
        pred = parse_answer(text)
        items.append({"id": ex.id, "modality": modality, "question": ex.question_text, "output": text,
                      "predicted": pred, "answer": ex.answer,
                      "correct": pred is not None and pred == str(ex.answer).strip()})
    acc = sum(i["correct"] for i in items) / max(1, len(examples))
    return acc, items


def word_errors(hyp: str, ref: str) -> int:
    """Word-level edit distance (substitutions + insertions + deletions)."""
    h, r = hyp.split(), ref.split()
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1]


def transcript_scores(outputs: list[str], questions: list[str]) -> dict[str, float]:
    """How well outputs repeat the questions: ``exact`` (share of transcripts exactly right),
    ``numbers`` (share whose numbers, in order, are all right: what the solution needs) and
    ``wer`` (word error rate over all words)."""
    exact = numbers = errors = words = 0
    for out, q in zip(outputs, questions):
        ref = transcript(q)
        hyp = transcript(out)
        exact += hyp == ref
        numbers += re.findall(r"\d+", hyp) == re.findall(r"\d+", ref)
        errors += word_errors(hyp, ref)
        words += len(ref.split())
    n = max(1, len(questions))
    return {"exact": exact / n, "numbers": numbers / n, "wer": errors / max(1, words), "n": len(questions)}


def transcript_accuracy(adapter: MiniAdapter, examples: list[PairedExample], *, modality: str = "audio",
                        batch_size: int = 200, max_new_tokens: int = 24) -> tuple[dict[str, float], list[str]]:
    """:func:`transcript_scores` of the greedy "repeat the question" outputs, and the outputs."""
    outs = greedy_outputs(adapter, examples, modality, task="repeat", batch_size=batch_size,
                          max_new_tokens=max_new_tokens)
    return transcript_scores(outs, [ex.question_text for ex in examples]), outs


@torch.no_grad()
def ctc_transcripts(adapter: MiniAdapter, examples: list[PairedExample], batch_size: int = 200) -> list[str]:
    """The audio path's own transcripts: greedy CTC decoding of the encoder's readout (best label
    per frame, repeats merged, blanks dropped), without the decoder."""
    model = adapter.core_model()
    out: list[str] = []
    for start in range(0, len(examples), batch_size):
        prompts = adapter.audio_prompts(examples[start : start + batch_size])
        hidden, valid = model.audio_encoder(prompts.extra["input_features"], prompts.extra["feature_attention_mask"])
        best = model.audio_encoder.ctc_logits(hidden).argmax(-1)
        for row, n in zip(best.tolist(), valid.sum(-1).tolist()):
            ids = [t for i, t in enumerate(row[:n]) if t != adapter.pad_token_id and (i == 0 or t != row[i - 1])]
            out.append(adapter.tokenizer.decode(ids))
    return out


def format_shares(texts: list[str]) -> dict[str, float]:
    """Share of each solution format (:func:`cord.mini.task.solution_format`; "none": unreadable)."""
    counts = Counter(solution_format(t) or "none" for t in texts)
    return {k: counts[k] / max(1, len(texts)) for k in sorted(counts)}


def target_ids(adapter: MiniAdapter, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids of ``text + <eos>`` and their mask."""
    seqs = [adapter.encode(t) + adapter.eos_token_ids[:1] for t in texts]
    return right_pad(seqs, adapter.pad_token_id)


def ctc_targets(adapter: MiniAdapter, examples: list[PairedExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated CTC targets (the question's transcript) and their lengths."""
    words = [adapter.encode(transcript(ex.question_text)) for ex in examples]
    flat = torch.tensor([t for w in words for t in w], dtype=torch.long)
    return flat, torch.tensor([len(w) for w in words], dtype=torch.long)


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch CPU threads, restoring the caller's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def auto_threads() -> int:
    """2 when at least two cores are idle (1-minute load average < 0.5), else 1."""
    import os

    cores = os.cpu_count() or 1
    load = load_average() or 0.0
    return 2 if cores >= 2 and load < cores - 1.5 else 1


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token CE over valid tokens, number of valid tokens)."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (loss * mask.flatten()).sum(), mask.sum()


def _lr_lambda(warmup: int, total: int | None, floor: float = 0.1):
    """Linear warmup, then cosine decay to ``floor`` × lr at ``total`` steps (None: constant)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total is None:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _batches(n: int, batch_size: int, rng: random.Random):
    """Endless shuffled epochs of index batches (drop the ragged tail of each epoch)."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for s in range(0, n - batch_size + 1, batch_size):
            yield order[s : s + batch_size]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- Stage A


def stage_a_loss(adapter: MiniAdapter, batch: list[PairedExample]) -> torch.Tensor:
    """Mean token CE of each example's target (``solution``) given its text prompt for its task
    (``meta["task"]``, default "solve")."""
    total, count = 0.0, 0
    for task in ("solve", "repeat"):
        group = [ex for ex in batch if ex.meta.get("task", "solve") == task]
        if not group:
            continue
        prompts = adapter.text_prompts(group, task=task)
        y, ym = target_ids(adapter, [ex.solution for ex in group])
        hidden = adapter.completion_hidden(prompts, y, ym)
        s, n = _masked_ce(adapter.lm_head()(hidden), y, ym)
        total, count = total + s, count + n
    return total / max(1, int(count))


def stage_a(
    adapter: MiniAdapter,
    train: list[PairedExample],
    dev: list[PairedExample],
    cfg: RecipeConfig,
    log: list[dict] | None = None,
) -> dict[str, Any]:
    """Train the language model on text prompts until greedy dev text accuracy of both tasks
    (solve: final answer; repeat: exact transcript) ≥ a_target (checked every a_eval_every steps
    after a_min_steps) or a_max_steps. In place."""
    _seed_all(cfg.seed)
    rng = random.Random(cfg.seed)
    model = adapter.model
    lm = model.language_model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lm.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.a_lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.a_warmup, cfg.a_max_steps))
    t0 = time.perf_counter()
    history: list[dict] = []
    batches = _batches(len(train), cfg.a_batch_size, rng)
    solve_acc = repeat_acc = 0.0
    first_loss = None
    step = 0
    model.train()
    for step in range(1, cfg.a_max_steps + 1):
        loss = stage_a_loss(adapter, [train[i] for i in next(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        first_loss = loss.item() if first_loss is None else first_loss
        if step % cfg.a_eval_every == 0 or step == cfg.a_max_steps:
            solve_acc, _ = greedy_accuracy(adapter, dev, "text", batch_size=cfg.eval_batch_size,
                                           max_new_tokens=cfg.max_new_tokens)
            repeat_acc = transcript_accuracy(adapter, dev, modality="text", batch_size=cfg.eval_batch_size,
                                             max_new_tokens=cfg.max_new_tokens)[0]["exact"]
            model.train()
            rec = {"stage": "A", "step": step, "loss": loss.item(), "dev_text_acc": solve_acc,
                   "dev_text_repeat_exact": repeat_acc, "seconds": round(time.perf_counter() - t0, 2)}
            history.append(rec)
            if cfg.verbose:
                print(f"[mini] A {rec}", flush=True)
            if log is not None:
                log.append(rec)
            if step >= cfg.a_min_steps and min(solve_acc, repeat_acc) >= cfg.a_target:
                break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {
        "steps": step,
        "first_loss": first_loss,
        "final_loss": loss.item(),
        "dev_text_acc": solve_acc,
        "dev_text_repeat_exact": repeat_acc,
        "reached_target": min(solve_acc, repeat_acc) >= cfg.a_target,
        "seconds": round(time.perf_counter() - t0, 2),
        "history": history,
    }


def teacher_formats(adapter: MiniAdapter, examples: list[PairedExample], cfg: RecipeConfig, seed: int = 0) -> dict:
    """The text teacher's distribution over solution formats on ``examples``: the formats of its
    greedy solutions (what SFT-self trains on) and of one sample each at temperature 1 (what it
    actually holds; Stage A taught :data:`cord.mini.task.STAGE_A_FORMATS`)."""
    from cord.rollout import HFEngine

    greedy = greedy_outputs(adapter, examples, "text", batch_size=cfg.eval_batch_size,
                            max_new_tokens=cfg.max_new_tokens)
    engine = HFEngine(adapter, batch_size=cfg.eval_batch_size)
    sampled = engine.generate(adapter.text_prompts(examples), temperature=1.0, seed=seed,
                              max_new_tokens=cfg.max_new_tokens).text
    correct = sum(parse_answer(t) == ex.answer for t, ex in zip(sampled, examples)) / max(1, len(examples))
    return {"greedy": format_shares(greedy), "sampled_t1": format_shares(sampled), "sampled_t1_acc": correct,
            "n": len(examples)}


# ---------------------------------------------------------------------------- Stage B


def spec_augment(features: torch.Tensor, mask: torch.Tensor, cfg: RecipeConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero random mel bands and time spans (within each clip's valid frames); a new tensor."""
    out = features.clone()
    b, n_mels, _ = out.shape
    lengths = mask.sum(-1)
    fill = 0.0  # Whisper-normalised log-mel: 0 is mid-range
    for i in range(b):
        for _ in range(cfg.b_freq_masks):
            w = int(torch.randint(0, cfg.b_freq_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, n_mels - w), (1,), generator=gen))
            out[i, f0 : f0 + w, :] = fill
        for _ in range(cfg.b_time_masks):
            w = int(torch.randint(0, cfg.b_time_width + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, int(lengths[i]) - w), (1,), generator=gen))
            out[i, :, t0 : t0 + w] = fill
    return out * mask[:, None, :].to(out.dtype)


@torch.no_grad()
def match_projector_scale(adapter: MiniAdapter, examples: list[PairedExample]) -> float:
    """Rescale the projector's last layer so projected audio frames have the RMS of the
    language model's token embeddings (a fresh projector's output is several times larger,
    which swamps the frozen decoder's residual stream). Returns the factor applied."""
    from cord.mini.model import stack_frames

    model = adapter.model
    prompts = adapter.audio_prompts(examples)
    hidden, valid = model.audio_encoder(prompts.extra["input_features"], prompts.extra["feature_attention_mask"])
    stacked, valid = stack_frames(hidden, valid, model.config.projector_stack)
    tokens = model.projector(stacked)
    out_rms = tokens[valid].pow(2).mean(-1).sqrt().mean()
    emb_rms = model.get_input_embeddings().weight.pow(2).mean(-1).sqrt().mean()
    factor = float(emb_rms / out_rms)
    last = model.projector[-1]
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    return factor


def _audio_parts(adapter: MiniAdapter) -> list[torch.nn.Module]:
    core = adapter.model
    return [core.audio_encoder, core.projector]


def stage_b_loss(adapter: MiniAdapter, batch: list[PairedExample], cfg: RecipeConfig,
                 gen: torch.Generator, ce_weight: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage B's objective on one batch: CE(transcript | SpecAugmented audio prompt with
    <repeat>) + b_ctc_weight · CTC(transcript | encoder frames). No solution is read.
    Returns (loss, {ce, ctc})."""
    model = adapter.core_model()
    prompts = adapter.audio_prompts(batch, task="repeat")
    prompts.extra["input_features"] = spec_augment(
        prompts.extra["input_features"], prompts.extra["feature_attention_mask"], cfg, gen
    )
    ce_weight = cfg.b_ce_weight if ce_weight is None else ce_weight
    if ce_weight:
        y, ym = target_ids(adapter, stage_b_targets(batch))
        ids, attn, extra = adapter.joined(prompts, y, ym)
        embeds, (enc, enc_valid) = model.embed(ids, extra, return_encoder=True, n_prompt=prompts.input_ids.shape[1])
        hidden = adapter.decoder_hidden(ids, attn, extra, inputs_embeds=embeds)
        hidden = adapter.completion_slice(hidden, prompts, y.shape[1])
        s, n = _masked_ce(adapter.lm_head()(hidden), y, ym)
        ce = s / n.clamp(min=1)
    else:  # CTC alone: the encoder only
        stage_b_targets(batch)  # (the targets it would read: transcripts)
        enc, enc_valid = model.audio_encoder(prompts.extra["input_features"], prompts.extra["feature_attention_mask"])
        ce = torch.zeros(())
    targets, target_lengths = ctc_targets(adapter, batch)
    log_probs = model.audio_encoder.ctc_logits(enc).float().log_softmax(-1).transpose(0, 1)
    ctc = F.ctc_loss(log_probs, targets, enc_valid.sum(-1), target_lengths,
                     blank=adapter.pad_token_id, zero_infinity=True)
    return ce_weight * ce + cfg.b_ctc_weight * ctc, {"ce": ce.item(), "ctc": ctc.item()}


def stage_b_targets(batch: list[PairedExample]) -> list[str]:
    """Stage B's decoder targets: each question's transcript (never its solution)."""
    return [transcript(ex.question_text) for ex in batch]


def evaluate_dev(adapter: MiniAdapter, dev: list[PairedExample], cfg: RecipeConfig,
                 text_acc: float | None = None) -> dict[str, Any]:
    """Dev (training voices) numbers of a model: solve accuracy from audio and text, the gap,
    and the audio path's transcript scores."""
    audio_acc, _ = greedy_accuracy(adapter, dev, "audio", batch_size=cfg.eval_batch_size,
                                   max_new_tokens=cfg.max_new_tokens)
    if text_acc is None:
        text_acc, _ = greedy_accuracy(adapter, dev, "text", batch_size=cfg.eval_batch_size,
                                      max_new_tokens=cfg.max_new_tokens)
    scores, _ = transcript_accuracy(adapter, dev, batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens)
    ctc = transcript_scores(ctc_transcripts(adapter, dev, cfg.eval_batch_size), [ex.question_text for ex in dev])
    return {"audio_acc": audio_acc, "text_acc": text_acc, "gap": text_acc - audio_acc, "transcript": scores,
            "ctc_transcript": ctc}


class _EMA:
    """Exponential moving average of some parameters (``decay`` 0: the parameters themselves)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            if self.decay:
                s.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
            else:
                s.copy_(p)

    @contextmanager
    def applied(self):
        """The averaged weights in the model for the block; the raw ones restored after."""
        raw = [p.detach().clone() for p in self.params]
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)

    @torch.no_grad()
    def copy_to(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def stage_b(
    adapter: MiniAdapter,
    train: list[PairedExample],
    dev: list[PairedExample],
    cfg: RecipeConfig,
    dev_text_acc: float | None = None,
    log: list[dict] | None = None,
) -> dict[str, Any]:
    """Align audio encoder + projector on audio → transcript with the language model frozen, for
    ``b_steps`` steps; leaves the averaged (``b_ema``) weights of the last step in
    ``adapter.model`` and returns metrics (see the module doc)."""
    _seed_all(cfg.seed + 1)
    rng = random.Random(cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model = adapter.model
    if dev_text_acc is None:  # the LM is frozen, so text accuracy is fixed for the stage
        dev_text_acc, _ = greedy_accuracy(adapter, dev, "text", batch_size=cfg.eval_batch_size,
                                          max_new_tokens=cfg.max_new_tokens)
    params = [p for m in _audio_parts(adapter) for p in m.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.b_lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.b_warmup, None))
    t0 = time.perf_counter()
    for ex in train:  # features once up front (cached by the adapter for every later epoch)
        adapter.clip_features(ex.audio)
    feature_seconds = time.perf_counter() - t0
    kind = model.config.audio_tokens
    if kind == "both":  # the projector starts silent: audio tokens start as the soft words alone
        with torch.no_grad():
            model.projector[-1].weight.zero_()
            model.projector[-1].bias.zero_()
        scale = 0.0
    else:
        scale = match_projector_scale(adapter, train[:64]) if cfg.b_match_scale and kind == "projected" else 1.0
    ema = _EMA(params, cfg.b_ema)
    history: list[dict] = []
    batches = _batches(len(train), cfg.b_batch_size, rng)
    parts: dict[str, float] = {}

    def record(step: int) -> dict:
        model.eval()
        with ema.applied():
            rec = {"stage": "B", "step": step, **parts, **evaluate_dev(adapter, dev, cfg, dev_text_acc),
                   "seconds": round(time.perf_counter() - t0, 2)}
        history.append(rec)
        if cfg.verbose:
            print(f"[mini] B {rec}", flush=True)
        if log is not None:
            log.append(rec)
        return rec

    for step in range(1, cfg.b_steps + 1):
        model.train()
        model.language_model.eval()  # frozen: no dropout either
        loss, parts = stage_b_loss(adapter, [train[i] for i in next(batches)], cfg, gen,
                                   ce_weight=0.0 if step <= cfg.b_ctc_warmup else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update()
        if cfg.b_eval_every and step % cfg.b_eval_every == 0 and step < cfg.b_steps:
            record(step)
    train_seconds = time.perf_counter() - t0
    final = record(cfg.b_steps)
    model.eval()
    ema.copy_to()
    for p in model.parameters():
        p.requires_grad_(True)
    return {
        "steps": cfg.b_steps,
        "kept": f"the exponential moving average (decay {cfg.b_ema:g}) of the last step's weights"
                if cfg.b_ema else "the last step's weights",
        "dev": {k: v for k, v in final.items() if k not in ("stage", "step", "seconds")},
        "feature_seconds": round(feature_seconds, 2),
        "projector_scale": scale,
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "history": history,
    }


# ---------------------------------------------------------------------------- driver


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(load_at_start: float | None = None) -> dict[str, Any]:
    """What the timings were measured on (the load average says whether the CPU was shared)."""
    import os

    import transformers

    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min_start": load_at_start,
        "load_avg_1min_end": load_average(),
    }


def run_stages(out_dir: str | Path, cfg: RecipeConfig | None = None, progress: bool = False) -> dict[str, Any]:
    """Data → Stage A → Stage B, writing under ``out_dir``:

    ``data/{train,dev,test,test_unseen}`` (paired datasets; reused when complete for the same
    settings), ``stage_a/`` and ``stage_b/`` (models loadable as family ``mini``) and
    ``stages.json`` (the returned metrics: config, paths, stage metrics on dev, the text
    teacher's format distribution, wall timings, machine, and the evaluation log)."""
    cfg = cfg or RecipeConfig()
    with torch_threads(cfg.threads or auto_threads()):
        return _run_stages(out_dir, cfg, progress)


def _run_stages(out_dir: str | Path, cfg: RecipeConfig, progress: bool) -> dict[str, Any]:
    load_at_start = load_average()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    log: list[dict] = []

    def say(msg: str) -> None:
        if progress:
            print(f"[mini] {msg}", flush=True)

    t = time.perf_counter()
    data_cfg = replace(cfg.data, seed=cfg.seed) if cfg.data.seed != cfg.seed else cfg.data
    dirs = build_datasets(out / "data", data_cfg)
    train, dev = (load_split(dirs[s]) for s in ("train", "dev"))
    text_train = text_examples(cfg.a_text_examples, data_cfg, repeat_share=cfg.a_repeat_share)
    timings["data"] = round(time.perf_counter() - t, 2)
    say(f"data: {len(train)} train / {len(dev)} dev clips in {timings['data']} s")

    model, tokenizer = build_mini(seed=cfg.seed)
    adapter = MiniAdapter(model, tokenizer)

    t = time.perf_counter()
    a = stage_a(adapter, text_train, dev, cfg, log)
    adapter.save_pretrained(out / "stage_a")
    teacher = teacher_formats(adapter, dev, cfg)
    timings["stage_a"] = round(time.perf_counter() - t, 2)
    say(f"stage A: {a['steps']} steps, dev text acc {a['dev_text_acc']:.3f}, repeat exact "
        f"{a['dev_text_repeat_exact']:.3f}, teacher formats greedy {teacher['greedy']} sampled "
        f"{teacher['sampled_t1']} ({timings['stage_a']} s)")

    t = time.perf_counter()
    b = stage_b(adapter, train, dev, cfg, dev_text_acc=a["dev_text_acc"], log=log)
    timings["stage_b"] = round(time.perf_counter() - t, 2)
    adapter.save_pretrained(out / "stage_b")
    d = b["dev"]
    say(f"stage B: {b['steps']} steps; dev (training voices) text {d['text_acc']:.3f} audio {d['audio_acc']:.3f} "
        f"gap {d['gap']:.3f}, transcript exact {d['transcript']['exact']:.3f} numbers "
        f"{d['transcript']['numbers']:.3f} ({timings['stage_b']} s)")

    result = {
        "config": cfg.to_dict(),
        "paths": {"data": {k: str(v) for k, v in dirs.items()}, "stage_a": str(out / "stage_a"),
                  "stage_b": str(out / "stage_b")},
        "stage_a": {k: v for k, v in a.items() if k != "history"},
        "teacher_formats": teacher,
        "stage_b": {k: v for k, v in b.items() if k != "history"},
        "timings": timings,
        "machine": machine_info(load_at_start),
        "model_parameters": {name: sum(p.numel() for p in getattr(model, name).parameters())
                             for name in ("language_model", "audio_encoder", "projector")},
        "log": log,
    }
    _write_atomic(out / "stages.json", json.dumps(result, indent=2) + "\n")  # its presence marks a finished run
    return result
