"""Final-answer extraction from free-form model responses.

The same function reads a candidate (an audio-conditioned rollout) and a reference. A
reference may be a raw answer (``"72"``, ``"\\frac{1}{2}"``) or a full response (the
text-conditioned greedy rollout CORD's reward compares against, or a worked solution that
ends in ``\\boxed{}``): a raw answer comes back whole, a full response is reduced to its
final answer by the rules below.

Maths order of precedence (:func:`extract_math_answer`):

1. the last top-level ``\\boxed{...}`` (nested braces allowed; an unclosed one, as in a
   rollout cut at the token limit, is skipped);
2. ``#### N`` (GSM8K style), the last one;
3. an answer statement — "the answer is …", "final answer: …", "answer = …" — the last
   one; the span runs to the end of its sentence; a short span is kept whole
   (``"$18"``, ``"12 cm"``, ``"x^2+1"``), a wordy one is reduced to its first number;
4. a response that is itself a short answer (at most two words besides numbers and LaTeX)
   is kept whole — so a raw reference ``"\\frac{1}{2}"`` is not reduced to ``"2"`` — if it
   looks like an answer: it holds a digit, LaTeX or a maths symbol, or is a single word
   (``"odd"``); a short phrase without any (``"I don't know."``) is no answer;
5. otherwise the last number in the text (integers, decimals, ``1,000``, ``3/4``,
   ``\\frac{3}{4}``, negatives, a trailing ``%``);
6. nothing found: ``None``.
"""

from __future__ import annotations

import re

# --- boxed -------------------------------------------------------------------------------

_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*")


def _matching_braces(text: str) -> dict[int, int]:
    """For every ``{`` that closes, the index of its ``}`` — one linear pass; escaped
    braces (``\\{``, ``\\}``) neither open nor close."""
    match: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def _unbox(s: str) -> str:
    """``\\frac{1}{\\boxed{2}}`` → ``\\frac{1}{2}``: a box inside a box is just its content."""
    for _ in range(20):
        m = _BOXED_START.search(s)
        if m is None or m.end() >= len(s) or s[m.end()] != "{":
            return s
        close = _matching_braces(s).get(m.end())
        if close is None:
            return s
        s = s[: m.start()] + s[m.end() + 1 : close] + s[close + 1 :]
    return s


def last_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` (or ``\\fbox{...}``); nested braces
    are kept (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``). ``\\boxed 5`` (no braces) gives
    ``5``. Unclosed boxes are ignored. Linear in the length of ``text``."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    braces = _matching_braces(text)
    found: str | None = None
    pos = 0
    for m in _BOXED_START.finditer(text):
        if m.start() < pos:
            continue  # inside the previous box
        j = m.end()
        if j < len(text) and text[j] == "{":
            close = braces.get(j)
            if close is None:
                continue
            found, pos = _unbox(text[j + 1 : close].strip()), close + 1
        else:
            tok = re.match(r"[^\s$.,;]+", text[j:])
            if tok:
                found = tok.group(0)
    return found


# --- numbers -----------------------------------------------------------------------------

# A number as people write it in answers. The minus sign counts only when it is not glued
# to a preceding word or digit ("5-3" holds 5 and 3, not -3).
_NUMBER = re.compile(
    r"(?<![\w.,/)\]}])"
    r"(?:(?P<neg>-)\s?)?\$?\s?"
    r"(?P<num>"
    r"\\[dt]?frac\{\s*-?\d+(?:\.\d+)?\s*\}\{\s*\d+(?:\.\d+)?\s*\}"
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?"
    r"|\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"
    r"|\.\d+"
    r")(?![\d])(?P<pct>\s?(?:\\?%|\s?percent\b))?"
)


def _number_matches(text: str) -> list[str]:
    out = []
    for m in _NUMBER.finditer(text):
        num = m.group("num")
        # a "/" fraction whose slash was followed by a non-digit is just the integer
        s = ("-" if m.group("neg") else "") + re.sub(r"\s+", "", num)
        if m.group("pct"):
            s += "%"
        out.append(s)
    return out


def last_number(text: str) -> str | None:
    """The last number in ``text`` as written (``"-5"``, ``"1,000"``, ``"3/4"``,
    ``"\\frac{3}{4}"``, ``"50%"``), or None."""
    found = _number_matches(text)
    return found[-1] if found else None


def first_number(text: str) -> str | None:
    found = _number_matches(text)
    return found[0] if found else None


# --- answer statements -------------------------------------------------------------------

_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_CUE = re.compile(
    r"\banswer\b\s*(?:\((?:in|as)[^)]*\)\s*)?"
    r"(?:is\s*:?|:|=|would\s+be|will\s+be|should\s+be|must\s+be|equals|comes\s+to)\s*",
    re.IGNORECASE,
)
# where an answer span stops: end of line, a sentence-ending period (not a decimal point),
# a clause break
_SPAN_END = re.compile(r"\n|(?<!\d)\.(?!\d)|\.(?=\s|$)|;|,\s|\s(?:because|since|which|as|so|and\s+that)\s", re.IGNORECASE)
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def _strip_wrappers(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("*").strip()
        s = s.strip("\"'`“”‘’").strip()
        if s.startswith("$$") and s.endswith("$$") and len(s) > 4:
            s = s[2:-2]
        elif s.startswith("$") and s.endswith("$") and len(s) > 2 and s.count("$") == 2:
            s = s[1:-1]
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        s = s.strip().rstrip(".!").strip()
        if s == before:
            break
    return s


