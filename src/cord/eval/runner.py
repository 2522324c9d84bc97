"""``cord eval``: accuracy from audio, accuracy from text, and the gap between them.

:func:`evaluate` is one pass, a step per module:

1. **load** (:mod:`cord.eval.benchmarks.suite`): the benchmarks named, checked before any
   model loads; each is then opened in turn, with its items' fingerprints
   (:func:`~cord.eval.benchmarks.item_digest`); a ``--baseline`` report is read up front too,
   so a bad one fails before anything is asked;
2. **answer** (:mod:`cord.eval.answer`): the items asked in batches with greedy decoding, as
   the protocol prompts them; ``OUT/eval-run.json`` records what produced the answers
   (:func:`~cord.eval.answer.run_fingerprint`), and resuming with another model or other
   generation settings is refused rather than mixed; a rerun with the same ``OUT`` asks only
   items that have no record yet (or whose content changed);
3. **score** (:mod:`cord.eval.score`): each answer judged by the benchmark's judge and
   appended as one JSON line to ``OUT/<benchmark>/<modality>.jsonl``, flushed after every
   batch (the record format is there);
4. **report** (:mod:`cord.eval.report`): ``report.json`` and ``report.md`` recomputed from
   those files (:func:`~cord.eval.report.report_from_items`), so every number in them can be
   checked by hand; with a baseline, the gap reduction.

Each step is called once, in this order; the middle ones stream: the score step takes the
answer step's batches one at a time, and the answer step opens the next benchmark when the one
before is done, so one benchmark's audio is in memory and a killed run loses at most the batch
it was answering. ``cord analyze`` keeps its own run record, so both may use one folder.

``eval.protocol`` (``--protocol``): ``cord`` asks every benchmark with the model's
``instruction`` and scores with cord's strict judges; ``official`` asks and scores each
benchmark as its own runner does (:mod:`cord.eval.benchmarks`, "Registry and protocols").
Each record says which protocol produced it (``"protocol"``), and items with report groups
(MMAU's task / difficulty / sub-category) carry them (``"groups"``).
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

from cord.eval.answer import answer_suite, run_fingerprint
from cord.eval.benchmarks import load_suite
from cord.eval.report import add_gap_reduction, load_report, report_from_items, write_report
from cord.eval.score import score_answers


def _model_and_engine(cfg, adapter, engine):
    """The adapter (default: ``load_adapter(cfg.model)``) and the engine that asks it."""
    if adapter is None:
        from cord.models import load_adapter

        adapter = load_adapter(cfg.model)
    if engine is None:
        from cord.rollout import make_engine

        # greedy answers: every engine gives the same tokens; no training stop strings
        engine = make_engine(adapter, cfg, batch_size=cfg.eval.batch_size, stop_strings=())
    return adapter, engine


def evaluate(cfg, adapter=None, progress: bool = True, *, engine=None) -> dict[str, dict[str, Any]]:
    """Run ``cfg.eval`` (benchmarks × modalities) and write the report; returns it.

    ``adapter``: an already-loaded adapter (default: ``load_adapter(cfg.model)``).
    ``engine``: anything with the :class:`cord.rollout.Engine` ``generate`` signature
    (default: :class:`cord.rollout.HFEngine` on the adapter). Resumes from ``cfg.eval.out``.
    Returns ``{benchmark: {audio_acc, text_acc, gap, n, fail_rate, ...}, "average": {...}}``.
    """
    from cord.data.check import check_writable_dir

    ev = cfg.eval
    # 1. load: every benchmark checked (and the baseline read) before the model loads
    suite = load_suite(ev)
    baseline = load_report(ev.baseline) if ev.baseline else None
    check_writable_dir(ev.out)  # a read-only --out fails here, not after the model has loaded
    adapter, engine = _model_and_engine(cfg, adapter, engine)
    # 2. answer: the run recorded (or refused) now; the batches are asked as 3. takes them
    answers = answer_suite(suite, run_fingerprint(cfg, adapter), adapter, engine, batch_size=ev.batch_size,
                           max_new_tokens=ev.max_new_tokens, progress=progress)
    # 3. score: each batch judged and appended as it is answered (a killed run loses one batch)
    with closing(answers):
        score_answers(answers)
    # 4. report: recomputed from the records of the items asked
    out = suite.out
    report = report_from_items(out, list(suite.ids), suite.ids, suite.modalities)
    if baseline is not None:
        add_gap_reduction(report, baseline)
    write_report(out, report, title=f"cord eval — {cfg.model.name_or_path}")
    return report
