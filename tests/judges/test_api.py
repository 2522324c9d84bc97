"""The reward API: judge / judge_batch dispatch, exact kind, errors, and the self judge."""

import pytest

from cord import CordError
from cord.judges import JUDGE_KINDS, SelfJudge, judge, judge_batch


class FakeGenerator:
    """Stands in for the policy model: records prompts, answers from a script."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        out, self.replies = self.replies[: len(prompts)], self.replies[len(prompts) :]
        return out


def test_self_judge_batches_one_call_and_parses_strictly():
    gen = FakeGenerator(["YES", "No.", "I think so", "**yes**"])
    res = judge_batch(
        ["42", "41", "7", "x"],
        ["The answer is 42.", "42", "7", "x"],
        "self",
        generate_text=gen,
        contexts=[{"question": f"question {i}"} for i in range(4)],
    )
    assert [r.score for r in res] == [1, 0, 0, 1]
    assert len(gen.calls) == 1 and len(gen.calls[0]) == 4  # one generate call for the batch
    assert "question 2" in gen.calls[0][2] and "Answer 1:\n7" in gen.calls[0][2]
    assert res[2].note.startswith("no YES/NO verdict")
    assert res[0].reference_answer == "42"  # extracted for the log, the model saw it all


def test_self_judge_object_and_single_judge():
    gen = FakeGenerator(["NO"])
    sj = SelfJudge(gen)
    r = judge("5", "6", "self", self_judge=sj, question="q")
    assert (r.score, r.kind) == (0, "self")
    assert "Question:\nq" in gen.calls[0][0]
    # no question: the prompt leaves the question block out
    gen2 = FakeGenerator(["YES"])
    judge("5", "5", "self", generate_text=gen2)
    assert "Question:" not in gen2.calls[0][0]


def test_self_judge_wrong_reply_count_is_an_error():
    with pytest.raises(CordError, match="2 prompts"):
        SelfJudge(lambda ps: ["YES"]).agree_batch(["", ""], ["1", "2"], ["1", "2"])
    with pytest.raises(CordError, match="generate_text"):
        judge("1", "1", "self")


@pytest.mark.parametrize(
    "cand,ref,score",
    [
        ("Paris", "paris", 1),
        ("The answer is Paris.", "Paris", 1),
        ("The answer is: the Eiffel Tower", "Eiffel tower", 1),
        ("London", "Paris", 0),
        ("", "Paris", 0),
    ],
)
def test_exact_kind(cand, ref, score):
    assert judge(cand, ref, "exact").score == score


def test_unknown_kind_and_options_are_clear_errors():
    with pytest.raises(CordError, match="unknown judge kind 'maths'"):
        judge("1", "1", "maths")
    with pytest.raises(CordError, match="choises"):
        judge("B", "B", "mcq", choises=["a", "b"])
    with pytest.raises(CordError, match="2 candidates but 1 references"):
        judge_batch(["1", "2"], ["1"], "math")
    assert set(JUDGE_KINDS) == {"math", "mcq", "mmau", "exact", "llm", "self", "voicebench", "mmau-official"}


def test_batch_equals_one_by_one():
    cands = ["\\boxed{3}", "#### 4", "The answer is 1,000", "nothing"]
    refs = ["3", "5", "1000", "2"]
    batch = judge_batch(cands, refs, "math")
    single = [judge(c, r, "math") for c, r in zip(cands, refs)]
    assert batch == single
    assert [r.score for r in batch] == [1, 0, 1, 0]


def test_cord_reward_compares_audio_rollouts_with_text_rollout():
    """The sequence-level reward: N audio rollouts against the text-conditioned greedy
    rollout (a full response), not against the ground truth."""
    text_rollout = "Each box has 6 eggs and there are 7 boxes, so 6 * 7 = 42. The answer is 42."
    audio_rollouts = ["6 times 7 is 42. \\boxed{42}", "I get 36.", "#### 42", "The answer is forty-two."]
    rewards = [r.score for r in judge_batch(audio_rollouts, [text_rollout] * 4, "math")]
    assert rewards == [1, 0, 1, 0]


_PIECES = ["\\boxed{", "}", "{", "$", "####", " the answer is ", "answer:", " A", " B)", "(C)", " a ", " not ",
           "1,000", "-3", "3/4", "\\frac{1}{2}", "50%", " option ", "**", "\n", ".", ",", " is ", " cat", " dog",
           "x^2", "=", " 12 cm", "I ", "\\text{", "(", ")", "  "]  # fmt: skip
_KINDS = [("math", {}), ("mcq", {}), ("mcq", {"choices": ["cat", "dog", "fish"]}),
          ("mmau", {"choices": ["cat", "dog", "a cat and a dog"]}), ("exact", {})]  # fmt: skip


def test_judges_never_raise_on_garbage():
    """A judge runs inside every training step: malformed rollouts (unclosed boxes, stray
    dollars, half statements) must score 0 or 1, never raise."""
    import random

    rng = random.Random(0)
    for _ in range(30):
        cand = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 30)))
        ref = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 6)))
        for kind, ctx in _KINDS:
            assert judge(cand, ref, kind, **ctx).score in (0, 1)


@pytest.mark.timeout(60)  # linear: well under a second each; quadratic scanning took minutes
def test_long_degenerate_responses_stay_linear():
    """A rollout looping to the token limit must not stall the judge (these inputs took
    minutes with quadratic scanning). No stopwatch: a stall fails the test's timeout."""
    for text in ("\\boxed{" * 5_000, "answer is " * 5_000, "A " * 5_000, "option " * 5_000 + "B"):
        for kind, ctx in _KINDS:
            assert judge(text, "1", kind, **ctx).score in (0, 1)


