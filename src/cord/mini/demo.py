"""``cord demo``: the CPU miniature of the paper, end to end, through the real code paths.

    data (espeak-ng, many voices; a held-out voice for dev/test)
    → Stage A (text LM) → Stage B (audio alignment, LM frozen; checkpoint chosen by gap)
    → Stage C: cord, opd, forward_kl, sft, grpo from the same Stage B checkpoint with the
      same step budget, through ``cord train`` (presets in configs/mini/), for every seed
    → ``cord eval`` on the held-out voice (greedy, exact final answer via the judges)
    → ``cord analyze`` before/after CORD → report.json, report.md, PNG plots.

Every stage resumes: rerunning the same command reuses finished stages and runs.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from cord import CordError

METHODS = ("cord", "opd", "forward_kl", "sft", "grpo")
LABELS = {
    "cord": "CORD (weighted OPD + GRPO)",
    "opd": "OPD (uniform reverse KL)",
    "forward_kl": "forward KL (off-policy)",
    "sft": "SFT",
    "grpo": "GRPO",
}


def presets_dir() -> Path:
    here = Path(__file__).resolve()
    for root in (here.parents[3], Path.cwd()):
        cand = root / "configs" / "mini"
        if cand.is_dir():
            return cand
    raise CordError("configs/mini not found: run cord demo from a cord checkout (the presets live there)")


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _eval_cfg(model_dir: Path, test_dir: Path, out: Path, max_new_tokens: int):
    from cord.config import load_config

    return load_config(None, [
        "model.family=mini", f"model.name_or_path={model_dir}", "model.dtype=float32", "model.device=cpu",
        f"eval.benchmarks=[{test_dir}]", "eval.modalities=[audio,text]", f"eval.out={out}",
        "eval.batch_size=200", f"eval.max_new_tokens={max_new_tokens}",
    ])


def _evaluate(model_dir: Path, test_dir: Path, out: Path, max_new_tokens: int) -> dict[str, float]:
    from cord.eval import evaluate

    report = evaluate(_eval_cfg(model_dir, test_dir, out, max_new_tokens), progress=False)
    row = report[test_dir.name] if test_dir.name in report else next(v for k, v in report.items() if k != "average")
    return {"text_acc": row["text_acc"], "audio_acc": row["audio_acc"], "gap": row["gap"], "n": row["n"],
            "eval_dir": str(out)}


def _stage_c_steps(quick: bool) -> int:
    return 10 if quick else 100


def run_demo(out: str | Path = "cord-demo", seeds: int | None = None, quick: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """The whole miniature into ``out`` (resuming what is there); returns report.json's dict.
    Runs on the recipe's fixed torch thread count (the stages' and Stage C's alike: the
    count changes float reduction order, so a seed reproduces only at the same count) and
    restores the caller's count after."""
    from cord.mini.stages import RecipeConfig, auto_threads, torch_threads

    seeds = seeds if seeds is not None else (1 if quick else 3)
    if seeds < 1:
        raise CordError("--seeds must be at least 1")
    if Path(out).exists() and not Path(out).is_dir():
        raise CordError(f"--out {out}: exists and is not a directory (give a new or an earlier demo directory)")
    recipe = RecipeConfig.quick(seed=0) if quick else RecipeConfig(seed=0)
    with torch_threads(recipe.threads or auto_threads()):
        return _run_demo(Path(out), recipe, seeds, quick, progress)


