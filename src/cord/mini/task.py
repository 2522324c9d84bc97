"""The miniature's task: templated spoken maths word problems with worked solutions.

A *problem* is a template plus its numbers (``add_sub:17-8-5``); names and items are surface
variation drawn by the seed. Splits are made by problem, so no test (or dev) problem — same
template and numbers — is ever seen in training, whatever name or item it wears.

One-step problems need one number fact; two-step problems chain two, so a mis-heard first
number derails both lines of the solution.

**A worked solution has more than one correct form.** Stage A teaches the language model two
equivalent formats in fixed proportions (:data:`STAGE_A_FORMATS`), so the text teacher holds a
real distribution over solutions, not one string per problem::

    Anna has 17 stickers, buys 8, then gives away 5. How many now?
    → ops   (60 %): 17 + 8 = 25. 25 - 5 = 20. The answer is 20.
    → words (40 %): 17 plus 8 is 25. 25 minus 5 is 20. The answer is 20.

A third format, ``ext``, is never taught in Stage A: it is the "external worked solutions"
of the SFT-ext arm (the paper's SFT baseline trains on solutions written by someone else)::

    → ext: Start with 17, add 8 to get 25, take away 5 to get 20. The answer is 20.

The audio alignment (Stage B) needs a second text task: **repeating the question**. Its target
is the question's words without punctuation (:func:`transcript`), what the speech says.

Numbers stay small (first number 2..20, the others 2..9 by default) so clips stay short
(about 2–4 s at the TTS speeds used) and the number facts the LM must know are few.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable

# template key -> (question format, operations applied left to right to a, then b, then c)
TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "add_buy": ("{name} has {a} {item} and buys {b} more. How many now?", ("+",)),
    "sub_give": ("{name} has {a} {item} and gives away {b}. How many are left?", ("-",)),
    "add_box": ("A box has {a} {item}. {name} puts in {b} more. How many are in the box?", ("+",)),
    "sub_lose": ("{name} had {a} {item} and lost {b}. How many are left?", ("-",)),
    "add_sub": ("{name} has {a} {item}, buys {b}, then gives away {c}. How many now?", ("+", "-")),
    "sub_add": ("{name} has {a} {item}, loses {b}, then finds {c}. How many now?", ("-", "+")),
    "add_add": ("{name} has {a} {item}, gets {b}, then gets {c} more. How many now?", ("+", "+")),
    "sub_sub": ("{name} had {a} {item}, lost {b}, then gave away {c}. How many are left?", ("-", "-")),
}
NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Jack", "Emma", "Leo", "Nora")
ITEMS = ("apples", "pencils", "stickers", "coins", "books", "cookies", "marbles", "cards", "shells", "stamps")
ANSWER_PREFIX = "The answer is"
SPLITS = ("train", "dev", "test")

#: the solution formats: a line per step, then the answer line
FORMATS = ("ops", "words", "ext")
#: the formats Stage A teaches and their fixed shares (the text teacher's distribution)
STAGE_A_FORMATS: dict[str, float] = {"ops": 0.6, "words": 0.4}
#: the format of the SFT-ext arm's solutions: never taught in Stage A
EXTERNAL_FORMAT = "ext"
_WORDS = {"+": "plus", "-": "minus"}
_EXT = {"+": "add", "-": "take away"}


@dataclass(frozen=True)
class TaskSpec:
    """The problem space. ``first`` bounds the first number, ``other`` the later ones."""

    first: tuple[int, int] = (2, 20)
    other: tuple[int, int] = (2, 9)
    templates: tuple[str, ...] = tuple(TEMPLATES)

    @property
    def max_number(self) -> int:
        # the largest number any solution line can contain (a + b + c for add_add)
        return self.first[1] + 2 * self.other[1]


@dataclass(frozen=True)
class Problem:
    template: str
    numbers: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.template}:{'-'.join(map(str, self.numbers))}"

    def steps(self) -> list[tuple[int, str, int, int]]:
        """[(left, op, right, result), ...] — one per solution line."""
        ops = TEMPLATES[self.template][1]
        value, out = self.numbers[0], []
        for op, n in zip(ops, self.numbers[1:]):
            result = value + n if op == "+" else value - n
            out.append((value, op, n, result))
            value = result
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1][3]

    def solution(self, fmt: str = "ops") -> str:
        """The worked solution in format ``fmt`` (one of :data:`FORMATS`)."""
        steps = self.steps()
        if fmt == "ops":
            lines = [f"{x} {op} {y} = {r}." for x, op, y, r in steps]
        elif fmt == "words":
            lines = [f"{x} {_WORDS[op]} {y} is {r}." for x, op, y, r in steps]
        elif fmt == "ext":
            parts = [f"Start with {steps[0][0]}"] + [f"{_EXT[op]} {y} to get {r}" for _, op, y, r in steps]
            lines = [", ".join(parts) + "."]
        else:
            raise ValueError(f"unknown solution format {fmt!r} (one of {', '.join(FORMATS)})")
        return " ".join(lines + [f"{ANSWER_PREFIX} {self.answer}."])

    def question(self, name: str, item: str) -> str:
        fmt = TEMPLATES[self.template][0]
        names = dict(zip("abc", self.numbers))
        return fmt.format(name=name, item=item, **names)


def transcript(question: str) -> str:
    """What the speech says: the question's words without punctuation (the target of the
    "repeat the question" task and of Stage B's CTC)."""
    return " ".join(re.findall(r"\w+", question))


