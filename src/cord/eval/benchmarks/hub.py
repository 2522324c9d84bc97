"""The hub benchmarks' rows as items, and their loaders (VoiceBench, spoken GSM8K through ``datasets``; MMAU test-mini from its local JSON)."""

from __future__ import annotations

import difflib
import io
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cord import CordError
from cord.data.audio import load_audio, to_16k_mono
from cord.data.paired import PairedExample, read_json
from cord.eval.benchmarks.spec import (
    GSM8K_AUDIO_REPO,
    GSM8K_TEXT_REPO,
    LETTER_PATTERN,
    MMAU_JSON,
    MMSU_DOMAINS,
    VOICEBENCH_REPO,
    Benchmark,
)

# --- hub rows → items -----------------------------------------------------------------------


def hub_audio_to_16k(value: Any, where: str = "audio") -> np.ndarray:
    """Audio from a hub row — ``{"array", "sampling_rate"}``, ``{"bytes"}``, ``{"path"}`` or a
    ``datasets`` 4 decoder object — as 16 kHz mono float32."""
    if isinstance(value, dict):
        if value.get("array") is not None:
            sr = value.get("sampling_rate")
            if not sr:
                raise CordError(f"{where}: decoded audio has no sampling_rate")
            return to_16k_mono(np.asarray(value["array"]), int(sr))
        if value.get("bytes"):
            import soundfile as sf

            data, sr = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=False)
            return to_16k_mono(data, sr)
        if value.get("path") and Path(value["path"]).is_file():
            return load_audio(value["path"])
    elif hasattr(value, "get_all_samples"):  # datasets>=4 AudioDecoder (torchcodec)
        samples = value.get_all_samples()
        data = samples.data
        data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
        data = data.T if data.ndim == 2 else data  # (channels, samples) → (samples, channels)
        return to_16k_mono(data, int(samples.sample_rate))
    raise CordError(f"{where}: no audio found (expected a decoded array with its sampling_rate)")


def voicebench_item(row: dict[str, Any], subset: str, split: str, index: int, with_audio: bool = True) -> PairedExample:
    """One VoiceBench multiple-choice row (``mmsu`` / ``openbookqa``) as an item."""
    where = f"{VOICEBENCH_REPO} {subset}/{split} row {index}"
    ref = str(row.get("reference", "")).strip()
    m = LETTER_PATTERN.match(ref)
    if not m:
        raise CordError(f"{where}: reference {ref!r} is not an option letter")
    prompt = row.get("prompt")
    if not prompt:
        raise CordError(f"{where}: no 'prompt' text")
    qid = row.get("question_id")
    rid = f"{subset}-{split}-{qid if qid not in (None, '') else index}"
    meta = {
        "judge": "mcq",
        "benchmark": f"voicebench-{subset}",
        "category": str(row.get("category") or (split if subset == "mmsu" else subset)),
        "split": split,
    }
    for k in ("question_id", "src"):
        if row.get(k) not in (None, ""):
            meta[k] = row[k]
    audio = hub_audio_to_16k(row.get("audio"), where) if with_audio else None
    return PairedExample(id=rid, question_text=str(prompt), audio=audio, answer=m.group(1).upper(), meta=meta)


