"""Evaluation reports: recomputed from the per-item JSONL, never from in-memory counters.

Layout of an evaluation directory::

    DIR/<benchmark>/<modality>.jsonl   one record per item (see cord.eval.score)
    DIR/eval-run.json                  what produced the answers (model and its files, prompts,
                                       protocol, decoding, long-audio policy)
    DIR/report.json                    {benchmark: {audio_acc, text_acc, gap, n, fail_rate, ...},
                                        "average": {...}}
    DIR/report.md                      the same as a markdown table

Accuracy of a modality = correct / answered items of that modality (items the long-audio
policy skipped are counted as ``<modality>_skipped``, not as wrong); ``gap`` = text_acc −
audio_acc; ``fail_rate`` = share of answered responses (both modalities) from which no
answer could be extracted (per modality as ``audio_fail_rate`` / ``text_fail_rate``).

Every entry says which ``protocol`` (``cord`` / ``official``) produced its answers. Where
items were judged by VoiceBench's rules (judge ``voicebench``), ``<modality>_acc`` stays the
strict accuracy (no letter = wrong) and ``<modality>_acc_official`` is VoiceBench's own
number with its random fallback at its expectation, (correct + failed / 4) / answered
(:func:`cord.judges.official_accuracy`); ``gap_official`` is their difference. Items with
report groups (MMAU: task, difficulty, sub-category) give ``by_task``, ``by_difficulty``,
``by_sub_category`` — ``{group: {<modality>_acc, n}}``, the accuracies MMAU's
``evaluation.py`` prints — and ``audio_acc_task_mean``, the mean over tasks that MMAU's
tables report as the average.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cord import CordError
from cord.data.paired import read_json
from cord.eval.records import dump_json, read_records, write_atomic
from cord.judges.voicebench import official_accuracy

MODALITIES = ("audio", "text")
#: reserved top-level key of report.json (not a benchmark)
AVERAGE = "average"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


# --- metrics --------------------------------------------------------------------------------


def _mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def modality_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """acc, n (answered), skipped, fail_rate for one modality's records."""
    answered = [r for r in records if r.get("status", "answered") == "answered"]
    skipped = sum(1 for r in records if r.get("status") == "skipped")
    return {
        "acc": _mean(int(r["correct"]) for r in answered),
        "n": len(answered),
        "skipped": skipped,
        "failed": sum(1 for r in answered if r.get("answer") is None),
        "fail_rate": _mean(float(r.get("answer") is None) for r in answered),
    }


def benchmark_metrics(
    by_modality: Mapping[str, Mapping[str, Mapping[str, Any]]], ids: Iterable[str] | None = None
) -> dict[str, Any]:
    """One benchmark's report entry from ``{modality: {id: record}}``; ``ids`` restricts it
    to these items (default: every id seen)."""
    all_ids = set().union(*(set(r) for r in by_modality.values())) if by_modality else set()
    wanted = set(ids) if ids is not None else all_ids
    entry: dict[str, Any] = {"n": len(wanted)}
    failed = answered = 0
    per_cat: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for mod in MODALITIES:
        if mod not in by_modality:
            entry[f"{mod}_acc"] = None
            continue
        recs = [by_modality[mod][i] for i in sorted(wanted) if i in by_modality[mod]]
        m = modality_metrics(recs)
        entry[f"{mod}_acc"] = m["acc"]
        entry[f"{mod}_n"] = m["n"]
        entry[f"{mod}_skipped"] = m["skipped"]
        entry[f"{mod}_fail_rate"] = m["fail_rate"]
        missing = len(wanted) - len(recs)
        if missing:
            entry[f"{mod}_missing"] = missing
        failed += m["failed"]
        answered += m["n"]
        for r in recs:
            if r.get("status", "answered") == "answered":
                per_cat[str(r.get("category") or "")][mod].append(int(r["correct"]))
    a, t = entry.get("audio_acc"), entry.get("text_acc")
    entry["gap"] = t - a if a is not None and t is not None else None
    entry["fail_rate"] = failed / answered if answered else None
    if len(per_cat) > 1:
        entry["by_category"] = {
            cat: {
                **{f"{mod}_acc": _mean(v[mod]) for mod in MODALITIES if mod in by_modality},
                "n": max((len(v[mod]) for mod in v), default=0),
            }
            for cat, v in sorted(per_cat.items())
        }
    _add_protocol_metrics(entry, by_modality, wanted)
    return entry


def _official(records: list[Mapping[str, Any]]) -> float | None:
    """VoiceBench's accuracy of these answered records (random fallback at its mean)."""
    correct = sum(int(r["correct"]) for r in records)
    failed = sum(1 for r in records if r.get("answer") is None)
    return official_accuracy(correct, failed, len(records))


