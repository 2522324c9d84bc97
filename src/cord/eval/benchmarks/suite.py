"""The load step of ``cord eval``: the benchmarks ``eval.benchmarks`` names, checked before any
model loads, then opened one at a time under the run's protocol, with each item's fingerprint.

:func:`load_suite` resolves the names (``builtin:NAME``, a local MMAU copy given by path) and
fails fast on one that cannot be loaded or lacks the protocol (:func:`check_benchmark`);
:meth:`Suite.benchmarks` then loads one benchmark at a time (only its audio is in memory) and
gives it with :func:`item_digest` of every item per modality, which each answer record keeps
so that a resumed run asks again an item whose content changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cord import CordError
from cord.data.paired import MANIFEST, PairedExample
from cord.eval.benchmarks.registry import BENCHMARKS, benchmark_names, load_benchmark
from cord.eval.benchmarks.spec import MMAU_JSON, PROTOCOLS, Benchmark, with_protocol
from cord.eval.report import AVERAGE


def _mmau_location(name: str) -> Path | None:
    """A local MMAU copy given as its JSON file or a folder holding it (and no manifest)."""
    p = Path(name)
    if p.is_file() and p.name.endswith(".json"):
        return p
    if p.is_dir() and not (p / MANIFEST).is_file() and (p / MMAU_JSON).is_file():
        return p
    return None


def check_benchmark(name: str, protocol: str = "cord") -> None:
    """Fail fast (before any model loads) on a benchmark that cannot be loaded, or that does
    not support ``protocol``."""
    if protocol not in PROTOCOLS:
        raise CordError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    spec = BENCHMARKS.get(name) or (BENCHMARKS.get("mmau-test-mini") if _mmau_location(name) is not None else None)
    if spec is None and protocol != "cord":
        raise CordError(f"benchmark {name!r} is a local folder: it has no {protocol!r} protocol; run it with --protocol cord")
    if spec is not None and protocol not in spec.protocols:
        raise CordError(f"benchmark {name!r} has no {protocol!r} protocol (it supports {', '.join(spec.protocols)})")
    if name in benchmark_names():
        if name != "mmau-test-mini" and importlib.util.find_spec("datasets") is None:
            raise CordError(f"benchmark {name!r} loads from the Hugging Face hub and needs `datasets`: pip install -e \".[hub]\" (from the cord clone)")
        if name == "mmau-test-mini":
            raise CordError(
                "mmau-test-mini has no hub copy: download mmau-test-mini.json and test-mini-audios.tar.gz "
                "(github.com/Sakshi113/MMAU), extract the tarball next to the JSON and pass that folder "
                "(or the JSON file) in --benchmarks"
            )
        return
    if _mmau_location(name) is not None:
        return
    path = Path(name)
    if not path.exists() and (os.sep in name or name.startswith(".")):
        raise CordError(f"benchmark folder not found: {path} (a local benchmark is a folder with {MANIFEST} + audio)")
    load_benchmark(name, with_audio=False)  # validates the manifest; unknown names get a hint


def resolve_builtin(name: str) -> str:
    """``builtin:NAME`` (a built-in spoken dataset, :mod:`cord.data.builtin`) as its folder in
    cord's cache, made on first use; any other name as it is."""
    if not name.startswith("builtin:"):
        return name
    from cord.data.builtin import ensure_builtin

    return str(ensure_builtin(name.split(":", 1)[1]))


def open_benchmark(name: str, limit: int | None = None, with_audio: bool = True) -> Benchmark:
    """:func:`load_benchmark`, plus a local MMAU copy given by path."""
    mmau = _mmau_location(name)
    if mmau is not None:
        return load_benchmark("mmau-test-mini", limit, data_dir=mmau, with_audio=with_audio)
    return load_benchmark(name, limit, with_audio=with_audio)


def item_digest(it: PairedExample, modality: str) -> str:
    """What an item's ``modality`` answer depends on besides the run's settings (which
    :func:`cord.eval.answer.run_fingerprint` covers): its question, reference answer and
    options, and for audio its clip (a file's size, an in-memory clip's samples). Stored in
    each record as ``item``; a record whose item changed is not reused."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([it.question_text, it.answer, it.meta.get("choices"), bool(it.meta.get("text_with_audio"))],
                        ensure_ascii=False, default=str).encode())
    if modality == "audio":
        if it.audio_path is not None:
            with contextlib.suppress(OSError):
                h.update(b"file:%d" % Path(it.audio_path).stat().st_size)
        elif it.has_audio:
            h.update(np.ascontiguousarray(it.audio, dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass
class Suite:
    """What one ``cord eval`` asks: the benchmarks (resolved and checked names), the
    modalities, the protocol and the per-benchmark item limit. ``out``: the results folder
    (a benchmark's answers go to ``out/<benchmark name>``). ``ids``: per benchmark opened so
    far, by its name, the ids of its items (what the report counts)."""

    names: list[str]
    modalities: list[str]
    protocol: str = "cord"
    limit: int | None = None
    out: Path = Path(".")
    ids: dict[str, list[str]] = field(default_factory=dict)

    def open(self, name: str) -> tuple[Benchmark, dict[str, dict[str, str]]]:
        """Benchmark ``name`` under the suite's protocol (audio loaded only when a modality
        needs it) and ``{modality: {item id: item_digest}}``. Its name must be free: not the
        report's reserved ``average``, not hidden, not the name of one opened before."""
        bench = with_protocol(open_benchmark(name, self.limit, with_audio="audio" in self.modalities), self.protocol)
        key = bench.name
        if key == AVERAGE or key.startswith("."):
            raise CordError(f"benchmark name {key!r} is reserved; rename the folder")
        if key in self.ids:
            raise CordError(f"two benchmarks are both named {key!r} (results would share {self.out / key}); rename one folder")
        self.ids[key] = [it.id for it in bench.items]
        return bench, {mod: {it.id: item_digest(it, mod) for it in bench.items} for mod in self.modalities}

    def benchmarks(self) -> Iterator[tuple[Benchmark, dict[str, dict[str, str]]]]:
        """:meth:`open` of each name in turn, lazily: a benchmark is loaded when the one before
        has been taken (hold no reference to it then, and only one is in memory)."""
        for name in self.names:
            yield self.open(name)


def load_suite(ev) -> Suite:
    """The suite ``ev`` (``cfg.eval``) asks for, every benchmark checked (nothing loaded yet)."""
    names = [resolve_builtin(str(b).strip()) for b in ev.benchmarks if str(b).strip()]
    if not names:
        raise CordError("no benchmarks given: pass --benchmarks NAME_OR_DIR[,...]")
    modalities = list(dict.fromkeys(ev.modalities))
    if not modalities:
        raise CordError("no modalities given: pass --modalities audio,text")
    for name in names:
        check_benchmark(name, ev.protocol)
    return Suite(names, modalities, ev.protocol, ev.limit, Path(ev.out))
