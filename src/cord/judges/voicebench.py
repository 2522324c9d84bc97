"""VoiceBench's multiple-choice scoring (``mmsu``, ``openbookqa``), rule for rule.

Follows ``src/evaluator/mcq.py`` of github.com/MatthewCYM/VoiceBench (``MCQEvaluator``,
unchanged since commit 8c5ca22 of 2024-11-12; read at 5338154 of 2025-06-12). The rules,
as that file applies them:

1. The response is lower-cased (and *not* stripped). A leading ``<1>``, ``<2>`` or ``<3>``
   is dropped, and only then is the rest stripped.
2. Answer templates, in the file's order: the first template that occurs anywhere in the
   response as a substring, with its slot filled by ``a``, ``b``, ``c`` or ``d`` (tried in
   that order for each template), gives the letter. The templates are kept below as
   (text before the letter, text after it) pairs, in the same order (one exact duplicate
   dropped: it could never win).
3. Bare letters: the whole response is the letter, or starts with the letter followed by
   ``.``, ``,``, ``:`` or ``)`` — letters tried a, b, c, d, each with all four marks.
4. Three literal phrases that name option A.
5. Otherwise nothing. The official evaluator then draws ``random.choice("ABCD")`` from an
   unseeded RNG and reports the share of such draws as ``fail``; here no match is no
   answer (``None``), and the report gives both the strict accuracy (no answer = wrong)
   and the official one as its expectation, acc + fail/4 (see :func:`official_accuracy`).

Only the letters A–D exist for this scorer, whatever the number of options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OFFICIAL_LETTERS = "abcd"

#: (before, after) around the letter slot, in the order the official file tries them
ANSWER_TEMPLATES: tuple[tuple[str, str], ...] = (
    ('答案是', ''),
    ('答案是 ', ''),
    ('答案是选项', ''),
    ('答案应该是', ''),
    ('答案应该是 ', ''),
    ('答案就是选项', ''),
    ('答案是‘', ''),
    ('是', '：'),
    ('答案选', ''),
    ('', '是正确'),
    ('选项', '是最合适的'),
    ('answer is: **', ''),
    ('answer is **', ''),
    ('the answer to the question is: **', ''),
    ('the answer to the multiple-choice question is **', ''),
    ("the answer is '", "'"),
    ('', ' is the best answer'),
    ('the answer is ', ''),
    ('the correct answer is ', ''),
    ('would select ', ''),
    ('would choose ', ''),
    ('would select option ', ''),
    ('would choose option ', ''),
    ('is "', '"'),
    ('is "', '.'),
    ('is: **', ')'),
    ('is **', ','),
    ('is **', ':'),
    ('is **', ')'),
    ('is: **', '.'),
    ('is: **', ':'),
    ('is **', '.'),
    ('be **', ','),
    ('is: **', '**'),
    ('is therefore option **', ':'),
    ('is: \n\n**', ')'),
    ('as **', ':'),
    ('be **', ')'),
    ('be **', ':'),
    ('is: \n\n**', '**'),
    ('suggests **', ')'),
    ('be option **', ':'),
    ('with **', ')'),
    ('is typically "', ')'),
    ('be to **', ')'),
    ('is: \n\n', ')'),
    ('is likely to be: **', '.'),
    ('is **', ' ('),
    ('is option **', '**'),
    ('is likely **', '**'),
    ('is:\n**', '.'),
    ('is:\n\n**', '.'),
    ('would be ', ''),
    ('would be option ', ''),
    ('would be (', ')'),
    ('would be option (', ')'),
    ('is ', ','),
    ('is typically ', ','),
    ('is typically ', '.'),
    ("i'd say ", '.'),
    ('option ', '.'),
    ('option ', ':'),
    ('option ', ','),
    ('the answer is:\n**', ''),
    ('is ', ':'),
    ('is ', '.'),
    ('is: ', '.'),
    ('is (', ')'),
    ('is:\n**', ')'),
    ('is likely **', ':'),
    ('is the **', ')'),
    (':\n', '.'),
    (':\n', ')'),
    (':\n', ','),
    (': \n', '.'),
    (':  \n', '.'),
    (':\n\n', '.'),
    (':\n\n', ')'),
    ('is most likely **', ':'),
    (':\n\n', ','),
    (': \n\n', '.'),
    ('is option ', ','),
    ('(', ') would be'),
    ('is (', ').'),
    ('is ', ')'),
    ('is: ', ')'),
    ('is:\n\n', ':'),
    ('is: **', ','),
    ('(option ', ')'),
    ('answer is (', ')'),
    ('select option "', '"'),
    ('is: ', ''),
    ('is typically **', ','),
    ('is **', '**'),
    ("is likely '", "'"),
    ("is option '", "'"),
    ('is:\n**', ':'),
    ('is \\( \\boxed{', ' '),
    ("would be '", "'"),
    ('is the **', '** '),
    ('question is ', ' ('),
    ('is:\n\n**', ')'),
    ('closest to option **', '**'),
    ('is most likely **', ')'),
    ("the answer to the question is '", "'"),
    ('question is **', '**'),
    ("known as '", "'"),
    ("is '", ')'),
    ('is typically **', ':'),
    ('is \\( \\boxed{\\text{', '}} \\)'),
    ('is \\( \\text{', ') }'),
    ('is \\( \\text{', '} \\)'),
    ('is \\( \\text{', ':'),
    ('is \\( \\text{', ')'),
    ('is \\(\\text{', '.'),
    ('is:\n\n**', ''),
    ('is \\( \\text{', '.}'),
    ('is \\( \\text{', '.'),
    ('is \\( \\boxed{', '}'),
    ('is:\n\\[ \\boxed{\\text{', '}}'),
    ('is:\n\\[ \\text{', ')'),
    ('is:\n\n\\[ \\text{', ')'),
    ('is \\( \\textbf{', ')'),
    ('is \\( \\text{', '}'),
    ('is: \\( \\text{', '.'),
    ('corresponds to:\n- **', ':'),
    ('would be: **', '**.'),
    ('is \\( ', ' \\)'),
    ('is:\n**', ' '),
    ('corresponds to option **', '**'),
    ('be **', '**'),
    ('be: \n\n', ')'),
    ('is:\n\\[ \\boxed{', '}'),
    ('is:  \n**', ':'),
    ('is: \\( \\text{', ')'),
    ('is likely: **', ','),
    ('is } \\mathbf{', '.'),
    ('is \\( \\boxed{', ')'),
    ('is \\( \\textbf{', '}'),
    ('is \\(', '\\)'),
    ('is:\n  \n**', ':'),
    ('is option **', ' '),
    ('is:\n\\( \\textbf{', '.'),
    ('is \\( \\mathbf{', '}'),
    ('was option **', '**'),
    ('is likely "', ')'),
    ('option **', ':'),
    ('is "', ')'),
    ('is most likely **', ','),
    ('is often **', ':'),
    ('is:  \n', ')'),
    (' ', '.'),
    (' ', ','),
    (' ', ':'),
    (' ', ')'),
    ('**', '.'),
    ('**', ')'),
    ('"', '.'),
    ('"', ','),
    ('"', ':'),
    ('(', ')'),
    ('"', '"'),
)

_TURN_MARKS = ("<1>", "<2>", "<3>")
_BARE_MARKS = (".", ",", ":", ")")
_LAST_RESORT_A = ("would be a.", 'would be "a.', "the best option from the given choices would be a scorpion (a)")


def voicebench_extract(response: str | None) -> str | None:
    """The option letter (``"A"``–``"D"``) VoiceBench's MCQ evaluator reads from
    ``response``, or None where it would fall back to a random letter."""
    if not response:
        return None
    text = response.lower()
    if text.startswith(_TURN_MARKS):
        text = text[3:].strip()
    for before, after in ANSWER_TEMPLATES:
        for letter in OFFICIAL_LETTERS:
            if f"{before}{letter}{after}" in text:
                return letter.upper()
    for letter in OFFICIAL_LETTERS:
        if text == letter or any(text.startswith(letter + mark) for mark in _BARE_MARKS):
            return letter.upper()
    if any(phrase in text for phrase in _LAST_RESORT_A):
        return "A"
    return None


def official_accuracy(correct: int, failed: int, n: int) -> float | None:
    """VoiceBench's accuracy with its random fallback replaced by its expectation.

    ``correct``: responses whose extracted letter is the reference (strict hits);
    ``failed``: responses with no letter (strict misses). The official script gives each
    failed response a uniformly random letter from A–D, right with probability 1/4, so
    its reported accuracy is a random variable with mean (correct + failed / 4) / n. The
    mean is reproducible and free of the draw's noise (sd sqrt(failed · 3/16) / n), so it
    is what cord reports; a seeded draw would be reproducible but still one noisy sample.
    """
    if n <= 0:
        return None
    return (correct + failed / 4) / n


def judge_voicebench(candidate: str, reference: str, ctx: Mapping[str, Any]):
    """Judge kind ``voicebench``: the official letter of the candidate equals the
    reference letter (a raw letter, or a response read by the same rules). ``choices``
    and ``letters`` are accepted and ignored: the official scorer knows only A–D."""
    from cord.types import JudgeResult, missing_note

    c, r = voicebench_extract(candidate or ""), voicebench_extract((reference or "").strip())
    ok = c is not None and r is not None and c == r
    return JudgeResult(int(ok), c, r, "voicebench", missing_note(c, r))


__all__ = ["ANSWER_TEMPLATES", "judge_voicebench", "official_accuracy", "voicebench_extract"]
