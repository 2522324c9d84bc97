"""``cord synth``: text questions → paired speech/text data.

Writes, under ``synth.out`` (DIR)::

    DIR/audio/<id>.wav     16 kHz mono PCM16, one per question
    DIR/manifest.jsonl     one JSON object per line (the record of what is finished)
    DIR/summary.json       counts of the last run
    DIR/dataset.json       the input the dataset is made from
    DIR/skipped.jsonl      items synthesised and then found too long (a rerun skips them at once)

Each manifest row: ``id, question`` (the original text: the text prompt), ``answer,
solution, source, audio`` (path relative to DIR), ``duration`` (seconds), ``tts``
(engine and version, e.g. ``espeak-ng 1.51`` or ``piper-tts 1.8.0``), ``voice`` (e.g.
``en-us+f3 s=160 p=50`` or ``en_US-joe-medium s=160 ls=1.0625``), ``seed`` (the seed its
voice was drawn with), ``spoken`` (the normalised text the TTS read). ``cord.data.paired.load_paired(DIR)`` reads it.

A dataset holds one input (``DIR/dataset.json`` records which): a run with another
``--input`` on a folder with finished items is refused (ids of two inputs collide). A rerun
after the input was edited redoes what changed (:func:`item_change`): an item whose question
changed is synthesised again (its row and audio replaced), one whose answer, solution or
source changed has its row updated; ``summary.json`` counts both.

Resumable: a rerun of the same command skips ids already in the manifest. Audio is written
to a temp name and renamed before its manifest line is appended, flushed and fsynced, so a
killed run loses at most the items in flight and never leaves a half-written file that
counts as finished; a truncated last manifest line is dropped on resume. The voice, speed
and pitch of an item (and its engine, in a mix) depend only on (seed, id), and espeak-ng
and Piper (its noise drawn from the item, see :class:`cord.data.tts.PiperTTS`) are deterministic, so the audio
bytes for a given id and seed are identical across runs, worker counts and resumes.

Cheap checks come before synthesis: a question whose spoken text could not fit in
``max_audio_seconds`` even at twice the drawn speaking rate is skipped as ``too_long``
without being synthesised (:func:`min_seconds`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from cord import CordError
from cord.data.audio import SAMPLE_RATE, to_16k_mono
from cord.data.normalize import normalize_for_speech
from cord.data.paired import MANIFEST
from cord.data.sources import load_rows
from cord.data.tts import TTS, TTSMix, make_tts
from cord.locking import folder_lock

__all__ = ["synthesize", "synth_main", "SKIP_REASONS", "recover_manifest", "min_seconds"]

SKIP_REASONS = ("missing_question", "empty_question", "unspeakable", "tts_failed", "too_long", "duplicate_id")
SUMMARY = "summary.json"
DATASET = "dataset.json"
#: manifest fields taken from the input row as they are (what is read aloud is the question)
_ROW_FIELDS = ("answer", "solution", "source")
SKIPPED = "skipped.jsonl"
_TMP_SUFFIX = ".partial"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,120}")


def audio_filename(item_id: str) -> str:
    """A file name for an id: the id itself when it is filesystem-safe, else a cleaned
    version plus a short hash (so distinct ids never collide)."""
    if _SAFE_ID.fullmatch(item_id) and not item_id.startswith("."):
        return f"{item_id}.wav"
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._")[:80] or "item"
    return f"{clean}-{hashlib.sha1(item_id.encode()).hexdigest()[:10]}.wav"


# --------------------------------------------------------------------------------------
# Manifest: recovery on resume and durable appends


def recover_manifest(out: Path) -> tuple[dict[str, dict], dict[str, Any]]:
    """Finished rows of an earlier run, by id, after repairing what a kill can leave:
    a last line without its newline (killed mid-write) is cut off, rows whose audio file
    is gone are dropped (and redone), and stale temp audio files are removed.
    A malformed line anywhere else is corruption: one clear error."""
    repairs = {"truncated_last_line": False, "missing_audio": 0, "temp_files_removed": 0}
    audio_dir = out / "audio"
    if audio_dir.is_dir():
        for tmp in audio_dir.glob(f"*{_TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            repairs["temp_files_removed"] += 1
    path = out / MANIFEST
    if not path.is_file():
        return {}, repairs
    data = path.read_bytes()
    good_end = len(data)
    if data and not data.endswith(b"\n"):
        good_end = data.rfind(b"\n") + 1  # 0 when the only line is partial
        repairs["truncated_last_line"] = True
    done: dict[str, dict] = {}
    keep_lines: list[bytes] = []
    for lineno, line in enumerate(data[:good_end].split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row_id, audio = str(row["id"]), row["audio"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise CordError(f"{path}:{lineno}: corrupt manifest line; remove it (its item will be redone) and rerun") from None
        if not (out / audio).is_file():
            repairs["missing_audio"] += 1
            continue
        done[row_id] = row
        keep_lines.append(line)
    if repairs["missing_audio"]:
        _atomic_write(path, b"".join(ln + b"\n" for ln in keep_lines))
    elif repairs["truncated_last_line"]:
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return done, repairs


def min_seconds(spoken: str, speed: int) -> float:
    """A lower bound on how long ``spoken`` takes to say at ``speed`` words per minute.

    Read speech runs at about speed / 10 characters a second (6 characters a word, spaces
    included: espeak-ng measures 0.065-0.095 s a character at 140-190 wpm); the bound
    assumes twice that rate, so an item is only pre-skipped when it certainly would be
    too long."""
    return len(spoken) / (2.0 * max(1, int(speed)) / 10.0)


def _load_skipped(out: Path) -> dict[str, dict]:
    """Items an earlier run synthesised and dropped as too long, by id (a cache: a
    malformed line, e.g. a partial last one after a kill, is ignored)."""
    path = out / SKIPPED
    known: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_bytes().split(b"\n"):
            try:
                row = json.loads(line)
                known[str(row["id"])] = row
            except (ValueError, KeyError, TypeError):
                continue
    return known


def _check_out(out: Path) -> None:
    """An output path that is a file (or lies under one) is one clear error."""
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            where = "" if p == out else f" (in --out {out})"
            raise CordError(f"--out: {p} is a file, not a folder{where}; give a folder for the dataset")


def _prepare_out(out: Path) -> None:
    """Create ``out/audio`` (see :func:`_check_out`)."""
    _check_out(out)
    try:
        (out / "audio").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CordError(f"cannot create the output folder {out / 'audio'}: {e.strerror or e}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to ``<path>.partial``, fsync, rename; a failed write (disk full) leaves no temp file."""
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _count_rows(path: Path) -> int:
    """Complete (newline-terminated, non-blank) lines of a JSON-lines file."""
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_bytes().split(b"\n")[:-1] if line.strip())


