"""Benchmarks: the items to evaluate (questions as speech and as text) and the judge that
scores them.

A :class:`Benchmark` is a name, a default judge kind and a list of
:class:`cord.data.paired.PairedExample` items (``question_text`` = the text prompt,
``audio`` = 16 kHz mono float32, ``answer`` = the reference; ``meta`` holds ``judge``,
``choices``, ``category`` and ``benchmark``). :meth:`Benchmark.score` judges one response.

``cord eval`` loads its benchmarks through :func:`load_suite` (suite.py): the names checked
before any model loads (:func:`check_benchmark`), each benchmark then opened in turn
(:meth:`Suite.open`) with every item's fingerprint (:func:`item_digest`).

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
one takes a loader (hub.py, or a module of its own) and a registration (registry.py). A
protocol (:class:`EvalProtocol`) says how the benchmark is
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

from cord.eval.benchmarks.anchors import ANCHORS, Anchor, anchor_model, anchors_for, register_anchor
from cord.eval.benchmarks.hub import (
    format_mmau_question,
    gsm8k_audio_items,
    gsm8k_final_answer,
    hub_audio_to_16k,
    load_gsm8k_audio,
    load_mmau,
    load_voicebench,
    mmau_item,
    voicebench_item,
)
from cord.eval.benchmarks.local import load_local_benchmark
from cord.eval.benchmarks.registry import (
    BENCHMARKS,
    benchmark_names,
    format_mmau_official_question,
    load_benchmark,
    register_benchmark,
)
from cord.eval.benchmarks.spec import (
    CORD_PROTOCOL,
    GSM8K_AUDIO_REPO,
    GSM8K_TEXT_REPO,
    LOCAL_JUDGES,
    MMAU_JSON,
    MMSU_DOMAINS,
    PROTOCOLS,
    VOICEBENCH_REPO,
    Benchmark,
    BenchmarkSpec,
    EvalProtocol,
    with_protocol,
)
from cord.eval.benchmarks.suite import Suite, check_benchmark, item_digest, load_suite, open_benchmark, resolve_builtin

__all__ = [
    "ANCHORS", "BENCHMARKS", "CORD_PROTOCOL", "GSM8K_AUDIO_REPO", "GSM8K_TEXT_REPO", "LOCAL_JUDGES", "MMAU_JSON",
    "MMSU_DOMAINS", "PROTOCOLS", "VOICEBENCH_REPO", "Anchor", "Benchmark", "BenchmarkSpec", "EvalProtocol", "Suite",
    "anchor_model", "anchors_for", "benchmark_names", "check_benchmark", "format_mmau_official_question",
    "format_mmau_question", "gsm8k_audio_items", "gsm8k_final_answer", "hub_audio_to_16k", "item_digest",
    "load_benchmark", "load_gsm8k_audio", "load_local_benchmark", "load_mmau", "load_suite", "load_voicebench",
    "mmau_item", "open_benchmark", "register_anchor", "register_benchmark", "resolve_builtin", "voicebench_item",
    "with_protocol",
]


def __getattr__(name: str):
    if name == "HUB_BENCHMARKS":  # the registered names as of now (no stale copy)
        return benchmark_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
