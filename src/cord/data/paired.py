"""The unit of paired data: one question as text and as speech.

A paired dataset on disk is a directory holding ``manifest.jsonl`` (one JSON object per line:
``id, question, answer, source, audio, duration, tts, voice`` plus optional ``solution`` and
``meta``) and the 16 kHz mono audio files it names (``audio`` is relative to the directory).
This is what ``cord synth`` writes and what the trainer, ``cord eval`` and ``cord analyze`` read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cord import CordError

SAMPLE_RATE = 16_000


@dataclass
class PairedExample:
    """One question in two modalities.

    ``audio`` is 16 kHz mono float32 of shape (samples,), or None when only text is needed.
    ``answer`` is the reference final answer (may be empty when unknown); ``solution`` an
    optional reference worked solution (used by the ``sft`` baseline).
    """

    id: str
    question_text: str
    audio: np.ndarray | None
    answer: str = ""
    solution: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


MANIFEST = "manifest.jsonl"


def read_jsonl(path: str | Path):
    """Yield (line number, object) for each non-blank line of a JSON-lines file; one clear
    error naming the line for malformed JSON or a non-object line."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CordError(f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(obj, dict):
                raise CordError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
            yield lineno, obj


def read_json(path: str | Path) -> Any:
    """A whole JSON file; one clear error naming the file and line when it is malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CordError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def read_manifest(directory: str | Path) -> list[dict[str, Any]]:
    """Rows of ``DIR/manifest.jsonl``; one clear error for a missing or malformed file."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CordError(f"no paired dataset at {directory}: {MANIFEST} not found (make one with `cord synth`)")
    rows = []
    for lineno, row in read_jsonl(path):
        for key in ("id", "question", "audio"):
            if key not in row:
                raise CordError(f"{path}:{lineno}: missing field {key!r} (need id, question, answer, audio)")
        rows.append(row)
    return rows


def load_paired(directory: str | Path, limit: int | None = None, with_audio: bool = True) -> list[PairedExample]:
    """Load a paired dataset directory as written by ``cord synth``."""
    from cord.data.audio import load_audio

    directory = Path(directory)
    rows = read_manifest(directory)
    if limit is not None:
        rows = rows[:limit]
    out = []
    for row in rows:
        audio = load_audio(directory / row["audio"]) if with_audio else None
        meta = {k: v for k, v in row.items() if k not in ("id", "question", "answer", "solution")}
        out.append(
            PairedExample(
                id=str(row["id"]),
                question_text=row["question"],
                audio=audio,
                answer=str(row.get("answer", "")),
                solution=str(row.get("solution", "")),
                meta=meta,
            )
        )
    return out
