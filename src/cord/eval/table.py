"""``cord table``: the paper's Table 1 from ``cord eval`` folders, with paired bootstrap
intervals and the published numbers beside ours.

Inputs are ``cord eval`` output folders (``<benchmark>/<modality>.jsonl`` + ``eval-run.json``)
or training run folders (``cord train``'s ``train.output_dir``), each optionally labelled
``LABEL=DIR``. A run folder stands for its evaluation: ``DIR/eval`` if that is an eval folder,
else the ``cord reproduce`` layout's ``<out>/eval-<name>`` beside ``<out>/train-<name>``.
An evaluation of ``<run>/model`` is known to be that run's: its label defaults to the run
folder's name (``train-`` dropped) and its method is the run's ``objective.method`` (which
picks the published numbers that belong to it). The **base** is the evaluation of a
checkpoint as released (``--base LABEL`` when there is not exactly one).

For every benchmark the base answered, and every input:

- ``audio_acc``, ``text_acc``, ``gap`` = text − audio (strict accuracies, as ``report.json``),
  over the items that **both** the base and that input answered in every modality compared
  (the pairing: the same items, so item difficulty cancels);
- ``gap_reduction`` = (gap_base − gap) / gap_base (undefined, with a note, when gap_base ≤ 0);
- ``audio_delta`` = audio_acc − audio_acc_base and ``gap_change`` = gap − gap_base;
- a 95 % **paired percentile bootstrap** interval for each of these: items are drawn with
  replacement, the same draw for the base and the input and for both modalities, ``replicates``
  times (:func:`paired_comparison`). A replicate whose base gap is ≤ 0 has no gap reduction;
  the interval then counts it at −∞ for its lower end and +∞ for its upper end (conservative),
  and is ``null`` (unbounded) when more than 2.5 % of replicates are such;
- ``average``: the mean over benchmarks with both modalities (gap reduction: over those
  whose base gap is > 0, as ``cord eval --baseline``), its interval from the same replicates
  (benchmarks resampled independently: a stratified bootstrap);
- MMAU's per-task rows (``mmau-test-mini`` · sound / music / speech), audio only;
- ``published``: the registry's anchors (:data:`cord.eval.benchmarks.ANCHORS`) for the base
  model (``--anchors MODEL``, default the base evaluation's model) and the row's method.

Outputs in ``--out``: ``table.json`` (everything, accuracies as fractions, published values
as fractions with their source), ``table.md`` (percent and points), ``table.png`` (audio
accuracy per benchmark, gap reduction with its interval; published numbers as markers).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cord import CordError
from cord.eval.records import dump_json, read_records, read_run_record, write_atomic
from cord.eval.report import MODALITIES, REPORT_JSON

TABLE_JSON, TABLE_MD, TABLE_PNG = "table.json", "table.md", "table.png"
AVERAGE = "average"
BASE = "base"
#: the paper's benchmarks first, in its order; any other benchmark follows alphabetically
ORDER = ("voicebench-mmsu", "voicebench-openbookqa", "gsm8k-audio", "mmau-test-mini")
DEFAULT_REPLICATES = 2000


# --- statistics --------------------------------------------------------------------------------


def _quantile_sorted(v: np.ndarray, q: float) -> float:
    """numpy's default (linear) quantile of sorted ``v``; inf when it touches an infinite value."""
    pos = q * (len(v) - 1)
    i = int(math.floor(pos))
    j = min(i + 1, len(v) - 1)
    a, b = float(v[i]), float(v[j])
    if not (math.isfinite(a) and math.isfinite(b)):
        return a if not math.isfinite(a) else b
    return a + (b - a) * (pos - i)


