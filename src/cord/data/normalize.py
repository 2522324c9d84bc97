"""Text for speech: turn a written question into words a TTS engine reads correctly.

The text prompt keeps the original question; only the *spoken* version goes through here.
Questions that stay unspeakable return ``None`` (with a reason from :func:`normalize_for_speech`)
and are skipped and counted by ``cord synth``.

Choices (checked against what espeak-ng 1.51 actually says, ``espeak-ng -q -x``):

- Fractions with a small integer numerator and a denominator 2..10 become words
  (``\\frac{3}{4}`` → "3 quarters", ``\\frac{1}{2}`` → "one half"); everything else is
  "A over B" (``\\frac{x+1}{12}`` → "x plus 1 over 12").
- Powers: ``x^2`` → "x squared", ``x^3`` → "x cubed", ``x^{n}`` → "x to the power n",
  ``90^\\circ`` → "90 degrees".
- Numbers stay digits (espeak reads "1234567" as "one million two hundred…"); thousands
  commas are removed. Decimals are spoken digit by digit after the point ("0.125" →
  "0 point 1 2 5") because espeak would read "point 125" as a whole number. A leading minus
  is "negative"; a binary minus is "minus"; an unspaced range "5-10" in prose is "5 to 10".
- Money ``$5`` / ``\\$5`` → "5 dollars" ("$1.50" → "1 dollar and 50 cents"). An unescaped
  ``$`` opens a maths span only when the text up to the next ``$`` neither starts nor
  ends with a space (the LaTeX habit ``$x+1$``); "$5 and $10" is money.
- In maths, letters are spoken one by one ("AB" → "A B", "2xy" → "2 x y"); the letter
  *a* is written "eigh" because espeak reads a lone "a" as the article. ``f(x)`` → "f of
  x", ``|x|`` → "the absolute value of x", ``\\log_2`` → "log base 2", ``4\\frac{1}{2}`` →
  "4 and one half", ``0.\\overline{3}`` → "0 point 3 repeating".
- Units after a number and after a slash become words: "60 km/h" → "60 kilometers per
  hour", "$2/kg" → "2 dollars per kilogram" (espeak spells "km" as letters).
- Markdown (``**bold**``, ``#`` headers, bullets, backticks, links) is stripped.

Unspeakable (``None``): empty text; LaTeX environments (``\\begin{``); Asymptote
figures; tables; non-Latin scripts; any backslash command or brace left after conversion;
and maths-dense text (more than 60 % of the characters inside maths spans, with over 80
of them).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["speakable", "normalize_for_speech"]

# --------------------------------------------------------------------------------------
# Vocabulary

_SMALL = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen", "twenty"]
_DENOMINATORS = {2: ("half", "halves"), 3: ("third", "thirds"), 4: ("quarter", "quarters"),
                 5: ("fifth", "fifths"), 6: ("sixth", "sixths"), 7: ("seventh", "sevenths"),
                 8: ("eighth", "eighths"), 9: ("ninth", "ninths"), 10: ("tenth", "tenths")}

_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
          "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau",
          "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda",
          "Xi", "Pi", "Sigma", "Phi", "Psi", "Omega"}

# LaTeX commands that are a word or nothing (no arguments).
_WORDS = {
    "times": " times ", "cdot": " times ", "ast": " times ", "div": " divided by ",
    "pm": " plus or minus ", "mp": " minus or plus ",
    "le": " is less than or equal to ", "leq": " is less than or equal to ",
    "leqslant": " is less than or equal to ", "ge": " is greater than or equal to ",
    "geq": " is greater than or equal to ", "geqslant": " is greater than or equal to ",
    "lt": " is less than ", "gt": " is greater than ", "ne": " is not equal to ",
    "neq": " is not equal to ", "approx": " is approximately ", "sim": " is approximately ",
    "equiv": " is equivalent to ", "cong": " is congruent to ", "infty": " infinity ",
    "circ": " degrees ", "degree": " degrees ", "angle": " angle ", "triangle": " triangle ",
    "perp": " is perpendicular to ", "parallel": " is parallel to ", "in": " in ",
    "cdots": " and so on ", "ldots": " and so on ", "dots": " and so on ", "dotsb": " and so on ",
    "therefore": " therefore ", "quad": " ", "qquad": " ", "left": "", "right": "",
    "displaystyle": "", "textstyle": "", "big": "", "Big": "", "bigg": "", "Bigg": "",
    "lfloor": " the floor of ", "rfloor": " ", "lceil": " the ceiling of ", "rceil": " ",
    "sin": " sine ", "cos": " cosine ", "tan": " tangent ", "log": " log ", "ln": " natural log ",
    "exp": " exp ", "max": " max ", "min": " min ", "gcd": " the greatest common divisor of ",
    "lcm": " the least common multiple of ", "mod": " mod ", "pmod": " mod ", "bmod": " mod ",
    "colon": " ", "mid": " divides ", "to": " to ", "rightarrow": " gives ", "implies": " implies ",
    "prime": " prime ", "ell": " l ", "hline": "",
}
_WORDS.update({g: f" {g.replace('var', '').lower()} " for g in _GREEK})
# Escaped symbols: \% \$ \, \; …
_ESCAPES = {"%": " percent ", "$": "\x00", ",": " ", ";": " ", ":": " ", "!": "", " ": " ",
            "{": "", "}": "", "#": " number ", "&": " and ", "_": " ", "|": "", "\\": " "}
# Commands whose one argument is read as plain text or as its contents.
_TEXT_ARG = {"text", "textbf", "textit", "textrm", "texttt", "mbox", "mathrm", "mathit", "emph",
             "operatorname", "textnormal", "textsf", "mathsf"}
_CONTENT_ARG = {"mathbf", "boldsymbol", "bm", "overline", "underline", "vec", "hat", "bar",
                "widehat", "overrightarrow", "boxed", "tilde", "mathbb", "mathcal", "pmb"}
_FRAC = {"frac", "dfrac", "tfrac", "cfrac"}
_UNITS = {"cm", "km", "mm", "kg", "mg", "ml", "ft", "lb", "lbs", "oz", "hr", "hrs", "mph",
          "kmh", "sq", "yd", "mi", "min", "sec", "m", "g", "s", "h", "l", "in"}
_PER_UNITS = {"h", "hr", "hour", "s", "sec", "second", "min", "minute", "day", "week", "month",
              "year", "kg", "g", "m", "km", "cm", "l", "litre", "liter", "gallon", "mile", "unit",
              "item", "person", "piece", "lb", "pound", "ft", "foot", "dozen", "box"}
_MATH_WORDS = {"sin", "cos", "tan", "log", "ln", "exp", "max", "min", "gcd", "lcm", "mod"}

_UNICODE = {
    "×": " times ", "÷": " divided by ", "−": "-", "–": "\x01", "—": ", ", "≤": " is less than or equal to ",
    "≥": " is greater than or equal to ", "≠": " is not equal to ", "≈": " is approximately ",
    "±": " plus or minus ", "°": " degrees ", "π": " pi ", "√": " the square root of ", "²": "^2",
    "³": "^3", "½": " one half ", "¼": " one quarter ", "¾": " 3 quarters ", "∞": " infinity ",
    "∠": " angle ", "△": " triangle ", "·": " times ", "€": " euros ", "£": " pounds ",
    "“": '"', "”": '"', "‘": "'", "’": "'", "…": "...", "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}


# --------------------------------------------------------------------------------------
# Small helpers


def _letter(ch: str) -> str:
    """A single letter as espeak should say it (a lone "a" would be read as the article)."""
    return "eigh" if ch in "aA" else ch


def _decimal(s: str) -> str:
    """"3.25" → "3 point 2 5"; thousands commas dropped."""
    s = s.replace(",", "")
    if "." not in s:
        return s
    whole, frac = s.split(".", 1)
    return f"{whole or '0'} point {' '.join(frac)}"


def _fraction_words(num: str, den: str) -> str | None:
    """"3","4" → "3 quarters"; None when the fraction is not a small common one."""
    if not (num.isdigit() and den.isdigit()):
        return None
    n, d = int(num), int(den)
    if d not in _DENOMINATORS or n > 20:
        return None
    one, many = _DENOMINATORS[d]
    if n == 1:
        return f"one {one}"
    return f"{n} {many}"


def _money(amount: str, scale: str = "") -> str:
    """"5" → "5 dollars", "1.50" → "1 dollar and 50 cents", "2.5" → "2 point 5 dollars"."""
    amount = amount.replace(",", "")
    if scale:
        return f"{_decimal(amount)} {scale} dollars"
    if "." in amount:
        whole, cents = amount.split(".", 1)
        if len(cents) == 2:
            w, c = int(whole or 0), int(cents)
            if w == 0:
                return f"{c} cent" + ("" if c == 1 else "s")
            dollars = f"{w} dollar" + ("" if w == 1 else "s")
            return dollars if c == 0 else f"{dollars} and {c} cent" + ("" if c == 1 else "s")
        return f"{_decimal(amount)} dollars"
    return f"{amount} dollar" + ("" if amount == "1" else "s")


# --------------------------------------------------------------------------------------
# Tokeniser and converter (one for maths spans and prose: ``math`` switches letter rules)

_TOKEN = re.compile(
    r"""(?P<cmd>\\[A-Za-z]+\*?)
      | (?P<esc>\\[^A-Za-z])
      | (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
      | (?P<word>[A-Za-z]+(?:'[A-Za-z]+)?)
      | (?P<space>\s+)
      | (?P<ch>.)""",
    re.VERBOSE | re.DOTALL,
)


class _Unspeakable(Exception):
    pass


class _Converter:
    """Recursive descent over LaTeX-ish tokens, producing words.

    ``prev`` tracks what was emitted last ("operand", "operator" or None) to tell a unary
    minus ("negative") from a binary one ("minus")."""

    def __init__(self, text: str, math: bool):
        self.toks = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(text)]
        self.i = 0
        self.math = math
        self.prev: str | None = None

    # -- token access
    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else (None, "")

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def skip_space(self):
        while self.peek()[0] == "space":
            self.i += 1

    def raw_group(self) -> str:
        """The raw text of the next {...} group (or single token), braces removed."""
        self.skip_space()
        kind, val = self.next()
        if val != "{":
            return val
        depth, out = 1, []
        while True:
            kind, val = self.next()
            if kind is None:
                raise _Unspeakable("unbalanced braces")
            if val == "{":
                depth += 1
            elif val == "}":
                depth -= 1
                if depth == 0:
                    return "".join(out)
            out.append(val)

    def arg(self) -> str:
        """Convert the next argument (a {...} group or one token) as a nested expression."""
        raw = self.raw_group()
        sub = _Converter(raw, self.math)
        return sub.run().strip()

    # -- main loop
    def run(self) -> str:
        out: list[str] = []
        while self.i < len(self.toks):
            out.append(self.step())
        return "".join(out)

    def emit(self, text: str, kind: str | None) -> str:
        if kind is not None:
            self.prev = kind
        return text

    def step(self) -> str:
        kind, val = self.next()
        if kind == "space":
            return " "
        if kind == "num":
            text = _decimal(val)
            return self.emit(f" {text} " if self.math else text, "operand")
        if kind == "word":
            return self.emit(self.word(val), "operand")
        if kind == "cmd":
            return self.command(val[1:].rstrip("*"))
        if kind == "esc":
            sym = val[1]
            if sym == "$":
                return self.money()
            if sym in "{}":
                return ""
            if sym == "%":
                return self.emit(" percent ", "operand")
            return _ESCAPES.get(sym, " ")
        return self.char(val)

    def word(self, w: str) -> str:
        if not self.math:
            return w
        if len(w) == 1 and self.peek()[1] == "(" and w in "fghpqFGHPQ":
            return f" {w} of "  # f(x) → "f of x"
        if w in _MATH_WORDS:
            return f" {_WORDS.get(w, w).strip()} "
        if (len(w) >= 3 and not w.isupper()) or w in _UNITS and self.prev == "operand":
            return f" {w} "
        return " " + " ".join(_letter(c) for c in w) + " "

    def command(self, name: str) -> str:
        if name in _FRAC:
            mixed = self.i >= 2 and self.toks[self.i - 2][0] == "num"  # 4\frac{1}{2}
            num, den = self.arg(), self.arg()
            words = _fraction_words(num, den)
            if words and mixed:
                return self.emit(f" and {words} ", "operand")
            return self.emit(f" {words or f'{num} over {den}'} ", "operand")
        if name == "sqrt":
            self.skip_space()
            root = ""
            if self.peek()[1] == "[":
                self.next()
                parts = []
                while self.peek()[1] not in ("]", ""):
                    parts.append(self.next()[1])
                self.next()
                root = "".join(parts).strip()
            inner = self.arg()
            which = {"2": "square", "3": "cube", "": "square"}.get(root, f"{root}th")
            return self.emit(f" the {which} root of {inner} ", "operand")
        if name in ("binom", "dbinom", "tbinom"):
            n, k = self.arg(), self.arg()
            return self.emit(f" {n} choose {k} ", "operand")
        if name in _TEXT_ARG:
            inner = self.raw_group()
            if inner.strip() in _UNIT_WORDS:  # 5\text{ cm}
                return self.emit(f" {_UNIT_WORDS[inner.strip()]} ", "operand")
            return self.emit(" " + _Converter(inner, math=False).run() + " ", "operand")
        if name in _CONTENT_ARG:
            return self.emit(f" {self.arg()} ", "operand")
        if name in ("begin", "end"):
            raise _Unspeakable("latex_environment")
        if name in _WORDS:
            word = _WORDS[name]
            is_op = name in ("times", "cdot", "ast", "div", "pm", "mp") or word.startswith(" is ")
            return self.emit(word, "operator" if is_op else ("operand" if word.strip() else None))
        raise _Unspeakable(f"unknown command \\{name}")

    def money(self) -> str:
        self.skip_space()
        kind, val = self.peek()
        if kind != "num":
            return self.emit(" dollars ", "operand")
        self.next()
        scale = ""
        if self.peek()[0] == "space" and self.peek(1)[1].lower() in ("million", "billion", "thousand"):
            self.next()
            scale = self.next()[1].lower()
        return self.emit(f" {_money(val, scale)} ", "operand")

    def char(self, c: str) -> str:
        if c == "\x00":  # money sign placed by _split_math
            return self.money()
        if c == "^":
            return self.power()
        if c == "_":
            if not self.math and self.peek()[1] == "_":  # "___" blanks in prose
                while self.peek()[1] == "_":
                    self.next()
                return self.emit(" blank ", "operand")
            after_log = self.i >= 2 and self.toks[self.i - 2][1] == "\\log"
            sub = self.arg()
            return self.emit(f" base {sub} " if after_log else f" sub {sub} ", "operand")
        if c == "{" or c == "}":
            if self.math:
                return ""
            raise _Unspeakable("stray brace")
        if c in "-\x01":
            return self.minus(c)
        if c == "+":
            return self.emit(" plus ", "operator")
        if c == "=":
            return self.emit(" equals ", "operator")
        if c == "<":
            return self.emit(" is less than ", "operator")
        if c == ">":
            return self.emit(" is greater than ", "operator")
        if c == "*":
            return self.emit(" times ", "operator")
        if c == "/":
            return self.slash()
        if c == "%":
            return self.emit(" percent ", "operand")
        if c == "!" and self.math and self.prev == "operand":
            return self.emit(" factorial ", "operand")
        if c == "|":
            if self.math and self.prev in (None, "operator", "open"):
                return self.emit(" the absolute value of ", "open")
            return self.emit(" ", "operand")
        if c == "&":
            if self.math:
                raise _Unspeakable("alignment")
            return self.emit(" and ", None)
        if c == "#":
            return self.emit(" number ", None)
        if c == "@":
            return self.emit(" at ", None)
        if c == "~":
            return self.emit(" about " if not self.math else " ", None)
        if c == ":" and self.math:
            return self.emit(" to ", "operator")
        if c in "([":
            return self.emit(" " if self.math else c, "open")
        if c in ")]":
            return self.emit(" " if self.math else c, "operand")
        if c == "\\":
            raise _Unspeakable("backslash")
        if c == "$":
            return self.money()
        if c == "'" and self.math:
            return self.emit(" prime ", "operand")
        return self.emit(c, None)

    def power(self) -> str:
        raw = self.raw_group().strip()
        if raw in ("\\circ", "{\\circ}", "o"):
            return self.emit(" degrees ", "operand")
        exp = _Converter(raw, math=True).run().strip()
        exp = re.sub(r"\s+", " ", exp)
        if exp == "2":
            return self.emit(" squared ", "operand")
        if exp == "3":
            return self.emit(" cubed ", "operand")
        return self.emit(f" to the power {exp} ", "operand")

    def _neighbour(self, step: int):
        """The nearest non-space token before (step=-1) or after (step=+1) the current one,
        and whether a space separates it."""
        j = self.i - 2 if step < 0 else self.i
        spaced = False
        while 0 <= j < len(self.toks) and self.toks[j][0] == "space":
            spaced = True
            j += step
        return (self.toks[j] if 0 <= j < len(self.toks) else (None, "")), spaced

    def minus(self, c: str) -> str:
        if self.math:
            if self.prev in (None, "operator", "open"):
                return self.emit(" negative ", "operator")
            return self.emit(" minus ", "operator")
        # prose: tell a sign, a subtraction, a range and a hyphen apart by the neighbours
        (bkind, bval), bspace = self._neighbour(-1)
        (akind, aval), aspace = self._neighbour(+1)
        operand_before = bkind == "num" or bval == ")" or (bkind == "word" and len(bval) == 1)
        operand_after = akind == "num" or aval == "(" or (akind == "word" and len(aval) == 1)
        if akind == "num" and not aspace and not operand_before:
            return self.emit(" negative ", "operator")
        if bkind == "num" and akind == "num" and not bspace and not aspace:
            return self.emit(" to ", "operator")  # "5-10 miles": a range
        if c == "\x01" and operand_before and operand_after:
            return self.emit(" to ", "operator")
        if operand_before and operand_after and bspace and aspace:
            return self.emit(" minus ", "operator")
        if bspace and aspace or c == "\x01":
            return self.emit(", ", None)  # a dash used as a pause
        return " "  # a hyphen inside words ("3-digit", "well-known") reads fine as a space

    def slash(self) -> str:
        before = self.toks[self.i - 2] if self.i >= 2 else (None, "")
        after = self.peek()
        if before[0] == "num" and after[0] == "num" and "." not in before[1] + after[1]:
            # a plain a/b: "3/4" → "3 quarters"; the numerator was already emitted, so
            # only a bare "over" is possible here; _prose_fractions handles a/b before.
            return self.emit(" over ", "operator")
        if not self.math and after[0] == "word":
            if after[1].lower().rstrip("s") in _PER_UNITS:  # "$20/hour", "apples/box"
                return self.emit(" per ", "operator")
            if before[0] == "word" and len(before[1]) > 1 and len(after[1]) > 1:  # "red/blue", "and/or"
                return self.emit(" " if after[1].lower() in ("or", "and") else " or ", "operator")
        return self.emit(" over ", "operator")


# --------------------------------------------------------------------------------------
# Pre-passes on the raw text

_MARKDOWN = [
    (re.compile(r"\*\*(.+?)\*\*", re.S), r"\1"),
    (re.compile(r"__(.+?)__", re.S), r"\1"),
    # _emphasis_ and *emphasis*: the marks touch a word on the inside and none on the outside,
    # so x_1, a_b + c_d, 2*3*4 and "2 * 3" are left alone
    (re.compile(r"(?<![\w\\])_(?=[^\W\d_])([^_\n$]*?[^\W_])_(?!\w)"), r"\1"),
    (re.compile(r"(?<![\w*\\])\*(?=[^\W\d_])([^*\n$]*?[^\W_])\*(?![\w*])"), r"\1"),
    (re.compile(r"^\s{0,3}#{1,6}\s*", re.M), ""),
    (re.compile(r"^\s*[-*+•]\s+", re.M), ""),
    (re.compile(r"```.*?```", re.S), " "),
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),
]
_FRACTION_TEXT = re.compile(r"(?<![\d/.,])(\d{1,3})/(\d{1,3})(?![\d/]|\.\d)")
_REPEATING = re.compile(r"(\d*)\.(\d*)\\overline\s*\{(\d+)\}")


def _strip_markdown(text: str) -> str:
    for pattern, repl in _MARKDOWN:
        text = pattern.sub(repl, text)
    return text


def _split_math(text: str) -> list[tuple[bool, str]]:
    """Split into (is_math, text) segments: $$…$$, \\[…\\], \\(…\\), and $…$ where the content
    neither starts nor ends with a space (otherwise the ``$`` is money). Escaped ``\\$`` was
    already replaced by the money sign \\x00."""
    segs: list[tuple[bool, str]] = []
    buf: list[str] = []
    i, n = 0, len(text)

    def flush():
        if buf:
            segs.append((False, "".join(buf)))
            buf.clear()

    while i < n:
        for open_, close in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)")):
            if text.startswith(open_, i):
                j = text.find(close, i + len(open_))
                if j >= 0:
                    flush()
                    segs.append((True, text[i + len(open_):j]))
                    i = j + len(close)
                    break
        else:
            c = text[i]
            if c == "$":
                j = text.find("$", i + 1)
                content = text[i + 1:j] if j > 0 else ""
                if j > 0 and content and not content[0].isspace() and not content[-1].isspace():
                    flush()
                    segs.append((True, content))
                    i = j + 1
                    continue
                buf.append("\x00")  # money (or a stray dollar sign)
                i += 1
                continue
            buf.append(c)
            i += 1
    flush()
    return segs


_UNIT_WORDS = {
    "km/h": "kilometers per hour", "kph": "kilometers per hour", "mph": "miles per hour",
    "m/s": "meters per second", "km": "kilometers", "cm": "centimeters", "mm": "millimeters",
    "m": "meters", "kg": "kilograms", "g": "grams", "mg": "milligrams", "ml": "milliliters",
    "mL": "milliliters", "L": "liters", "ft": "feet", "lb": "pounds", "lbs": "pounds",
    "oz": "ounces", "mi": "miles", "hr": "hours", "hrs": "hours", "h": "hours",
    "min": "minutes", "mins": "minutes", "sec": "seconds",  # not "s": "the 1990s"
}
_UNIT_AFTER_NUMBER = re.compile(
    r"(\d)\s?(" + "|".join(sorted(map(re.escape, _UNIT_WORDS), key=len, reverse=True)) + r")(?![\w/])"
)


_PER_UNIT_WORDS = {
    "kg": "kilogram", "g": "gram", "mg": "milligram", "km": "kilometer", "m": "meter", "cm": "centimeter",
    "h": "hour", "hr": "hour", "min": "minute", "s": "second", "sec": "second", "l": "liter",
    "L": "liter", "ml": "milliliter", "lb": "pound", "ft": "foot", "mi": "mile", "oz": "ounce",
}
_PER_UNIT = re.compile(r"(?<=[A-Za-z\d])\s?/\s?(" + "|".join(sorted(_PER_UNIT_WORDS, key=len, reverse=True)) + r")\b")


def _prose_pass(text: str) -> str:
    """Prose-only rewrites done on the raw string before tokenising."""
    text = _UNIT_AFTER_NUMBER.sub(lambda m: f"{m[1]} {_UNIT_WORDS[m[2]]}", text)
    text = _PER_UNIT.sub(lambda m: f" per {_PER_UNIT_WORDS[m[1]]}", text)
    text = _FRACTION_TEXT.sub(lambda m: f" {_fraction_words(m[1], m[2]) or f'{m[1]} over {m[2]}'} ", text)
    # newlines: keep sentence boundaries audible
    text = re.sub(r"([A-Za-z0-9)])[ \t]*\n+", r"\1. ", text)
    return text


def _has_table(text: str) -> bool:
    lines = text.splitlines()
    piped = sum(1 for ln in lines if ln.count("|") >= 2 and ("---" in ln or ln.strip().startswith("|")))
    return piped >= 2 or bool(re.search(r"\|\s*:?-{3,}", text))


#: Function words of Latin-script languages that an en-us voice would read as English
#: gibberish (Spanish, French, German, Italian, Portuguese); words that are also common
#: in English maths problems ("a", "as", "die", "hat", "pour", "y", "mit", "von") are left out.
_FOREIGN_WORDS = frozenset("""
el los las una unos es que cuántos cuántas cuánto cuánta tiene si con por para del más son cuál
le les une des du est et combien il elle avec dans sur au aux sont qui ce cette quel quelle
der das und ist ein eine einen wie viele nicht dem zu wenn sie er auf sind
di che della sono quanti quante ha em não uma os quantos quantas tem com dos são qual
""".split())
_ENGLISH_WORDS = frozenset("""
the a an of and is are to in what how many much if he she it has have for with on each that his
her they was be by does find at from total more than as there this which will can per how
""".split())


def _not_english(text: str) -> bool:
    """A cheap guard for Latin-script questions in another language (non-Latin scripts are
    caught by :func:`_non_latin`): more foreign function words than English ones, by a clear
    margin, or Spanish inverted punctuation. Maths in ``$…$`` is ignored."""
    prose = re.sub(r"\$[^$]*\$", " ", text)
    if "¿" in prose or "¡" in prose:
        return True
    words = re.findall(r"[^\W\d_]+", prose.lower())
    foreign = sum(w in _FOREIGN_WORDS for w in words)
    english = sum(w in _ENGLISH_WORDS for w in words)
    return (foreign >= 2 and english == 0) or (foreign >= 3 and foreign > 2 * english)


def _non_latin(text: str) -> bool:
    for ch in text:
        if ch.isalpha() and ord(ch) > 0x24F and ch not in "πθαβγδ":
            name = unicodedata.name(ch, "")
            if not name.startswith("GREEK"):
                return True
    return False


# --------------------------------------------------------------------------------------
# Public API


def normalize_for_speech(text: str | None) -> tuple[str | None, str]:
    """``(spoken, "")`` or ``(None, reason)``; the reason is a short slug for the summary:
    empty, latex_environment, asymptote, table, non_latin_script, not_english, too_much_math,
    unknown_command, leftover_markup."""
    if text is None or not str(text).strip():
        return None, "empty"
    text = str(text)
    if "\\begin{" in text:
        return None, "latex_environment"
    if "[asy]" in text:
        return None, "asymptote"
    if _has_table(text):
        return None, "table"
    if _non_latin(text):
        return None, "non_latin_script"
    if _not_english(text):
        return None, "not_english"
    text = unicodedata.normalize("NFC", text)
    for k, v in _UNICODE.items():
        text = text.replace(k, v)
    text = _strip_markdown(text)
    text = text.replace("\\$", "\x00")
    text = _REPEATING.sub(lambda m: f"{m[1] or '0'} point {' '.join(m[2] + m[3])} repeating", text)
    segments = _split_math(text)
    math_chars = sum(len(s) for is_math, s in segments if is_math)
    total_chars = sum(len(s) for _, s in segments)
    if math_chars > 80 and math_chars > 0.6 * total_chars:
        return None, "too_much_math"
    parts: list[str] = []
    try:
        for is_math, seg in segments:
            if is_math:
                parts.append(" " + _Converter(seg, math=True).run() + " ")
            else:
                parts.append(_Converter(_prose_pass(seg), math=False).run())
    except _Unspeakable as e:
        reason = str(e)
        return None, "unknown_command" if reason.startswith("unknown command") else (
            reason if reason == "latex_environment" else "leftover_markup")
    spoken = "".join(parts)
    spoken = spoken.replace("\x00", " dollars ")
    spoken = re.sub(r"\s+", " ", spoken)
    spoken = re.sub(r"\s+([,.;:?!])", r"\1", spoken)
    spoken = re.sub(r"([,.;:?!])(?=[A-Za-z])", r"\1 ", spoken).strip()
    spoken = re.sub(r"^[,.;:\s]+", "", spoken)
    if re.search(r"[\\{}^_$|]", spoken):
        return None, "leftover_markup"
    if not re.search(r"[A-Za-z0-9]", spoken):
        return None, "empty"
    return spoken, ""


def speakable(text: str | None) -> str | None:
    """The question as words a TTS can read, or None when it cannot be made speakable."""
    return normalize_for_speech(text)[0]
