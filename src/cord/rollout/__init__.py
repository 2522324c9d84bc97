"""Rollout engines: sample completions from prompts."""

from cord.rollout.engine import Engine, HFEngine, Rollouts

__all__ = ["Engine", "HFEngine", "Rollouts"]
