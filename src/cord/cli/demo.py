"""``cord demo``: the CPU miniature (:func:`cord.mini.demo.run_demo`) and its primary outcome in
one line."""

from __future__ import annotations

from pathlib import Path

from cord import CordError


def run(args) -> int:
    """CLI entry: ``cord demo [--out DIR] [--seeds N] [--quick | --study] [--threads N] [--test-voice espeak|piper]``."""
    from cord.mini.demo import run_demo

    study = bool(getattr(args, "study", False))
    if study and args.quick:
        raise CordError("--quick and --study exclude each other")
    report = run_demo(args.out, seeds=args.seeds, quick=args.quick, study=study,
                      test_voice=getattr(args, "test_voice", "espeak"), threads=getattr(args, "threads", None))
    p = report["primary"]
    print(f"primary outcome: {p['outcome']} (CORD − SFT-self: {p['mean']:+.1f} points audio accuracy, 95% interval "
          f"[{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}], mde {p['mde']:.1f}); conclusion: {report['conclusion']}; "
          f"report: {Path(args.out) / 'report.md'}")
    return 0
