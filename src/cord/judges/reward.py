"""The GRPO reward: one function from a judge config section to a reward function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cord.judges.api import judge_batch

#: (candidates, references, questions) -> one 0/1 reward per candidate
RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], list[float]]


def make_reward_fn(judge_cfg: Any, *, generate_text: Callable[[list[str]], list[str]] | None = None) -> RewardFn:
    """The reward of ``judge_cfg.kind`` (a ``judge:`` config section): each candidate judged
    against its reference, 1.0 or 0.0. ``llm`` builds its client from the section on the first
    call (and keeps it); ``self`` asks ``generate_text`` (the policy under a text prompt); both
    see the question."""
    kind = judge_cfg.kind
    if kind == "self" and generate_text is None:
        raise ValueError("judge kind 'self' needs generate_text (the model that answers the judge's prompt)")
    client: list[Any] = []

    def reward(candidates: Sequence[str], references: Sequence[str], questions: Sequence[str]) -> list[float]:
        ctx: dict[str, Any] = {}
        if kind == "llm":
            if not client:
                from cord.judges.llm import LLMJudge

                client.append(LLMJudge.from_config(judge_cfg))
            ctx["client"] = client[0]
        elif kind == "self":
            ctx["generate_text"] = generate_text
        contexts = [{"question": q} for q in questions] if kind in ("llm", "self") else None
        return [float(r.score) for r in judge_batch(list(candidates), list(references), kind, contexts=contexts, **ctx)]

    return reward
