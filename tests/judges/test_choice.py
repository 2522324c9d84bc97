"""Multiple-choice letter extraction (VoiceBench-compatible, deterministic) and MMAU
option matching, traps included."""

import pytest

from cord.judges import extract_choice, judge, judge_batch, match_choice

OPTS = ["cat", "dog", "fish", "bird"]

# (response, choices or None, expected letter or None)
MCQ_CASES = [
    # plain forms VoiceBench accepts
    ("B", None, "B"),
    ("b", None, "B"),
    ("(C)", None, "C"),
    ("**D**", None, "D"),
    ("A.", None, "A"),
    ("The answer is (B).", None, "B"),
    ("The answer is B", None, "B"),
    ("The correct answer is: C) mitochondria", None, "C"),
    ("Answer: D", None, "D"),
    ("answer: c", None, "C"),
    ("I would choose option C because it fits.", None, "C"),
    ("I'd select B.", None, "B"),
    ("Option D is correct.", None, "D"),
    ("C is the best answer here.", None, "C"),
    ("The best choice here would be (A).", None, "A"),
    ("The answer is \\boxed{B}", None, "B"),
    ("\\boxed{\\text{C}}", None, "C"),
    ("B. The mitochondria produce energy.", None, "B"),
    ("(D) Because of gravity.", None, "D"),
    ("C) It evaporates.", None, "C"),
    ("b) dog", None, "B"),
    ("The answer is A because of gravity.", None, "A"),
    ("The answer is a.", None, "A"),
    # the article "a" and other capitals that are not options
    ("The answer is a cat.", None, None),
    ("A cat is an animal.", None, None),
    ("A cat is an animal. The answer is B.", None, "B"),
    ("A good answer would be C.", None, "C"),
    ("Vitamin C is important for health.", None, None),
    ("Hepatitis B is a virus.", None, None),
    ("The answer is B cells", None, None),
    ("I think it is the second one.", None, None),
    ("The capital is Washington D.C.", None, None),
    ("So the answer must be Vitamin C.", None, None),
    ("I think A.", None, "A"),
    ("Option B could work.", None, "B"),
    # "I" as a pronoun when there are nine or more options
    ("I think the answer is J.", list("abcdefghij"), "J"),
    ("I don't know.", list("abcdefghij"), None),
    # several letters mentioned: the final statement wins, negated letters do not count
    ("The answer is not B but C.", None, "C"),
    ("It's not A, it's D.", None, "D"),
    ("At first I thought the answer is A, but the answer is C.", None, "C"),
    ("I believe C is correct; A is wrong.", None, "C"),
    ("A and B are wrong, so D.", None, "D"),
    ("The answer is C, not B.", None, "C"),
    ("Option A is incorrect. Option B is incorrect. Option C is correct.", None, "C"),
    ("Either option A or option B could work.", None, None),
    ("(A) nucleus is wrong. (B) mitochondria is correct.", None, "B"),
    ("B. mitochondria is not right; D. golgi is the best answer.", None, "D"),
    # a list of options is not an answer
    ("A. cat\nB. dog\nC. fish\nD. bird", None, None),
    # option text when the choices are given
    ("It's a dog.", OPTS, "B"),
    ("dog", OPTS, "B"),
    ("The animal is a fish, not a bird.", OPTS, "C"),
    ("Maybe a cat or a dog.", OPTS, None),
    ("The answer is A cat.", OPTS, "A"),  # "A" followed by option A's own text
    ("The answer is A dog.", OPTS, "B"),  # here "A" is the article; the text names B
    # letters beyond the options are ignored
    ("The answer is E.", None, None),
    ("The answer is E.", list("abcde"), "E"),
    # no answer at all
    ("", None, None),
    ("I'm not sure about this one.", None, None),
]


@pytest.mark.parametrize("response,choices,expected", MCQ_CASES)
def test_mcq_table(response, choices, expected):
    assert extract_choice(response, choices) == expected


