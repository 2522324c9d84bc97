"""The named benchmarks: the registry, their official protocols, loading by name or folder."""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

from cord import CordError
from cord.data.paired import MANIFEST, PairedExample
from cord.eval.benchmarks.hub import load_gsm8k_audio, load_mmau, load_voicebench
from cord.eval.benchmarks.local import load_local_benchmark
from cord.eval.benchmarks.spec import (
    CORD_PROTOCOL,
    PROTOCOLS,
    Benchmark,
    BenchmarkSpec,
    EvalProtocol,
)


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
    :data:`benchmark_names()`). ``limit``: at most this many items. ``data_dir``: the local
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
    close = difflib.get_close_matches(name, benchmark_names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise CordError(
        f"unknown benchmark {name!r}{hint}: not a folder with {MANIFEST} and not one of {', '.join(benchmark_names())}"
    )


# --- the registry -----------------------------------------------------------------------------


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_benchmark(spec: BenchmarkSpec) -> None:
    """Add (or replace) a named benchmark; every spec supports the ``cord`` protocol."""
    if "cord" not in spec.protocols:
        spec = replace(spec, protocols={"cord": CORD_PROTOCOL, **spec.protocols})
    unknown = set(spec.protocols) - set(PROTOCOLS)
    if unknown:
        raise CordError(f"benchmark {spec.name!r}: unknown protocol(s) {', '.join(sorted(unknown))}")
    BENCHMARKS[spec.name] = spec


def benchmark_names() -> tuple[str, ...]:
    """The registered benchmarks' names, as of now (``benchmark_names()`` reads this)."""
    return tuple(BENCHMARKS)


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


_register_builtin()
