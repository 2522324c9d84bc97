"""Maths answer equivalence: a fast exact/numeric path, then ``math_verify``.

Decisions (pinned by tests/judges/test_math.py):

- ``1,000`` equals ``1000`` (thousands separators are dropped only when the whole answer
  is one number, so the pair ``(1,2)`` stays a pair).
- ``0.5`` equals ``1/2`` and ``\\frac{1}{2}``; a decimal agrees with a fraction that has no
  finite decimal form to a relative 1e-6 (``0.333333`` = ``1/3``, ``0.33`` ≠ ``1/3``); two
  integers or finite decimals must be equal (``1234567`` ≠ ``1234566``).
- A percent equals both its number and its value: ``50%`` = ``50`` and ``50%`` = ``0.5``
  (GSM8K writes "what percent" answers as ``50``, models write ``50%`` or ``0.5``).
  Without a ``%`` on either side ``50`` ≠ ``0.5``.
- Currency and unit words are dropped: ``$5`` = ``5 dollars`` = ``5``; ``12 cm`` = ``12``;
  ``90^\\circ`` = ``90``. ``5x`` keeps its ``x`` (no space, not a known unit).
- ``-3`` ≠ ``3``.
- Answers that are words (``"yes"``, ``"Paris"``) compare as normalised text; they never
  reach math_verify, which would read ``yes`` as the product ``y·e·s``.

math_verify's timeouts use ``signal.alarm``, which only works in the main thread. In the
main thread we keep its timeout; in any other thread we pass ``parsing_timeout=None`` /
``timeout_seconds=None`` (no alarm) and bound the work instead by refusing answers longer
than :data:`MAX_SYMBOLIC_CHARS`. Any exception or timeout inside math_verify counts as
"not equal" — a judge never crashes a training step.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

from cord.judges.extract import normalize_text, word_count

MATH_VERIFY_TIMEOUT_S = 5
MAX_SYMBOLIC_CHARS = 300

# Units that may be glued to the number ("12cm", "5kg"); with a space any word is a unit.
_GLUED_UNITS = (
    "mm|cm|km|m|kg|mg|g|lbs|lb|oz|ft|in|mi|yd|ml|l|s|sec|secs|min|mins|h|hr|hrs|mph|kph|kmh|"
    "am|pm|st|nd|rd|th|k|K"
)
_NUM_CORE = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?%?|-?\\frac\{[^{}]+\}\{[^{}]+\}%?"
_UNIT_SPACED = re.compile(rf"^({_NUM_CORE})\s+([A-Za-z][A-Za-z .^/²³-]*)$")
_UNIT_GLUED = re.compile(rf"^({_NUM_CORE})(?:{_GLUED_UNITS})\.?$")
_UNIT_BEFORE = re.compile(rf"^(?:USD|US\$|Rs\.?|EUR|GBP)\s*({_NUM_CORE})$", re.IGNORECASE)
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?$")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "pi", "frac", "inf", "infty", "lim", "arcsin", "arccos", "arctan", "min", "max", "mod", "gcd", "lcm", "and", "or"}

_log = logging.getLogger(__name__)


class _DropNoTimeoutWarning(logging.Filter):
    """math_verify warns once per process when run without its signal timeout; off the main
    thread that is our deliberate choice (input length is bounded instead), so hush it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropNoTimeoutWarning())


def normalize_math_answer(s: str) -> str:
    """Canonical string form of an extracted maths answer (see the module docstring)."""
    s = s.strip()
    s = _TEXT_CMD.sub(lambda m: " " + m.group(1) + " ", s)
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                 ("\\!", ""), ("\\,", " "), ("\\;", " "), ("\\:", " "), ("\\ ", " "), ("~", " "),
                 ("\\%", "%"), ("\\$", "$"), ("−", "-"), ("–", "-"), ("\\cdot", "*"), ("\\times", "*")):
        s = s.replace(a, b)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree", "", s)
    s = re.sub(r"\s*percent\b", "%", s, flags=re.IGNORECASE)
    s = s.replace("$", "")
    s = s.strip().rstrip(".").strip()
    # "x = 5" → "5" when the left side is a single variable
    s = re.sub(r"^[A-Za-z]\s*=\s*(?=[-\d.\\])", "", s)
    # \frac12 → \frac{1}{2}
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = " ".join(s.split())
    for pat in (_UNIT_BEFORE, _UNIT_SPACED, _UNIT_GLUED):
        m = pat.match(s)
        if m and (pat is not _UNIT_SPACED or _is_unit_words(m.group(2))):
            s = m.group(1).strip()
            break
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = re.sub(r"\s*([/%])\s*", r"\1", s) if re.fullmatch(r"-?[\d.]+\s*/\s*[\d.]+%?|-?[\d.]+\s*%", s) else s
    return s


