"""The miniature's Stage B (the recipe: :mod:`cord.mini.stages`): the audio path learns only to
*hear*.

It freezes the language model and trains only the audio encoder and projector, on a task other
than reasoning — audio → transcript:

    L_B = ce_weight · CE(transcript | audio prompt with <repeat>) + ctc_weight · CTC(transcript | encoder frames)

(SpecAugment masks on the training features; the CTC term stands in for the ASR pretraining a
real LALM's Whisper encoder brings; the default recipe is CTC alone, ``b_ce_weight`` 0). It
never sees a solution. It runs a fixed ``b_steps`` (325: chosen on dev data so that a 15–40-point
solve gap is left on the training voices, docs/demo/recipe.md) at a constant lr after warmup,
and keeps the exponential
moving average of its weights (``b_ema``) at the last step: no best-of-N checkpoint, so no
winner's curse. :func:`stage_b_loss` is that objective; the demo's control arm continues it
(:func:`cord.mini.control.run_control`).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from cord.data.paired import PairedExample
from cord.mini.adapter import MiniAdapter
from cord.mini.recipe import (
    RecipeConfig,
    index_batches,
    lr_schedule,
    masked_ce,
    seed_all,
    target_ids,
)
from cord.mini.scoring import (
    ctc_transcripts,
    greedy_accuracy,
    transcript_accuracy,
    transcript_scores,
)
from cord.mini.task import transcript


def ctc_targets(adapter: MiniAdapter, examples: list[PairedExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated CTC targets (the question's transcript) and their lengths."""
    words = [adapter.encode(transcript(ex.question_text)) for ex in examples]
    flat = torch.tensor([t for w in words for t in w], dtype=torch.long)
    return flat, torch.tensor([len(w) for w in words], dtype=torch.long)


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
    model = adapter.core()
    prompts = adapter.audio_prompts(batch, task="repeat", augment=lambda f, m: spec_augment(f, m, cfg, gen))
    ce_weight = cfg.b_ce_weight if ce_weight is None else ce_weight
    if ce_weight:
        y, ym = target_ids(adapter, stage_b_targets(batch))
        ids, attn, extra = adapter.joined(prompts, y, ym)
        embeds, (enc, enc_valid) = model.embed(ids, extra, return_encoder=True, n_prompt=prompts.input_ids.shape[1])
        hidden = adapter.decoder_hidden(ids, attn, extra, inputs_embeds=embeds)
        hidden = adapter.completion_slice(hidden, prompts, y.shape[1])
        s, n = masked_ce(adapter.lm_head()(hidden), y, ym)
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
    seed_all(cfg.seed + 1)
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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.b_warmup, None))
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
    batches = index_batches(len(train), cfg.b_batch_size, rng)
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
