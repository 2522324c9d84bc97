"""What a benchmark is: its items, default judge and protocols (:class:`Benchmark`, :class:`BenchmarkSpec`, :class:`EvalProtocol`), and asking it under a protocol."""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cord import CordError
from cord.data.paired import PairedExample
from cord.judges import JudgeResult, judge

LOCAL_JUDGES = ("math", "mcq", "mmau", "exact")
MMSU_DOMAINS = (
    "biology", "business", "chemistry", "economics", "engineering", "health",
    "history", "law", "other", "philosophy", "physics", "psychology",
)  # fmt: skip
VOICEBENCH_REPO = "hlt-lab/voicebench"
GSM8K_AUDIO_REPO = "pphuc25/GSM8K_audio"
GSM8K_TEXT_REPO = "openai/gsm8k"
MMAU_JSON = "mmau-test-mini.json"
LETTER_PATTERN = re.compile(r"^\s*\(?([A-Ja-j])\)?\s*\.?\s*$")
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
