"""Maths judge: final-answer extraction and equivalence, traps included.

Decisions pinned here (see cord.judges.math): 1,000 = 1000; 0.5 = 1/2; a percent equals
its number and its value (50% = 50 = ... and 50% = 0.5) but 50 ≠ 0.5; currency and unit
words are dropped; -3 ≠ 3; no answer scores 0.
"""

import re
import threading

import pytest

from cord.judges import extract_math_answer, judge, last_boxed, math_equal

# (candidate response, reference (raw answer or full response), expected score)
MATH_CASES = [
    # extraction forms
    ("The answer is 72.", "72", 1),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", 1),
    ("So the total is \\boxed{72}.", "72", 1),
    ("Final answer: 18", "18", 1),
    ("Final Answer: The final answer is $18$. I hope it is correct.", "18", 1),
    ("She has 5 apples, then buys 3 more, so she has 8 apples.", "8", 1),
    ("She has 5 apples, then buys 3 more, so she has 8 apples.", "5", 0),
    ("The answer is 8, because 5 + 3 = 8.", "8", 1),
    ("First I guessed \\boxed{7}, but correcting: \\boxed{9}", "9", 1),
    ("First I guessed \\boxed{7}, but correcting: \\boxed{9}", "7", 0),
    # boxed nested fractions
    ("\\boxed{\\frac{1}{2}}", "0.5", 1),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1),
    ("Thus $\\boxed{\\frac{\\sqrt{2}}{2}}$.", "\\frac{\\sqrt2}{2}", 1),
    ("\\boxed{\\frac{1}{\\frac{1}{2}}}", "2", 1),
    ("\\boxed{\\frac{2}{3}}", "\\frac{3}{2}", 0),
    # an unclosed box (a rollout cut at the token limit) is skipped; with no cue the last
    # number, \frac{1}{2}, is the answer
    ("the result is \\boxed{\\frac{1}{2} and then", "0.5", 1),
    # thousands separators
    ("The answer is 1,000.", "1000", 1),
    ("#### 1,234,567", "1234567", 1),
    ("He paid $1,000 in total.", "1000", 1),
    ("The answer is 1,000.", "100", 0),
    # fractions, decimals, percent
    ("The answer is 0.5", "1/2", 1),
    ("The answer is 1/2", "\\frac{1}{2}", 1),
    ("The answer is 0.33", "1/3", 0),
    ("The answer is 0.333333", "1/3", 1),
    # the tolerance is for a rounded fraction only: large integers and exact decimals are exact
    ("#### 1,234,567", "1234566", 0),
    ("The answer is 123456.7", "123456.8", 0),
    ("The answer is 2.50", "5/2", 1),
    ("The answer is 50%", "50", 1),
    ("The answer is 50%", "0.5", 1),
    ("The answer is 50", "0.5", 0),
    ("The answer is 25 percent", "25", 1),
    ("The answer is 10.0", "10", 1),
    # negative numbers
    ("The answer is -3", "-3", 1),
    ("The answer is -3", "3", 0),
    ("The temperature drops to -5 degrees.", "-5", 1),
    ("The change is 5-8=-3", "-3", 1),
    # units and currency
    ("The answer is $5.", "5", 1),
    ("The answer is 5 dollars.", "5", 1),
    ("The rope is 12 cm long. The answer is 12 cm.", "12", 1),
    ("\\boxed{12\\text{ cm}}", "12", 1),
    ("The angle is \\boxed{90^\\circ}", "90", 1),
    ("The answer is 18 dollars per hour.", "18", 1),
    ("\\boxed{5x}", "5", 0),
    # symbolic
    ("\\boxed{x^2+1}", "1+x^2", 1),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1),
    ("\\boxed{x = 5}", "5", 1),
    ("\\boxed{(1, 2)}", "(1,2)", 1),
    # no answer at all
    ("I don't know.", "5", 0),
    ("", "5", 0),
    ("The answer is 5", "", 0),
    # reference as a full response (text-conditioned rollout)
    ("The answer is 42.", "Let me compute: 6 * 7 = 42. So the answer is \\boxed{42}.", 1),
    ("#### 41", "Let me compute: 6 * 7 = 42. So the answer is \\boxed{42}.", 0),
    # a raw reference is kept whole, not reduced to its last number
    ("\\boxed{0.5}", "\\frac{1}{2}", 1),
    ("\\boxed{2}", "\\frac{1}{2}", 0),
]


