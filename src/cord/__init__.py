"""cord: weighted On-policy Cross-modal Distillation for large audio language models."""

__version__ = "0.1.0"


class CordError(Exception):
    """A user-facing failure. Its message is one line saying what was wrong and what to do."""
