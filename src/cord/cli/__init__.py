"""``cord synth | train | eval | analyze | demo | reproduce | table | check-model`` — thin: parse,
load config, call.

The command-line layer, all of it: this module holds the parser and :func:`main` (the ``cord``
console script; ``python -m cord.cli`` and ``python -m cord`` run it too); each command's module
here turns its parsed flags into one call of the library — :mod:`cord.cli.synth`,
:mod:`cord.cli.train`, :mod:`cord.cli.eval` (``eval`` and ``analyze``), :mod:`cord.cli.demo`,
:mod:`cord.cli.reproduce`, :mod:`cord.cli.table`, :mod:`cord.cli.check_model` — imported only
when its command runs, so ``cord --help`` imports no torch. Nothing else in cord imports this
package (tests/test_layers.py).

Every user-facing failure is a :class:`cord.CordError` printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Callable

from cord import CordError, __version__

#: written out, not imported, so that ``cord --help`` stays fast (the registry imports torch);
#: tests/train/test_cli.py checks it against cord.models.registry.BUILTIN_FAMILIES
BUILTIN_FAMILY_NAMES = ("qwen2-audio", "qwen2.5-omni", "qwen3-omni", "step-audio2", "voxtral", "gemma3n", "mini")
FAMILY_HELP = (f"model family: {', '.join(BUILTIN_FAMILY_NAMES)}, or one a plug-in registers "
               "(default: the config's model.family)")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (any subset of the sections)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set train.lr=1e-5 (repeatable)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cord",
        description="CORD: weighted on-policy cross-modal distillation for audio language models.",
    )
    parser.add_argument("--version", action="version", version=f"cord {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help="text question/answer data -> paired speech/text data")
    _config_args(p)
    p.add_argument("--input", help="JSONL/CSV/Parquet file, or a hub dataset name (AI-MO/NuminaMath-CoT, openai/gsm8k)")
    p.add_argument("--out", help="output directory (manifest.jsonl + audio/)")
    p.add_argument("--tts", metavar="ENGINES",
                   help="espeak (default), piper or kokoro; or a mix drawn per item: espeak,piper or espeak:0.7,piper:0.3")
    p.add_argument("--limit", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int)

    p = sub.add_parser("train", help="train with CORD or a baseline from a YAML preset")
    _config_args(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                     help="resume from a checkpoint dir (default: the latest in train.output_dir); "
                          "a run also resumes automatically when its output dir holds a checkpoint")
    how.add_argument("--no-resume", action="store_true",
                     help="start fresh; refused if train.output_dir already holds a run (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="start fresh, first moving the run already in train.output_dir aside to "
                        "<output_dir>.old-<YYYYmmdd-HHMMSS>/ (nothing is deleted)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though the config changes the math (method, model, data, objective, "
                        "rollout, judge, seed, lr, batch...); harmless keys such as train.max_steps never need it")

    p = sub.add_parser("eval", help="audio vs text accuracy and their gap on benchmarks")
    _config_args(p)
    p.add_argument("--model", help="hub name or local path (or 'tiny')")
    p.add_argument("--family", help=FAMILY_HELP)
    p.add_argument("--benchmarks", help="comma-separated benchmark names, local benchmark folders or builtin:NAME (a built-in spoken set, e.g. builtin:tiny-arith)")
    p.add_argument("--modalities", help="comma-separated: audio,text")
    p.add_argument("--out", help="output directory")
    p.add_argument("--limit", type=int, help="items per benchmark")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--baseline", help="another report.json: adds gap reduction per benchmark")
    p.add_argument("--protocol", choices=["cord", "official"],
                   help="cord (default): the model's instruction, strict judges; official: each benchmark's own "
                        "prompting and scoring (VoiceBench, MMAU), comparable with published numbers")

    p = sub.add_parser("analyze", help="token-level KL diagnostics between audio and text conditioning")
    _config_args(p)
    p.add_argument("--model", help="hub name or local path (or 'tiny')")
    p.add_argument("--family", help=FAMILY_HELP)
    p.add_argument("--data", help="paired dataset directory (as `cord synth` writes)")
    p.add_argument("--out", required=False, help="output directory")
    p.add_argument("--limit", type=int)

    p = sub.add_parser("demo", help="CPU miniature: train a tiny audio LLM; does CORD close the gap better than self-distillation?")
    p.add_argument("--out", default="cord-demo", help="output directory (default: cord-demo)")
    p.add_argument("--seeds", type=int, default=None,
                   help="Stage C seeds per start of the primary arms, CORD and SFT-self (default 4; 4 with --study; "
                        "1 with --quick); the other arms run min(N, their default)")
    p.add_argument("--quick", action="store_true", help="a ~2-minute smoke version (used by the tests; its numbers mean nothing)")
    p.add_argument("--study", action="store_true",
                   help="the study: independent Stage A/B starts, every arm and ablation, the long horizon (<= 2 h on 2 cores)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 2; the count changes float reduction order, so a seed "
                        "reproduces only at the same count: use it to check a conclusion under another one)")
    p.add_argument("--test-voice", choices=["espeak", "piper"], default="espeak",
                   help="engine of the held-out voice of the secondary test set (test_unseen): espeak (default) or "
                        "piper, a neural voice (needs pip install -e '.[piper]'; slow: ~0.5 CPU-s per clip)")

    p = sub.add_parser("reproduce", help="the paper's Table 1 as one resumable pipeline: synth, eval, train, eval, table")
    p.add_argument("--config", help="a reproduce preset: configs/<family>/reproduce.yaml")
    p.add_argument("--out", help="output folder (default: the preset's out:)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the reproduce config, e.g. --set eval.limit=100 (repeatable)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--plan", action="store_true", help="print each stage's exact command (NAME<TAB>COMMAND) and exit")
    what.add_argument("--status", action="store_true", help="say which stages are done, and exit")
    what.add_argument("--stage", metavar="NAME", help="run this stage only (its inputs must be done)")

    p = sub.add_parser("table", help="Table 1: audio/text accuracy, gap and gap reduction with intervals, "
                                     "published numbers beside")
    p.add_argument("inputs", nargs="+", metavar="[LABEL=]DIR",
                   help="cord eval output folders or training run folders (the base model's evaluation among them)")
    p.add_argument("--out", required=True, help="output folder (table.md, table.json, table.png)")
    p.add_argument("--base", metavar="LABEL", help="the base model's input (default: the one evaluation of a "
                                                   "checkpoint that is not a cord training run)")
    p.add_argument("--anchors", metavar="MODEL", help="whose published numbers to show (default: the base's model)")
    p.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--title", help="the table's title")

    p = sub.add_parser("check-model", help="compare a natively re-implemented family with its checkpoint's own code")
    p.add_argument("--family", required=True, help="step-audio2")
    p.add_argument("--model", required=True, help="hub name or local folder of the released checkpoint")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow running the checkpoint's modeling code as the reference (required)")
    p.add_argument("--audio", action="append", default=[], metavar="WAV",
                   help="audio clip to compare on (repeatable; default: a built-in 3 s and 27 s signal)")
    p.add_argument("--question", default="What is 12 times 7?", help="the text prompt's question")
    p.add_argument("--instruction", default="", help="instruction after the audio / question (default none)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--device", default="auto")
    return parser


# command -> (module, function); the function takes the parsed args and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cord.cli.synth", "run"),
    "train": ("cord.cli.train", "run"),
    "eval": ("cord.cli.eval", "run_eval"),
    "analyze": ("cord.cli.eval", "run_analyze"),
    "demo": ("cord.cli.demo", "run"),
    "check-model": ("cord.cli.check_model", "run"),
    "reproduce": ("cord.cli.reproduce", "run"),
    "table": ("cord.cli.table", "run"),
}


def _resolve(command: str) -> Callable[[argparse.Namespace], int] | None:
    module, func = COMMANDS[command]
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), func, None)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        fn = _resolve(args.command)
        if fn is None:
            print(f"cord {args.command}: not implemented yet", file=sys.stderr)
            return 2
        return int(fn(args) or 0)
    except CordError as e:
        print(f"cord {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cord {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
