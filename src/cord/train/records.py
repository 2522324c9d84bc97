"""What a run writes as it goes: metrics.jsonl lines (NaN as null, cut back on resume), the
TensorBoard writer, the progress bar's postfix."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from cord.config import CordConfig


def progress_postfix(metrics: Mapping[str, Any]) -> dict[str, str]:
    """The progress bar's loss, kl and reward: only those the method has (sft has no KL and
    no reward: they are NaN there, and showed as ``kl=nan, reward=nan``)."""
    shown = {}
    for label, key, fmt in (("loss", "loss", ".4g"), ("kl", "kl_mean", ".3g"), ("reward", "reward_mean", ".2f")):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            shown[label] = format(value, fmt)
    return shown


def jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint (they will be logged again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


def tensorboard_writer(out: Path, cfg: CordConfig):
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