def _run_demo(out: Path, recipe, seeds: int, quick: bool, progress: bool) -> dict[str, Any]:
    from cord.config import load_config
    from cord.mini.stages import load_average, machine_info, run_stages
    from cord.train.trainer import Trainer

    out.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(f"[demo] {msg}", flush=True)) if progress else (lambda msg: None)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    load_at_start = load_average()

    # ---- stages A and B (shared by every method and seed) ---------------------------------
    stages_dir = out / "stages"
    stages_json = stages_dir / "stages.json"
    previous = json.loads(stages_json.read_text()) if stages_json.is_file() else None
    if previous is not None and previous.get("config") == recipe.to_dict():
        stages = previous
        say("stages A and B: reusing the finished run in " + str(stages_dir))
    else:
        say("building data, Stage A (text LM), Stage B (audio alignment) ...")
        stages = run_stages(stages_dir, recipe, progress=progress)
    timings.update({f"stages_{k}": v for k, v in stages["timings"].items()})
    stage_b = Path(stages["paths"]["stage_b"])
    train_dir = Path(stages["paths"]["data"]["train"])
    test_dir = Path(stages["paths"]["data"]["test"])
    max_new = recipe.max_new_tokens

    t = time.perf_counter()
    base = _evaluate(stage_b, test_dir, out / "eval" / "stage_b", max_new)
    timings["eval_stage_b"] = round(time.perf_counter() - t, 2)
    say(f"Stage B model on the held-out voice: text {base['text_acc']:.3f}, audio {base['audio_acc']:.3f}, "
        f"gap {base['gap']:.3f}")

    # ---- stage C: every method × seed, same budget, through the real trainer --------------
    steps = _stage_c_steps(quick)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    t_c = time.perf_counter()
    for method in METHODS:
        for seed in range(seeds):
            run_dir = out / "runs" / f"{method}-seed{seed}"
            cfg = load_config(presets_dir() / f"{method}.yaml", [
                f"model.name_or_path={stage_b}", f"data.train={train_dir}", f"train.output_dir={run_dir}",
                f"train.seed={seed}", f"train.max_steps={steps}", "train.progress=false",
            ])
            t = time.perf_counter()
            if not (run_dir / "model").is_dir() or _last_step(run_dir) < steps:
                Trainer(cfg).fit()
            train_s = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            result = _evaluate(run_dir / "model", test_dir, out / "eval" / f"{method}-seed{seed}", max_new)
            result.update(seed=seed, train_seconds=train_s, eval_seconds=round(time.perf_counter() - t, 2),
                          steps=steps, run_dir=str(run_dir))
            result["gap_reduction"] = _reduction(base["gap"], result["gap"])
            runs[method].append(result)
            say(f"{method:>10} seed {seed}: text {result['text_acc']:.3f}, audio {result['audio_acc']:.3f}, "
                f"gap {result['gap']:.3f} (reduction {_pct(result['gap_reduction'])}) [{train_s:.0f} s]")
    timings["stage_c"] = round(time.perf_counter() - t_c, 2)

    # ---- diagnostics: where the divergence sits, before and after CORD ----------------------
    t = time.perf_counter()
    analysis = _analyze_before_after(out, stage_b, Path(runs["cord"][0]["run_dir"]) / "model", test_dir,
                                     limit=60 if quick else 200, max_new_tokens=max_new)
    timings["analyze"] = round(time.perf_counter() - t, 2)
    timings["total"] = round(time.perf_counter() - t_all, 2)

    report = _build_report(stages, base, runs, analysis, timings, seeds, steps, quick,
                           machine_info(load_at_start))
    _atomic_json(out / "report.json", report)
    _atomic_text(out / "report.md", render_markdown(report))
    _plots(out, report)
    say(f"done in {timings['total']:.0f} s: {out / 'report.md'}")
    return report


def _last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    rows = _metrics(path)
    return int(rows[-1]["step"]) if rows else 0


def _metrics(path: Path) -> list[dict[str, Any]]:
    from cord.data.paired import read_jsonl

    return [row for _, row in read_jsonl(path)]


def _reduction(base_gap: float, gap: float) -> float | None:
    return None if base_gap <= 0 else (base_gap - gap) / base_gap


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _analyze_before_after(out: Path, before: Path, after: Path, test_dir: Path, limit: int, max_new_tokens: int):
    from cord.config import load_config
    from cord.eval import analyze, plot_kl_comparison

    result = {}
    for name, model in (("before", before), ("after", after)):
        cfg = load_config(None, ["model.family=mini", f"model.name_or_path={model}", "model.dtype=float32",
                                 "model.device=cpu", f"rollout.max_new_tokens={max_new_tokens}"])
        res = analyze(cfg, out=out / "analyze" / name, data=str(test_dir), limit=limit, progress=False)
        result[name] = res
    plot_kl_comparison({"Stage B (before)": result["before"], "after CORD (seed 0)": result["after"]},
                       out / "kl_by_position_before_after.png")
    keep = ("kl", "pearson_position", "n_tokens", "n_rollouts")
    return {name: {k: v for k, v in res.items() if k in keep} for name, res in result.items()}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _build_report(stages, base, runs, analysis, timings, seeds, steps, quick, machine) -> dict[str, Any]:
    methods = {}
    for method, results in runs.items():
        summary = {}
        for key in ("text_acc", "audio_acc", "gap", "gap_reduction"):
            mean, sd = _mean_sd([r[key] for r in results])
            summary[key] = {"mean": mean, "sd": sd, "min": min((r[key] for r in results if r[key] is not None), default=None),
                            "max": max((r[key] for r in results if r[key] is not None), default=None)}
        methods[method] = {"label": LABELS[method], "seeds": results, "summary": summary}
    return {
        "quick": quick,
        "seeds": seeds,
        "stage_c_steps": steps,
        "stage_a": stages["stage_a"],
        "stage_b": {"chosen_step": stages["stage_b"].get("chosen_step"), "dev": stages["stage_b"].get("chosen"),
                    "test": stages["test"]},
        "baseline": base,
        "methods": methods,
        "analysis": analysis,
        "timings": timings,
        "machine": machine,
        "model_parameters": stages.get("model_parameters"),
        "data": stages["paths"]["data"],
    }


