"""The miniature's Stage A (the recipe: :mod:`cord.mini.stages`): the language model learns to
reason from text.

It trains the language model on text prompts, teacher-forced, on two tasks mixed by
``a_repeat_share``: solving (worked solutions in two equivalent formats in fixed proportions,
:data:`cord.mini.task.STAGE_A_FORMATS`, so the text teacher holds a real distribution over
solutions) and repeating the question (its transcript). It stops once greedy dev text accuracy
of both tasks reaches ``a_target`` (or at ``a_max_steps``). :func:`teacher_formats` says which
solution formats the resulting text teacher holds.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch

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
    format_shares,
    greedy_accuracy,
    greedy_outputs,
    transcript_accuracy,
)
from cord.mini.task import parse_answer


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
        s, n = masked_ce(adapter.lm_head()(hidden), y, ym)
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
    seed_all(cfg.seed)
    rng = random.Random(cfg.seed)
    model = adapter.model
    lm = model.language_model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lm.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.a_lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.a_warmup, cfg.a_max_steps))
    t0 = time.perf_counter()
    history: list[dict] = []
    batches = index_batches(len(train), cfg.a_batch_size, rng)
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