@pytest.mark.parametrize("candidate,reference,expected", MATH_CASES)
def test_math_table(candidate, reference, expected):
    r = judge(candidate, reference, "math")
    assert r.score == expected, (candidate, reference, r)


@pytest.mark.parametrize(
    "candidate,reference", [(c, r) for c, r, e in MATH_CASES if e == 1 and re.fullmatch(r"-?\d+", r)]
)
def test_math_judge_rejects_a_neighbouring_number(candidate, reference):
    """Every integer the table accepts is accepted for its value only: the same response
    against the reference ± 1 scores 0 (a judge that only checks that some answer was
    found would pass the table's positive rows)."""
    for other in (int(reference) - 1, int(reference) + 1):
        r = judge(candidate, str(other), "math")
        assert r.score == 0, (candidate, other, r)
        assert r.candidate_answer is not None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("a \\boxed{3} then \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
        ("\\boxed{\\frac{1}{\\boxed{2}}}", "\\frac{1}{2}"),
        ("#### 72", "72"),
        ("The answer is: 1,000 dollars.", "1,000 dollars"),
        ("So 3 + 4 = 7 and 7 * 2 = 14 apples in all, leaving her happy.", "14"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),  # raw answer kept whole
        ("5-3=2", "2"),
        ("The answer is: $\\frac{3}{4}$ of the pie.", "\\frac{3}{4}"),
        ("The answer is $3.50.", "$3.50"),
        ("The answer is 3.5 hours, since she walks.", "3.5 hours"),
        ("No numbers here, sorry.", None),
        # a short phrase with nothing of an answer in it is no answer (counted in fail_rate)
        ("I don't know.", None),
        ("The the", None),
        ("odd", "odd"),
        ("\\pi", "\\pi"),
        ("x^2", "x^2"),
        ("", None),
        ("   ", None),
    ],
)
def test_extract_math_answer(text, expected):
    assert extract_math_answer(text) == expected


def test_last_boxed_ignores_unclosed_and_escaped_braces():
    assert last_boxed("\\boxed{1} and \\boxed{2") == "1"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("no box") is None


def test_math_equal_is_safe_on_garbage_and_none():
    assert math_equal(None, "1") is False
    assert math_equal("1", None) is False
    assert math_equal("\\frac{", "}}") is False
    # words never reach math_verify, which would read "yes" as y*e*s
    assert math_equal("yes", "sey") is False
    assert math_equal("Yes", "yes") is True


def test_math_judge_works_in_worker_thread():
    """math_verify's signal-based timeout only works in the main thread; the judge turns it
    off elsewhere, so symbolic answers still verify inside a thread pool."""
    out = []
    errors = []

    def work():
        try:
            out.append(judge("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", "math").score)
            out.append(judge("\\boxed{x^2+2x+1}", "(x+1)^2", "math").score)
        except BaseException as e:  # pragma: no cover - the failure we guard against
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not errors
    assert out == [1, 1]


def test_math_result_fields():
    r = judge("so \\boxed{\\frac{1}{2}}", "0.5", "math")
    assert (r.score, r.candidate_answer, r.reference_answer, r.kind) == (1, "\\frac{1}{2}", "0.5", "math")
    r = judge("I am not sure.", "0.5", "math")
    assert r.score == 0 and r.candidate_answer is None and r.failed_extraction
    assert "candidate" in r.note
