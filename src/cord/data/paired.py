"""The unit of paired data: one question as text and as speech.

A paired dataset on disk is a directory holding ``manifest.jsonl`` (one JSON object per line:
``id, question, answer, source, audio, duration, tts, voice`` plus optional ``solution`` and
``meta``) and the 16 kHz mono audio files it names (``audio`` is relative to the directory).
This is what ``cord synth`` writes and what the trainer, ``cord eval`` and ``cord analyze`` read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cord import CordError

SAMPLE_RATE = 16_000


class PairedExample:
    """One question in two modalities.

    ``audio`` is 16 kHz mono float32 of shape (samples,), or None when only text is needed.
    It is either held in memory (``PairedExample(id, text, array)``) or read from
    ``audio_path`` on each access (what :func:`load_paired` makes: a dataset costs host
    memory per micro-batch, not per clip; decoded clips go through the bounded
    :data:`cord.data.audio.CLIP_CACHE`). ``answer`` is the reference final answer (may be
    empty when unknown); ``solution`` an optional reference worked solution (used by the
    ``sft`` baseline).
    """

    __slots__ = ("id", "question_text", "answer", "solution", "meta", "audio_path", "_audio")

    def __init__(
        self,
        id: str,
        question_text: str,
        audio: np.ndarray | None = None,
        answer: str = "",
        solution: str = "",
        meta: dict[str, Any] | None = None,
        *,
        audio_path: str | Path | None = None,
    ) -> None:
        if audio is not None and audio_path is not None:
            raise ValueError("give audio or audio_path, not both")
        self.id = id
        self.question_text = question_text
        self.answer = answer
        self.solution = solution
        self.meta = meta if meta is not None else {}
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self._audio = audio

    @property
    def audio(self) -> np.ndarray | None:
        if self._audio is not None or self.audio_path is None:
            return self._audio
        from cord.data.audio import CLIP_CACHE

        return CLIP_CACHE.load(self.audio_path)

    @audio.setter
    def audio(self, value: np.ndarray | None) -> None:
        self._audio = value
        self.audio_path = None

    @property
    def has_audio(self) -> bool:
        """Whether the example has audio (without decoding it)."""
        return self._audio is not None or self.audio_path is not None

    @property
    def audio_samples(self) -> int:
        """Length of ``audio`` in 16 kHz samples, from the file header when it is not loaded
        (0 without audio)."""
        if self._audio is not None:
            return int(len(self._audio))
        if self.audio_path is None:
            return 0
        from cord.data.audio import audio_header

        return audio_header(self.audio_path).samples_16k

    def __repr__(self) -> str:
        if self._audio is not None:
            audio = f"array({len(self._audio)} samples)"
        else:
            audio = f"path {str(self.audio_path)!r}" if self.audio_path is not None else "None"
        return f"PairedExample(id={self.id!r}, question_text={self.question_text[:40]!r}, audio={audio}, answer={self.answer!r})"


MANIFEST = "manifest.jsonl"


def read_jsonl(path: str | Path):
    """Yield (line number, object) for each non-blank line of a JSON-lines file; one clear
    error naming the line for malformed JSON or a non-object line."""
    path = Path(path)
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of line 1
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
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise CordError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def read_manifest(directory: str | Path) -> list[dict[str, Any]]:
    """Rows of ``DIR/manifest.jsonl``; one clear error for a missing or malformed file."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CordError(f"no paired dataset at {directory}: {MANIFEST} not found (make one with `cord synth`, "
                        "or try the pipeline on 24 built-in clips with --set data.train=builtin:tiny-arith)")
    rows = []
    first_line: dict[str, int] = {}
    dups: list[str] = []
    for lineno, row in read_jsonl(path):
        for key in ("id", "question", "audio"):
            if key not in row:
                raise CordError(f"{path}:{lineno}: missing field {key!r} (need id, question, answer, audio)")
        rid = str(row["id"])
        if rid in first_line:
            dups.append(f"{rid!r} (lines {first_line[rid]} and {lineno})")
        else:
            first_line[rid] = lineno
        rows.append(row)
    if dups:  # results, references and resume are all keyed by id: a second row would be silently merged
        shown = ", ".join(dups[:5]) + (f", … {len(dups) - 5} more" if len(dups) > 5 else "")
        raise CordError(f"{path}: {len(dups)} duplicate id(s): {shown}; ids must be unique: "
                        "remove or rename the repeated rows")
    return rows


def load_paired(directory: str | Path, limit: int | None = None, with_audio: bool = True) -> list[PairedExample]:
    """Load a paired dataset directory as written by ``cord synth``.

    Nothing is decoded here: each example reads its clip when ``ex.audio`` is accessed
    (missing or unreadable files then fail with one clear line; :func:`cord.data.check.check_examples`
    finds them all up front from the headers)."""
    directory = Path(directory)
    rows = read_manifest(directory)
    if limit is not None:
        rows = rows[:limit]
    out = []
    for row in rows:
        meta = {k: v for k, v in row.items() if k not in ("id", "question", "answer", "solution")}
        out.append(
            PairedExample(
                id=str(row["id"]),
                question_text=row["question"],
                answer=str(row.get("answer", "")),
                solution=str(row.get("solution", "")),
                meta=meta,
                audio_path=directory / str(row["audio"]) if with_audio else None,
            )
        )
    return out
