"""``cord eval``: accuracy from audio, accuracy from text, and the gap between them.

For every benchmark × modality the items are asked in batches with greedy decoding, each
response is judged (the benchmark's judge kind: ``mcq`` for VoiceBench, ``math`` for
spoken GSM8K, ``mmau`` for MMAU, the item's ``judge`` for local folders) and appended as one
JSON line to ``OUT/<benchmark>/<modality>.jsonl``, flushed after every batch::

    {"id": "q1", "modality": "audio", "status": "answered", "response": "... The answer is 42.",
     "answer": "42", "reference": "42", "reference_answer": "42", "correct": 1,
     "judge": "math", "note": "", "category": "", "finished": true, "tokens": 17}

``status`` is ``skipped`` (with a ``reason``, ``correct`` null) for audio the long-audio
policy skipped and for text prompts of items whose question is *about* the audio
(``meta["text_with_audio"]``, e.g. MMAU: there is no text-only form). A rerun with the
same ``OUT`` asks only items that have no record yet (a line torn by a killed run is
dropped first). ``OUT/eval-run.json`` records what produced the answers
(:func:`run_fingerprint`); resuming with another model or other generation settings is
refused rather than mixed, and an item whose content changed is asked again
(:func:`cord.eval.benchmarks.item_digest`). ``cord analyze`` keeps its own record, so both
may use one folder.

The report (``report.json``, ``report.md``) is recomputed from those files by
:func:`cord.eval.report.report_from_items`, so every number in it can be checked by hand.

``eval.protocol`` (``--protocol``): ``cord`` asks every benchmark with the model's
``instruction`` and scores with cord's strict judges; ``official`` asks and scores each
benchmark as its own runner does (:mod:`cord.eval.benchmarks`, "Registry and protocols").
Each record says which protocol produced it (``"protocol"``), and items with report groups
(MMAU's task / difficulty / sub-category) carry them (``"groups"``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from cord import CordError
from cord.data.paired import PairedExample
from cord.eval.benchmarks import Benchmark, load_suite
from cord.eval.records import append_records, check_fingerprint, model_stamp, read_records, write_run_record
from cord.eval.report import add_gap_reduction, load_report, report_from_items, write_report
from cord.types import PromptBatch

RUN_JSON = "eval-run.json"
SKIP_LONG_AUDIO = "audio longer than model.max_audio_seconds (model.long_audio=skip)"
SKIP_NO_TEXT_FORM = "the question is about the audio clip: there is no text-only form"


# --- prompts --------------------------------------------------------------------------------


def _merge_prompts(batches: list[tuple[PromptBatch, list[int]]], pad_id: int, modality: str) -> PromptBatch:
    """Concatenate left-padded prompt batches (``keep`` mapped through each batch's item
    indices); modality tensors are zero-padded on their trailing dimensions."""
    batches = [(b, idx) for b, idx in batches if len(b)]
    if not batches:
        empty = torch.zeros((0, 1), dtype=torch.long)
        return PromptBatch(empty, empty.clone(), modality, {}, [])
    if len(batches) == 1:
        b, idx = batches[0]
        return PromptBatch(b.input_ids, b.attention_mask, modality, dict(b.extra), [idx[k] for k in (b.keep or range(len(b)))])
    width = max(b.input_ids.shape[1] for b, _ in batches)
    ids, masks, keep = [], [], []
    for b, idx in batches:
        pad = width - b.input_ids.shape[1]
        ids.append(torch.nn.functional.pad(b.input_ids, (pad, 0), value=pad_id))
        masks.append(torch.nn.functional.pad(b.attention_mask, (pad, 0), value=0))
        keep.extend(idx[k] for k in (b.keep or range(len(b))))
    extra = {}
    for key in batches[0][0].extra:
        ts = [b.extra[key] for b, _ in batches]
        shape = [max(t.shape[d] for t in ts) for d in range(ts[0].dim())]
        padded = []
        for t in ts:
            spec = []
            for d in reversed(range(1, t.dim())):
                spec += [0, shape[d] - t.shape[d]]
            padded.append(torch.nn.functional.pad(t, spec) if any(spec) else t)
        extra[key] = torch.cat(padded)
    return PromptBatch(torch.cat(ids), torch.cat(masks), modality, extra, keep)


def build_prompts(adapter, items: list[PairedExample], modality: str) -> PromptBatch:
    """Prompts for ``items``; ``keep`` = indices into ``items`` of the rows. Audio items whose
    question is about the clip (``meta["text_with_audio"]``) get the question text after the
    audio, before the instruction."""
    if modality == "text":
        p = adapter.text_prompts(items)
        return PromptBatch(p.input_ids, p.attention_mask, "text", dict(p.extra), list(range(len(items))))
    plain = [i for i, it in enumerate(items) if not it.meta.get("text_with_audio")]
    parts = [(adapter.audio_prompts([items[i] for i in plain]), plain)] if plain else []
    for i, it in enumerate(items):
        if it.meta.get("text_with_audio"):
            if not hasattr(adapter, "instruction"):
                raise CordError(
                    f"item {it.id!r} asks a question about its audio, but the {getattr(adapter, 'family', '?')} "
                    "adapter takes no text with an audio prompt"
                )
            saved = adapter.instruction
            adapter.instruction = f"{it.question_text}\n{saved}".strip()
            try:
                parts.append((adapter.audio_prompts([it]), [i]))
            finally:
                adapter.instruction = saved
    return _merge_prompts(parts, adapter.pad_token_id, "audio")


# --- one benchmark × modality ---------------------------------------------------------------


def _item_length(it: PairedExample, modality: str) -> int:
    if modality == "audio" and it.has_audio:
        return it.audio_samples  # from the header for a lazily loaded clip: nothing decoded
    return len(it.question_text)


def answer_batch(bench: Benchmark, items: list[PairedExample], modality: str, adapter, engine, max_new_tokens: int) -> list[dict]:
    """Ask ``items`` in one batch (greedy) and judge them; one record per item."""
    records: dict[int, dict[str, Any]] = {}
    askable = list(range(len(items)))
    if modality == "text":
        askable = [i for i, it in enumerate(items) if not it.meta.get("text_with_audio")]
        for i in set(range(len(items))) - set(askable):
            records[i] = _skipped(items[i], modality, SKIP_NO_TEXT_FORM)
    sub = [items[i] for i in askable]
    prompts = build_prompts(adapter, sub, modality) if sub else None
    kept = list(prompts.keep) if prompts is not None else []
    for j in set(range(len(sub))) - set(kept):
        records[askable[j]] = _skipped(sub[j], modality, SKIP_LONG_AUDIO)
    if kept:
        ro = engine.generate(prompts, n=1, greedy=True, max_new_tokens=max_new_tokens)
        for row, j in enumerate(kept):
            it = sub[j]
            text = ro.text[row]
            res = bench.score(it, text)
            records[askable[j]] = {
                "id": it.id,
                "modality": modality,
                "status": "answered",
                "response": text,
                "answer": res.candidate_answer,
                "reference": it.answer,
                "reference_answer": res.reference_answer,
                "correct": int(res.score),
                "judge": res.kind,
                "note": res.note,
                "category": str(it.meta.get("category", "")),
                "finished": bool(ro.finished[row]) if ro.finished else None,
                "tokens": int(ro.mask[row].sum()),
                "protocol": bench.protocol.name,
            }
            if it.meta.get("groups"):
                records[askable[j]]["groups"] = dict(it.meta["groups"])
    return [records[i] for i in sorted(records)]


def _skipped(it: PairedExample, modality: str, reason: str) -> dict[str, Any]:
    return {"id": it.id, "modality": modality, "status": "skipped", "reason": reason, "correct": None,
            "reference": it.answer, "category": str(it.meta.get("category", ""))}


def run_modality(
    bench: Benchmark,
    modality: str,
    adapter,
    engine,
    path: str | Path,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 512,
    progress: bool = True,
    key: str | None = None,
    digests: dict[str, str],
) -> int:
    """Answer every item of ``bench`` that ``path`` holds no record of; returns how many
    were asked. Longest prompts first (less padding per batch, memory trouble shows early)."""
    from cord.progress import progress_bar

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_records(path, repair=True)
    # an item whose content changed since its record was written (an edited local benchmark,
    # another folder of the same name) is asked again; its new record wins (a later line wins)
    pending = [it for it in bench.items if it.id not in done or done[it.id].get("item", digests[it.id]) != digests[it.id]]
    if not pending:
        return 0
    pending.sort(key=lambda it: -_item_length(it, modality))
    already = len(bench.items) - len(pending)
    with progress_bar(  # a bar on a terminal, lines in a log
        len(bench.items), f"cord eval {key or bench.name} [{modality}]", "item", enabled=progress, initial=already,
    ) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            recs = answer_batch(bench, batch, modality, adapter, engine, max_new_tokens)
            for r in recs:
                r["item"] = digests[r["id"]]
            append_records(path, recs)
            bar.update(len(batch))
    return len(pending)


@contextlib.contextmanager
def protocol_prompting(adapter, bench: Benchmark):
    """The adapter's ``instruction`` (``""``: the question or the audio alone) and, where the
    official runner gives the family one, its ``system_prompt``, as ``bench``'s protocol sets
    them, restored afterwards; None leaves the model's own."""
    changes = {}
    if bench.protocol.instruction is not None and hasattr(adapter, "instruction"):
        changes["instruction"] = bench.protocol.instruction
    system = (bench.protocol.system_prompts or {}).get(getattr(adapter, "family", None))
    if system is not None and hasattr(adapter, "system_prompt"):
        changes["system_prompt"] = system
    saved = {k: getattr(adapter, k) for k in changes}
    for k, v in changes.items():
        setattr(adapter, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(adapter, k, v)


# --- the whole evaluation -------------------------------------------------------------------


def run_fingerprint(cfg, adapter) -> dict[str, Any]:
    """What determines the answers; a resumed run must match it: the model (its path, and its
    files' sizes and times: a model retrained into the same folder is another model), dtype,
    prompts, long-audio policy, decoding and protocol. Which items are asked (benchmarks,
    ``--limit``) is not in it: each record carries its item's digest
    (:func:`cord.eval.benchmarks.item_digest`) and the report reads the records of the items
    asked. Batch size and progress may change."""
    fp = {
        "model": cfg.model.name_or_path,
        "model_files": model_stamp(cfg.model.name_or_path),
        "dtype": cfg.model.dtype,
        "family": getattr(adapter, "family", cfg.model.family),
        "system_prompt": getattr(adapter, "system_prompt", None),
        "instruction": getattr(adapter, "instruction", None),
        "long_audio": cfg.model.long_audio,
        "max_audio_seconds": cfg.model.max_audio_seconds,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "decoding": "greedy",
        "protocol": cfg.eval.protocol,
    }
    if cfg.model.name_or_path == "tiny":  # the tiny builders' random weights
        fp["tiny_seed"] = cfg.model.tiny_seed
    return fp


def evaluate(cfg, adapter=None, progress: bool = True, *, engine=None) -> dict[str, dict[str, Any]]:
    """Run ``cfg.eval`` (benchmarks × modalities) and write the report; returns it.

    ``adapter``: an already-loaded adapter (default: ``load_adapter(cfg.model)``).
    ``engine``: anything with the :class:`cord.rollout.Engine` ``generate`` signature
    (default: :class:`cord.rollout.HFEngine` on the adapter). Resumes from ``cfg.eval.out``.
    Returns ``{benchmark: {audio_acc, text_acc, gap, n, fail_rate, ...}, "average": {...}}``.
    """
    ev = cfg.eval
    suite = load_suite(ev)
    baseline = load_report(ev.baseline) if ev.baseline else None
    from cord.data.check import check_writable_dir

    check_writable_dir(ev.out)  # a read-only --out fails here, not after the model has loaded
    if adapter is None:
        from cord.models import load_adapter

        adapter = load_adapter(cfg.model)
    if engine is None:
        from cord.rollout import make_engine

        # greedy answers: every engine gives the same tokens; no training stop strings
        engine = make_engine(adapter, cfg, batch_size=ev.batch_size, stop_strings=())
    out = Path(ev.out)
    fingerprint = run_fingerprint(cfg, adapter)
    check_fingerprint(out, fingerprint, resumable=out.is_dir() and any(out.glob("*/*.jsonl")),
                      holds="answers from another run", command="eval")
    out.mkdir(parents=True, exist_ok=True)
    write_run_record(out, "eval", {"fingerprint": fingerprint, "benchmarks": suite.names, "modalities": suite.modalities})

    for name in suite.names:
        bench, digests = suite.open(name)
        key = bench.name
        with protocol_prompting(adapter, bench):
            for mod in suite.modalities:
                run_modality(bench, mod, adapter, engine, out / key / f"{mod}.jsonl", batch_size=ev.batch_size,
                             max_new_tokens=ev.max_new_tokens, progress=progress, key=key, digests=digests[mod])
        del bench, digests

    report = report_from_items(out, list(suite.ids), suite.ids, suite.modalities)
    if baseline is not None:
        add_gap_reduction(report, baseline)
    write_report(out, report, title=f"cord eval — {cfg.model.name_or_path}")
    return report