def percentile_interval(values: np.ndarray, undefined: np.ndarray | None = None, level: float = 0.95) -> list[float] | None:
    """The percentile bootstrap interval of ``values``. ``undefined`` replicates (e.g. a ratio
    whose denominator is ≤ 0) count as −∞ for the lower end and +∞ for the upper end; None
    when either end is then unbounded."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return None
    bad = np.zeros(v.shape, bool) if undefined is None else np.asarray(undefined, bool)
    bad = bad | ~np.isfinite(v)
    tail = (1 - level) / 2
    lo = _quantile_sorted(np.sort(np.where(bad, -np.inf, v)), tail)
    hi = _quantile_sorted(np.sort(np.where(bad, np.inf, v)), 1 - tail)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return [lo, hi]


def resampled_means(cols: np.ndarray, replicates: int, rng: np.random.Generator, chunk: int = 512) -> np.ndarray:
    """(replicates, k) means of the k rows of ``cols`` (k, n) over items drawn with
    replacement — one draw of n items per replicate, shared by all k rows (the pairing)."""
    cols = np.asarray(cols, dtype=np.float64)
    k, n = cols.shape
    out = np.empty((replicates, k))
    p = np.full(n, 1.0 / n)
    for s in range(0, replicates, chunk):
        m = min(chunk, replicates - s)
        counts = rng.multinomial(n, p, size=m).astype(np.float64)  # (m, n): how often each item was drawn
        out[s:s + m] = counts @ cols.T / n
    return out


def _ratio(gap_base: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gap_base − gap) / gap_base, and where it is undefined (gap_base ≤ 0)."""
    undefined = ~(gap_base > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(undefined, np.nan, (gap_base - gap) / np.where(undefined, 1.0, gap_base))
    return r, undefined


def paired_comparison(base_audio: Sequence[float], arm_audio: Sequence[float],
                      base_text: Sequence[float] | None = None, arm_text: Sequence[float] | None = None,
                      *, replicates: int = DEFAULT_REPLICATES, seed: int | Sequence[int] = 0) -> dict[str, Any]:
    """Point estimates and 95 % paired bootstrap intervals for one benchmark: per item
    (same order in every array) 0/1 correctness of the base and of the arm, from audio and
    (optionally) from text. Returns ``n, audio_acc, text_acc, gap, base_gap, gap_reduction,
    audio_delta, gap_change`` and ``<name>_ci95`` for each of the last four and ``gap``
    (None where undefined), plus ``_replicates`` (the per-replicate arrays, for averages)."""
    ba, ma = np.asarray(base_audio, np.float64), np.asarray(arm_audio, np.float64)
    paired = base_text is not None and arm_text is not None
    cols = [ba, ma] + ([np.asarray(base_text, np.float64), np.asarray(arm_text, np.float64)] if paired else [])
    n = len(ba)
    if any(len(c) != n for c in cols):
        raise CordError("paired comparison: the base and the arm must have one outcome per item, in the same order")
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return {**out, "audio_acc": None, "text_acc": None, "gap": None, "base_gap": None, "gap_reduction": None,
                "audio_delta": None, "gap_change": None, "_replicates": {}}
    point = np.array([c.mean() for c in cols])
    rng = np.random.default_rng(seed)
    reps = resampled_means(np.stack(cols), replicates, rng)
    out["audio_acc"] = float(point[1])
    out["base_audio_acc"] = float(point[0])
    out["audio_delta"] = float(point[1] - point[0])
    out["audio_delta_ci95"] = percentile_interval(reps[:, 1] - reps[:, 0])
    replicas: dict[str, np.ndarray] = {"audio_delta": reps[:, 1] - reps[:, 0], "audio_acc": reps[:, 1]}
    if paired:
        gb, gm = point[2] - point[0], point[3] - point[1]
        rgb, rgm = reps[:, 2] - reps[:, 0], reps[:, 3] - reps[:, 1]
        out.update(text_acc=float(point[3]), base_text_acc=float(point[2]), gap=float(gm), base_gap=float(gb),
                   gap_ci95=percentile_interval(rgm), gap_change=float(gm - gb),
                   gap_change_ci95=percentile_interval(rgm - rgb))
        ratio, undefined = _ratio(rgb, rgm)
        replicas.update(gap=rgm, gap_change=rgm - rgb, gap_reduction=ratio, text_acc=reps[:, 3])
        if gb > 0:
            out["gap_reduction"] = float((gb - gm) / gb)
            out["gap_reduction_ci95"] = percentile_interval(ratio, undefined)
            share = float(undefined.mean())
            if out["gap_reduction_ci95"] is None:
                out["gap_reduction_note"] = (f"interval unbounded: the base gap is <= 0 in {100 * share:.1f}% of "
                                             "resamples")
        else:
            out["gap_reduction"] = None
            out["gap_reduction_ci95"] = None
            out["gap_reduction_note"] = f"base gap {100 * gb:+.1f} pts <= 0: no gap to reduce"
    else:
        out.update(text_acc=None, gap=None, base_gap=None, gap_reduction=None, gap_change=None)
    out["_replicates"] = replicas
    return out


# --- reading the inputs -----------------------------------------------------------------------


@dataclass
class EvalFolder:
    """One input of the table: an evaluation folder and what was evaluated."""

    label: str
    path: Path
    model: str | None = None
    #: the training method of the evaluated run (None: a checkpoint as released)
    method: str | None = None
    #: the model training started from (the evaluated model itself for a base)
    start_model: str | None = None
    run: Path | None = None
    protocol: str | None = None
    #: benchmark -> modality -> item id -> answered record
    records: dict[str, dict[str, dict[str, dict]]] = field(default_factory=dict)


def _is_eval_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "eval-run.json").is_file() or (p / REPORT_JSON).is_file()
                           or any(p.glob("*/audio.jsonl")) or any(p.glob("*/text.jsonl")))


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.yaml").is_file() and ((p / "model").is_dir() or (p / "checkpoints").is_dir())


