"""``cord train --config FILE [--set key=value ...] [--resume [CKPT] | --no-resume] [--overwrite]
[--allow-config-change]``."""

from __future__ import annotations

import json
import math

from cord import CordError
from cord.config import load_config


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)  # config errors before any heavy work
    overwrite = bool(getattr(args, "overwrite", False))
    allow = bool(getattr(args, "allow_config_change", False))
    if overwrite and args.resume == "auto":
        raise CordError("--overwrite starts a fresh run (moving the old one aside); --resume continues the old "
                        "one: use one of them (--resume CHECKPOINT --overwrite resumes another folder's checkpoint)")
    resume = "no" if args.no_resume or (overwrite and args.resume is None) else args.resume
    from cord.train.trainer import train

    summary = train(cfg, resume=resume, overwrite=overwrite, allow_config_change=allow)
    if summary.get("rank", 0) != 0:  # under accelerate launch: one summary, from process 0
        return 0
    if summary.get("moved_aside"):
        print(f"moved the previous run in {cfg.train.output_dir} to {summary['moved_aside']}")
    if summary["resumed_from"]:
        print(f"resumed from {summary['resumed_from']}")
    if summary.get("config_changes"):
        print(f"resumed with config changes (--allow-config-change): {'; '.join(summary['config_changes'])}")
    last = summary["last"]
    keys = ("loss", "kl_mean", "reward_mean", "completion_len")
    shown = ", ".join(f"{k}={last[k]:.4g}" for k in keys  # a metric the method lacks is NaN: not shown
                      if isinstance(last.get(k), float) and math.isfinite(last[k]))
    print(f"trained to step {summary['step']} ({cfg.objective.method}); {shown}")
    print(f"checkpoint: {summary['checkpoint']}; model: {cfg.train.output_dir}/model; "
          f"metrics: {cfg.train.output_dir}/metrics.jsonl")
    return 0


def summary_json(summary) -> str:
    return json.dumps(summary, default=str)