def draw_format(rng: random.Random, shares: dict[str, float] = STAGE_A_FORMATS) -> str:
    """A format drawn with the given shares."""
    x, acc = rng.random(), 0.0
    for fmt, share in shares.items():
        acc += share
        if x < acc:
            return fmt
    return next(reversed(shares))


def all_problems(spec: TaskSpec = TaskSpec()) -> list[Problem]:
    """Every valid problem of ``spec`` (no step goes below 1), in a fixed order."""
    lo, hi = spec.first
    olo, ohi = spec.other
    out = []
    for t in spec.templates:
        n_ops = len(TEMPLATES[t][1])
        for a in range(lo, hi + 1):
            for b in range(olo, ohi + 1):
                tails = [()] if n_ops == 1 else [(c,) for c in range(olo, ohi + 1)]
                for tail in tails:
                    p = Problem(t, (a, b, *tail))
                    if all(r >= 1 for *_, r in p.steps()):
                        out.append(p)
    return out


#: at most this share of one template's problems is held out (dev + test), so a large test
#: set cannot empty the small one-step templates of training problems
MAX_HELD_SHARE = 0.5


def split_problems(
    seed: int, n_test: int, n_dev: int, spec: TaskSpec = TaskSpec(), max_held_share: float = MAX_HELD_SHARE
) -> dict[str, list[Problem]]:
    """Disjoint problem pools {train, dev, test}, balanced over templates, fixed by ``seed``.

    Test and dev problems are drawn round-robin over templates, each template giving at most
    ``max_held_share`` of its problems (and always leaving one for training); once the small
    one-step templates reach that cap the two-step ones fill the rest. Every other problem is
    in the train pool.
    """
    by_template: dict[str, list[Problem]] = {t: [] for t in spec.templates}
    for p in all_problems(spec):
        by_template[p.template].append(p)
    rng = random.Random(f"cord-mini-split-{seed}")
    for t in spec.templates:
        rng.shuffle(by_template[t])
    held: list[Problem] = []
    need = n_test + n_dev
    cursor = {t: 0 for t in spec.templates}
    cap = {t: min(len(ps) - 1, max(1, int(max_held_share * len(ps)))) for t, ps in by_template.items()}
    while len(held) < need:
        progressed = False
        for t in spec.templates:
            if len(held) < need and cursor[t] < cap[t]:
                held.append(by_template[t][cursor[t]])
                cursor[t] += 1
                progressed = True
        if not progressed:
            raise ValueError(f"the task has too few problems for {n_test} test + {n_dev} dev items "
                             f"(at most {max_held_share:g} of each template is held out)")
    rng.shuffle(held)
    test, dev = held[:n_test], held[n_test:]
    train = [p for t in spec.templates for p in by_template[t][cursor[t] :]]
    train.sort(key=lambda p: p.key)
    return {"train": train, "dev": dev, "test": test}


def make_rows(problems: Iterable[Problem], seed: int, prefix: str, repeat_to: int | None = None) -> list[dict]:
    """PairedExample-compatible rows {id, question, answer, solution, problem, steps} for
    ``problems`` (``solution`` in the ``ops`` format).

    ``repeat_to``: draw that many rows from ``problems`` — a template uniformly, then one of
    its problems — with fresh surface variation; None: one row per problem, in order.
    (Uniform over problems would starve the one-step templates, which have ~8× fewer
    problems than the two-step ones.)
    """
    problems = list(problems)
    rng = random.Random(f"cord-mini-rows-{prefix}-{seed}")
    if repeat_to is not None:
        by_template: dict[str, list[Problem]] = {}
        for p in problems:
            by_template.setdefault(p.template, []).append(p)
        templates = sorted(by_template)
        problems = [rng.choice(by_template[rng.choice(templates)]) for _ in range(repeat_to)]
    rows = []
    for i, p in enumerate(problems):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        rows.append(
            {
                "id": f"{prefix}-{i:05d}",
                "question": p.question(name, item),
                "answer": str(p.answer),
                "solution": p.solution(),
                "problem": p.key,
                "steps": len(p.numbers) - 1,
            }
        )
    return rows