def _write_wav(path: Path, audio: np.ndarray) -> None:
    """16 kHz mono PCM16 via soundfile; encoded in memory, then written to a temp name,
    fsynced and renamed (:func:`_atomic_write`). In memory first: a write error inside
    libsndfile's file callbacks (a full disk) is printed by cffi as a traceback per callback
    and comes out as a generic error, where a plain write raises one OSError."""
    import io

    import soundfile as sf

    pcm = np.clip(np.round(audio.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    _atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------------------
# One item (runs in a worker thread; the work itself is in the TTS subprocess)


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = "", record: dict | None = None):
        super().__init__(detail)
        self.reason = reason
        self.record = record


def _make_item(row: dict, spoken: str, cfg, tts: TTS, choice, label: str, out: Path) -> dict:
    version = getattr(tts, "version", tts.name)
    try:
        samples, rate = tts.synthesize(spoken, choice.voice, choice.speed, choice.pitch)
        audio = to_16k_mono(samples, rate)
    except Exception as e:  # any backend failure is counted, never fatal for the run
        raise _Skip("tts_failed", f"{row['id']}: {type(e).__name__}: {e}") from None
    duration = audio.shape[0] / SAMPLE_RATE
    if duration > cfg.max_audio_seconds:
        raise _Skip("too_long", f"{row['id']}: {duration:.1f} s", record={
            "id": row["id"], "reason": "too_long", "duration": round(duration, 3), "tts": version,
            "voice": label, "seed": cfg.seed, "spoken": spoken})
    if audio.size == 0:
        raise _Skip("tts_failed", f"{row['id']}: empty audio")
    rel = f"audio/{audio_filename(row['id'])}"
    try:
        _write_wav(out / rel, audio)
    except OSError as e:  # disk full, permissions: fatal for the run, finished items are kept
        raise CordError(f"cannot write {out / rel}: {e.strerror or e}; free space (or fix permissions) and "
                        "rerun the same command (finished items are kept)") from None
    return {
        "id": row["id"],
        "question": row["question"],
        "answer": row.get("answer", ""),
        "solution": row.get("solution", ""),
        "source": row.get("source", ""),
        "audio": rel,
        "duration": round(duration, 3),
        "tts": version,
        "voice": label,
        "seed": cfg.seed,
        "spoken": spoken,
    }


# --------------------------------------------------------------------------------------
# The run


# --------------------------------------------------------------------------------------
# Edited inputs: one input per dataset, changed items redone


def input_identity(cfg) -> str:
    """What the dataset is made from: a local file's absolute path, or a hub dataset's name
    and split."""
    name = str(cfg.input).strip()
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return f"{name} (split {cfg.split})"


def _same_legacy_input(old: str, cfg) -> bool:
    """An older dataset recorded only the ``--input`` text of its last run (relative to a cwd
    no longer known): the same text, path or file name counts as the same input."""
    new = str(cfg.input).strip()
    if old == new or Path(old).name == Path(new).name:
        return True
    try:
        return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
    except OSError:
        return False


def _check_input(out: Path, cfg, done: dict[str, dict]) -> str:
    """Refuse (one line) to add another input's items to a dataset that holds finished items;
    record this run's input in ``DIR/dataset.json`` otherwise. Returns the input's identity.

    Why refuse rather than merge: ids are only unique within one input (``q-000003`` of two
    files are two questions), and a dataset whose ``summary.json`` names one input must hold
    that input's items only. A dataset of several inputs is made by concatenating the input
    files into one."""
    ident = input_identity(cfg)
    record = out / DATASET
    old = None
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8")).get("input_id")
        except (ValueError, AttributeError, OSError):
            old = None
        same = old == ident
    elif (out / SUMMARY).is_file():  # written before dataset.json existed
        try:
            legacy = json.loads((out / SUMMARY).read_text(encoding="utf-8")).get("input")
        except (ValueError, AttributeError, OSError):
            legacy = None
        old, same = legacy, legacy is None or _same_legacy_input(str(legacy), cfg)
    else:
        same = True  # nothing recorded (a first run killed before writing anything): no evidence
    if done and old is not None and not same:
        raise CordError(f"{out} holds {len(done)} item(s) made from {old}, not from this --input {ident}; a dataset "
                        "holds one input (ids of two inputs collide): use another --out, or one input file "
                        "that holds both")
    if old != ident or not record.is_file():
        _atomic_write(record, (json.dumps({"input": str(cfg.input), "input_id": ident}, indent=2,
                                          ensure_ascii=False) + "\n").encode())
    return ident


def item_change(prev: dict, row: dict) -> str:
    """How input ``row`` differs from its finished manifest row ``prev``: ``""`` (not at all),
    ``"text"`` (the question — what is read aloud and the text prompt — changed: the item is
    synthesised again, its old audio and row replaced) or ``"fields"`` (only answer, solution
    or source changed: the row is updated, the audio kept, since it reads the same text).

    A change of voice settings (seed, engine, speed or pitch ranges) is not a change of the
    item: its audio is still a right reading of the same text, so it is kept and named in a
    note (:func:`_resume_notes`); re-voicing a dataset is a new dataset (a new ``--out``)."""
    q = row.get("question")
    if q is None or str(q) != prev.get("question"):
        return "text"
    if any(str(row.get(k) or "") != str(prev.get(k) or "") for k in _ROW_FIELDS):
        return "fields"
    return ""


def _apply_changes(out: Path, done: dict[str, dict], stale: set[str], updates: dict[str, dict]) -> None:
    """Drop ``stale`` rows (their question changed) and update ``updates`` rows in one atomic
    rewrite of the manifest, then delete the stale rows' audio. Killed before the rewrite:
    nothing changed; after it: the stale items are simply not finished, and are redone."""
    if not stale and not updates:
        return
    for rid, fields in updates.items():
        done[rid] = {**done[rid], **fields}
    gone = [done.pop(rid) for rid in stale]
    _atomic_write(out / MANIFEST, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()).encode())
    for row in gone:
        (out / str(row["audio"])).unlink(missing_ok=True)