def _add_protocol_metrics(entry: dict[str, Any], by_modality: Mapping[str, Mapping[str, Mapping[str, Any]]],
                          wanted: set[str]) -> None:
    """``protocol``, VoiceBench's official accuracies and the per-group accuracies (see the
    module docstring), in place."""
    answered = {
        mod: [r for i in sorted(wanted) if (r := by_modality[mod].get(i)) is not None
              and r.get("status", "answered") == "answered"]
        for mod in MODALITIES if mod in by_modality
    }  # fmt: skip
    protocols = {str(r["protocol"]) for recs in answered.values() for r in recs if r.get("protocol")}
    entry["protocol"] = protocols.pop() if len(protocols) == 1 else ("mixed" if protocols else "cord")
    for mod, recs in answered.items():
        if any(r.get("judge") == "voicebench" for r in recs):
            entry[f"{mod}_acc_official"] = _official(recs)
    a, t = entry.get("audio_acc_official"), entry.get("text_acc_official")
    if a is not None and t is not None:
        entry["gap_official"] = t - a
    if "by_category" in entry and any(f"{m}_acc_official" in entry for m in MODALITIES):
        for cat, row in entry["by_category"].items():
            for mod, recs in answered.items():
                mine = [r for r in recs if str(r.get("category") or "") == cat]
                if mine and f"{mod}_acc_official" in entry:
                    row[f"{mod}_acc_official"] = _official(mine)
    keys = list(dict.fromkeys(k for recs in answered.values() for r in recs for k in (r.get("groups") or {})))
    for key in keys:
        table: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for mod, recs in answered.items():
            for r in recs:
                group = (r.get("groups") or {}).get(key)
                if group is not None:
                    table[str(group)][mod].append(int(r["correct"]))
        entry["by_" + key.replace("-", "_")] = {
            g: {**{f"{mod}_acc": _mean(v[mod]) for mod in MODALITIES if mod in v}, "n": max(len(x) for x in v.values())}
            for g, v in sorted(table.items())
        }
    tasks = entry.get("by_task")
    if tasks:
        entry["audio_acc_task_mean"] = _mean(v["audio_acc"] for v in tasks.values() if v.get("audio_acc") is not None)


