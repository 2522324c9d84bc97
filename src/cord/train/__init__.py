"""Training: the step, the loop, method presets, checkpoints."""

from cord.train.methods import METHODS, MethodSpec
from cord.train.trainer import Trainer, train

__all__ = ["METHODS", "MethodSpec", "Trainer", "train"]
