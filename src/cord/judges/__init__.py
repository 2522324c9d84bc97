"""Judges: does a model's answer agree with a reference?

The reward API is :func:`judge` / :func:`judge_batch` (kinds ``math``, ``mcq``, ``mmau``,
``exact``, ``llm``, ``self``, and the registered ``voicebench`` and ``mmau-official`` —
the benchmarks' own scoring rules; :func:`register_judge` adds more), returning
:class:`JudgeResult`; :func:`make_reward_fn` turns a ``judge:`` config section into GRPO's
reward function. A reference may be a raw
answer or a full response (e.g. the text-conditioned greedy rollout): it goes through the
same extraction as the candidate. The pieces are public too: answer extraction
(:func:`extract_math_answer`, :func:`extract_choice`, :func:`match_choice`), maths
equivalence (:func:`math_equal`), and the model judges (:class:`LLMJudge`,
:class:`SelfJudge`).
"""

from cord.judges.api import JudgeResult, judge, judge_batch, judge_kinds, register_judge
from cord.judges.choice import extract_choice, letters_for, match_choice
from cord.judges.extract import extract_final_span, extract_math_answer, last_boxed, last_number, normalize_text
from cord.judges.llm import AGREEMENT_TEMPLATE, LLMJudge, SelfJudge, Verdict, build_agreement_prompt, parse_verdict
from cord.judges.math import math_equal, normalize_math_answer
from cord.judges.mmau_official import string_match
from cord.judges.reward import RewardFn, make_reward_fn
from cord.judges.voicebench import official_accuracy, voicebench_extract

__all__ = [
    "AGREEMENT_TEMPLATE",
    "JUDGE_KINDS",
    "JudgeResult",
    "LLMJudge",
    "RewardFn",
    "SelfJudge",
    "Verdict",
    "build_agreement_prompt",
    "extract_choice",
    "extract_final_span",
    "extract_math_answer",
    "judge",
    "judge_batch",
    "judge_kinds",
    "last_boxed",
    "last_number",
    "letters_for",
    "match_choice",
    "math_equal",
    "normalize_math_answer",
    "official_accuracy",
    "normalize_text",
    "make_reward_fn",
    "parse_verdict",
    "register_judge",
    "string_match",
    "voicebench_extract",
]


def __getattr__(name: str):
    if name == "JUDGE_KINDS":  # every kind as of now (register_judge adds kinds after import)
        return judge_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
