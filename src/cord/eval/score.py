"""The score step of ``cord eval``: each answer judged by its benchmark's rule and appended as
one JSON line (a record) to ``OUT/<benchmark>/<modality>.jsonl``, a batch at a time, flushed.

The judge is the benchmark's: its protocol's judge kind, else the item's ``judge``, else the
benchmark's default (``mcq`` for VoiceBench, ``math`` for spoken GSM8K, ``mmau`` for MMAU;
:meth:`cord.eval.benchmarks.Benchmark.score`). A record::

    {"id": "q1", "modality": "audio", "status": "answered", "response": "... The answer is 42.",
     "answer": "42", "reference": "42", "reference_answer": "42", "correct": 1,
     "judge": "math", "note": "", "category": "", "finished": true, "tokens": 17,
     "protocol": "cord", "item": "5d0c…"}

``answer`` is what the judge extracted from the response (null: nothing could be), ``protocol``
which protocol asked and scored it, ``item`` the item's digest
(:func:`cord.eval.benchmarks.item_digest`); items with report groups (MMAU's task /
difficulty / sub-category) carry them as ``"groups"``. An item that was not asked is
``{"id", "modality", "status": "skipped", "reason", "correct": null, "reference",
"category", "item"}`` (see :mod:`cord.eval.answer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cord.eval.answer import Answer, AnsweredBatch
from cord.eval.benchmarks import Benchmark
from cord.eval.records import append_records


def score_record(bench: Benchmark, a: Answer) -> dict[str, Any]:
    """``a`` judged, as its record."""
    it = a.item
    if a.response is None:
        return {"id": it.id, "modality": a.modality, "status": "skipped", "reason": a.skipped, "correct": None,
                "reference": it.answer, "category": str(it.meta.get("category", "")), "item": a.digest}
    res = bench.score(it, a.response)
    rec = {
        "id": it.id,
        "modality": a.modality,
        "status": "answered",
        "response": a.response,
        "answer": res.candidate_answer,
        "reference": it.answer,
        "reference_answer": res.reference_answer,
        "correct": int(res.score),
        "judge": res.kind,
        "note": res.note,
        "category": str(it.meta.get("category", "")),
        "finished": a.finished,
        "tokens": a.tokens,
        "protocol": bench.protocol.name,
    }
    if it.meta.get("groups"):
        rec["groups"] = dict(it.meta["groups"])
    rec["item"] = a.digest
    return rec


def score_answers(batches: Iterable[AnsweredBatch]) -> int:
    """The score step: judge each batch of answers as it comes and append its records to its
    file; returns how many items were recorded."""
    n = 0
    for batch in batches:
        append_records(batch.path, [score_record(batch.bench, a) for a in batch.answers])
        n += len(batch.answers)
        del batch  # taking the next batch may load the next benchmark: hold nothing of this one
    return n