def make_task(
    seed: int = 0, n_train: int = 2000, n_dev: int = 200, n_test: int = 400, spec: TaskSpec = TaskSpec()
) -> dict[str, list[dict]]:
    """Rows for each split: train rows sample the train pool (problems may repeat with other
    names/items and, later, other voices); dev and test have one row per distinct problem."""
    pools = split_problems(seed, n_test=n_test, n_dev=n_dev, spec=spec)
    return {
        "train": make_rows(pools["train"], seed, "train", repeat_to=n_train),
        "dev": make_rows(pools["dev"], seed, "dev"),
        "test": make_rows(pools["test"], seed, "test"),
    }


def problem_of(key: str) -> Problem:
    """The :class:`Problem` of a key such as ``add_sub:17-8-5``."""
    template, numbers = key.split(":")
    return Problem(template, tuple(int(n) for n in numbers.split("-")))


_ANSWER_RE = re.compile(r"answer is\s*(-?\d+)", re.IGNORECASE)


def parse_answer(text: str) -> str | None:
    """The number after the last 'The answer is' in ``text``, or None."""
    found = _ANSWER_RE.findall(text)
    return found[-1] if found else None


_STEP_RES = (
    re.compile(r"(\d+) ([+-]) (\d+) = (\d+)"),
    re.compile(r"(\d+) (plus|minus) (\d+) is (\d+)"),
)
_EXT_START = re.compile(r"Start with (\d+)")
_EXT_STEP = re.compile(r"(add|take away) (\d+) to get (\d+)")
_OP = {"+": "+", "-": "-", "plus": "+", "minus": "-", "add": "+", "take away": "-"}


def solution_format(text: str) -> str | None:
    """Which of :data:`FORMATS` a solution is written in (by its first step), or None."""
    if _EXT_START.search(text):
        return "ext"
    first = [(m.start(), fmt) for fmt, rx in zip(("ops", "words"), _STEP_RES) for m in [rx.search(text)] if m]
    return min(first)[1] if first else None


def parse_steps(text: str) -> list[tuple[int, str, int, int]]:
    """The solution lines of ``text`` as [(left, op, right, result), ...], whatever its format
    (:func:`solution_format`); [] when none can be read."""
    fmt = solution_format(text)
    if fmt is None:
        return []
    if fmt == "ext":
        start = _EXT_START.search(text)
        value, out = int(start.group(1)), []
        for m in _EXT_STEP.finditer(text, start.end()):
            out.append((value, _OP[m.group(1)], int(m.group(2)), int(m.group(3))))
            value = int(m.group(3))
        return out
    rx = _STEP_RES[0] if fmt == "ops" else _STEP_RES[1]
    return [(int(a), _OP[op], int(b), int(r)) for a, op, b, r in rx.findall(text)]


#: where an audio answer goes wrong first (:func:`error_kind`), in the order of the solution
ERROR_KINDS = ("no_answer", "operand", "operation", "arithmetic", "carry", "answer_line", "other")


def error_kind(output: str, problem: Problem) -> str | None:
    """Where a wrong answer first departs from a correct solution (None when it is correct):

    ``operand`` — a number taken from the question is wrong (misheard or misread) on some line;
    ``operation`` — a line adds where the question subtracts (or the reverse);
    ``arithmetic`` — a line's result is not its own left op right;
    ``carry`` — a second line does not start from the first line's result;
    ``answer_line`` — the lines are right but the final answer is not their result;
    ``no_answer`` — no "The answer is N"; ``other`` — anything else (lines missing, extra)."""
    pred = parse_answer(output)
    if pred == str(problem.answer):
        return None
    if pred is None:
        return "no_answer"
    steps, truth = parse_steps(output), problem.steps()
    for i, (want, got) in enumerate(zip(truth, steps)):
        if i > 0 and got[0] != steps[i - 1][3]:
            return "carry"
        if (i == 0 and got[0] != want[0]) or got[2] != want[2]:
            return "operand"
        if got[1] != want[1]:
            return "operation"
        if got[3] != (got[0] + got[2] if got[1] == "+" else got[0] - got[2]):
            return "arithmetic"
    if len(steps) == len(truth) and steps and steps[-1][3] != int(pred):
        return "answer_line"
    return "other"


def vocabulary(spec: TaskSpec = TaskSpec()) -> list[str]:
    """Every word and symbol the task's questions and solutions use, in a fixed order."""
    words: set[str] = set()
    for fmt, _ in TEMPLATES.values():
        words.update(_words(fmt.format(name="", item="", a="", b="", c="")))
    words.update(NAMES)
    words.update(ITEMS)
    words.update(_words(f"{ANSWER_PREFIX} + - = . , ?"))
    for sol in (Problem("add_sub", (9, 2, 3)).solution(f) for f in FORMATS):
        words.update(_words(sol))
    numbers = [str(n) for n in range(0, spec.max_number + 1)]
    return numbers + sorted(words - set(numbers))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)
