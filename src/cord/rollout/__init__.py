"""Rollout engines: sample completions from prompts (see :func:`make_engine`)."""

from cord.rollout.engine import ENGINES, Engine, GenerateEngine, HFEngine, Rollouts, make_engine

__all__ = ["ENGINES", "Engine", "GenerateEngine", "HFEngine", "Rollouts", "make_engine"]