def _is_unit_words(unit: str) -> bool:
    """A trailing unit after a space: 1–3 words ("dollars", "square feet", "km per hour")
    or a one-letter SI unit; a lone variable such as "x" is not a unit."""
    unit = unit.strip()
    return 1 <= word_count(unit) <= 3 or unit in {"m", "g", "s", "h", "l", "L", "K", "J", "W", "V", "A", "N"}


def parse_number(s: str) -> tuple[Fraction, bool] | None:
    """``(value, is_percent)`` for a plain number in normalised form — integer, decimal,
    ``a/b``, ``\\frac{a}{b}``, with an optional trailing ``%`` — else None."""
    pct = s.endswith("%")
    core = s[:-1].strip() if pct else s
    m = re.fullmatch(r"(-?)\\frac\{\s*(-?\d+(?:\.\d+)?)\s*\}\{\s*(\d+(?:\.\d+)?)\s*\}", core)
    try:
        if m:
            num, den = Fraction(m.group(2)), Fraction(m.group(3))
            value = num / den
            if m.group(1):
                value = -value
        elif re.fullmatch(r"-?\d+(?:\.\d+)?/\d+(?:\.\d+)?", core):
            a, b = core.split("/")
            value = Fraction(a) / Fraction(b)
        elif re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)", core):
            value = Fraction(core)
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    return value, pct


def _is_finite_decimal(x: Fraction) -> bool:
    """True when ``x`` has an exact finite decimal form (its denominator is 2^i 5^j)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _close(a: Fraction, b: Fraction) -> bool:
    # the tolerance is for a rounded decimal against a fraction with no finite decimal form
    # (0.333333 = 1/3); two exact decimals or integers must be equal (1234567 != 1234566)
    if a == b:
        return True
    if _is_finite_decimal(a) and _is_finite_decimal(b):
        return False
    return abs(a - b) <= Fraction(1, 10**6) * max(Fraction(1), abs(b))


def _numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    va = {a[0]} | ({a[0] / 100} if a[1] else set())
    vb = {b[0]} | ({b[0] / 100} if b[1] else set())
    return any(_close(x, y) for x in va for y in vb)


def _is_wordy(s: str) -> bool:
    """True when the answer holds real words (3+ letters that are not maths names)."""
    plain = re.sub(r"\\[A-Za-z]+", " ", s)
    return any(w.lower() not in _MATH_WORDS for w in re.findall(r"[A-Za-z]{3,}", plain))


def _math_verify_equal(reference: str, candidate: str) -> bool:
    if len(reference) > MAX_SYMBOLIC_CHARS or len(candidate) > MAX_SYMBOLIC_CHARS:
        return False
    try:
        from math_verify import parse, verify
    except ImportError:  # a core dependency; without it only the fast path runs
        return False
    timeout = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse("\\boxed{" + reference + "}", parsing_timeout=timeout)
        pred = parse("\\boxed{" + candidate + "}", parsing_timeout=timeout)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except BaseException as e:  # math_verify's TimeoutException derives from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        _log.debug("math_verify failed on %r vs %r: %r", reference, candidate, e)
        return False


def math_equal(candidate: str | None, reference: str | None) -> bool:
    """Whether two extracted maths answers are equivalent. ``reference`` plays math_verify's
    "gold" role (its comparison is not fully symmetric)."""
    if candidate is None or reference is None:
        return False
    a, b = normalize_math_answer(candidate), normalize_math_answer(reference)
    if not a or not b:
        return False
    if a == b:
        return True
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        return _numbers_equal(na, nb)
    if _is_wordy(a) or _is_wordy(b):
        return normalize_text(a) == normalize_text(b)
    return _math_verify_equal(b, a)