def gsm8k_final_answer(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, thousands commas dropped."""
    if "####" not in solution:
        raise CordError("GSM8K solution has no '####' final answer")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


_TEXT_COLUMNS = ("question", "text", "transcript", "transcription", "sentence")


def _squash(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def _audio_value(row: dict[str, Any]) -> Any:
    if "audio" in row:
        return row["audio"]
    for v in row.values():
        if (isinstance(v, dict) and ("array" in v or "bytes" in v)) or hasattr(v, "get_all_samples"):
            return v
    return None


def gsm8k_audio_items(
    audio_rows: Sequence[dict[str, Any]],
    gsm8k_rows: Sequence[dict[str, Any]],
    *,
    speaker: int = 0,
    limit: int | None = None,
    with_audio: bool = True,
) -> list[PairedExample]:
    """Join spoken GSM8K rows with ``openai/gsm8k`` test rows by row index (see the module
    docstring). ``audio_rows`` may hold k × len(gsm8k_rows) rows (k speaker blocks)."""
    n = len(gsm8k_rows)
    if n == 0:
        raise CordError("GSM8K text rows are empty")
    if len(audio_rows) % n:
        raise CordError(
            f"cannot join {GSM8K_AUDIO_REPO} ({len(audio_rows)} rows) with {GSM8K_TEXT_REPO} test ({n} rows) "
            "by row index: the counts do not line up"
        )
    blocks = len(audio_rows) // n
    if not 0 <= speaker < blocks:
        raise CordError(f"speaker {speaker} out of range: this split holds {blocks} speaker block(s)")
    count = n if limit is None else min(n, max(0, int(limit)))
    items: list[PairedExample] = []
    unchecked = 0
    for i in range(count):
        arow, trow = audio_rows[speaker * n + i], gsm8k_rows[i]
        where = f"{GSM8K_AUDIO_REPO} row {speaker * n + i}"
        question, solution = str(trow["question"]), str(trow["answer"])
        spoken_text = next((arow[c] for c in _TEXT_COLUMNS if isinstance(arow.get(c), str) and arow[c].strip()), None)
        if spoken_text is None:
            unchecked += 1
        else:
            a, b = _squash(spoken_text), _squash(question)
            if a != b and difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() < 0.6:
                raise CordError(
                    f"{where} does not match {GSM8K_TEXT_REPO} test row {i} "
                    f"({spoken_text[:40]!r} vs {question[:40]!r}); the row-index join is wrong for this split"
                )
        audio = hub_audio_to_16k(_audio_value(arow), where) if with_audio else None
        items.append(
            PairedExample(
                id=f"gsm8k-test-{i}" + (f"-s{speaker}" if blocks > 1 else ""),
                question_text=question,
                audio=audio,
                answer=gsm8k_final_answer(solution),
                solution=solution.rsplit("####", 1)[0].strip(),
                meta={"judge": "math", "benchmark": "gsm8k-audio", "category": "gsm8k", "gsm8k_index": i, "speaker": speaker},
            )
        )
    if unchecked:
        warnings.warn(
            f"{unchecked} spoken GSM8K rows carry no text column, so their row-index join with "
            f"{GSM8K_TEXT_REPO} could not be checked",
            stacklevel=2,
        )
    return items


def format_mmau_question(question: str, choices: Sequence[str]) -> str:
    opts = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return f"{question.strip()}\nChoose the correct option from the following options:\n{opts}"


def mmau_item(row: dict[str, Any], audio_root: str | Path, with_audio: bool = True) -> PairedExample:
    """One MMAU JSON row as an item; audio read from ``audio_root / row["audio_id"]``."""
    audio_id = str(row.get("audio_id", ""))
    rid = str(row.get("id") or Path(audio_id).stem)
    where = f"MMAU item {rid!r}"
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise CordError(f"{where}: 'choices' must list the options")
    choices = [str(c) for c in choices]
    answer = str(row.get("answer", "")).strip()
    if answer not in choices:
        raise CordError(f"{where}: answer {answer!r} is not one of its choices")
    path = Path(audio_root) / audio_id
    audio = load_audio(path) if with_audio else None
    meta = {
        "judge": "mmau",
        "benchmark": "mmau-test-mini",
        "choices": choices,
        "lettered": True,
        "category": str(row.get("task", "")),
        "text_with_audio": True,
        "audio_path": str(path),
    }
    for k in ("difficulty", "category", "sub-category", "dataset", "split"):
        if k in row:
            meta["mmau_" + k.replace("-", "_")] = row[k]
    meta["mmau_question"] = str(row["question"])
    # the groups MMAU's evaluation.py prints accuracies for, in its order
    meta["groups"] = {k: str(row[k]) for k in ("task", "difficulty", "sub-category") if row.get(k) not in (None, "")}
    return PairedExample(id=rid, question_text=format_mmau_question(str(row["question"]), choices), audio=audio, answer=answer, meta=meta)


def load_mmau(path: str | Path | None, limit: int | None = None, with_audio: bool = True) -> Benchmark:
    """MMAU test-mini from a local copy (see the module docstring)."""
    how = (
        f"download {MMAU_JSON} and test-mini-audios.tar.gz from github.com/Sakshi113/MMAU, extract the "
        "tarball next to the JSON and pass data_dir=<that folder>"
    )
    if path is None:
        raise CordError(f"mmau-test-mini needs a local copy of its audio: {how}")
    path = Path(path)
    json_path = path if path.is_file() else path / MMAU_JSON
    if not json_path.is_file():
        raise CordError(f"no {MMAU_JSON} at {path}: {how}")
    rows = read_json(json_path)
    if not isinstance(rows, list) or not rows:
        raise CordError(f"{json_path}: expected a JSON list of MMAU items")
    if limit is not None:
        rows = rows[: max(0, int(limit))]
    root = json_path.parent
    if with_audio:
        missing = [str(r.get("audio_id")) for r in rows if not (root / str(r.get("audio_id", ""))).is_file()]
        if missing:
            raise CordError(f"{len(missing)} of {len(rows)} MMAU audio files are missing under {root} (first: {missing[0]}); {how}")
    items = [mmau_item(r, root, with_audio) for r in rows]
    return Benchmark("mmau-test-mini", "mmau", items, source=str(json_path))


# --- hub loading ----------------------------------------------------------------------------


def _datasets(name: str):
    try:
        import datasets
    except ImportError:
        raise CordError(f"benchmark {name!r} loads from the Hugging Face hub and needs `datasets`: pip install -e \".[hub]\" (from the cord clone)") from None
    return datasets


def _hub_error(what: str, e: Exception) -> CordError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return CordError(f"could not load {what} from the Hugging Face hub: {first}")


def _round_robin(groups: Sequence[list[PairedExample]], limit: int | None) -> list[PairedExample]:
    if limit is None:
        return [x for g in groups for x in g]
    out: list[PairedExample] = []
    for i in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if i < len(g):
                out.append(g[i])
    return out[: max(0, int(limit))]


def load_voicebench(subset: str, limit: int | None = None, cache_dir: str | None = None, with_audio: bool = True) -> Benchmark:
    ds_lib = _datasets(f"voicebench-{subset}")
    splits = MMSU_DOMAINS if subset == "mmsu" else ("test",)
    per = None if limit is None else math.ceil(max(0, int(limit)) / len(splits))
    groups = []
    for split in splits:
        try:
            ds = ds_lib.load_dataset(VOICEBENCH_REPO, subset, split=split, cache_dir=cache_dir)
        except Exception as e:  # network, auth, missing split: one line for the user
            raise _hub_error(f"{VOICEBENCH_REPO} {subset}/{split}", e) from None
        if per is not None:
            ds = ds.select(range(min(per, len(ds))))
        if not with_audio and "audio" in ds.column_names:
            ds = ds.remove_columns(["audio"])
        groups.append([voicebench_item(row, subset, split, i, with_audio) for i, row in enumerate(ds)])
    return Benchmark(f"voicebench-{subset}", "mcq", _round_robin(groups, limit), source=f"{VOICEBENCH_REPO}/{subset}")


def load_gsm8k_audio(
    limit: int | None = None, split: str | None = None, speaker: int = 0, cache_dir: str | None = None, with_audio: bool = True
) -> Benchmark:
    ds_lib = _datasets("gsm8k-audio")
    try:
        audio_dd = ds_lib.load_dataset(GSM8K_AUDIO_REPO, cache_dir=cache_dir)
        text_ds = ds_lib.load_dataset(GSM8K_TEXT_REPO, "main", split="test", cache_dir=cache_dir)
    except Exception as e:
        raise _hub_error(f"{GSM8K_AUDIO_REPO} / {GSM8K_TEXT_REPO}", e) from None
    names = list(audio_dd.keys())
    split = split or ("test" if "test" in names else names[0])
    if split not in names:
        raise CordError(f"{GSM8K_AUDIO_REPO} has no split {split!r}; it has {', '.join(names)}")
    audio_ds = audio_dd[split]
    if not with_audio and "audio" in audio_ds.column_names:
        audio_ds = audio_ds.remove_columns(["audio"])
    # Datasets index lazily: only the rows asked for are decoded
    items = gsm8k_audio_items(audio_ds, text_ds, speaker=speaker, limit=limit, with_audio=with_audio)
    return Benchmark("gsm8k-audio", "math", items, source=f"{GSM8K_AUDIO_REPO}/{split} ⋈ {GSM8K_TEXT_REPO}/main/test")