def average_entry(report: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Macro average over benchmarks (each benchmark counts once, whatever its size).

    Where some benchmarks have both modalities, audio_acc, text_acc and gap are averaged
    over those only (``averaged_over``), so the row stays consistent: gap = text − audio.
    """
    rows = {k: v for k, v in report.items() if k != AVERAGE}
    paired = {k: v for k, v in rows.items() if v.get("gap") is not None}
    pool = paired or rows
    out: dict[str, Any] = {"n": sum(int(r.get("n") or 0) for r in rows.values()), "benchmarks": len(rows)}
    for key in ("audio_acc", "text_acc", "gap"):
        out[key] = _mean(r[key] for r in pool.values() if r.get(key) is not None)
    out["fail_rate"] = _mean(r["fail_rate"] for r in rows.values() if r.get("fail_rate") is not None)
    out["averaged_over"] = sorted(pool)
    protocols = {str(r.get("protocol") or "cord") for r in rows.values()}
    out["protocol"] = protocols.pop() if len(protocols) == 1 else "mixed"
    return out


def report_from_items(
    out_dir: str | Path,
    benchmarks: Iterable[str] | None = None,
    ids: Mapping[str, Iterable[str]] | None = None,
    modalities: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Recompute the report from ``out_dir/<benchmark>/<modality>.jsonl``.

    ``benchmarks``: which sub-folders (default: every one holding a modality JSONL).
    ``ids``: per benchmark, the item ids to count (default: every id in its files).
    ``modalities``: which files to read (default: audio and text, where present).
    Returns ``{benchmark: entry, ..., "average": entry}``.
    """
    out_dir = Path(out_dir)
    mods = tuple(modalities) if modalities is not None else MODALITIES
    if benchmarks is None:
        benchmarks = sorted(
            p.name for p in out_dir.iterdir() if p.is_dir() and any((p / f"{m}.jsonl").is_file() for m in mods)
        ) if out_dir.is_dir() else []
    report: dict[str, dict[str, Any]] = {}
    for name in benchmarks:
        by_mod = {m: read_records(out_dir / name / f"{m}.jsonl") for m in mods if (out_dir / name / f"{m}.jsonl").is_file()}
        report[name] = benchmark_metrics(by_mod, None if ids is None else ids.get(name))
    report[AVERAGE] = average_entry(report)
    return report


# --- baseline -------------------------------------------------------------------------------


def load_report(path: str | Path) -> dict[str, Any]:
    """A report.json (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    if not path.is_file():
        raise CordError(f"baseline report not found: {path} (pass the report.json of an earlier `cord eval`)")
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CordError(f"{path}: expected a report of the form {{benchmark: {{audio_acc, text_acc, gap, ...}}}}")
    for name, entry in data.items():  # checked before any generation, not after the whole evaluation
        gap = entry.get("gap")
        if gap is not None and (isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap)):
            raise CordError(f"{path}: {name}.gap must be a number or null, got {gap!r}")
    return data


def add_gap_reduction(report: dict[str, dict[str, Any]], baseline: Mapping[str, Mapping[str, Any]]) -> dict:
    """Add ``gap_base`` and ``gap_reduction`` = (gap_base − gap) / gap_base to every benchmark
    (null with a ``gap_reduction_note`` where it is undefined: benchmark missing from the
    baseline, a gap missing, or gap_base ≤ 0 — nothing to reduce) and their mean to
    ``average``. In place; returns ``report``."""
    reductions = []
    for name, entry in report.items():
        if name == AVERAGE:
            continue
        base = baseline.get(name)
        gap_base = base.get("gap") if base else None
        entry["gap_base"] = gap_base
        note = ""
        if base is None:
            note = "benchmark not in the baseline report"
        elif gap_base is None or entry.get("gap") is None:
            note = "gap undefined (a modality was not evaluated)"
        elif gap_base <= 0:
            note = f"baseline gap {gap_base:.4f} <= 0: no gap to reduce"
        if note:
            entry["gap_reduction"] = None
            entry["gap_reduction_note"] = note
        else:
            entry["gap_reduction"] = (gap_base - entry["gap"]) / gap_base
            entry.pop("gap_reduction_note", None)
            reductions.append(entry["gap_reduction"])
    avg = report.setdefault(AVERAGE, average_entry(report))
    avg["gap_reduction"] = _mean(reductions)
    avg["gap_reduction_benchmarks"] = len(reductions)
    base_avg = baseline.get(AVERAGE)
    avg["gap_base"] = base_avg.get("gap") if base_avg else None
    return report


# --- writing --------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} pts"


def format_markdown(report: Mapping[str, Mapping[str, Any]], title: str | None = None) -> str:
    """The report as a markdown table (accuracies in %, gap in percentage points)."""
    with_base = any("gap_reduction" in v for v in report.values())
    head = ["benchmark", "n", "audio acc", "text acc", "gap (text − audio)", "fail rate"]
    if with_base:
        head.append("gap reduction")
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    notes = []
    for name, e in report.items():
        label = f"**{name}**" if name == AVERAGE else name
        row = [label, str(e.get("n", "")), _pct(e.get("audio_acc")), _pct(e.get("text_acc")), _pts(e.get("gap")),
               _pct(e.get("fail_rate"))]
        if with_base:
            row.append(_pct(e.get("gap_reduction")))
        lines.append("| " + " | ".join(row) + " |")
        for mod in MODALITIES:
            if e.get(f"{mod}_skipped"):
                notes.append(f"{name}: {e[f'{mod}_skipped']} {mod} item(s) skipped (not counted)")
            if e.get(f"{mod}_missing"):
                notes.append(f"{name}: {e[f'{mod}_missing']} {mod} item(s) not answered yet (rerun to resume)")
        if e.get("gap_reduction_note"):
            notes.append(f"{name}: no gap reduction — {e['gap_reduction_note']}")
    lines.append("")
    lines.append("Accuracy = correct / answered; gap = text acc − audio acc; fail rate = responses with no "
                 "extractable answer (counted wrong); average = mean over benchmarks "
                 "(accuracies and gap over those with both modalities).")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += _protocol_sections(report)
    return "\n".join(lines) + "\n"


def _protocol_sections(report: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown for the protocol, VoiceBench's official accuracies and per-group tables."""
    rows = {k: v for k, v in report.items() if k != AVERAGE}
    protocols = sorted({str(e.get("protocol") or "cord") for e in rows.values()})
    lines = ["", "Protocol: " + ", ".join(protocols) + (
        " (each benchmark asked and scored as its own runner does; see the README's anchors)"
        if protocols == ["official"] else "")]
    official = {k: e for k, e in rows.items() if any(f"{m}_acc_official" in e for m in MODALITIES)}
    if official:
        lines += ["", "VoiceBench scoring: strict = no letter counts wrong; official = VoiceBench's random "
                      "letter for a response with no letter, at its expectation (acc + fail/4).", "",
                  "| benchmark | audio strict | audio official | audio fail | text strict | text official | text fail |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, e in official.items():
            cells = []
            for mod in MODALITIES:
                cells += [_pct(e.get(f"{mod}_acc")), _pct(e.get(f"{mod}_acc_official")), _pct(e.get(f"{mod}_fail_rate"))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, e in rows.items():
        for key in [k for k in e if k.startswith("by_") and k != "by_category"]:
            mods = [m for m in MODALITIES if any(f"{m}_acc" in v for v in e[key].values())]
            label = key[3:].replace("_", "-")
            lines += ["", f"{name} by {label}:", "", f"| {label} | " + " | ".join(f"{m} acc" for m in mods) + " | n |",
                      "|---|" + "---:|" * (len(mods) + 1)]
            for group, v in e[key].items():
                lines.append(f"| {group} | " + " | ".join(_pct(v.get(f"{m}_acc")) for m in mods) + f" | {v.get('n', '')} |")
            if key == "by_task" and e.get("audio_acc_task_mean") is not None:
                lines.append(f"| **mean over tasks** | {_pct(e['audio_acc_task_mean'])}" + " | –" * (len(mods) - 1) + " | |")
    return lines


def write_report(out_dir: str | Path, report: Mapping[str, Any], title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` atomically; returns their paths."""
    out_dir = Path(out_dir)
    js, md = out_dir / REPORT_JSON, out_dir / REPORT_MD
    write_atomic(js, dump_json(report))
    write_atomic(md, format_markdown(report, title))
    return js, md