def word_count(s: str) -> int:
    """Alphabetic words of two or more letters, LaTeX commands not counted."""
    return len(_WORD.findall(_LATEX_CMD.sub(" ", s)))


def is_short_answer(s: str, max_words: int = 2, max_chars: int = 80) -> bool:
    """True for text that is itself an answer rather than a sentence: ``"72"``,
    ``"\\frac{1}{2}"``, ``"12 cm"``, ``"5 dollars"``, ``"x^2+1"``, ``"Paris"``."""
    s = s.strip()
    return 0 < len(s) <= max_chars and "\n" not in s and word_count(s) <= max_words


_FUNCTION_WORDS = frozenset("a an the of in on at to for from by with and or is are was were so as per which that".split())


def _answer_span(text: str) -> str | None:
    """Text after the last answer cue, up to the end of its sentence."""
    content_end = len(text.rstrip())
    last_end = None
    for m in _ANSWER_CUE.finditer(text):
        if m.end() < content_end:
            last_end = m.end()
    if last_end is None:
        return None
    last = text[last_end:]
    # keep $...$ / \( \) intact when the answer starts with one
    rest = last.lstrip()
    close = -1
    if rest.startswith("$$"):
        close = rest.find("$$", 2)
        close = close + 1 if close != -1 else -1
    elif rest.startswith("$"):
        close = rest.find("$", 1)
    if close != -1:
        span = rest[: close + 1]
        # allow a unit word right after the closing $ ("$5$ dollars")
        tail = re.match(r"\s*([A-Za-z]+)", rest[close + 1 :])
        if tail and tail.group(1).lower() not in _FUNCTION_WORDS:
            span += tail.group(0)
    else:
        m = _SPAN_END.search(rest)
        span = rest[: m.start()] if m else rest
    span = _strip_wrappers(span)
    return span or None


def _marked_answer(text: str) -> tuple[str | None, str]:
    """("boxed", the last \\boxed{} content) or ("hashes", the last ``#### ...``), wrappers
    stripped; (None, "") when the response marks no final answer either way."""
    boxed = last_boxed(text)
    if boxed:
        return "boxed", _strip_wrappers(boxed)
    hashes = _HASHES.findall(text)
    if hashes:
        return "hashes", _strip_wrappers(hashes[-1])
    return None, ""


def extract_final_span(text: str) -> str | None:
    """The response's stated final answer, as text: last ``\\boxed{}``, else ``#### ...``,
    else the span after the last "answer is"/"answer:" cue. None when the response states
    no final answer this way (maths extraction then falls back to numbers)."""
    if not text:
        return None
    kind, marked = _marked_answer(text)
    return (marked or None) if kind else _answer_span(text)


_MATHY = re.compile(r"[\d\\^=+*/<>π√∞]")


def extract_math_answer(text: str | None) -> str | None:
    """The final answer of a maths response (or a raw answer) as a string, or None.
    See the module docstring for the rules."""
    if not text or not text.strip():
        return None
    kind, marked = _marked_answer(text)
    if kind == "boxed":
        return marked or None
    if kind == "hashes":
        return marked if is_short_answer(marked) else (first_number(marked) or marked or None)
    span = _answer_span(text)
    if span:
        if is_short_answer(span, max_words=3):
            return span
        num = first_number(span)
        if num:
            return num
    whole = _strip_wrappers(text)
    if is_short_answer(whole) and (_MATHY.search(whole) or word_count(whole) <= 1):
        # "5-3=2" → "2"; "x = 5" stays (a single variable on the left is an answer form)
        if "=" in whole and not re.match(r"^\s*[A-Za-z]\s*=[^=]*$", whole):
            rhs = whole.rsplit("=", 1)[1].strip()
            if rhs:
                return rhs
        return whole
    return last_number(text)


# --- plain-text normalisation ------------------------------------------------------------

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_text(s: str) -> str:
    """Lower-case, punctuation to spaces, articles dropped, spaces collapsed — for
    comparing short free-text answers and option texts."""
    s = s.lower().replace("’", "'")
    s = re.sub(r"[^\w\s'.%/-]|_", " ", s)
    s = re.sub(r"(?<!\d)[.'/-]|[.'/-](?!\d)", " ", s)  # keep 2.5, 3/4, -5; drop other marks
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())
