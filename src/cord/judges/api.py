"""One reward API over every judge: ``judge(candidate, reference, kind, **ctx)``.

``reference`` may be a raw answer (``"72"``, ``"B"``, an option text) or a full response —
CORD's sequence-level reward compares the audio rollout with the text-conditioned greedy
rollout — and goes through the same extraction as the candidate. Kinds:

=========  ==================================================================  ============
kind       what agrees                                                         ctx
=========  ==================================================================  ============
``math``   final answers (boxed / #### / "answer is" / last number) equal     —
           through a fast numeric path, then math_verify
``mcq``    the chosen option letters (VoiceBench-style extraction, no random   ``choices``,
           fallback)                                                           ``letters``
``mmau``   the option each final answer names (text or letter)                ``choices``
                                                                               (required),
                                                                               ``lettered``
``exact``  normalised final-answer strings                                    —
``llm``    an OpenAI-compatible model says YES                                ``client``
                                                                               (LLMJudge),
                                                                               ``question``
``self``   the policy model says YES                                          ``self_judge``
                                                                               (SelfJudge) or
                                                                               ``generate_text``,
                                                                               ``question``
=========  ==================================================================  ============

Registered kinds (:func:`register_judge`; built in: ``voicebench`` — VoiceBench's official
letter extraction, no match = no answer, see :mod:`cord.judges.voicebench`; and
``mmau-official`` — MMAU's ``string_match``, ``choices`` required, see
:mod:`cord.judges.mmau_official`). :func:`judge_kinds` (or ``JUDGE_KINDS``, read on access) lists every kind.

Score is 1 or 0. No answer found in the candidate (or reference) scores 0 and leaves
``candidate_answer`` (``reference_answer``) None, so callers can report a fail rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cord import CordError
from cord.judges.choice import extract_choice, letters_for, match_choice
from cord.judges.extract import extract_final_span, extract_math_answer, normalize_text
from cord.judges.llm import LLMJudge, SelfJudge, Verdict
from cord.judges.math import math_equal
from cord.types import JudgeResult, missing_note

_CORE_KINDS = ("math", "mcq", "mmau", "exact", "llm", "self")
_CTX_KEYS = {"choices", "letters", "lettered", "question", "client", "self_judge", "generate_text"}
#: kind -> fn(candidate, reference, ctx) -> JudgeResult (see register_judge)
_REGISTERED: dict[str, Callable[[str, str, Mapping[str, Any]], "JudgeResult"]] = {}


def register_judge(kind: str, fn: Callable[[str, str, Mapping[str, Any]], JudgeResult]) -> None:
    """Add a judge kind: ``fn(candidate, reference, ctx)`` returns a :class:`JudgeResult`
    (``ctx`` holds the known options, e.g. ``choices``). Later registrations of a kind win;
    the core kinds cannot be replaced."""
    if kind in _CORE_KINDS:
        raise CordError(f"judge kind {kind!r} is built in and cannot be replaced")
    _REGISTERED[kind] = fn


def judge_kinds() -> tuple[str, ...]:
    """Every judge kind, core and registered, as of now."""
    return _CORE_KINDS + tuple(_REGISTERED)


def _check(kind: str, ctx: Mapping[str, Any]) -> None:
    if kind not in judge_kinds():
        raise CordError(f"unknown judge kind {kind!r}; use one of {', '.join(judge_kinds())}")
    unknown = set(ctx) - _CTX_KEYS
    if unknown:
        raise CordError(f"unknown judge option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_CTX_KEYS))}")


def _plain_answer(text: str) -> str | None:
    span = extract_final_span(text)
    s = span if span is not None else text.strip()
    return s or None


def _judge_local(candidate: str, reference: str, kind: str, ctx: Mapping[str, Any]) -> JudgeResult:
    candidate = candidate or ""
    reference = reference or ""
    if kind in _REGISTERED:
        return _REGISTERED[kind](candidate, reference, ctx)
    if kind == "math":
        c, r = extract_math_answer(candidate), extract_math_answer(reference)
        ok = c is not None and r is not None and math_equal(c, r)
        return JudgeResult(int(ok), c, r, kind, missing_note(c, r))
    if kind == "mcq":
        choices = ctx.get("choices")
        letters = letters_for(choices, ctx.get("letters"))
        c = extract_choice(candidate, choices, letters)
        r = extract_choice(reference, choices, letters)
        ok = c is not None and r is not None and c == r
        return JudgeResult(int(ok), c, r, kind, missing_note(c, r))
    if kind == "mmau":
        choices = ctx.get("choices")
        if not choices:
            raise CordError("judge kind 'mmau' needs the options: pass choices=[...]")
        lettered = bool(ctx.get("lettered", True))
        ci = match_choice(candidate, choices, lettered)
        ri = match_choice(reference, choices, lettered)
        c = str(choices[ci]) if ci is not None else None
        r = str(choices[ri]) if ri is not None else None
        ok = ci is not None and ri is not None and ci == ri
        return JudgeResult(int(ok), c, r, kind, missing_note(c, r))
    if kind == "exact":
        c, r = _plain_answer(candidate), _plain_answer(reference)
        ok = c is not None and r is not None and normalize_text(c) == normalize_text(r)
        return JudgeResult(int(ok), c, r, kind, missing_note(c, r))
    raise AssertionError(kind)


def _model_judge(kind: str, ctx: Mapping[str, Any]) -> LLMJudge | SelfJudge:
    if kind == "llm":
        client = ctx.get("client")
        if not isinstance(client, LLMJudge):
            raise CordError("judge kind 'llm' needs client=LLMJudge(base_url, model, ...)")
        return client
    sj = ctx.get("self_judge")
    if sj is None and ctx.get("generate_text") is not None:
        sj = SelfJudge(ctx["generate_text"])
    if not isinstance(sj, SelfJudge):
        raise CordError("judge kind 'self' needs self_judge=SelfJudge(...) or generate_text=callable")
    return sj


def _from_verdict(v: Verdict, candidate: str, reference: str, kind: str) -> JudgeResult:
    note = "" if v.agree is not None else f"no YES/NO verdict in judge reply {v.reply.strip()[:60]!r}"
    return JudgeResult(int(v.agree is True), _plain_answer(candidate), _plain_answer(reference), kind, note)


def judge(candidate: str, reference: str, kind: str, **ctx: Any) -> JudgeResult:
    """Score one candidate against one reference (raw answer or full response)."""
    _check(kind, ctx)
    if kind in ("llm", "self"):
        v = _model_judge(kind, ctx).agree(str(ctx.get("question") or ""), candidate or "", reference or "")
        return _from_verdict(v, candidate or "", reference or "", kind)
    return _judge_local(candidate, reference, kind, ctx)


def judge_batch(
    candidates: Sequence[str],
    references: Sequence[str],
    kind: str,
    *,
    contexts: Sequence[Mapping[str, Any]] | None = None,
    **ctx: Any,
) -> list[JudgeResult]:
    """Score many pairs. ``ctx`` applies to all; ``contexts[i]`` (optional) adds or
    overrides options for pair i (e.g. each MMAU item's choices). ``llm`` pairs go out
    concurrently through the client; ``self`` pairs go to ``generate_text`` in one call."""
    if len(candidates) != len(references):
        raise CordError(f"judge_batch got {len(candidates)} candidates but {len(references)} references")
    if contexts is not None and len(contexts) != len(candidates):
        raise CordError(f"judge_batch got {len(contexts)} contexts for {len(candidates)} candidates")
    per = [dict(ctx, **(contexts[i] if contexts is not None else {})) for i in range(len(candidates))]
    _check(kind, ctx)
    for p in per:
        _check(kind, p)
    if kind in ("llm", "self"):
        if not candidates:
            return []
        model = _model_judge(kind, per[0])
        verdicts = model.agree_batch(
            [str(p.get("question") or "") for p in per], [c or "" for c in candidates], [r or "" for r in references]
        )
        return [_from_verdict(v, c or "", r or "", kind) for v, c, r in zip(verdicts, candidates, references)]
    return [_judge_local(c, r, kind, p) for c, r, p in zip(candidates, references, per)]


def _register_builtin() -> None:
    from cord.judges.mmau_official import judge_mmau_official
    from cord.judges.voicebench import judge_voicebench

    register_judge("voicebench", judge_voicebench)
    register_judge("mmau-official", judge_mmau_official)


_register_builtin()


def __getattr__(name: str):
    if name == "JUDGE_KINDS":  # computed on access, so no imported copy goes stale
        return judge_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["JUDGE_KINDS", "JudgeResult", "judge", "judge_batch", "judge_kinds", "register_judge"]
