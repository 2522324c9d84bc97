"""A local folder in the paired-set format as a benchmark (``cord`` protocol only)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cord import CordError
from cord.data.audio import load_audio
from cord.data.paired import MANIFEST, PairedExample, read_manifest
from cord.eval.benchmarks.spec import LETTER_PATTERN, LOCAL_JUDGES, Benchmark
from cord.judges import extract_choice

# --- local folders --------------------------------------------------------------------------


def _infer_judge(answer: str, choices: list[str] | None) -> str:
    if LETTER_PATTERN.match(answer):
        return "mcq"
    if choices:
        return "mmau"
    return "math"


def _validate_row(row: dict[str, Any], where: str) -> tuple[str, list[str] | None]:
    answer = row.get("answer")
    if answer is None or not str(answer).strip():
        raise CordError(f"{where}: empty or missing 'answer'; a benchmark item needs its reference answer")
    choices = row.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, (str, int, float)) for c in choices):
            raise CordError(f"{where}: 'choices' must be a list of at least two option texts")
        choices = [str(c) for c in choices]
    kind = row.get("judge") or _infer_judge(str(answer), choices)
    if kind not in LOCAL_JUDGES:
        raise CordError(f"{where}: judge {kind!r} is not one of {', '.join(LOCAL_JUDGES)}")
    if kind == "mmau":
        if not choices:
            raise CordError(f"{where}: judge 'mmau' needs 'choices' (the option texts)")
        from cord.judges import match_choice

        if match_choice(str(answer), choices) is None:
            raise CordError(f"{where}: answer {answer!r} is not one of its choices")
    if kind == "mcq" and extract_choice(str(answer), choices) is None:
        raise CordError(f"{where}: answer {answer!r} names no option; give a letter (A, B, …) or an option text")
    return kind, choices


def load_local_benchmark(directory: str | Path, limit: int | None = None, with_audio: bool = True) -> Benchmark:
    """Load ``DIR/manifest.jsonl`` (format in the module docstring)."""
    directory = Path(directory)
    rows = read_manifest(directory)
    if not rows:
        raise CordError(f"{directory / MANIFEST} has no items")
    if limit is not None:
        rows = rows[: max(0, int(limit))]
    seen: set[str] = set()
    items = []
    for n, row in enumerate(rows, 1):
        where = f"{directory / MANIFEST}: item {n} (id {row.get('id')!r})"
        rid = str(row["id"])
        if rid in seen:
            raise CordError(f"{where}: duplicate id; ids must be unique")
        seen.add(rid)
        kind, choices = _validate_row(row, where)
        audio = load_audio(directory / str(row["audio"])) if with_audio else None
        meta = {k: v for k, v in row.items() if k not in ("id", "question", "answer", "solution")}
        meta.update(judge=kind, benchmark=directory.name)
        if choices is not None:
            meta["choices"] = choices
        meta.setdefault("category", "")
        items.append(
            PairedExample(
                id=rid,
                question_text=str(row["question"]),
                audio=audio,
                answer=str(row["answer"]).strip(),
                solution=str(row.get("solution", "")),
                meta=meta,
            )
        )
    kinds = Counter(it.meta["judge"] for it in items)
    return Benchmark(directory.name, kinds.most_common(1)[0][0], items, source=str(directory))
