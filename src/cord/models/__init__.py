"""LALM adapters: one per family, a registry, and tiny offline builders."""

from cord.models.base import LALMAdapter, PromptBatch
from cord.models.registry import families, load_adapter, register_family

__all__ = ["LALMAdapter", "PromptBatch", "families", "load_adapter", "register_family"]