def test_make_reward_fn_scores_like_the_judge_and_builds_its_client_once(monkeypatch):
    """GRPO's reward comes from one place: 1.0/0.0 as judge_batch scores, the question passed
    to model judges, an LLM judge's client built on the first call and kept."""
    from types import SimpleNamespace

    from cord.judges import judge_batch, make_reward_fn
    from cord.judges import llm as llm_mod

    math = make_reward_fn(SimpleNamespace(kind="math"))
    cands, refs = ["so the answer is 7", "it is 8", "no idea"], ["7", "7", "7"]
    assert math(cands, refs, ["q"] * 3) == [float(r.score) for r in judge_batch(cands, refs, "math")] == [1.0, 0.0, 0.0]

    built, seen = [], []

    class Client(llm_mod.LLMJudge):
        def __init__(self):  # no server
            pass

        def agree_batch(self, questions, candidates, references):
            seen.extend(questions)
            return [llm_mod.Verdict(c == r, "") for c, r in zip(candidates, references)]

    monkeypatch.setattr(llm_mod.LLMJudge, "from_config", classmethod(lambda cls, cfg: built.append(cfg) or Client()))
    cfg = SimpleNamespace(kind="llm")
    reward = make_reward_fn(cfg)
    assert built == []  # no client (no server) until a reward is asked for
    assert reward(["a", "b"], ["a", "a"], ["q1", "q2"]) == [1.0, 0.0]
    assert reward(["b"], ["b"], ["q3"]) == [1.0]
    assert built == [cfg] and seen == ["q1", "q2", "q3"]
    with pytest.raises(ValueError, match="generate_text"):
        make_reward_fn(SimpleNamespace(kind="self"))


def test_judge_kinds_read_anywhere_include_kinds_registered_later():
    """JUDGE_KINDS is read on access: a copy taken through the package before a registration
    (``from cord.judges import JUDGE_KINDS`` at import time went stale) sees the new kind."""
    import cord.judges as judges
    from cord.judges import api

    try:
        api.register_judge("later-kind", lambda c, r, ctx: judges.JudgeResult(1, c, r, "later-kind"))
        assert "later-kind" in judges.JUDGE_KINDS and "later-kind" in api.JUDGE_KINDS
        from cord.config import load_config

        assert load_config(None, ["judge.kind=later-kind"]).judge.kind == "later-kind"
    finally:
        api._REGISTERED.pop("later-kind", None)
    assert "later-kind" not in judges.JUDGE_KINDS