def synthesize(cfg, progress: bool = True, tts: TTS | None = None) -> dict[str, Any]:
    """Run ``cord synth`` for ``cfg`` (a :class:`cord.config.SynthConfig`) and return the
    summary (also written to ``DIR/summary.json``). ``tts`` overrides the backend named by
    ``cfg.tts`` (tests pass fakes; a :class:`cord.data.tts.TTSMix` for several engines). ``cfg.limit`` caps the input rows considered (after a
    dataset filter such as NuminaMath's), so a rerun with the same limit resumes the same
    set. Raises :class:`CordError` for bad input; KeyboardInterrupt propagates after the
    summary of the partial run is written."""
    t0 = time.perf_counter()
    source = load_rows(cfg)  # fails fast on a missing file / column / library
    out = Path(cfg.out).expanduser()
    _check_out(out)  # before loading a TTS engine
    backend = tts if tts is not None else make_tts(cfg)
    mix = backend if isinstance(backend, TTSMix) else TTSMix([(backend, 1.0)])
    _prepare_out(out)
    speed_range, pitch_range = tuple(cfg.speed_range), tuple(cfg.pitch_range)

    with folder_lock(out, "synth", "wait for it or use another --out", name=".synth.lock"):  # one writer
        done, repairs = recover_manifest(out)
        input_id = _check_input(out, cfg, done)
        known_long = _load_skipped(out)
        remembered = 0
        skipped: Counter[str] = Counter({r: 0 for r in SKIP_REASONS})
        unspeakable: Counter[str] = Counter()
        errors: list[str] = []
        seen: set[str] = set()
        already_done = 0
        stale: set[str] = set()  # finished, but what is read changed in the input: synthesised again
        updates: dict[str, dict] = {}  # finished, only answer / solution / source changed: row updated
        jobs: list[tuple[dict, str]] = []
        for row in source:
            rid = str(row["id"])
            row["id"] = rid
            if rid in seen:
                skipped["duplicate_id"] += 1
                continue
            seen.add(rid)
            if rid in done:
                change = item_change(done[rid], row)
                if not change:
                    already_done += 1
                    continue
                if change == "fields":
                    updates[rid] = {k: row.get(k, "") for k in _ROW_FIELDS}
                    already_done += 1
                    continue
                stale.add(rid)  # the question changed: this item is new
            q = row.get("question")
            if q is None:
                skipped["missing_question"] += 1
                continue
            if not str(q).strip():
                skipped["empty_question"] += 1
                continue
            spoken, reason = normalize_for_speech(q)
            if spoken is None:
                skipped["unspeakable"] += 1
                unspeakable[reason] += 1
                continue
            engine, choice, label = mix.draw(cfg.seed, rid, speed_range, pitch_range)
            if min_seconds(spoken, choice.speed) > cfg.max_audio_seconds:
                skipped["too_long"] += 1  # certainly too long: not worth synthesising
                continue
            prev = known_long.get(rid)
            if (prev and prev.get("voice") == label and prev.get("tts") == getattr(engine, "version", engine.name)
                    and prev.get("spoken", spoken) == spoken
                    and float(prev.get("duration", 0)) > cfg.max_audio_seconds):
                skipped["too_long"] += 1  # measured too long by an earlier run with the same voice
                remembered += 1
                continue
            jobs.append((row, spoken, engine, choice, label))

        _apply_changes(out, done, stale, updates)  # atomically, before any new audio is written
        notes = _resume_notes(done, cfg, mix)
        complete = cfg.limit is None or source.stats["kept"] < cfg.limit  # the whole input was read
        gone = [rid for rid in done if rid not in seen] if complete else []
        if gone:
            notes.append(f"{len(gone)} finished item(s) are no longer in the input ({', '.join(gone[:5])}"
                         f"{', …' if len(gone) > 5 else ''}); they are kept: remove their lines from "
                         f"{MANIFEST} (or use a new --out) if they should go")
        workers = cfg.workers if mix.thread_safe else 1
        import soundfile  # noqa: F401  (import once here, not in the first worker: keeps the rate honest)

        to_16k_mono(np.zeros(441, dtype=np.float32), 22_050)  # loads scipy.signal
        written, audio_seconds, interrupted = 0, 0.0, False
        by_tts: Counter[str] = Counter()
        t_work = time.perf_counter()
        bar = _progress_bar(len(jobs), progress)
        manifest = open(out / MANIFEST, "a", encoding="utf-8")
        skipped_log = None
        pending: set[Future] = set()
        pool = None
        finished_ok = False  # the summary's own write error is reported only when nothing else failed
        try:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cord-synth")
            queue = iter(jobs)
            window = max(4, 4 * workers)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < window:
                    job = next(queue, None)
                    if job is None:
                        exhausted = True
                        break
                    row, spoken, engine, choice, label = job
                    pending.add(pool.submit(_make_item, row, spoken, cfg, engine, choice, label, out))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    try:
                        row = fut.result()
                    except _Skip as s:
                        skipped[s.reason] += 1
                        if len(errors) < 5 and s.reason == "tts_failed":
                            errors.append(str(s))
                        if s.record is not None:  # remembered so that a rerun skips it at once
                            if skipped_log is None:
                                skipped_log = open(out / SKIPPED, "a", encoding="utf-8")
                            skipped_log.write(json.dumps(s.record, ensure_ascii=False) + "\n")
                            skipped_log.flush()
                    else:
                        try:
                            manifest.write(json.dumps(row, ensure_ascii=False) + "\n")
                            manifest.flush()
                            os.fsync(manifest.fileno())
                        except OSError as e:  # disk full: a torn last line is cut on resume
                            raise CordError(f"cannot append to {out / MANIFEST}: {e.strerror or e}; free space "
                                            "and rerun the same command (finished items are kept)") from None
                        written += 1
                        by_tts[row["tts"]] += 1
                        audio_seconds += row["duration"]
                    bar.update(1)
            finished_ok = True
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            # queued items never start; the ones in flight are lost (redone on resume)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            manifest.close()
            if skipped_log is not None:
                skipped_log.close()
            bar.close()
            work_seconds = time.perf_counter() - t_work
            in_manifest = _count_rows(out / MANIFEST)  # counted, not tallied: an interrupt between
            written = max(0, in_manifest - len(done))  # the append and the tally cannot skew it
            summary = {
                "input": str(cfg.input),
                "input_id": input_id,
                "out": str(out),
                "tts": mix.version,
                "seed": cfg.seed,
                "workers": workers,
                "written": written,
                "already_done": already_done,
                "total_in_manifest": in_manifest,
                "changed_in_input": {"resynthesised": len(stale), "fields_updated": len(updates)},
                "written_by_tts": dict(sorted(by_tts.items())),
                "skipped": dict(skipped),
                "too_long_remembered": remembered,
                "unspeakable_reasons": dict(sorted(unspeakable.items())),
                "tts_errors": errors,
                "yield": source.summary(),
                "audio_seconds": round(audio_seconds, 2),
                "seconds": round(time.perf_counter() - t0, 2),
                "synthesis_seconds": round(work_seconds, 2),
                "utterances_per_second": round(written / work_seconds, 3) if work_seconds > 0 else 0.0,
                "audio_seconds_per_second": round(audio_seconds / work_seconds, 3) if work_seconds > 0 else 0.0,
                "repaired": repairs,
                "notes": notes,
                "interrupted": interrupted,
            }
            try:
                _atomic_write(out / SUMMARY, (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode())
            except OSError as e:  # disk full: the manifest is the record; say so unless already failing
                if finished_ok:
                    raise CordError(f"cannot write {out / SUMMARY}: {e.strerror or e}; the dataset itself "
                                    f"({out / MANIFEST}) is complete") from None
    return summary


def _resume_notes(done: dict[str, dict], cfg, mix: TTSMix) -> list[str]:
    """Warn when finished items came from another seed or TTS: they are kept as they are.
    The seed is read from each manifest row (rows written before rows recorded it are
    checked by redrawing their voice with this run's seed)."""
    if not done:
        return []
    notes = []
    keep = "they are kept (use a new --out for a uniform set)"
    versions = mix.versions()
    other_tts = Counter(str(r.get("tts")) for r in done.values() if str(r.get("tts")) not in versions)
    if other_tts:
        notes.append(f"{sum(other_tts.values())} of {len(done)} finished items have audio from "
                     f"{', '.join(sorted(other_tts))}, not {mix.version}; {keep}")
    seeds = Counter(r["seed"] for r in done.values() if "seed" in r and r["seed"] != cfg.seed)
    if seeds:
        listed = ", ".join(f"{k} ({v} items)" for k, v in sorted(seeds.items(), key=lambda kv: str(kv[0])))
        notes.append(f"{sum(seeds.values())} of {len(done)} finished items were drawn with seed {listed}, "
                     f"this run uses {cfg.seed}; {keep}")
    ranges = tuple(cfg.speed_range), tuple(cfg.pitch_range)
    legacy = sum(1 for r in done.values() if "seed" not in r and str(r.get("tts")) in versions
                 and mix.draw(cfg.seed, str(r["id"]), *ranges)[2] != r.get("voice"))
    if legacy:
        notes.append(f"{legacy} of {len(done)} finished items have voices that seed {cfg.seed} would not draw "
                     f"(another seed or other voice settings); {keep}")
    return notes


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="utt", desc="cord synth", disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def describe(summary: dict[str, Any]) -> str:
    """The one-paragraph report ``cord synth`` prints."""
    hours = summary["audio_seconds"] / 3600
    parts = [f"cord synth: wrote {summary['written']} utterances ({hours:.2f} h of audio) to "
             f"{summary['out']} in {summary['seconds']:.1f} s "
             f"({summary['utterances_per_second']:.2f} utt/s, {summary['workers']} workers, {summary['tts']})"]
    if summary["already_done"]:
        parts.append(f"{summary['already_done']} were already done")
    changed = summary.get("changed_in_input") or {}
    if changed.get("resynthesised"):
        parts.append(f"{changed['resynthesised']} finished item(s) had another question in the input and were "
                     "synthesised again")
    if changed.get("fields_updated"):
        parts.append(f"{changed['fields_updated']} finished item(s) had another answer, solution or source in the "
                     "input: their manifest rows were updated (audio kept)")
    skipped = {k: v for k, v in summary["skipped"].items() if v}
    if skipped:
        detail = ", ".join(f"{k} {v}" for k, v in skipped.items())
        parts.append(f"skipped {sum(skipped.values())} ({detail})")
    if summary.get("unspeakable_reasons"):
        why = ", ".join(f"{k} {v}" for k, v in summary["unspeakable_reasons"].items())
        parts.append(f"unspeakable: {why}")
    if len(summary.get("written_by_tts") or {}) > 1:
        parts.append("by engine: " + ", ".join(f"{k} {v}" for k, v in summary["written_by_tts"].items()))
    y = summary["yield"]
    if y.get("dropped"):
        dropped = ", ".join(f"{k} {v}" for k, v in y["dropped"].items())
        parts.append(f"the {y['kind']} filter kept {y['kept']} of {y['read']} rows read (dropped: {dropped})")
    if summary["skipped"].get("tts_failed") and summary["tts_errors"]:
        parts.append(f"first TTS error: {summary['tts_errors'][0]}")
    parts.extend(f"note: {n}" for n in summary.get("notes", []))
    parts.append(f"{summary['total_in_manifest']} items in the manifest; details in {summary['out']}/{SUMMARY}")
    return "; ".join(parts) + "."


def synth_main(cfg, out_given: bool = True) -> int:
    """CLI entry for ``cord synth``: run, print the summary paragraph, return the exit code.

    0: the run completed (skipped items are normal and reported); 1: every item it tried
    failed in the TTS (a broken backend); 130: interrupted (rerun the same command to
    resume). :class:`CordError` (bad input, missing espeak-ng …) propagates to the CLI.
    The first line says where the dataset goes (``out_given=False``: the default --out)."""
    where = Path(cfg.out).expanduser().resolve()
    print(f"cord synth: writing to {where}" + ("" if out_given else
          " (the default --out, which cord train reads as data.train; pass --out DIR to choose)"), flush=True)
    try:
        summary = synthesize(cfg, progress=True)
    except KeyboardInterrupt:
        print(f"cord synth: interrupted; rerun the same command to resume (finished items are in {cfg.out}/{MANIFEST}).")
        return 130
    print(describe(summary))
    failed = summary["skipped"]["tts_failed"]
    tried = summary["written"] + failed + summary["skipped"]["too_long"]
    return 1 if failed and failed == tried else 0
