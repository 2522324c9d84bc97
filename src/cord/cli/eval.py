"""``cord eval`` and ``cord analyze``: parse flags into the config, call the library.

Precedence: defaults < ``--config`` file < ``--set key=value`` < the command's own flags
(``--model`` → ``model.name_or_path``, ``--family`` → ``model.family``, ``--benchmarks``
→ ``eval.benchmarks``, …).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cord import CordError
from cord.config import format_validation_error, load_config


def _set(section, key: str, value: Any, flag: str) -> None:
    """Assign a flag's value to a config field (validated, one-line error)."""
    try:
        setattr(section, key, value)
    except ValidationError as e:
        raise CordError(format_validation_error(e, flag)) from None


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _model_flags(cfg, args) -> None:
    if getattr(args, "model", None):
        _set(cfg.model, "name_or_path", args.model, "--model")
    if getattr(args, "family", None):
        _set(cfg.model, "family", args.family, "--family")


def eval_config(args):
    """The CordConfig for ``cord eval`` from parsed arguments.

    ``model.long_audio`` defaults to ``skip`` here (not ``error``, training's default): a
    benchmark's long clip is left out and counted in the report instead of stopping the
    run. A value the user sets (config file or ``--set``) is kept."""
    cfg = load_config(args.config, args.overrides)
    if "long_audio" not in cfg.model.model_fields_set:
        _set(cfg.model, "long_audio", "skip", "model.long_audio")
    _model_flags(cfg, args)
    ev = cfg.eval
    if args.benchmarks is not None:
        _set(ev, "benchmarks", _split(args.benchmarks), "--benchmarks")
    if args.modalities is not None:
        _set(ev, "modalities", _split(args.modalities), "--modalities")
    for flag, key in (("out", "out"), ("limit", "limit"), ("batch_size", "batch_size"),
                      ("max_new_tokens", "max_new_tokens"), ("baseline", "baseline"),
                      ("protocol", "protocol")):
        value = getattr(args, flag, None)
        if value is not None:
            _set(ev, key, value, "--" + flag.replace("_", "-"))
    return cfg


def check_local_benchmarks(cfg) -> None:
    """The pre-flight data check on every benchmark that is a local folder (the hub ones
    are checked as they load): all missing, unreadable, empty or (under
    ``long_audio: error``) too-long clips in one line, before the model loads."""
    from cord.data.check import check_dataset
    from cord.data.paired import MANIFEST

    if "audio" not in cfg.eval.modalities:
        return
    for name in cfg.eval.benchmarks:
        if (Path(name) / MANIFEST).is_file():
            check_dataset(name, cfg.model, limit=cfg.eval.limit)


def run_eval(args) -> int:
    from cord.data.check import check_out_dir
    from cord.eval.report import AVERAGE, REPORT_JSON, REPORT_MD, format_markdown, load_report
    from cord.eval.runner import evaluate

    cfg = eval_config(args)
    check_out_dir(cfg.eval.out)
    if cfg.eval.baseline:
        load_report(cfg.eval.baseline)  # a bad baseline fails now, not after the whole evaluation
    check_local_benchmarks(cfg)
    report = evaluate(cfg, progress=True)  # a bar on a terminal, progress lines in a log
    print(format_markdown(report), end="")
    skipped = sum(int(e.get("audio_skipped") or 0) for k, e in report.items() if k != AVERAGE)
    if skipped:
        print(f"{skipped} audio item(s) longer than model.max_audio_seconds={cfg.model.max_audio_seconds:g} s were "
              f"skipped (model.long_audio={cfg.model.long_audio}; not counted in the accuracies)")
    print(f"report: {cfg.eval.out}/{REPORT_JSON}, {cfg.eval.out}/{REPORT_MD}; "
          f"answers: {cfg.eval.out}/<benchmark>/<modality>.jsonl")
    avg = report.get(AVERAGE, {})
    if avg.get("gap_reduction") is not None:
        print(f"average gap reduction vs {cfg.eval.baseline}: {100 * avg['gap_reduction']:.1f}%")
    return 0


def analyze_config(args):
    cfg = load_config(args.config, args.overrides)
    _model_flags(cfg, args)
    if args.data is not None:
        _set(cfg.data, "train", args.data, "--data")
    if args.limit is not None:
        _set(cfg.data, "limit", args.limit, "--limit")
    return cfg


def _shown_token(t: dict) -> str:
    """A token's text, or its vocabulary entry when it is a fragment of a UTF-8 character."""
    return t.get("piece", t["token"]) if "\ufffd" in t["token"] else t["token"]


def run_analyze(args) -> int:
    from cord.eval.analyze import ANALYSIS_JSON, analyze

    if not args.out:
        raise CordError("cord analyze needs --out DIR (where analysis.json and the plots go)")
    cfg = analyze_config(args)
    res = analyze(cfg, out=args.out, progress=True)  # a bar on a terminal, progress lines in a log
    kl = res["kl"]
    corr = res.get("pearson_position")
    print(f"{res['n_rollouts']} rollouts, {res['n_tokens']} tokens ({res['n_skipped']} examples skipped); "
          f"KL mean {kl['mean']:.4g}, p50 {kl['p50']:.4g}, p80 {kl['p80']:.4g}, p90 {kl['p90']:.4g}, "
          f"p99 {kl['p99']:.4g}, skewness {kl['skewness'] if kl['skewness'] is None else format(kl['skewness'], '.3g')}, "
          f"corr(position, KL) {corr if corr is None else format(corr, '.3f')}")
    top = ", ".join(f"{_shown_token(t)!r}×{t['count_top']}" for t in res.get("top_tokens", [])[:8])
    if top:
        print(f"top-divergent tokens: {top}")
    print(f"wrote {args.out}/{ANALYSIS_JSON} and plots in {args.out}")
    return 0
