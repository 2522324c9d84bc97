"""Benchmarks: the items to evaluate (questions as speech and as text) and the judge that
scores them.

A :class:`Benchmark` is a name, a default judge kind and a list of
:class:`cord.data.paired.PairedExample` items (``question_text`` = the text prompt,
``audio`` = 16 kHz mono float32, ``answer`` = the reference; ``meta`` holds ``judge``,
``choices``, ``category`` and ``benchmark``). :meth:`Benchmark.score` judges one response.

Local folder format
-------------------
``DIR/manifest.jsonl``, one JSON object per line — the paired-dataset manifest that
``cord synth`` writes, so a synth output is also a benchmark::

    {"id": "q1", "question": "What is 6 times 7?", "answer": "42", "audio": "audio/q1.wav"}
    {"id": "q2", "question": "Which is a mammal? A. shark B. whale C. trout D. eel",
     "answer": "B", "audio": "audio/q2.wav", "choices": ["shark", "whale", "trout", "eel"],
     "category": "biology", "judge": "mcq"}

- ``id`` (unique), ``question`` (the text prompt), ``answer`` (the reference; not empty),
  ``audio`` (path relative to DIR; any format soundfile reads, any rate, resampled to
  16 kHz mono) — required;
- ``choices`` (list of option texts, in letter order), ``category`` (for per-category
  accuracy), ``judge`` (``math`` | ``mcq`` | ``mmau`` | ``exact``) — optional. Without
  ``judge``: ``mcq`` when the answer is a single letter, ``mmau`` when there are choices
  and the answer is an option text, else ``math``;
- any other field is kept in ``meta`` (e.g. ``"text_with_audio": true`` for items whose
  audio is a sound to ask about rather than the spoken question, as in MMAU).

Hub benchmarks (need the optional ``datasets`` library: ``pip install -e ".[hub]"`` from the clone)
-----------------------------------------------------------------------------------
- ``voicebench-mmsu``: ``hlt-lab/voicebench`` config ``mmsu``, its 12 domain splits
  (biology … psychology); fields ``audio``, ``prompt`` (the text question with its
  options), ``reference`` (a letter), ``question_id``, ``category``. Judge ``mcq``. With
  ``limit`` the items are taken round-robin over the domains, so a small run still covers
  all 12.
- ``voicebench-openbookqa``: the same dataset, config ``openbookqa``, split ``test``.
- ``gsm8k-audio``: spoken GSM8K test questions from ``pphuc25/GSM8K_audio`` (which carries
  no answers) joined **by row index** with ``openai/gsm8k`` (config ``main``, split
  ``test``): question = the GSM8K text, answer = the text after ``####`` (commas
  dropped), solution = the worked solution before it. ``split`` picks the audio split
  (default ``test`` if present, else the first); if that split holds k × 1,319 rows it is
  read as k consecutive speaker blocks and ``speaker`` picks one (default 0). When the
  audio rows carry a text column (``question``/``text``/``transcript``/``sentence``) each
  joined pair is checked for agreement and a mismatch is an error — a wrong join is
  never scored silently; without one the join cannot be checked and a warning says so.
  Judge ``math``.
- ``mmau-test-mini``: MMAU test-mini (1,000 items: sound, music, speech). Its audio is
  distributed as a tarball, not on the hub: download ``mmau-test-mini.json`` and
  ``test-mini-audios.tar.gz`` (github.com/Sakshi113/MMAU), extract the tarball next to
  the JSON and pass ``data_dir=`` that folder (or the JSON path). ``audio_id`` paths in
  the JSON are relative to it. question_text = the question followed by the options as
  ``(A) …``; answer = the option text; category = ``task``; ``meta["text_with_audio"]``
  is True (the question goes with the audio clip; there is no text-only form). Judge
  ``mmau``.

Hub audio arrives decoded (``{"array", "sampling_rate"}``, or a decoder object in
``datasets`` 4) and is converted with :func:`cord.data.audio.to_16k_mono`.

Registry and protocols
----------------------
Each named benchmark registers itself once (:func:`register_benchmark`, a
:class:`BenchmarkSpec`: its loader, default judge, and the protocols it supports), so adding
one touches this file only. A protocol (:class:`EvalProtocol`) says how the benchmark is
asked and scored: ``cord`` (every benchmark; the model's ``instruction`` after the question,
cord's strict judges) or ``official`` (the benchmark's own runner, where one exists):

- VoiceBench (mmsu, openbookqa), following MatthewCYM/VoiceBench ``src/models/qwen2.py`` and
  ``src/evaluator/mcq.py``: the audio alone as the user turn, the text modality the row's
  ``prompt`` alone (no instruction), judge ``voicebench``.
- MMAU test-mini, following Sakshi113/MMAU ``evaluation.py``: the audio with the question
  and its options one per line without letters (the repository publishes no inference
  prompt; unlettered options give ``string_match`` an option text to find), judge
  ``mmau-official``.
- Spoken GSM8K has no official runner: ``official`` asks as VoiceBench does (the audio
  alone; the text modality the GSM8K question alone), same audio as ``cord``, judge
  ``math``.
- Local folders support ``cord`` only.
"""