def render_markdown(report: dict[str, Any]) -> str:
    """report.md from report.json alone (every number here is in report.json)."""
    base = report["baseline"]
    lines = [
        "# cord demo: the audio-text gap on a tiny audio LLM",
        "",
        f"Held-out voice test set: n = {base['n']}. Stage C: {report['stage_c_steps']} steps per run, "
        f"{report['seeds']} seed(s) per method, all from the same Stage B checkpoint. Accuracies are greedy, "
        "exact final answer. Mean ± sd over seeds (min–max in brackets for the gap reduction).",
        "",
        "| method | text acc | audio acc | gap (text − audio) | gap reduction |",
        "|---|---:|---:|---:|---:|",
        f"| Stage B (before) | {base['text_acc']:.3f} | {base['audio_acc']:.3f} | {base['gap']:.3f} | — |",
    ]
    for method, m in report["methods"].items():
        s = m["summary"]
        red = s["gap_reduction"]
        red_txt = "n/a" if red["min"] is None else (
            f"{100 * red['mean']:+.1f}% ± {100 * red['sd']:.1f} [{100 * red['min']:+.1f}, {100 * red['max']:+.1f}]")
        lines.append(
            f"| {m['label']} | {s['text_acc']['mean']:.3f} ± {s['text_acc']['sd']:.3f} | "
            f"{s['audio_acc']['mean']:.3f} ± {s['audio_acc']['sd']:.3f} | "
            f"{s['gap']['mean']:.3f} ± {s['gap']['sd']:.3f} | {red_txt} |")
    lines += ["", "Per seed:", "", "| method | seed | text acc | audio acc | gap | gap reduction | train s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for method, m in report["methods"].items():
        for r in m["seeds"]:
            lines.append(f"| {method} | {r['seed']} | {r['text_acc']:.3f} | {r['audio_acc']:.3f} | {r['gap']:.3f} | "
                         f"{_pct(r['gap_reduction'])} | {r['train_seconds']:.0f} |")
    a = report["analysis"]
    lines += ["", "Token-level reverse KL(audio ‖ text) on audio rollouts (`cord analyze`, test voice):", "",
              "| model | mean KL | p80 KL | skewness | corr(position, KL) | tokens |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("before", "after"):
        r = a[name]
        kl = r.get("kl") or {}
        lines.append(f"| {name} | {_num(kl.get('mean'), 4)} | {_num(kl.get('p80'), 4)} | {_num(kl.get('skewness'), 2)} | "
                     f"{_num(r.get('pearson_position'), 3)} | {r.get('n_tokens', 0)} |")
    t = report["timings"]
    lines += ["", "Wall time: " + ", ".join(f"{k.replace('stages_', '')} {v:.0f} s" for k, v in t.items()) + ".", "",
              _machine_line(report["machine"]),
              "", "## What these numbers do and do not show", "", _honest_paragraph(report), ""]
    return "\n".join(lines)


def _machine_line(m: dict[str, Any]) -> str:
    load = (f"; 1-minute load average {m['load_avg_1min_start']} at the start, {m['load_avg_1min_end']} at the end"
            if m.get("load_avg_1min_start") is not None else "")
    return (f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
            f"torch {m['torch']}, {m['platform']}{load}.")


def _num(x, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _text_unchanged(report: dict[str, Any]) -> bool:
    base = report["baseline"]["text_acc"]
    return all(abs(r["text_acc"] - base) < 1e-9 for m in report["methods"].values() for r in m["seeds"])


def _honest_paragraph(report: dict[str, Any]) -> str:
    ms = report["methods"]
    cord_red = ms["cord"]["summary"]["gap_reduction"]
    mean_of = lambda k: ms[k]["summary"]["gap_reduction"]["mean"]  # noqa: E731
    ranked = sorted(ms, key=lambda k: -(mean_of(k) if not math.isnan(mean_of(k)) else -1e9))
    cleared, beaten_by, overlap = [], [], []  # baselines wholly below / wholly above / overlapping CORD's range
    for other in ms:
        o = ms[other]["summary"]["gap_reduction"]
        if other == "cord" or o["max"] is None or cord_red["min"] is None:
            continue
        if o["max"] < cord_red["min"]:
            cleared.append(other)
        elif o["min"] > cord_red["max"]:
            beaten_by.append(other)
        else:
            overlap.append(other)
    params = report.get("model_parameters") or {}
    size = (f"{sum(params.values()) / 1e6:.2f} M parameters ({params.get('language_model', 0) / 1e3:.0f} k in the "
            "word-level decoder)") if params else "well under a million parameters"
    n = report["seeds"]
    text = (f"This is a miniature: a model of {size}, templated arithmetic word problems, espeak-ng voices, "
            f"{report['stage_c_steps']} training steps and {n} seed(s) per method, evaluated on "
            f"{report['baseline']['n']} problems spoken by a voice never heard in training. CORD's mean gap "
            f"reduction is {_pct(cord_red['mean'])} (sd {100 * cord_red['sd']:.1f} points); ranked by mean, "
            f"the methods go {' > '.join(ranked)}. ")
    if n < 2:
        text += "With one seed there is no spread to compare, so this run ranks nothing. "
    else:
        if cleared:
            text += (f"Every CORD seed reduced the gap more than every seed of {', '.join(cleared)}"
                     f" ({n} seeds each, a small sample, not a significance test). ")
        if beaten_by:
            text += f"Every seed of {', '.join(beaten_by)} reduced the gap more than every CORD seed. "
        if overlap:
            text += (f"The seed range of {', '.join(overlap)} overlaps CORD's, so this run does not show CORD "
                     "beating " + ("it" if len(overlap) == 1 else "them") + ". ")
    moved = not math.isnan(cord_red["mean"]) and cord_red["mean"] > 0
    if moved:
        text += ("What it does show is the machinery (on-policy rollouts from speech, the same network reading the "
                 "text as teacher on the same prefix, weighted full-vocabulary reverse KL, judge-rewarded GRPO) "
                 "moving audio accuracy toward text accuracy" + (
                     " while text accuracy stays where it was. " if _text_unchanged(report) else ". "))
    else:
        text += "In this run CORD did not narrow the gap. "
    text += ("It does not reproduce the paper's numbers, which come from 7B models, 80k NuminaMath problems and "
             "real benchmarks, and the ranking between methods close to each other can change with the seed.")
    return text


def _plots(out: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(report["methods"])
    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(methods) + 1)
    labels = ["Stage B"] + methods
    for modality, offset, color in (("text_acc", -0.18, "tab:blue"), ("audio_acc", 0.18, "tab:orange")):
        base_val = report["baseline"][modality]
        means = [base_val] + [report["methods"][m]["summary"][modality]["mean"] for m in methods]
        sds = [0.0] + [report["methods"][m]["summary"][modality]["sd"] for m in methods]
        ax.bar([i + offset for i in x], means, width=0.36, yerr=sds, capsize=3, color=color,
               label=modality.replace("_acc", ""))
        for i, m in enumerate(methods, start=1):
            pts = [r[modality] for r in report["methods"][m]["seeds"]]
            ax.scatter([i + offset] * len(pts), pts, color="k", s=8, zorder=3)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("accuracy (held-out voice)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Text vs audio accuracy per method (bars: mean over seeds, dots: seeds)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_method.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for method in methods:
        for r in report["methods"][method]["seeds"]:
            path = Path(r["run_dir"]) / "metrics.jsonl"
            if not path.is_file():
                continue
            rows = _metrics(path)
            steps = [row["step"] for row in rows]
            axes[0].plot(steps, [row.get("loss") for row in rows], label=f"{method} s{r['seed']}", lw=0.8)
            kl = [row.get("kl_mean") for row in rows]
            if any(v is not None for v in kl):
                axes[1].plot(steps, kl, label=f"{method} s{r['seed']}", lw=0.8)
    axes[0].set_title("training loss")
    axes[1].set_title("mean token KL (methods with a KL term)")
    for a in axes:
        a.set_xlabel("step")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)


def run(args) -> int:
    """CLI entry: ``cord demo [--out DIR] [--seeds N] [--quick]``."""
    report = run_demo(args.out, seeds=args.seeds, quick=args.quick)
    cord_red = report["methods"]["cord"]["summary"]["gap_reduction"]["mean"]
    print(f"CORD mean gap reduction: {_pct(cord_red)}; report: {Path(args.out) / 'report.md'}")
    return 0
