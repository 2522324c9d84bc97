"""``cord reproduce``: plan, status or run the pipeline (:mod:`cord.reproduce`)."""

from __future__ import annotations

import sys

from cord import CordError
from cord.reproduce.config import load_reproduce_config
from cord.reproduce.plan import build_pipeline
from cord.reproduce.runner import format_plan, format_status, run_pipeline


def run(args) -> int:
    """``cord reproduce``."""
    if not args.config:
        raise CordError("cord reproduce needs --config FILE (e.g. configs/tiny/reproduce.yaml)")
    overrides = list(args.overrides)
    cfg = load_reproduce_config(args.config, overrides)
    pipe = build_pipeline(cfg, args.config, args.out, overrides)
    if args.plan:
        sys.stdout.write(format_plan(pipe))
        return 0
    if args.status:
        sys.stdout.write(format_status(pipe))
        return 0
    run_pipeline(pipe, args.stage)
    return 0
