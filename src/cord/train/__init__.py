"""Training: the step, the loop, method presets, checkpoints.

``Trainer`` and ``train`` load lazily, so that ``cord.train.METHODS`` (the method table of
:mod:`cord.types`, which the config validates against) imports without torch.
"""

from cord.types import METHODS, MethodSpec

__all__ = ["METHODS", "MethodSpec", "Trainer", "train"]


def __getattr__(name: str):
    if name in ("Trainer", "train"):
        from cord.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'cord.train' has no attribute {name!r}")
