"""``cord train --config FILE [--set key=value ...] [--resume [CKPT] | --no-resume]``."""

from __future__ import annotations

import json

from cord.config import load_config


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)  # config errors before any heavy work
    from cord.train.trainer import train

    resume = "no" if args.no_resume else args.resume
    summary = train(cfg, resume=resume)
    last = summary["last"]
    keys = ("loss", "kl_mean", "reward_mean", "completion_len")
    shown = ", ".join(f"{k}={last[k]:.4g}" for k in keys if isinstance(last.get(k), float))
    print(f"trained to step {summary['step']} ({cfg.objective.method}); {shown}")
    print(f"checkpoint: {summary['checkpoint']}; model: {cfg.train.output_dir}/model; "
          f"metrics: {cfg.train.output_dir}/metrics.jsonl")
    if summary["resumed_from"]:
        print(f"resumed from {summary['resumed_from']}")
    return 0


def summary_json(summary) -> str:
    return json.dumps(summary, default=str)
