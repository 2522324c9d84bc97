"""Pre-flight checks: find every data problem before any model loads, in one summary.

:func:`check_examples` reads each clip's *header* (``soundfile.info``: frames, sample rate,
channels; no decoding, about a millisecond a file), so a whole 80k-clip manifest is checked
in a minute instead of failing hours in at the step whose batch holds the bad clip. It
reports, with counts and the first few ids:

* errors (one :class:`cord.CordError` line naming all of them): audio files that are
  missing, unreadable, or empty (0 samples), examples without audio, and clips longer than
  ``model.max_audio_seconds`` when ``model.long_audio`` is ``error``;
* notes (printed, not fatal): how many clips ``skip`` will leave out and ``truncate`` will
  cut.

``cord train`` runs it after loading the manifest, ``cord analyze`` on its dataset and
``cord eval`` on each local benchmark folder. :func:`check_out_dir` is the matching check
for an output folder.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cord import CordError
from cord.data.audio import SAMPLE_RATE, audio_header

#: how many ids each summary names
SHOW = 5


@dataclass
class DataReport:
    """What :func:`scan_examples` found; ids per problem, in manifest order."""

    source: str
    n: int
    max_seconds: float
    policy: str
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    empty: list[str] = field(default_factory=list)
    no_audio: list[str] = field(default_factory=list)
    too_long: list[tuple[str, float]] = field(default_factory=list)  # (id, seconds)
    sample_rates: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        """Examples that would stop a run (the long ones only under ``error``)."""
        return (len(self.missing) + len(self.unreadable) + len(self.empty) + len(self.no_audio)
                + (len(self.too_long) if self.policy == "error" else 0))

    def problems(self) -> list[str]:
        """One phrase per kind of fatal problem."""
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} audio file(s) missing ({_ids(self.missing)})")
        if self.unreadable:
            first = self.unreadable[0]
            out.append(f"{len(self.unreadable)} unreadable ({_ids([i for i, _ in self.unreadable])}; "
                       f"{first[0]}: {first[1]})")
        if self.empty:
            out.append(f"{len(self.empty)} empty, 0 samples ({_ids(self.empty)})")
        if self.no_audio:
            out.append(f"{len(self.no_audio)} without audio ({_ids(self.no_audio)})")
        if self.too_long and self.policy == "error":
            out.append(f"{len(self.too_long)} longer than the {self.max_seconds:g} s window under "
                       f"model.long_audio=error ({_long(self.too_long)})")
        return out

    def notes(self) -> list[str]:
        """Non-fatal: what the long-audio policy will do."""
        if not self.too_long or self.policy == "error":
            return []
        what = "skipped" if self.policy == "skip" else f"cut to {self.max_seconds:g} s"
        return [f"{self.where}: {len(self.too_long)} of {self.n} clip(s) are longer than the "
                f"{self.max_seconds:g} s window and will be {what} (model.long_audio={self.policy}): "
                f"{_long(self.too_long)}"]

    @property
    def where(self) -> str:
        return f"data check of {self.source}" if self.source else "data check"

    def summary(self) -> str:
        """The one-line error for :meth:`problems` (empty when there are none)."""
        probs = self.problems()
        if not probs:
            return ""
        hint = "fix or remove those manifest rows"
        if self.too_long and self.policy == "error":
            hint += ", or set model.long_audio to skip or truncate"
        return f"{self.where} ({self.n} examples): " + "; ".join(probs) + f". Stopped before loading the model; {hint}."


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(map(str, ids[:SHOW]))
    return shown + (f", … {len(ids) - SHOW} more" if len(ids) > SHOW else "")


def _long(items: Sequence[tuple[str, float]]) -> str:
    longest = max(s for _, s in items)
    return _ids([f"{i} {s:.1f} s" for i, s in items]) + f"; longest {longest:.1f} s"


def scan_examples(examples: Sequence, max_seconds: float, policy: str, source: str = "") -> DataReport:
    """Check every example's audio cheaply: from the file header for lazy examples
    (``audio_path``), from the array for in-memory ones. Returns the :class:`DataReport`."""
    rep = DataReport(str(source), len(examples), float(max_seconds), str(policy))
    limit = int(math.floor(max_seconds * SAMPLE_RATE))  # as apply_length_policy counts
    for ex in examples:
        path = getattr(ex, "audio_path", None)
        if path is not None:
            try:
                head = audio_header(path)
            except CordError as e:
                if Path(path).is_dir():  # not "missing": it is there, and it is a folder
                    rep.unreadable.append((ex.id, f"{Path(path).name} is a folder, not an audio file"))
                elif not Path(path).is_file():
                    rep.missing.append(ex.id)
                else:
                    msg, prefix = str(e), f"cannot read audio {Path(path)}: "
                    msg = msg[len(prefix):] if msg.startswith(prefix) else msg
                    msg = re.sub(r"^Error opening .*?: ", "", msg)  # libsndfile repeats the path
                    rep.unreadable.append((ex.id, msg[:120]))
                continue
            if head.sample_rate <= 0 or head.channels <= 0:
                rep.unreadable.append((ex.id, f"header says {head.sample_rate} Hz, {head.channels} channel(s)"))
                continue
            samples = head.samples_16k
            rep.sample_rates[head.sample_rate] += 1
            rep.channels[head.channels] += 1
        else:
            audio = getattr(ex, "audio", None)
            if audio is None:
                rep.no_audio.append(ex.id)
                continue
            samples = int(len(audio))
            rep.sample_rates[SAMPLE_RATE] += 1
            rep.channels[1] += 1
        if samples == 0:
            rep.empty.append(ex.id)
            continue
        rep.seconds += samples / SAMPLE_RATE
        if samples > limit:
            rep.too_long.append((ex.id, samples / SAMPLE_RATE))
    return rep


def _stderr(msg: str) -> None:
    print(f"cord: {msg}", file=sys.stderr, flush=True)


def check_examples(
    examples: Sequence,
    model=None,
    *,
    max_seconds: float | None = None,
    policy: str | None = None,
    source: str = "",
    say: Callable[[str], None] | None = _stderr,
    quiet: bool = False,
) -> DataReport:
    """:func:`scan_examples`, then one :class:`CordError` line listing every fatal problem;
    the policy's notes go to ``say`` (stderr; nothing when ``quiet``).

    ``model``: a :class:`cord.config.ModelConfig` (or anything with ``max_audio_seconds`` and
    ``long_audio``); ``max_seconds`` / ``policy`` override it.
    """
    max_seconds = max_seconds if max_seconds is not None else getattr(model, "max_audio_seconds", 30.0)
    policy = policy if policy is not None else getattr(model, "long_audio", "error")
    rep = scan_examples(examples, max_seconds, policy, source)
    if rep.bad:
        raise CordError(rep.summary())
    if say is not None and not quiet:
        for note in rep.notes():
            say(note)
    return rep


def check_dataset(directory: str | Path, model=None, *, limit: int | None = None, **kw) -> DataReport:
    """:func:`check_examples` on a paired-dataset folder (``manifest.jsonl`` + audio; its
    first ``limit`` rows)."""
    from cord.data.paired import load_paired

    kw.setdefault("source", str(directory))
    return check_examples(load_paired(directory, limit), model, **kw)


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """An output folder that can be created (or exists): one clear line when it or a folder
    above it is a file. Creates nothing."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            what = "exists and is not a directory" if p == path else f"is inside {p}, which is a file"
            raise CordError(f"{flag} {path}: {what}; give a new or an earlier output directory")
        if p.is_dir():
            break
    return path


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """:func:`check_out_dir`, then create the folder and a probe file in it (removed at once):
    one clear line for a folder that cannot be written (a read-only filesystem, no
    permission), found before any model loads rather than at the first result."""
    from cord.paths import make_writable_folder

    path = check_out_dir(path, flag)
    try:
        make_writable_folder(path)
    except OSError as e:
        raise CordError(f"{flag} {path}: cannot write there ({e.strerror or e}); give a folder you can write to") from None
    return path
