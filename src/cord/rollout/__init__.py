"""Rollout engines: sample completions from prompts (see :func:`make_engine`)."""

from cord.rollout.base import Engine
from cord.rollout.engine import ENGINES, GenerateEngine, HFEngine, make_engine
from cord.types import Rollouts

__all__ = ["ENGINES", "Engine", "GenerateEngine", "HFEngine", "Rollouts", "make_engine"]
