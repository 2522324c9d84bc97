"""How the miniature is scored on dev data while it trains (Stage A, Stage B, the teacher's
formats): greedy solve accuracy, how well a transcript repeats the question (exact, numbers,
word error rate), the audio path's own CTC transcripts and the share of each solution format."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import torch

from cord.data.paired import PairedExample
from cord.mini.adapter import MiniAdapter
from cord.mini.task import parse_answer, solution_format, transcript


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
    model = adapter.core()
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