from __future__ import annotations

import copy
import difflib
import io
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cord import CordError
from cord.data.audio import load_audio, to_16k_mono
from cord.data.paired import MANIFEST, PairedExample, read_json, read_manifest
from cord.judges import JudgeResult, extract_choice, judge

LOCAL_JUDGES = ("math", "mcq", "mmau", "exact")
MMSU_DOMAINS = (
    "biology", "business", "chemistry", "economics", "engineering", "health",
    "history", "law", "other", "philosophy", "physics", "psychology",
)  # fmt: skip
VOICEBENCH_REPO = "hlt-lab/voicebench"
GSM8K_AUDIO_REPO = "pphuc25/GSM8K_audio"
GSM8K_TEXT_REPO = "openai/gsm8k"
MMAU_JSON = "mmau-test-mini.json"
_LETTER = re.compile(r"^\s*\(?([A-Ja-j])\)?\s*\.?\s*$")
PROTOCOLS = ("cord", "official")


@dataclass(frozen=True)
class EvalProtocol:
    """How a benchmark is asked and scored under one protocol.

    ``judge``: the judge kind for every item (None: the benchmark's and items' own).
    ``instruction``: the text after the question / audio (None: ``model.instruction``;
    ``""``: none — the question or the audio alone). ``question``: rewrites an item's text
    (None: as loaded). ``follows``: the official file it reproduces, for the report.
    ``system_prompts``: model family -> the system prompt the official runner gives that
    family (a family not named keeps its own)."""

    name: str
    judge: str | None = None
    instruction: str | None = None
    question: Callable[[PairedExample], str] | None = None
    follows: str = ""
    system_prompts: Mapping[str, str] = field(default_factory=dict)


CORD_PROTOCOL = EvalProtocol("cord")


@dataclass
class Benchmark:
    """``items`` are PairedExamples; ``judge`` is the default judge kind (an item's
    ``meta["judge"]`` overrides it, and the protocol's judge both); ``source`` says where
    the items came from; ``protocols`` the ways it can be asked (see :func:`with_protocol`)."""

    name: str
    judge: str
    items: list[PairedExample]
    source: str = ""
    notes: list[str] = field(default_factory=list)
    protocols: Mapping[str, EvalProtocol] = field(default_factory=lambda: {"cord": CORD_PROTOCOL})
    protocol: EvalProtocol = CORD_PROTOCOL

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PairedExample]:
        return iter(self.items)

    def judge_kind(self, item: PairedExample) -> str:
        return str(self.protocol.judge or item.meta.get("judge") or self.judge)

    def judge_context(self, item: PairedExample) -> dict[str, Any]:
        """Options for :func:`cord.judges.judge` that this item needs (its choices)."""
        ctx: dict[str, Any] = {}
        if item.meta.get("choices"):
            ctx["choices"] = list(item.meta["choices"])
        if self.judge_kind(item) == "mmau":
            ctx["lettered"] = bool(item.meta.get("lettered", True))
        return ctx

    def score(self, item: PairedExample, response: str, **ctx: Any) -> JudgeResult:
        """Judge ``response`` against the item's reference answer."""
        return judge(response, item.answer, self.judge_kind(item), **{**self.judge_context(item), **ctx})

    def categories(self) -> dict[str, int]:
        return dict(Counter(str(it.meta.get("category", "")) for it in self.items))


# --- local folders --------------------------------------------------------------------------


def _infer_judge(answer: str, choices: list[str] | None) -> str:
    if _LETTER.match(answer):
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
    m = _LETTER.match(ref)
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


