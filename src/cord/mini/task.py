"""The miniature's task: templated spoken maths word problems with short worked solutions.

A *problem* is a template plus its numbers (``add_sub:17-8-5``); names and items are surface
variation drawn by the seed. Splits are made by problem, so no test (or dev) problem — same
template and numbers — is ever seen in training, whatever name or item it wears.

One-step problems need one number fact; two-step problems chain two, so a mis-heard first
number derails both lines of the solution (the failure CORD is meant to repair)::

    Anna has 17 stickers, buys 8, then gives away 5. How many now?
    → 17 + 8 = 25. 25 - 5 = 20. The answer is 20.

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

    def solution(self) -> str:
        lines = [f"{x} {op} {y} = {r}." for x, op, y, r in self.steps()]
        return " ".join(lines + [f"{ANSWER_PREFIX} {self.answer}."])

    def question(self, name: str, item: str) -> str:
        fmt = TEMPLATES[self.template][0]
        names = dict(zip("abc", self.numbers))
        return fmt.format(name=name, item=item, **names)


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
    """PairedExample-compatible rows {id, question, answer, solution, meta} for ``problems``.

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


_ANSWER_RE = re.compile(r"answer is\s*(-?\d+)", re.IGNORECASE)


def parse_answer(text: str) -> str | None:
    """The number after the last 'The answer is' in ``text``, or None."""
    found = _ANSWER_RE.findall(text)
    return found[-1] if found else None


def vocabulary(spec: TaskSpec = TaskSpec()) -> list[str]:
    """Every word and symbol the task's questions and solutions use, in a fixed order."""
    words: set[str] = set()
    for fmt, _ in TEMPLATES.values():
        words.update(_words(fmt.format(name="", item="", a="", b="", c="")))
    words.update(NAMES)
    words.update(ITEMS)
    words.update(_words(f"{ANSWER_PREFIX} + - = . , ?"))
    numbers = [str(n) for n in range(0, spec.max_number + 1)]
    return numbers + sorted(words - set(numbers))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)
