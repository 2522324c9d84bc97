"""Multiple-choice answers: letter extraction (VoiceBench style) and option matching (MMAU).

:func:`extract_choice` covers the forms VoiceBench's scorer accepts ("the answer is (B)",
"answer: B", "option B", "B)", "(B)", "**B**", ``\\boxed{B}``, a response that is just
"B", "B. text" at the start, "I would choose B", "B is correct"), plus matching the option
text when the choices are given — but it is deterministic: where VoiceBench falls back to a
random letter we return None, which the caller counts as wrong and reports as a fail rate.

Rules, in order; the first that finds a letter wins:

0. the whole response is a letter: "B", "(b)", "**C**", "D." (any case);
1. an explicit answer statement — "answer is / answer: / option is … X", "choose / select /
   pick / go with X", "X is (the) correct / right / best", ``\\boxed{X}`` — the LAST one wins
   (models revise: "at first A … but the answer is C");
2. a letter that opens the response: "B. Paris", "(C) ...", "Option D: ..." — skipped when
   the response is a list of options ("A. ... B. ..." on separate lines);
3. a weak cue — "is X", "be X", "but X", "so X", "it's X" — the last one wins;
4. "option X" / "choice X" mentions: only when they all name the same letter;
5. the option texts, when the choices are given: exactly one option's text is mentioned
   (a longer option that contains a shorter one wins; "not <option>" does not count);
6. a delimited letter anywhere — "(B)", "B)", "**B**" — only when all name the same letter.

Traps handled: a bare letter must be upper case ("a cat" is not option A; lower case counts
only when delimited: "(a)", "a)", or a cue followed by the end "answer is a."); a bare
capital followed by a lower-case word is an article or a name unless that word is a
connective ("A because …", but not "A cat", "I think", "B cells"); a letter after "not",
"n't", "except", "rather than", "instead of", "eliminate", "rule out", or before
"is wrong / incorrect / not", does not count; "Vitamin C" is not a cue. Letters beyond the
number of choices (default A–D) are ignored.

:func:`match_choice` is the MMAU rule: the reference is an option's text; the response's
final answer (its answer statement, else its last sentence, else the whole response) must
name exactly one option, by text after normalisation or by letter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cord.judges.extract import extract_final_span, normalize_text

ALL_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEFAULT_LETTERS = "ABCD"

# words that may follow a bare option letter without making it an article or a name
_CONNECTIVES = frozenset(
    "because since as is was would should seems seem and or which that for with from "
    "according due option choice answer here it are were best correct right therefore "
    "so thus then indeed only also".split()
)
_NEG_BEFORE = re.compile(
    r"(?:\bnot|n't|\bnor|\bexcept|\brather\s+than|\binstead\s+of|\bexclud\w*|\beliminat\w*|\brul\w*\s+out|"
    r"\bdismiss\w*|\breject\w*|\bnever)\s*(?:(?:the\s+)?(?:option|choice|answer|letter)\s*)?(?:is\s*)?[\(\[*\"']*\s*$",
    re.IGNORECASE,
)
_NEG_AFTER = re.compile(
    r"^[\)\]*\"'.:]*\s*(?:[\w'’-]+\s+){0,4}?(?:is|was|seems|would\s+be|are)\s+(?:not\b|incorrect|wrong|false|unlikely|invalid|ruled\s+out)|"
    r"^[\)\]*\"'.:]*\s*(?:[\w'’-]+\s+){0,4}?(?:isn't|wasn't|can't|cannot)\b",
    re.IGNORECASE,
)


def letters_for(choices: Sequence[str] | None = None, letters: str | None = None) -> str:
    """The option letters in play: ``letters`` if given, else one per choice, else A–D."""
    if letters:
        return letters.upper()
    if choices:
        return ALL_LETTERS[: len(choices)]
    return DEFAULT_LETTERS


def _token_regex(letters: str, bare: bool = True) -> str:
    """A letter token; exactly one of the groups t1..t6 captures the letter. With
    ``bare=False`` a bare capital counts only as "B)"."""
    up = re.escape(letters)
    low = re.escape(letters.lower())
    both = up + low
    capital = (
        rf"(?<![\w'’\\-])(?P<t5>[{up}])(?![\w'’-])"
        if bare
        else rf"(?<![\w'’\\(\[-])(?P<t5>[{up}])(?=\))"
    )
    lower = rf"|(?<![\w'’\\-])(?P<t6>[{low}])(?=\s*\)|\s*[.!]?\s*$)" if bare else ""
    return (
        rf"(?:\(\s*(?P<t1>[{both}])\s*\)"  # (B) (b)
        rf"|\[\s*(?P<t2>[{both}])\s*\]"  # [B]
        rf"|\*\*\s*(?P<t3>[{both}])\s*(?:\*\*|[.):])"  # **B** **B.
        rf"|\\(?:boxed|text|textbf|mathbf|mathrm)\s*\{{\s*(?:\\text(?:bf)?\s*\{{)?\s*(?P<t4>[{both}])\s*[.)]?\s*\}}"  # \boxed{B}
        rf"|{capital}"  # B (guarded) or B)
        rf"{lower}"  # a) or a lone lower-case letter at the very end
        r")"
    )


def _letter_of(m: re.Match) -> tuple[str, str] | None:
    groups = m.groupdict()
    for g in ("t1", "t2", "t3", "t4", "t5", "t6"):
        v = groups.get(g)
        if v:
            return v.upper(), g
    return None


class _Finder:
    """Compiled patterns for one letter set."""

    _cache: dict[str, "_Finder"] = {}

    def __init__(self, letters: str):
        tok = _token_regex(letters)
        adverb = r"(?:(?:therefore|thus|clearly|probably|likely|most\s+likely|definitely|indeed|simply|actually)\s*,?\s*)?"
        label = r"(?:(?:option|choice|letter|answer)\s*:?\s*)?"
        flags = re.IGNORECASE | re.MULTILINE
        self.whole = re.compile(
            rf"^\s*[\(\[*\"']*\s*(?:(?:option|choice|answer)\s*:?\s*)?([{re.escape(letters + letters.lower())}])\s*[\)\]*\"']*\s*[.!]?\s*$",
            re.IGNORECASE,
        )
        # tokens used with a case-insensitive cue must keep the case rule for bare letters,
        # so the cue text is matched with (?i:...) and the token itself case-sensitively
        self.strong = [
            re.compile(
                rf"(?i:\b(?:answer|option|choice|letter)s?\s*(?:is|would\s+be|should\s+be|must\s+be|will\s+be|seems\s+to\s+be|=|:|-)\s*{adverb}:?\s*{label})"
                + tok
            ),
            re.compile(
                rf"(?i:\b(?:choose|chose|choosing|select|selected|selecting|pick|picked|picking|go\s+with|going\s+with|opt\s+for)\s+{label}(?:the\s+)?(?:option\s+|choice\s+)?)"
                + tok
            ),
            # "B is correct", "(B) mitochondria is the right answer" (up to four words of
            # option text in between)
            re.compile(
                tok
                + r"(?i:\s*[\)\].:]*\s*(?:[\w'’-]+\s+){0,4}?(?:is|would\s+be|seems\s+to\s+be|seems)\s+(?:the\s+)?(?:correct|right|best|most\s+(?:likely|appropriate|accurate|suitable)))"
            ),
            re.compile(rf"\\boxed\s*\{{\s*(?:\\text(?:bf)?\s*\{{)?\s*(?P<bx>[{re.escape(letters + letters.lower())}])\b"),
        ]
        self.opening = re.compile(
            rf"^\s*(?:\*\*)?\s*(?i:(?:option|choice|answer)\s*:?\s*)?[\(\[]?\s*(?:(?P<u>[{re.escape(letters)}])\s*(?:\*\*)?\s*[.):\]\-,]|(?P<l>[{re.escape(letters.lower())}])\s*[.)](?=\s|$))"
        )
        self.listing = re.compile(rf"^\s*[\(\[]?([{re.escape(letters)}])\s*[.):\]]", flags)
        self.weak = re.compile(
            rf"(?i:(?:\bis|'s|’s|\bbe|\bbut|\bso|\bthus|\bhence|\btherefore|\bthink|\bguess|\bsay|\bbelieve)\s*:?\s*{label})"
            + tok
        )
        # a capital letter that ends the response ("… I'd go for C."), not after a
        # capitalised word ("Vitamin C.")
        self.final = re.compile(rf"(?<![A-Za-z]\.)(?<![A-Z][a-z]\s)(?<![A-Z][a-z][a-z]\s)(?<![\w'’-])([{re.escape(letters)}])\s*[.!]?\s*$")
        self.mention = re.compile(r"(?i:\b(?:option|choice)\s+)" + tok)
        self.delimited = re.compile(_token_regex(letters, bare=False))

    @classmethod
    def get(cls, letters: str) -> "_Finder":
        if letters not in cls._cache:
            cls._cache[letters] = cls(letters)
        return cls._cache[letters]


def _accept(text: str, m: re.Match, choices: Sequence[str] | None, *, strong: bool) -> str | None:
    """The letter of a token match, unless a trap rule rejects it."""
    got = _letter_of(m)
    if got is None:
        return None
    letter, group = got
    start, end = m.start(group), m.end(group)
    if group == "t6" and not strong:
        return None
    # look only at a window around the token: judging stays linear in the response length
    after = text[end : end + 160]
    labelled = re.search(r"(?i:\b(?:option|choice|letter))\s*:?\s*$", text[max(0, start - 12) : start]) is not None
    if group == "t5" and not labelled:
        follow = re.match(r"\s+([a-z][a-z'’-]*)", after)
        if follow and follow.group(1) not in _CONNECTIVES:
            # "A cat", "I think", "B cells": an article, pronoun or name — unless the words
            # that follow are that option's own text ("B mitochondria" with B = mitochondria)
            idx = ALL_LETTERS.index(letter)
            opt = normalize_text(_strip_label(choices[idx])) if choices and idx < len(choices) else ""
            if not opt or not normalize_text(text[end : end + 2 * len(opt) + 40]).startswith(opt):
                return None
        if re.match(r"\.\w", after) or re.search(r"[A-Za-z]\.$", text[max(0, start - 3) : start]):  # "U.S.", "D.C."
            return None
    before = text[max(0, start - 40) : start]
    if _NEG_BEFORE.search(before) or _NEG_AFTER.match(after):
        return None
    return letter


def _all(pattern: re.Pattern, text: str, choices, strong: bool) -> list[str]:
    out = []
    for m in pattern.finditer(text):
        if "bx" in pattern.groupindex and m.group("bx"):
            out.append(m.group("bx").upper())
            continue
        letter = _accept(text, m, choices, strong=strong)
        if letter:
            out.append(letter)
    return out


def _strip_label(option: str) -> str:
    """Drop a leading "A. " / "(A) " / "A) " label from an option text."""
    return re.sub(r"^\s*[\(\[]?[A-Za-z][\)\].:]\s+", "", str(option)).strip()


def extract_choice(response: str | None, choices: Sequence[str] | None = None, letters: str | None = None) -> str | None:
    """The option letter a response chooses (upper case), or None when it names none or is
    ambiguous. ``choices`` (option texts, in letter order) enables option-text matching and
    sets the letter range; ``letters`` overrides the range (default A–D)."""
    if not response or not response.strip():
        return None
    text = response.strip()
    letters = letters_for(choices, letters)
    f = _Finder.get(letters)

    m = f.whole.match(text)
    if m:
        return m.group(1).upper()

    found: list[tuple[int, str]] = []
    for pat in f.strong:
        for m in pat.finditer(text):
            if "bx" in pat.groupindex and m.group("bx"):
                found.append((m.start(), m.group("bx").upper()))
                continue
            letter = _accept(text, m, choices, strong=True)
            if letter:
                found.append((m.start(), letter))
    if found:
        return max(found)[1]

    listing = {x for x in f.listing.findall(text)}
    if len(listing) < 2:
        m = f.opening.match(text)
        if m:
            letter = (m.group("u") or m.group("l")).upper()
            if not _NEG_AFTER.match(text[m.end() - 1 :]):
                return letter

    weak = _all(f.weak, text, choices, strong=False)
    if weak:
        return weak[-1]

    mentions = set(_all(f.mention, text, choices, strong=False))
    if len(mentions) == 1:
        return mentions.pop()

    if choices:
        idx = _match_text(text, choices)
        if idx is not None and idx < len(letters):
            return letters[idx]

    if len(listing) < 2:
        delimited = {x for x in _all(f.delimited, text, choices, strong=False)}
        if len(delimited) == 1:
            return delimited.pop()
        m = f.final.search(text)
        if m and not re.search(r"[A-Z]\w*\s+$", text[: m.start()]) and not _NEG_BEFORE.search(text[max(0, m.start() - 40) : m.start()]):
            return m.group(1)
    return None


# --- MMAU: match the final answer to one option ---------------------------------------------


def _phrase_spans(hay: str, needle: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(rf"(?<!\w){re.escape(needle)}(?!\w)", hay)]


_TEXT_NEG = re.compile(r"(?:\bnot|n t|\bnor|\bno|\brather\s+than|\binstead\s+of|\bexcept|\bunlike)\s+(?:\w+\s+)?$")


def _match_text(text: str, choices: Sequence[str]) -> int | None:
    """Index of the one option whose normalised text the response names, or None."""
    hay = normalize_text(text)
    # one-character options ("a", "1") are too short to spot in running text
    opts = [o if len(o) > 1 else "" for o in (normalize_text(_strip_label(c)) for c in choices)]
    for i, o in enumerate(opts):
        if o and hay == o:
            return i
    spans: dict[int, list[tuple[int, int]]] = {}
    for i, o in enumerate(opts):
        if not o:
            continue
        kept = [s for s in _phrase_spans(hay, o) if not _TEXT_NEG.search(hay[max(0, s[0] - 40) : s[0]])]
        if kept:
            spans[i] = kept
    # an option mentioned only inside a longer mentioned option does not count
    # ("a child" inside "a man and a child")
    alive = set(spans)
    for i in spans:
        for j in spans:
            if i != j and len(opts[j]) > len(opts[i]):
                if all(any(a >= b0 and b <= b1 for b0, b1 in spans[j]) for a, b in spans[i]):
                    alive.discard(i)
                    break
    # identical option texts (duplicates in the data) count once
    distinct = {opts[i] for i in alive}
    if len(distinct) == 1:
        return min(alive)
    return None


def _last_sentence(text: str) -> str:
    parts = [p for p in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if p.strip()]
    return parts[-1] if parts else text


def match_choice(response: str | None, choices: Sequence[str], lettered: bool = True) -> int | None:
    """Index of the option the response's final answer names, or None (no option, or
    several). The final answer is the response's answer statement if it has one, else its
    last sentence, else the whole response; each is tried in turn until one names an
    option. ``lettered``: the prompt showed the options as (A), (B), … so a letter counts."""
    if not response or not response.strip() or not choices:
        return None
    letters = ALL_LETTERS[: len(choices)]
    span = extract_final_span(response)
    candidates = [span] if span else []
    candidates += [_last_sentence(response), response]
    seen = set()
    for cand in candidates:
        if not cand or cand in seen:
            continue
        seen.add(cand)
        hay = normalize_text(cand)
        named = _match_text(cand, choices)
        if named is not None:
            return named
        if lettered:
            letter = extract_choice(cand, None, letters)
            if letter is not None:
                return letters.index(letter)
        # several options named in the final answer: ambiguous, do not look further back
        opts = [normalize_text(_strip_label(c)) for c in choices]
        if sum(1 for o in opts if o and _phrase_spans(hay, o)) > 1:
            return None
    return None