def load_benchmark(
    name_or_dir: str | Path,
    limit: int | None = None,
    *,
    data_dir: str | Path | None = None,
    split: str | None = None,
    speaker: int = 0,
    cache_dir: str | None = None,
    with_audio: bool = True,
) -> Benchmark:
    """A benchmark by folder (``DIR/manifest.jsonl``) or by name (one of
    :data:`HUB_BENCHMARKS`). ``limit``: at most this many items. ``data_dir``: the local
    MMAU copy. ``split`` / ``speaker``: which spoken GSM8K audio. ``cache_dir``: the
    ``datasets`` cache. ``with_audio=False`` skips audio (text-only evaluation)."""
    if limit is not None and int(limit) < 0:
        raise CordError(f"limit must be >= 0, got {limit}")
    path = Path(name_or_dir)
    if path.is_dir():
        return load_local_benchmark(path, limit, with_audio)
    name = str(name_or_dir)
    spec = BENCHMARKS.get(name)
    if spec is not None:
        bench = spec.load(limit, data_dir=data_dir, split=split, speaker=speaker, cache_dir=cache_dir, with_audio=with_audio)
        bench.protocols = dict(spec.protocols)
        return bench
    close = difflib.get_close_matches(name, HUB_BENCHMARKS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise CordError(
        f"unknown benchmark {name!r}{hint}: not a folder with {MANIFEST} and not one of {', '.join(HUB_BENCHMARKS)}"
    )


# --- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSpec:
    """A named benchmark: ``load(limit, *, data_dir, split, speaker, cache_dir, with_audio)``
    returns its :class:`Benchmark`; ``judge`` is its default judge kind; ``protocols`` the
    protocols it supports (``cord`` always); ``hub``: it loads through ``datasets``
    (otherwise from a local copy given as ``data_dir``)."""

    name: str
    load: Callable[..., Benchmark]
    judge: str
    protocols: Mapping[str, EvalProtocol]
    hub: bool = True


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_benchmark(spec: BenchmarkSpec) -> None:
    """Add (or replace) a named benchmark; every spec supports the ``cord`` protocol."""
    global HUB_BENCHMARKS
    if "cord" not in spec.protocols:
        spec = replace(spec, protocols={"cord": CORD_PROTOCOL, **spec.protocols})
    unknown = set(spec.protocols) - set(PROTOCOLS)
    if unknown:
        raise CordError(f"benchmark {spec.name!r}: unknown protocol(s) {', '.join(sorted(unknown))}")
    BENCHMARKS[spec.name] = spec
    HUB_BENCHMARKS = tuple(BENCHMARKS)


def _with_question(item: PairedExample, text: str) -> PairedExample:
    """A shallow copy of ``item`` with another question text (audio not decoded)."""
    new = copy.copy(item)
    new.question_text = text
    return new


def with_protocol(bench: Benchmark, protocol: str) -> Benchmark:
    """``bench`` asked and scored under ``protocol`` (a new Benchmark; items rewritten where
    the protocol says so). A protocol the benchmark does not support is an error."""
    if protocol not in PROTOCOLS:
        raise CordError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    proto = bench.protocols.get(protocol)
    if proto is None:
        raise CordError(
            f"benchmark {bench.name!r} has no {protocol!r} protocol (it supports {', '.join(bench.protocols)}); "
            "run it with --protocol cord"
        )
    items = bench.items
    if proto.question is not None:
        items = [_with_question(it, proto.question(it)) for it in items]
    return replace(bench, items=items, protocol=proto)


# VoiceBench: src/models/qwen2.py (audio alone as the user turn; text = the row's prompt
# alone; no system message: Qwen2-Audio's template then writes "You are a helpful
# assistant.", cord's default for it), src/models/qwen_omni.py (the same, with the system
# message "You are a helpful assistant." instead of Qwen2.5-Omni's long default),
# src/evaluator/mcq.py (letter templates; see cord.judges.voicebench)
_VOICEBENCH_OFFICIAL = EvalProtocol(
    "official", judge="voicebench", instruction="",
    follows="MatthewCYM/VoiceBench src/models/qwen2.py, qwen_omni.py + src/evaluator/mcq.py (acc + fail/4)",
    system_prompts={"qwen2-audio": "You are a helpful assistant.", "qwen2.5-omni": "You are a helpful assistant."},
)  # fmt: skip


def format_mmau_official_question(item: PairedExample) -> str:
    """The question, then the options one per line, without letters (string_match reads
    option words, and a letter such as "A" would count as the word "a")."""
    choices = [str(c) for c in item.meta.get("choices") or []]
    question = str(item.meta.get("mmau_question") or item.question_text).strip()
    return question + "\nChoose one of the following options:\n" + "\n".join(choices)


_MMAU_OFFICIAL = EvalProtocol(
    "official", judge="mmau-official", instruction="", question=format_mmau_official_question,
    follows="Sakshi113/MMAU evaluation.py string_match (no official inference prompt)",
)  # fmt: skip
# no official runner: asked as VoiceBench asks (the audio alone), scored by the math judge
_GSM8K_OFFICIAL = EvalProtocol(
    "official", judge="math", instruction="",
    follows="no official runner: VoiceBench-style prompting (audio alone), cord's math judge",
)  # fmt: skip


def _register_builtin() -> None:
    for subset in ("mmsu", "openbookqa"):
        register_benchmark(BenchmarkSpec(
            f"voicebench-{subset}",
            lambda limit, *, cache_dir=None, with_audio=True, _s=subset, **_: load_voicebench(_s, limit, cache_dir, with_audio),
            "mcq", {"official": _VOICEBENCH_OFFICIAL},
        ))  # fmt: skip
    register_benchmark(BenchmarkSpec(
        "gsm8k-audio",
        lambda limit, *, split=None, speaker=0, cache_dir=None, with_audio=True, **_: load_gsm8k_audio(
            limit, split, speaker, cache_dir, with_audio),
        "math", {"official": _GSM8K_OFFICIAL},
    ))  # fmt: skip
    register_benchmark(BenchmarkSpec(
        "mmau-test-mini",
        lambda limit, *, data_dir=None, with_audio=True, **_: load_mmau(data_dir, limit, with_audio),
        "mmau", {"official": _MMAU_OFFICIAL}, hub=False,
    ))  # fmt: skip


#: names of the registered benchmarks (kept in step by register_benchmark)
HUB_BENCHMARKS: tuple[str, ...] = ()
_register_builtin()


# --- published numbers ("anchors") -----------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    """A published number to set beside cord's own (``cord table``).

    ``model``: the checkpoint it was measured on (hub id). ``benchmark``: a registry name
    (``voicebench-mmsu``, ``gsm8k-audio``, ``mmau-test-mini``, …) or ``"average"`` (over the
    paper's benchmarks). ``group``: a report group within it (MMAU's task: ``sound``, ``music``,
    ``speech``), None for the whole benchmark. ``metric``: ``audio_acc`` (accuracy from speech),
    ``audio_acc_task_mean`` (MMAU's mean over tasks) or ``gap_reduction`` ((gap_base − gap) /
    gap_base). ``method``: ``base`` (the checkpoint as released) or the training method the
    number belongs to (``cord``, ``forward_kl``, … as in :data:`cord.types.METHODS`).
    ``value``: in percent, as printed in ``source``. ``protocol``: the ``cord eval --protocol``
    whose numbers are comparable with it, where one is. ``note``: what to keep in mind."""

    model: str
    benchmark: str
    metric: str
    method: str
    value: float
    source: str
    group: str | None = None
    protocol: str | None = None
    note: str = ""


#: every registered anchor, in registration order (:func:`register_anchor`)
ANCHORS: list[Anchor] = []


def register_anchor(anchor: Anchor) -> None:
    """Add a published number (or replace the one with the same model, benchmark, group,
    metric, method and source)."""
    key = (anchor.model.lower(), anchor.benchmark, anchor.group, anchor.metric, anchor.method, anchor.source)
    for i, a in enumerate(ANCHORS):
        if (a.model.lower(), a.benchmark, a.group, a.metric, a.method, a.source) == key:
            ANCHORS[i] = anchor  # in place: the registry's order (and so a table's footnotes) stays
            return
    ANCHORS.append(anchor)


def anchor_model(name_or_path: str | None) -> str | None:
    """The anchors' model id that ``name_or_path`` names: the hub id itself (any case), or a
    local folder named like the checkpoint (``/models/Qwen2-Audio-7B-Instruct``). None: no
    published numbers for it."""
    if not name_or_path:
        return None
    text = str(name_or_path).strip().rstrip("/")
    models = list(dict.fromkeys(a.model for a in ANCHORS))
    for m in models:
        if text.lower() == m.lower():
            return m
    tail = text.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for m in models:
        if tail == m.rsplit("/", 1)[-1].lower():
            return m
    return None


def anchors_for(name_or_path: str | None, benchmark: str | None = None) -> list[Anchor]:
    """The published numbers for the model ``name_or_path`` (see :func:`anchor_model`),
    optionally of one benchmark."""
    model = anchor_model(name_or_path)
    if model is None:
        return []
    return [a for a in ANCHORS if a.model == model and (benchmark is None or a.benchmark == benchmark)]


_CORD_PAPER = "CORD paper (arXiv 2601.16547), main results"
_VOICEBENCH = "VoiceBench leaderboard (official runner)"
_MMAU_PAPER = "MMAU paper (original test-mini release)"
_QWEN2_AUDIO = "Qwen/Qwen2-Audio-7B-Instruct"
_STEP_AUDIO2 = "stepfun-ai/Step-Audio-2-mini"
_GSM8K_NOTE = "the paper does not name its spoken GSM8K source; cord's gsm8k-audio may differ"
_CORD_PROMPT_NOTE = "the paper's prompts are not published"


def _register_builtin_anchors() -> None:
    qa = _QWEN2_AUDIO
    for bench, base, cord_, note in (
        ("voicebench-mmsu", 36.04, 38.06, _CORD_PROMPT_NOTE),
        ("voicebench-openbookqa", 51.20, 52.77, _CORD_PROMPT_NOTE),
        ("gsm8k-audio", 20.73, 36.20, _GSM8K_NOTE),
    ):
        register_anchor(Anchor(qa, bench, "audio_acc", "base", base, _CORD_PAPER, note=note))
        register_anchor(Anchor(qa, bench, "audio_acc", "cord", cord_, _CORD_PAPER, note=note))
    register_anchor(Anchor(qa, "average", "gap_reduction", "cord", 41.6, _CORD_PAPER,
                           note="average over MMSU, OBQA and GSM8K"))
    register_anchor(Anchor(qa, "average", "gap_reduction", "forward_kl", 28.5, _CORD_PAPER,
                           note="average over MMSU, OBQA and GSM8K"))
    for task, base, cord_, fkl_delta in (("music", 58.98, 60.18, -2.99), ("sound", 64.74, 64.44, -3.04),
                                         ("speech", 58.73, 55.42, None)):
        register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc", "base", base, _CORD_PAPER, group=task,
                               note="the CORD paper's own MMAU run (its MMAU version and prompt are not stated)"))
        register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc", "cord", cord_, _CORD_PAPER, group=task))
        if fkl_delta is not None:
            register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc", "forward_kl", round(base + fkl_delta, 2),
                                   _CORD_PAPER, group=task,
                                   note=f"the paper gives forward KL's change, {fkl_delta:+.2f} vs base"))
    for bench, value in (("voicebench-mmsu", 35.72), ("voicebench-openbookqa", 49.45)):
        register_anchor(Anchor(qa, bench, "audio_acc", "base", value, _VOICEBENCH, protocol="official",
                               note="VoiceBench scores a response with no letter as a random letter "
                                    "(cord: audio_acc_official = strict + fail/4)"))
    for task, value in (("sound", 54.95), ("music", 50.98), ("speech", 42.04)):
        register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc", "base", value, _MMAU_PAPER, group=task,
                               protocol="official", note="today's mmau-test-mini.json is a later revision"))
    register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc_task_mean", "base", 49.20, _MMAU_PAPER,
                           protocol="official", note="mean of sound, music and speech"))
    sa = _STEP_AUDIO2
    for bench, value, note in (("voicebench-mmsu", 57.63, _CORD_PROMPT_NOTE),
                               ("voicebench-openbookqa", 77.74, _CORD_PROMPT_NOTE),
                               ("gsm8k-audio", 47.56, _GSM8K_NOTE)):
        register_anchor(Anchor(sa, bench, "audio_acc", "cord", value, _CORD_PAPER, note=note))
    register_anchor(Anchor(sa, "average", "gap_reduction", "cord", 44.8, _CORD_PAPER,
                           note="average over MMSU, OBQA and GSM8K"))
    register_anchor(Anchor(sa, "average", "gap_reduction", "forward_kl", 10.5, _CORD_PAPER,
                           note="average over MMSU, OBQA and GSM8K"))


_register_builtin_anchors()
