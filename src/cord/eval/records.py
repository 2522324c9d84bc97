"""What evaluation keeps on disk, and how it is read back and written.

* Per-item records: ``OUT/<benchmark>/<modality>.jsonl``, one JSON object per line, appended
  a batch at a time and flushed (:func:`append_records`); :func:`read_records` reads them
  back by id and drops the torn last line a killed run leaves. ``cord eval``'s records are
  described in :mod:`cord.eval.score`, ``cord analyze``'s in :mod:`cord.eval.analyze`.
* Run records: ``OUT/<command>-run.json``, what produced a folder's results (the run's
  fingerprint); :func:`check_fingerprint` refuses to resume into a folder another run
  wrote, :func:`model_stamp` tells a retrained local model from the one before.
* Atomic JSON and text files (:func:`write_atomic`, :func:`dump_json`): written to a temp
  file, then renamed over the old one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cord import CordError

# --- per-item records ----------------------------------------------------------------------

def read_records(path: str | Path, repair: bool = False) -> dict[str, dict[str, Any]]:
    """Records of one ``<modality>.jsonl`` by id (a later record of an id wins).

    A last line without its newline or that does not parse is what a killed run leaves
    behind: it is dropped (and, with ``repair``, cut from the file so appending continues
    on a clean line). A malformed line elsewhere is an error.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    # data ends with "\n" → last element is b"" (complete); otherwise the tail is partial
    complete, tail = lines[:-1], lines[-1]
    records: dict[str, dict[str, Any]] = {}
    good_bytes = 0
    for lineno, raw in enumerate(complete, 1):
        try:
            rec = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            if lineno == len(complete) and not tail.strip():
                break  # a torn final line that happens to end in a newline
            raise CordError(f"{path}:{lineno}: malformed record; remove that line (or the file) and rerun") from None
        if rec is not None:
            if not isinstance(rec, dict) or "id" not in rec:
                raise CordError(f"{path}:{lineno}: a record must be a JSON object with an 'id'")
            records[str(rec["id"])] = rec
        good_bytes += len(raw) + 1
    if tail.strip():
        try:  # a complete record that only lacks its newline is kept
            rec = json.loads(tail)
            if isinstance(rec, dict) and "id" in rec:
                records[str(rec["id"])] = rec
                good_bytes += len(tail)
        except json.JSONDecodeError:
            pass
    needs_newline = good_bytes > 0 and not data[:good_bytes].endswith(b"\n")
    if repair and (good_bytes != len(data) or needs_newline):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
            if needs_newline:
                f.seek(good_bytes)
                f.write(b"\n")
    return records


def append_records(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append ``records`` to ``path`` as JSON lines, flushed and synced to disk (a killed run
    loses at most the batch it was writing; :func:`read_records` drops its torn line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


# --- files written whole ---------------------------------------------------------------------

def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf → None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file next to ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_json(data: Any) -> str:
    return json.dumps(_clean(data), indent=2, ensure_ascii=False) + "\n"


def model_stamp(name_or_path: str) -> str | None:
    """Size and mtime of a local model folder's files (a model retrained into the same
    folder is another model); None for a hub name."""
    import hashlib

    p = Path(name_or_path)
    if not p.is_dir():
        return None
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


#: the record of what produced a folder's results, one per command: ``cord eval`` and
#: ``cord analyze`` may share an --out (their other files do not overlap), so neither may
#: overwrite the other's record (both wrote ``run.json`` before: the other command's rerun
#: was refused for a setting it never had)
RUN_RECORDS = {"eval": "eval-run.json", "analyze": "analyze-run.json"}
LEGACY_RUN_JSON = "run.json"


def _legacy_owner(data: Any) -> str | None:
    """Which command wrote an old ``run.json``: eval's lists its benchmarks, analyze's
    fingerprint has a sampling temperature."""
    if not isinstance(data, dict):
        return None
    if "benchmarks" in data:
        return "eval"
    if isinstance(data.get("fingerprint"), dict) and "temperature" in data["fingerprint"]:
        return "analyze"
    return None


def read_run_record(out: Path, command: str) -> dict[str, Any] | None:
    """``command``'s record in ``out`` (its ``<command>-run.json``; from a folder written
    before the records were split, ``run.json`` when ``command`` wrote it), or None when
    there is none or it is unreadable (no evidence either way)."""
    for name in (RUN_RECORDS[command], LEGACY_RUN_JSON):
        path = out / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        if name == LEGACY_RUN_JSON and _legacy_owner(data) != command:
            return None  # the other command's: not evidence about this one
        return data if isinstance(data, dict) else None
    return None


def write_run_record(out: Path, command: str, data: Mapping[str, Any]) -> None:
    """Write ``command``'s record; a legacy ``run.json`` it wrote is replaced by it."""
    write_atomic(out / RUN_RECORDS[command], dump_json(dict(data)))
    legacy = out / LEGACY_RUN_JSON
    if legacy.is_file():
        try:
            owner = _legacy_owner(json.loads(legacy.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            owner = None
        if owner == command:
            legacy.unlink(missing_ok=True)


def check_fingerprint(out: Path, fingerprint: Mapping[str, Any], *, resumable: bool, holds: str,
                      command: str = "eval") -> None:
    """Refuse to resume into ``out`` when an earlier run of ``command`` left resumable files
    there (``resumable``) and its record's fingerprint differs from ``fingerprint`` in a key
    both have: one line naming the key, its old and new value (``holds``: what ``out`` holds,
    e.g. "answers"). An unreadable record is no evidence either way; the other command's
    record is never read."""
    if not resumable:
        return
    record = read_run_record(out, command)
    old = record.get("fingerprint") if record else None
    if not isinstance(old, dict):
        return
    for k, v in fingerprint.items():
        if k in old and old[k] != v:
            raise CordError(
                f"{out} holds {holds} ({k}: {old[k]!r}, now {v!r}); use another --out, "
                f"or rerun with {k} as before to resume them"
            )