def _run_config(run: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _split_label(arg: str) -> tuple[str | None, str]:
    """``LABEL=DIR`` → (LABEL, DIR); a plain path (or one that exists with '=' in it) → (None, arg)."""
    if "=" in arg and not Path(arg).exists():
        label, path = arg.split("=", 1)
        if label.strip() and "/" not in label and "\\" not in label:
            return label.strip(), path
    return None, arg


def _eval_of_run(run: Path) -> Path:
    if _is_eval_dir(run / "eval"):
        return run / "eval"
    if run.name.startswith("train-") and _is_eval_dir(run.parent / f"eval-{run.name[len('train-'):]}"):
        return run.parent / f"eval-{run.name[len('train-'):]}"
    raise CordError(f"{run} is a training run with no evaluation: run `cord eval --model {run}/model --out "
                    f"{run}/eval` first (with the base model's benchmarks and protocol), then pass {run} again")


def read_eval_folder(arg: str) -> EvalFolder:
    """One ``[LABEL=]DIR`` input (see the module docstring)."""
    label, raw = _split_label(arg)
    path = Path(raw)
    if not path.exists():
        raise CordError(f"{path}: no such folder; give cord eval output folders or training run folders")
    if not path.is_dir():
        raise CordError(f"{path} is a file; give cord eval output folders (report.json, <benchmark>/<modality>.jsonl) "
                        "or training run folders")
    run: Path | None = None
    if not _is_eval_dir(path):
        if not _is_run_dir(path):
            raise CordError(f"{path} is neither a cord eval output folder (eval-run.json, <benchmark>/<modality>.jsonl) "
                            "nor a cord training run (config.yaml, model/)")
        run, path = path, _eval_of_run(path)
    rec = read_run_record(path, "eval") or {}
    fp = rec.get("fingerprint") if isinstance(rec.get("fingerprint"), dict) else {}
    model = fp.get("model")
    if run is None and model and Path(str(model)).name == "model" and _is_run_dir(Path(str(model)).parent):
        run = Path(str(model)).parent
    folder = EvalFolder(label="", path=path, model=model, protocol=fp.get("protocol"), run=run)
    if run is not None:
        cfg = _run_config(run)
        folder.method = str((cfg.get("objective") or {}).get("method") or "") or None
        folder.start_model = (cfg.get("model") or {}).get("name_or_path")
        default = run.name[len("train-"):] if run.name.startswith("train-") else run.name
    else:
        folder.start_model = model
        default = BASE
    folder.label = label or default
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        mods = {}
        for mod in MODALITIES:
            f = sub / f"{mod}.jsonl"
            if f.is_file():
                recs = {i: r for i, r in read_records(f).items()
                        if r.get("status", "answered") == "answered" and r.get("correct") is not None}
                if recs:  # a modality with nothing answered (MMAU's text: no text-only form) is absent
                    mods[mod] = recs
        if mods:
            folder.records[sub.name] = mods
    if not folder.records:
        raise CordError(f"{path} holds no answers yet (no <benchmark>/<modality>.jsonl with answered items); "
                        "run or resume its cord eval first")
    if folder.protocol is None:
        protos = {str(r.get("protocol")) for m in folder.records.values() for recs in m.values()
                  for r in recs.values() if r.get("protocol")}
        folder.protocol = protos.pop() if len(protos) == 1 else None
    return folder


def _pick_base(folders: Sequence[EvalFolder], base: str | None) -> EvalFolder:
    labels = [f.label for f in folders]
    if base is not None:
        for f in folders:
            if f.label == base:
                return f
        raise CordError(f"--base {base}: no input has that label (labels: {', '.join(labels)})")
    released = [f for f in folders if f.run is None]
    if len(released) == 1:
        return released[0]
    if not released:
        raise CordError("every input is a trained run: add the base model's evaluation (base=DIR), or name the "
                        f"reference with --base LABEL (labels: {', '.join(labels)})")
    raise CordError(f"{len(released)} inputs are evaluations of released checkpoints "
                    f"({', '.join(f.label for f in released)}): say which is the base with --base LABEL")


# --- the table --------------------------------------------------------------------------------


def _order(names: Sequence[str]) -> list[str]:
    known = [b for b in ORDER if b in names]
    return known + sorted(b for b in names if b not in ORDER)


def _outcomes(folder: EvalFolder, bench: str, mod: str, ids: Sequence[str]) -> list[float]:
    return [float(folder.records[bench][mod][i]["correct"]) for i in ids]


def _official(folder: EvalFolder, bench: str, ids: Sequence[str]) -> float | None:
    """VoiceBench's accuracy of the audio answers (random letter at its expectation)."""
    recs = [folder.records[bench]["audio"][i] for i in ids]
    if not recs or not any(r.get("judge") == "voicebench" for r in recs):
        return None
    return sum(float(r["correct"]) + (0.25 if r.get("answer") is None else 0.0) for r in recs) / len(recs)


def _groups(folder: EvalFolder, bench: str, key: str = "task") -> dict[str, str]:
    """Item id → its report group (MMAU's task), from the audio records."""
    recs = folder.records.get(bench, {}).get("audio", {})
    return {i: str(r["groups"][key]) for i, r in recs.items() if isinstance(r.get("groups"), dict) and key in r["groups"]}


def _seed(seed: int, *parts: str) -> list[int]:
    return [int(seed), *(zlib.crc32(p.encode()) for p in parts)]


def _anchor_method(folder: "EvalFolder", base: "EvalFolder") -> str | None:
    """Whose published numbers a row sits beside: its training method, or the released base's.
    A base that was itself trained (e.g. ``cord reproduce``'s warm-up) has no published row:
    None (the paper's numbers for its method were trained from another starting point)."""
    if folder is base:
        return None if folder.method else BASE
    return folder.method or BASE


def _published(anchors, benchmark: str, group: str | None, method: str | None, metrics: Sequence[str],
               protocol: str | None) -> list[dict[str, Any]]:
    out = []
    for a in anchors:
        if a.benchmark == benchmark and a.group == group and a.method == method and a.metric in metrics:
            entry = {"metric": a.metric, "value": a.value / 100, "as_published": a.value, "source": a.source}
            if a.protocol:
                entry["protocol"] = a.protocol
                entry["comparable"] = protocol == a.protocol
            if a.note:
                entry["note"] = a.note
            out.append(entry)
    return out


def _row(bench: str, group: str | None, folder: EvalFolder, cmp: Mapping[str, Any]) -> dict[str, Any]:
    row = {"benchmark": bench, "group": group, "label": folder.label, "method": folder.method or BASE}
    row.update({k: v for k, v in cmp.items() if not k.startswith("_") and not k.startswith("base_")})
    return row


def build_table(folders: Sequence[EvalFolder], base: EvalFolder, *, anchors_model: str | None = None,
                replicates: int = DEFAULT_REPLICATES, seed: int = 0, title: str | None = None) -> dict[str, Any]:
    """The table as a JSON-able dict (see the module docstring)."""
    from cord.eval.benchmarks import anchor_model, anchors_for

    if replicates < 100:
        raise CordError(f"--replicates {replicates}: use at least 100 bootstrap replicates (2000 is the default)")
    model_for_anchors = anchors_model or base.model
    anchors = anchors_for(model_for_anchors)
    ordered = [base] + [f for f in folders if f is not base]
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    per_method: dict[str, list[dict[str, Any]]] = {f.label: [] for f in ordered}
    for f in ordered[1:]:
        if f.protocol != base.protocol:
            notes.append(f"{f.label} was evaluated under --protocol {f.protocol}, the base under {base.protocol}: "
                         "their accuracies are not comparable")
    for bench in _order(list(base.records)):
        base_mods = base.records[bench]
        paired = all(m in base_mods for m in MODALITIES)
        mods = MODALITIES if paired else ("audio",) if "audio" in base_mods else ()
        if not mods:
            notes.append(f"{bench}: the base has no audio answers; left out")
            continue
        group_rows: dict[str, list[dict[str, Any]]] = {}
        for f in ordered:
            fm = f.records.get(bench, {})
            if not all(m in fm for m in mods):
                notes.append(f"{bench}: {f.label} has no {'/'.join(m for m in mods if m not in fm)} answers; left out")
                continue
            ids = sorted(set.intersection(*(set(base_mods[m]) & set(fm[m]) for m in mods)))
            base_ids = set.intersection(*(set(base_mods[m]) for m in mods))
            if len(ids) < len(base_ids) and f is not base:
                notes.append(f"{bench}: {f.label} answered {len(ids)} of the base's {len(base_ids)} items; "
                             "compared on those")
            args = dict(base_audio=_outcomes(base, bench, "audio", ids), arm_audio=_outcomes(f, bench, "audio", ids))
            if paired:
                args.update(base_text=_outcomes(base, bench, "text", ids), arm_text=_outcomes(f, bench, "text", ids))
            cmp = paired_comparison(**args, replicates=replicates, seed=_seed(seed, bench))
            if f is base:
                cmp = _as_reference(cmp)
            row = _row(bench, None, f, cmp)
            official = _official(f, bench, ids) if ids else None
            if official is not None:
                row["audio_acc_official"] = official
            metrics = ("audio_acc", "audio_acc_task_mean") if bench == "mmau-test-mini" else ("audio_acc",)
            row["published"] = _published(anchors, bench, None, _anchor_method(f, base), metrics, f.protocol)
            rows.append(row)
            per_method[f.label].append({"benchmark": bench, "paired": paired, **cmp})
            groups = _groups(base, bench)
            if groups:  # MMAU: a row per task, audio only
                for g in sorted(set(groups.values())):
                    gids = [i for i in ids if groups.get(i) == g]
                    gcmp = paired_comparison(_outcomes(base, bench, "audio", gids), _outcomes(f, bench, "audio", gids),
                                             replicates=replicates, seed=_seed(seed, bench, g))
                    if f is base:
                        gcmp = _as_reference(gcmp)
                    grow = _row(bench, g, f, gcmp)
                    grow["published"] = _published(anchors, bench, g, _anchor_method(f, base), ("audio_acc",), f.protocol)
                    group_rows.setdefault(g, []).append(grow)
        for g in sorted(group_rows):  # after the benchmark's own rows: each task's methods together
            rows.extend(group_rows[g])
    for f in ordered:
        avg = _average(per_method[f.label], reference=f is base)
        if avg is None:
            continue
        row = {"benchmark": AVERAGE, "group": None, "label": f.label, "method": f.method or BASE, **avg}
        row["published"] = _published(anchors, AVERAGE, None, _anchor_method(f, base), ("gap_reduction",), f.protocol)
        rows.append(row)
    if model_for_anchors and not anchors:
        notes.append(f"no published numbers for {model_for_anchors} in the benchmark registry")
    return {
        "title": title or "cord table",
        "base": base.label,
        "base_model": base.model,
        "anchors_model": anchor_model(model_for_anchors),
        "protocol": base.protocol,
        "bootstrap": {"replicates": replicates, "seed": seed, "level": 0.95,
                      "method": "paired percentile bootstrap over items (same draw for base and method, "
                                "both modalities); average: benchmarks resampled independently"},
        "inputs": [{"label": f.label, "eval": str(f.path), "model": f.model, "method": f.method or BASE,
                    "run": str(f.run) if f.run else None, "start_model": f.start_model, "protocol": f.protocol}
                   for f in ordered],
        "benchmarks": _order(list(base.records)),
        "rows": rows,
        "notes": notes,
    }


def _as_reference(cmp: dict[str, Any]) -> dict[str, Any]:
    """The base against itself: every difference is exactly 0 (its intervals too); the gap
    reduction is 0 when the base has a gap to reduce."""
    out = dict(cmp)
    for key in ("audio_delta", "gap_change"):
        if out.get(key) is not None:
            out[key], out[f"{key}_ci95"] = 0.0, [0.0, 0.0]
    if out.get("base_gap") is not None and out["base_gap"] > 0:
        out["gap_reduction"], out["gap_reduction_ci95"] = 0.0, [0.0, 0.0]
        out.pop("gap_reduction_note", None)
    reps = dict(out.get("_replicates") or {})
    for key in ("audio_delta", "gap_change", "gap_reduction"):
        if key in reps:
            reps[key] = np.zeros_like(reps[key])
    out["_replicates"] = reps
    return out


def _average(entries: Sequence[Mapping[str, Any]], reference: bool) -> dict[str, Any] | None:
    """Mean over benchmarks with both modalities (the gap reduction over those where it is
    defined), with intervals from the per-benchmark replicates (same replicate index)."""
    paired = [e for e in entries if e.get("paired") and e.get("n")]
    if not paired:
        return None
    out: dict[str, Any] = {"n": int(sum(e["n"] for e in paired)), "benchmarks_averaged": [e["benchmark"] for e in paired]}
    for key in ("audio_acc", "text_acc", "gap", "audio_delta", "gap_change"):
        out[key] = float(np.mean([e[key] for e in paired]))
        if key != "text_acc" and key != "audio_acc":
            out[f"{key}_ci95"] = percentile_interval(np.mean([e["_replicates"][key] for e in paired], axis=0))
    defined = [e for e in paired if e.get("gap_reduction") is not None]
    out["gap_reduction_benchmarks"] = [e["benchmark"] for e in defined]
    if not defined:
        out["gap_reduction"] = None
        out["gap_reduction_ci95"] = None
        out["gap_reduction_note"] = "no benchmark has a base gap > 0"
        return out
    out["gap_reduction"] = float(np.mean([e["gap_reduction"] for e in defined]))
    if reference:
        out["gap_reduction_ci95"] = [0.0, 0.0]
        out["audio_delta_ci95"] = out["gap_change_ci95"] = [0.0, 0.0]
        return out
    reps = np.mean([e["_replicates"]["gap_reduction"] for e in defined], axis=0)  # NaN where any is undefined
    out["gap_reduction_ci95"] = percentile_interval(reps, np.isnan(reps))
    if out["gap_reduction_ci95"] is None:
        out["gap_reduction_note"] = (f"interval unbounded: a base gap is <= 0 in {100 * float(np.isnan(reps).mean()):.1f}% "
                                     "of resamples")
    return out


# --- rendering ----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _pts(x: float | None, ci: Sequence[float] | None = None, sign: bool = True) -> str:
    if x is None:
        return "–"
    s = f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"
    if ci is not None:
        s += f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if sign else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return s


def format_table_md(table: Mapping[str, Any]) -> str:
    """``table.md``: accuracies in %, gaps and differences in points, gap reduction in %."""
    sources: list[str] = []

    def cite(p: Mapping[str, Any]) -> str:
        if p["source"] not in sources:
            sources.append(p["source"])
        mark = f"[{sources.index(p['source']) + 1}]"
        if p.get("comparable") is False:
            mark += "*"
        return f"{p['as_published']:.2f}{mark}"

    head = ["benchmark", "method", "n", "text acc", "audio acc", "gap (text − audio) [95% CI]",
            "gap reduction [95% CI]", "audio Δ vs base [95% CI]", "published"]
    lines = [f"# {table.get('title') or 'cord table'}", "",
             f"Base: {table['base']} ({table.get('base_model') or '?'}); protocol: {table.get('protocol') or '?'}; "
             f"published numbers for: {table.get('anchors_model') or 'none in the registry'}.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for r in table["rows"]:
        bench = r["benchmark"] if not r.get("group") else f"{r['benchmark']} · {r['group']}"
        if r["benchmark"] == AVERAGE:
            bench = "**average**"
        label = r["label"] if r["label"] == r["method"] else f"{r['label']} ({r['method']})"
        audio = _pct(r.get("audio_acc"))
        if r.get("audio_acc_official") is not None:
            audio += f" (official {_pct(r['audio_acc_official'])})"
        gr = "–"
        if r.get("gap_reduction") is not None:
            ci = r.get("gap_reduction_ci95")
            gr = f"{100 * r['gap_reduction']:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else " [unbounded]")
        pub = ", ".join(cite(p) + ("" if p["metric"] in ("audio_acc", "gap_reduction") else f" ({p['metric']})")
                        for p in r.get("published") or []) or "–"
        cells = [bench, label, str(r.get("n", "")), _pct(r.get("text_acc")), audio,
                 _pts(r.get("gap"), r.get("gap_ci95")), gr, _pts(r.get("audio_delta"), r.get("audio_delta_ci95")), pub]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracies in %; gap and audio Δ in points (text − audio; method − base); gap reduction = "
              "(gap_base − gap) / gap_base. Intervals: 95 % paired percentile bootstrap over items "
              f"({table['bootstrap']['replicates']} replicates, seed {table['bootstrap']['seed']}); each method "
              "is compared with the base on the items both answered. average: mean over benchmarks with both "
              "modalities (gap reduction over those with a base gap > 0). Published numbers are audio accuracy "
              "(% as printed) in benchmark rows and gap reduction (%) in the average rows."]
    if sources:
        lines += [""] + [f"[{i + 1}] {s}" for i, s in enumerate(sources)]
        if any(p.get("comparable") is False for r in table["rows"] for p in r.get("published") or []):
            lines.append("\\* measured under another protocol than ours (`cord eval --protocol official` is the comparable one)")
    notes = list(table.get("notes") or [])
    notes += sorted({f"{r['benchmark']}{' · ' + r['group'] if r.get('group') else ''}: {r['label']}: {r['gap_reduction_note']}"
                     for r in table["rows"] if r.get("gap_reduction_note")})
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_table(table: Mapping[str, Any], path: str | Path) -> Path:
    """``table.png``: audio accuracy per benchmark and method (published numbers as ◆), and the
    gap reduction per benchmark with its 95 % interval (published average as ◆)."""
    from cord.eval.plots import _figure, _save

    rows = [r for r in table["rows"]]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    benches = list(dict.fromkeys((r["benchmark"], r.get("group")) for r in rows if r["benchmark"] != AVERAGE))
    fig, (ax1, ax2) = _figure(ncols=2, width=max(6.0, 1.2 * len(benches) + 3), height=4.5)
    width = 0.8 / max(1, len(labels))
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    by = {(r["benchmark"], r.get("group"), r["label"]): r for r in rows}
    for j, lab in enumerate(labels):
        xs, ys = [], []
        for i, key in enumerate(benches):
            r = by.get((*key, lab))
            if r is not None and r.get("audio_acc") is not None:
                xs.append(i + (j - (len(labels) - 1) / 2) * width)
                ys.append(100 * r["audio_acc"])
                for p in r.get("published") or []:
                    if p["metric"] == "audio_acc":
                        ax1.plot(xs[-1], p["as_published"], "D", color=colors[lab], markeredgecolor="black", ms=5)
        ax1.bar(xs, ys, width=width, color=colors[lab], label=lab)
    ax1.set_xticks(range(len(benches)))
    ax1.set_xticklabels([b if not g else f"{b}\n{g}" for b, g in benches], rotation=30, ha="right", fontsize=7)
    ax1.set_ylabel("audio accuracy (%)")
    ax1.set_title("audio accuracy (◆ published)")
    ax1.legend(fontsize=7)
    gkeys = [k for k in benches + [(AVERAGE, None)]
             if k[1] is None and any(r.get("gap_reduction") is not None or r.get("published")
                                     for r in rows if (r["benchmark"], r.get("group")) == k)]
    for j, lab in enumerate(labels):
        for i, key in enumerate(gkeys):
            r = by.get((*key, lab))
            if r is None:
                continue
            x = i + (j - (len(labels) - 1) / 2) * width
            if r.get("gap_reduction") is not None:
                y = 100 * r["gap_reduction"]
                ci = r.get("gap_reduction_ci95")
                yerr = None if not ci else [[max(0.0, y - 100 * ci[0])], [max(0.0, 100 * ci[1] - y)]]
                ax2.bar([x], [y], width=width, color=colors[lab], yerr=yerr, capsize=2,
                        label=lab if i == len(gkeys) - 1 else None)
            for p in r.get("published") or []:
                if p["metric"] == "gap_reduction":
                    ax2.plot(x, p["as_published"], "D", color=colors[lab], markeredgecolor="black", ms=5)
    ax2.axhline(0, color="gray", lw=0.8)
    ax2.set_xticks(range(len(gkeys)))
    ax2.set_xticklabels([k[0] for k in gkeys], rotation=30, ha="right", fontsize=7)
    ax2.set_ylabel("gap reduction (%)")
    ax2.set_title("gap reduction vs base, 95% CI (◆ published)")
    return _save(fig, path)


def write_table(table: Mapping[str, Any], out: str | Path) -> tuple[Path, Path, Path]:
    """``table.json``, ``table.md`` and ``table.png`` in ``out`` (each written atomically)."""
    out = Path(out)
    write_atomic(out / TABLE_JSON, dump_json(table))
    write_atomic(out / TABLE_MD, format_table_md(table))
    png = plot_table(table, out / TABLE_PNG)
    return out / TABLE_JSON, out / TABLE_MD, png


def make_table(inputs: Sequence[str], out: str | Path, *, base: str | None = None, anchors: str | None = None,
               replicates: int = DEFAULT_REPLICATES, seed: int = 0, title: str | None = None) -> dict[str, Any]:
    """Read ``inputs`` (``[LABEL=]DIR``), build the table and write it to ``out``; returns it."""
    from cord.data.check import check_writable_dir

    check_writable_dir(out)  # a bad --out fails before anything is read
    folders = [read_eval_folder(a) for a in inputs]
    seen: dict[str, Path] = {}
    for f in folders:
        if f.label in seen:
            raise CordError(f"two inputs are labelled {f.label!r} ({seen[f.label]} and {f.path}); "
                            "label them: LABEL=DIR")
        seen[f.label] = f.path
    chosen = _pick_base(folders, base)
    table = build_table(folders, chosen, anchors_model=anchors, replicates=replicates, seed=seed, title=title)
    write_table(table, out)
    return table
