"""``cord synth``: command-line flags override the ``synth:`` section of an optional config."""

from __future__ import annotations

from cord import CordError
from cord.config import load_config


def run(args) -> int:
    overrides = list(args.overrides)
    for flag in ("input", "out", "tts", "limit", "workers", "seed"):
        value = getattr(args, flag)
        if value is not None:
            overrides.append((f"synth.{flag}={value}", f"--{flag} {value}"))  # errors name the flag
    cfg = load_config(args.config, overrides)
    if not cfg.synth.input:
        raise CordError("no input: pass --input FILE_OR_HUB_NAME (or synth.input in the config)")
    from cord.data.synth import synth_main

    # not given: no --out and the config left synth.out at its default (the dataset then goes
    # to data/train, where cord train looks by default; the first printed line says so)
    out_given = args.out is not None or cfg.synth.out != type(cfg.synth).model_fields["out"].default
    return synth_main(cfg.synth, out_given=out_given)