@pytest.mark.parametrize("response,choices,expected", MCQ_CASES)
def test_mcq_judge_scores_what_the_extraction_reads(response, choices, expected):
    """The ``mcq`` judge scores 1 against exactly the letter the table expects and 0 against
    every other letter; a response with no answer scores 0 and counts as a failed extraction."""
    letters = "ABCDEFGHIJ"[: len(choices)] if choices else "ABCD"
    for letter in letters:
        r = judge(response, letter, "mcq", choices=choices)
        assert r.score == int(letter == expected), (response, letter, r)
        assert r.failed_extraction == (expected is None)


def test_mcq_judge_scores_and_fail_rate():
    refs = ["B", "C", "A", "D"]
    responses = ["The answer is (B).", "I think A.", "Hmm, no idea", "D) bird"]
    results = judge_batch(responses, refs, "mcq")
    assert [r.score for r in results] == [1, 0, 0, 1]
    assert [r.candidate_answer for r in results] == ["B", "A", None, "D"]
    fail_rate = sum(r.failed_extraction for r in results) / len(results)
    assert fail_rate == 0.25


def test_mcq_judge_is_deterministic():
    # VoiceBench would draw a random letter here; we must not.
    outs = {judge("no idea at all", "A", "mcq").score for _ in range(20)}
    assert outs == {0}


def test_mcq_reference_may_be_a_full_response_or_option_text():
    assert judge("B", "Let me think. The answer is (B).", "mcq").score == 1
    assert judge("B", "dog", "mcq", choices=OPTS).score == 1
    assert judge("C", "dog", "mcq", choices=OPTS).score == 0


# --- MMAU ---------------------------------------------------------------------------------

SPEAKER = ["Man", "Woman", "Child", "Robot"]
SOURCE = ["A child", "A woman", "An adult man", "A teenager"]
GROUPS = ["Woman and child", "Two men", "Two women", "A man and a child"]

# (response, choices, expected index or None)
MMAU_CASES = [
    ("Man", SPEAKER, 0),
    ("The speaker is a woman.", SPEAKER, 1),  # "woman" contains "man": word match only
    ("woman", SPEAKER, 1),
    ("(B)", SPEAKER, 1),
    ("The answer is (C).", SPEAKER, 2),
    ("B) Woman", SPEAKER, 1),
    ("It sounds like a man at first. The answer is woman.", SPEAKER, 1),
    ("It is not a man, it is a woman.", SPEAKER, 1),
    ("The voice is of a child or a robot.", SPEAKER, None),  # two options in the final answer
    ("I cannot tell from the audio.", SPEAKER, None),
    ("A child", SOURCE, 0),  # the article is not option A
    ("The speaker is an adult man.", SOURCE, 2),
    ("A man and a child", GROUPS, 3),  # the longer option containing "a child" wins
    ("Two women talking", GROUPS, 2),
    ("a child", GROUPS, None),  # "child" alone is no option here
    ("The sound comes from a TRAIN.", ["Train", "Horse", "Bicycle", "Helicopter"], 0),
]


@pytest.mark.parametrize("response,choices,expected", MMAU_CASES)
def test_mmau_matching(response, choices, expected):
    assert match_choice(response, choices) == expected


def test_mmau_letters_only_when_lettered():
    assert match_choice("(B)", SPEAKER, lettered=True) == 1
    assert match_choice("(B)", SPEAKER, lettered=False) is None


def test_mmau_judge_uses_option_text_reference():
    r = judge("I hear a woman speaking. The answer is woman.", "Woman", "mmau", choices=SPEAKER)
    assert (r.score, r.candidate_answer, r.reference_answer) == (1, "Woman", "Woman")
    r = judge("The speaker is a man.", "Woman", "mmau", choices=SPEAKER)
    assert (r.score, r.candidate_answer) == (0, "Man")
    # reference as the text-conditioned full response
    assert judge("(A)", "The voice belongs to a man.", "mmau", choices=SPEAKER).score == 1


def test_mmau_judge_batch_per_item_choices():
    res = judge_batch(
        ["Man", "a man and a child"],
        ["Man", "A man and a child"],
        "mmau",
        contexts=[{"choices": SPEAKER}, {"choices": GROUPS}],
    )
    assert [r.score for r in res] == [1, 1]


def test_mmau_without_choices_is_a_clear_error():
    from cord import CordError

    with pytest.raises(CordError, match="choices"):
        judge("Man", "Man", "mmau")
