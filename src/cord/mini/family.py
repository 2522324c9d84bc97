"""Registers the miniature as model family ``mini`` (imported by cord.models.registry on first
use of the name, see ``BUILTIN_FAMILIES``).

``ModelConfig(family="mini", name_or_path="tiny", tiny_seed=S)`` builds a fresh random
miniature; ``name_or_path=<dir>`` loads one written by ``MiniAdapter.save_pretrained(dir)``
(Stage A and B write theirs under the demo's output directory). ``dtype`` and ``device``
apply as for the other families, and ``long_audio`` / ``max_audio_seconds``; ``system_prompt`` and
``instruction`` are not used.
"""

from __future__ import annotations

from cord.mini.adapter import MiniAdapter
from cord.mini.model import build_mini, load_mini
from cord.models.registry import register_family, resolve_device, resolve_dtype


def load(cfg) -> MiniAdapter:
    if cfg.name_or_path == "tiny":
        model, tokenizer = build_mini(seed=cfg.tiny_seed)
    else:
        model, tokenizer = load_mini(cfg.name_or_path)
    device = resolve_device(cfg.device)
    model.to(device=device, dtype=resolve_dtype(cfg.dtype, device)).eval()
    return MiniAdapter.from_config(model, tokenizer, None, cfg)  # None: the mini's own log-mel features


register_family("mini", load)
