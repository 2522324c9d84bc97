"""MMAU's official scoring rule, ``string_match``, as its evaluation script applies it.

Follows ``evaluation.py`` of github.com/Sakshi113/MMAU (``string_match``; unchanged since
commit 6097b91 of 2024-10-25, read at 110127f of 2026-02-09):

- a text's tokens are the set of ``\\b\\w+\\b`` words of the lower-cased text (Unicode
  word characters, so "it's" is {"it", "s"} and "rock-and-roll" is three words);
- a prediction with no token is wrong;
- the *wrong* tokens are, for every choice whose token set differs from the answer's,
  that choice's tokens that are not the answer's (words shared with the answer never
  count against a prediction; a choice with exactly the answer's tokens is ignored);
- a prediction is right when it holds every answer token and no wrong token.

The script reads each item's ``model_output`` (its README says ``model_prediction``) and
silently skips items without it; cord never skips silently (items without an answer are
an error or a counted skip, see ``cord.eval``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_WORD = re.compile(r"\b\w+\b")


def word_tokens(text: str | None) -> set[str]:
    """The set of lower-cased word tokens of ``text`` (the official tokeniser)."""
    return set(_WORD.findall((text or "").lower()))


def string_match(answer: str, prediction: str | None, choices: Sequence[str]) -> bool:
    """MMAU's rule: ``prediction`` holds every word of ``answer`` and no word that only a
    wrong choice has."""
    said = word_tokens(prediction)
    if not said:
        return False
    wanted = word_tokens(answer)
    against: set[str] = set()
    for choice in choices:
        toks = word_tokens(str(choice))
        if toks != wanted:
            against |= toks - wanted
    return wanted <= said and not (said & against)


def matched_choice(prediction: str | None, choices: Sequence[str]) -> str | None:
    """The first choice that ``prediction`` string-matches as if it were the answer (the
    option the official rule reads from it), or None: the prediction names no option
    unambiguously. Used as the extracted answer (None counts in the fail rate)."""
    for choice in choices:
        if string_match(str(choice), prediction, choices):
            return str(choice)
    return None


def judge_mmau_official(candidate: str, reference: str, ctx: Mapping[str, Any]):
    """Judge kind ``mmau-official``: ``string_match(reference, candidate, choices)``.

    ``reference`` is the answer's option text as in ``mmau-test-mini.json``; a reference
    that is not one of the choices (e.g. a text-conditioned response) is first read as the
    option it string-matches. ``choices`` is required."""
    from cord import CordError
    from cord.types import JudgeResult, missing_note

    choices = [str(c) for c in (ctx.get("choices") or [])]
    if not choices:
        raise CordError("judge kind 'mmau-official' needs the options: pass choices=[...]")
    ref = (reference or "").strip()
    r = ref if ref in choices else matched_choice(ref, choices)
    c = matched_choice(candidate, choices)
    ok = r is not None and string_match(r, candidate, choices)
    return JudgeResult(int(ok), c, r, "mmau-official", missing_note(c, r))


__all__ = ["judge_mmau_official", "matched_choice", "string_match", "word_tokens"]
