"""Per-run diagnostics of the miniature, read from a model and its ``cord eval`` folder:

- the accuracies and per-item outcomes ``cord eval`` wrote (:func:`item_outcomes`,
  :func:`accuracies`), test (training voices) and test_unseen (held-out voice);
- whether the audio path still *hears*: greedy "repeat the question" transcripts of the test
  clips (the decoder repeating what it was given), and the CTC readout's own greedy transcripts
  (``heard``: with ``audio_tokens="words"`` exactly the words the decoder is given), both by
  :func:`cord.mini.scoring.transcript_scores` (exact, numbers right, WER);
- where in the answer the audio errors sit (:func:`cord.mini.task.error_kind`: a misheard
  operand, a wrong operation, an arithmetic slip, a result not carried, a wrong answer line).

``diagnostics.json`` in the evaluation folder caches them (a rerun reuses it).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

DIAGNOSTICS = "diagnostics.json"


def item_outcomes(eval_dir: str | Path, test_name: str, modality: str) -> dict[str, bool]:
    """{item id: correct} from a ``cord eval`` folder's per-item file (``<test>/<test>/<modality>.jsonl``).
    Skipped items are left out (a paired comparison then refuses the run: the miniature's clips
    are all short enough to answer)."""
    from cord.data.paired import read_jsonl

    path = Path(eval_dir) / test_name / test_name / f"{modality}.jsonl"
    return {str(r["id"]): bool(r["correct"]) for _, r in read_jsonl(path)
            if r.get("status", "answered") == "answered"}


def item_responses(eval_dir: str | Path, test_name: str, modality: str) -> dict[str, str]:
    from cord.data.paired import read_jsonl

    path = Path(eval_dir) / test_name / test_name / f"{modality}.jsonl"
    return {str(r["id"]): str(r.get("response") or "") for _, r in read_jsonl(path)}


def accuracies(eval_dir: str | Path) -> dict[str, Any]:
    """Per-item outcomes and accuracies of one evaluated model: ``text``, ``audio`` (test, training
    voices), ``unseen`` (test_unseen, audio) as {id: correct}, and their accuracies and gap."""
    text = item_outcomes(eval_dir, "test", "text")
    audio = item_outcomes(eval_dir, "test", "audio")
    unseen = item_outcomes(eval_dir, "test_unseen", "audio")
    acc = lambda d: sum(d.values()) / max(1, len(d))  # noqa: E731
    return {"text": text, "audio": audio, "unseen": unseen, "text_acc": acc(text), "audio_acc": acc(audio),
            "gap": acc(text) - acc(audio), "unseen_audio_acc": acc(unseen), "n": len(audio), "n_unseen": len(unseen)}


def error_profile(eval_dir: str | Path, test_dir: str | Path) -> dict[str, Any]:
    """Counts of :data:`cord.mini.task.ERROR_KINDS` over the wrong audio answers on test, and the
    formats the audio answers were written in."""
    from cord.data.paired import read_manifest
    from cord.mini.task import ERROR_KINDS, error_kind, problem_of, solution_format

    problems = {str(r["id"]): problem_of(r["problem"]) for r in read_manifest(test_dir)}
    responses = item_responses(eval_dir, "test", "audio")
    kinds = Counter(error_kind(text, problems[i]) for i, text in responses.items())
    formats = Counter(solution_format(text) or "none" for text in responses.values())
    n = max(1, len(responses))
    return {"n": len(responses), "wrong": n - kinds[None] if responses else 0,
            "kinds": {k: kinds[k] for k in ERROR_KINDS},
            "formats": {k: formats[k] / n for k in sorted(formats)}}


def run_diagnostics(model_dir: str | Path, test_dir: str | Path, eval_dir: str | Path,
                    max_new_tokens: int) -> dict[str, Any]:
    """Accuracies, transcript scores and the error profile of one evaluated model (cached)."""
    from cord.config import ModelConfig
    from cord.data.paired import load_paired
    from cord.mini.scoring import ctc_transcripts, transcript_accuracy, transcript_scores
    from cord.models import load_adapter

    eval_dir = Path(eval_dir)
    path = eval_dir / DIAGNOSTICS
    cached = json.loads(path.read_text()) if path.is_file() else None
    if cached is None or cached.get("model_dir") != str(model_dir) or "heard" not in cached:
        adapter = load_adapter(ModelConfig(family="mini", name_or_path=str(model_dir), dtype="float32", device="cpu"))
        test = load_paired(test_dir)
        scores, _ = transcript_accuracy(adapter, test, max_new_tokens=max_new_tokens)
        heard = transcript_scores(ctc_transcripts(adapter, test), [ex.question_text for ex in test])
        cached = {"model_dir": str(model_dir), "transcript": scores, "heard": heard,
                  "errors": error_profile(eval_dir, test_dir)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=1) + "\n")
        tmp.replace(path)
    acc = accuracies(eval_dir)
    return {k: v for k, v in acc.items() if k not in ("text", "audio", "unseen")} | {
        "transcript": cached["transcript"], "heard": cached["heard"], "errors": cached["errors"]}
