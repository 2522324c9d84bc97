"""The miniature's report: report.json, report.md and the plots, from the per-item outputs.

Every accuracy and interval is recomputed here from the files ``cord eval`` wrote for each model
(``cord.mini.diagnostics.accuracies``), not taken from a summary: the paired differences need
the items anyway, and the report then cannot disagree with them. ``report.md`` is a pure function
of ``report.json`` (:func:`render_markdown`).

The pre-registered primary contrast (docs/demo/preregistration.md): CORD − SFT-self, greedy
exact-final-answer audio accuracy on ``test`` (fresh problems, training voices), in points, with a
95 % nested bootstrap interval over starts, Stage C seeds and items; ``primary.outcome`` is
:func:`cord.mini.stats.primary_outcome` with :data:`MARGIN`, ``primary.mde`` the minimum
detectable effect at 80 % power from the bootstrap SE. ``conclusion`` is the older three-way
reading of the same interval (:func:`cord.mini.stats.conclusion`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from cord.mini.arms import ARMS, LONG_ARMS, PRIMARY

#: the pre-registered equivalence margin of the primary contrast, in accuracy points
MARGIN = 3.0
PRIMARY_METRIC = ("greedy exact-final-answer audio accuracy on test: fresh problems read by the training voices "
                  "(points)")
#: what each arm is compared with
REFERENCES = ("sft_self", "control", "stage_b")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    _atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    _atomic(out / "report.md", render_markdown(report))
    plots(out, report)


def _mean_sd(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals)}


def collapsed(curve: list[dict[str, Any]], points: float) -> dict[str, Any]:
    """The long-horizon rule (pre-registered): a run *collapsed* when its final dev audio accuracy
    is at least ``points`` accuracy points below its peak over the dev checks."""
    accs = [c["dev_audio_acc"] for c in curve]
    peak = max(accs)
    peak_step = curve[accs.index(peak)]["step"]
    drop = 100 * (peak - accs[-1])
    return {"peak": peak, "peak_step": peak_step, "final": accs[-1], "drop_points": drop,
            "collapsed": drop >= points}


def build_report(per_start: list[dict[str, Any]], recipe_c: dict[str, Any], plan, analysis: dict[str, Any],
                 machine: dict[str, Any], data_settings=None) -> dict[str, Any]:
    """report.json's dict (see the module doc)."""
    from cord.mini.diagnostics import accuracies
    from cord.mini.stats import (
        bootstrap_mean,
        conclusion,
        mde,
        paired_matrix,
        primary_outcome,
    )

    arms = [a for a in ARMS if a in plan.seeds]
    outcomes: dict[str, list[list[dict]]] = {a: [] for a in arms}  # per start, per seed: accuracies()
    baselines: list[dict] = []
    for st in per_start:
        b = accuracies(st["baseline"]["eval_dir"])
        st["baseline"].update({k: v for k, v in b.items() if k not in ("text", "audio", "unseen")})
        baselines.append(b)
        for arm in arms:
            per_seed = []
            for r in st["runs"][arm]:
                acc = accuracies(r["eval_dir"])
                r.update({k: v for k, v in acc.items() if k not in ("text", "audio", "unseen")})
                per_seed.append(acc)
            outcomes[arm].append(per_seed)

    def compare(arm: str, ref: str, key: str = "audio") -> dict[str, Any] | None:
        mats = []
        for s, b in enumerate(baselines):
            ids = sorted(b[key])
            arm_rows = [o[key] for o in outcomes[arm][s]]
            if ref == "stage_b":
                ref_rows = [b[key]]
            else:
                if ref not in outcomes:
                    return None
                k = min(len(arm_rows), len(outcomes[ref][s]))
                arm_rows, ref_rows = arm_rows[:k], [o[key] for o in outcomes[ref][s][:k]]
            if not arm_rows or not ref_rows:
                return None
            mats.append(paired_matrix(arm_rows, ref_rows, ids))
        return bootstrap_mean(mats, replicates=10_000, seed=0)

    all_runs = lambda arm: [r for st in per_start for r in st["runs"][arm]]  # noqa: E731
    entries: dict[str, dict[str, Any]] = {}
    for arm in arms:
        runs = all_runs(arm)
        entry: dict[str, Any] = {
            "label": ARMS[arm].label,
            "preset": ARMS[arm].preset or "control",
            "runs_per_start": plan.seeds[arm],
            "lr": recipe_c["lr"].get(arm),
            "summary": {k: _mean_sd([r[k] for r in runs]) for k in ("text_acc", "audio_acc", "gap", "unseen_audio_acc")},
            "transcript": {k: _mean_sd([r["transcript"][k] for r in runs])["mean"] for k in ("exact", "numbers", "wer")},
            "heard": {k: _mean_sd([r["heard"][k] for r in runs])["mean"] for k in ("exact", "numbers", "wer")},
            "errors": _errors([r["errors"] for r in runs]),
            "compute": {"steps": plan.steps,
                        "tokens_per_run": statistics.fmean(r["tokens"] for r in runs),
                        "rollout_tokens_per_run": statistics.fmean(r["rollout_tokens"] for r in runs),
                        "train_seconds_per_run": statistics.fmean(r["train_seconds"] for r in runs)},
            "kl": (analysis.get(arm) or {}).get("kl"),
        }
        for ref in REFERENCES:
            if ref == arm:
                continue
            entry[f"delta_vs_{ref}"] = compare(arm, ref)
        entry["text_delta_vs_stage_b"] = compare(arm, "stage_b", "text")
        entry["unseen_delta_vs_stage_b"] = compare(arm, "stage_b", "unseen")
        if arm != "sft_self":
            entry["unseen_delta_vs_sft_self"] = compare(arm, "sft_self", "unseen")
            entry["text_delta_vs_sft_self"] = compare(arm, "sft_self", "text")
        entry["runs"] = runs
        entries[arm] = entry

    d = entries["cord"]["delta_vs_sft_self"]
    outcome = primary_outcome(d["mean"], d["ci95"], MARGIN)
    primary = {"contrast": "cord - sft_self", "metric": PRIMARY_METRIC, "test": "test (training voices)",
               "mean": d["mean"], "ci95": d["ci95"], "se": d["se"], "margin": MARGIN, "outcome": outcome,
               "mde": mde(d["se"]), "mde_rule": "(z_0.975 + z_0.80) x bootstrap SE = 2.80 x SE",
               "starts": len(per_start), "seeds": plan.seeds["cord"],
               "n_items": sum(len(b["audio"]) for b in baselines),
               "rule": "lo > 0: cord_beats_control; hi < 0: cord_worse_than_control; -margin < lo and hi < "
                       "margin: equivalent; else inconclusive (in that order)"}
    base = {k: statistics.fmean(b[k] for b in baselines) for k in ("text_acc", "audio_acc", "gap", "unseen_audio_acc")}
    base["n"] = sum(len(b["audio"]) for b in baselines)
    base["n_unseen"] = sum(len(b["unseen"]) for b in baselines)
    stage_b = {
        "gap_train_voices": base["gap"],
        "text_acc": base["text_acc"],
        "audio_acc": base["audio_acc"],
        "unseen_audio_acc": base["unseen_audio_acc"],
        "gap_unseen_voice": base["text_acc"] - base["unseen_audio_acc"],
        "transcript": {k: statistics.fmean(st["baseline"]["transcript"][k] for st in per_start)
                       for k in ("exact", "numbers", "wer")},
        "heard": {k: statistics.fmean(st["baseline"]["heard"][k] for st in per_start) for k in ("exact", "numbers", "wer")},
        "errors": _errors([st["baseline"]["errors"] for st in per_start]),
        "steps": per_start[0]["stages"]["stage_b"]["steps"],
        "kept": per_start[0]["stages"]["stage_b"].get("kept"),
        "dev": [st["stages"]["stage_b"]["dev"] for st in per_start],
        "kl": (analysis.get("stage_b") or {}).get("kl"),
    }
    long_h = {}
    for arm in LONG_ARMS:
        rows = [st["long"][arm] for st in per_start if arm in st.get("long", {})]
        if rows:
            per = [{"start": st["start"], **collapsed(st["long"][arm]["curve"], COLLAPSE_POINTS),
                    "curve": st["long"][arm]["curve"], "test_audio_acc": st["long"][arm]["final"]["audio_acc"],
                    "train_seconds": st["long"][arm]["train_seconds"]}
                   for st in per_start if arm in st.get("long", {})]
            long_h[arm] = {"steps": rows[0]["steps"], "runs": per, "collapsed": sum(p["collapsed"] for p in per),
                           "of": len(per)}
    first = per_start[0]
    return {
        "version": 3,
        "mode": plan.mode,
        "starts": len(per_start),
        "seeds": dict(plan.seeds),
        "stage_c_steps": plan.steps,
        "average_last": plan.average_last,
        "stage_c": recipe_c,
        "primary": primary,
        "conclusion": conclusion(d),
        "conclusion_rule": ("the primary contrast's interval read three ways: wholly above 0 → cord_beats_control, "
                            "wholly below 0 → cord_worse_than_control, else no_clear_difference"),
        "bootstrap": {"replicates": 10_000, "seed": 0, "levels": ["starts", "Stage C seeds", "test items"]},
        "stage_b": stage_b,
        "baseline": base,
        "arms": entries,
        "long_horizon": {"collapse_rule": f"final dev audio accuracy >= {COLLAPSE_POINTS:g} points below the "
                                          "run's peak over its dev checks", "arms": long_h},
        "teacher_formats": [st["stages"]["teacher_formats"] for st in per_start],
        "stage_a": [st["stages"]["stage_a"] for st in per_start],
        "per_start": [{"start": st["start"], "seed": st["seed"], "baseline": st["baseline"],
                       "stage_b_dev": st["stages"]["stage_b"]["dev"], "stage_a_steps": st["stages"]["stage_a"]["steps"],
                       "data": st["data"]} for st in per_start],
        "analysis": analysis,
        "machine": machine,
        "model_parameters": first["stages"].get("model_parameters"),
        "test_voice": _voice_info(data_settings, Path(first["data"]["test_unseen"])) if data_settings else None,
    }


COLLAPSE_POINTS = 5.0


def _errors(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """Error kinds summed over runs, as shares of the wrong audio answers."""
    from cord.mini.task import ERROR_KINDS

    wrong = sum(p["wrong"] for p in profiles)
    n = sum(p["n"] for p in profiles)
    return {"wrong_share": wrong / max(1, n),
            "kinds": {k: sum(p["kinds"].get(k, 0) for p in profiles) / max(1, wrong) for k in ERROR_KINDS}}


def _voice_info(data, test_dir: Path) -> dict[str, Any]:
    """The held-out voice: the engine and voice asked for and what the manifest records."""
    from cord.data.paired import MANIFEST

    versions, names = set(), set()
    manifest = test_dir / MANIFEST
    for line in (manifest.read_text(encoding="utf-8").splitlines() if manifest.is_file() else ()):
        if line.strip():
            row = json.loads(line)
            versions.add(row.get("tts", ""))
            names.add(row.get("voice_name", ""))
    versions.discard("")
    names.discard("")
    return {"engine": data.test_engine, "voice": data.test_voice, "tts": sorted(versions), "voice_names": sorted(names)}


held_out_voice_info = _voice_info


# ------------------------------------------------------------------------------ markdown


def _ci(d: dict[str, Any] | None) -> str:
    if not d:
        return "—"
    lo, hi = d["ci95"]
    return f"{d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


OUTCOME_TEXT = {
    "cord_beats_control": "CORD raised audio accuracy more than SFT-self (self-distillation from the same "
                          "teacher's greedy text solutions, off-policy): the whole interval is above zero",
    "cord_worse_than_control": "CORD did worse than SFT-self (self-distillation from the same teacher's greedy "
                               "text solutions, off-policy): the whole interval is below zero",
    "equivalent": "CORD and SFT-self are equivalent within the pre-registered margin: the interval holds zero "
                  "and lies inside ±{margin:g} points",
    "inconclusive": "this run cannot tell CORD from SFT-self: the interval holds zero and reaches past the "
                    "±{margin:g}-point margin",
}


def _lr_sentence(lrs: dict[str, float], scale: dict[str, float] | None = None) -> str:
    """How the arms' lrs were set: one shared lr, or a per-arm lr (cord.mini.arms.ARM_LR); and
    the parts trained at a multiple of it (train.lr_scale)."""
    values = set(lrs.values())
    said = (f"lr {next(iter(values)):g} for every arm: no per-arm lr sweep" if len(values) == 1
            else "lr per arm from one dev sweep (cord.mini.arms.ARM_LR)")
    parts = ", ".join(f"{part.replace('_', ' ')} at {s:g}×" for part, s in (scale or {}).items())
    return f"{said}; {parts}" if parts else said


def primary_sentence(report: dict[str, Any]) -> str:
    p = report["primary"]
    lo, hi = p["ci95"]
    return (OUTCOME_TEXT[p["outcome"]].format(margin=p["margin"]) +
            f": {p['mean']:+.1f} points, 95% interval [{lo:+.1f}, {hi:+.1f}]; the smallest difference this run "
            f"could detect (80% power) is {p['mde']:.1f} points.")


def render_markdown(report: dict[str, Any]) -> str:
    """report.md from report.json alone (every number here is in report.json)."""
    p, sb, base, rc = report["primary"], report["stage_b"], report["baseline"], report["stage_c"]
    lora = rc.get("lora")
    trains = ", ".join(rc["trainable"]) + (f" (language model through LoRA r={lora['r']})" if lora else "")
    tv = report.get("test_voice")
    voice = f"{tv['engine']} voice {', '.join(tv['voice_names']) or tv['voice']}" if tv else "a held-out voice"
    avg = (f"the mean of its last {report['average_last']} checkpoints (every {rc['save_every']} steps)"
           if report.get("average_last") else "its final weights")
    lines = [
        "# cord demo: can CORD close the audio-text gap better than self-distillation?",
        "",
        f"**Primary outcome: `{p['outcome']}`** — {primary_sentence(report)}",
        "",
        f"Pre-registered contrast (docs/demo/preregistration.md): CORD − SFT-self, {p['metric']}; "
        f"{p['starts']} independent Stage A/B start(s) × {p['seeds']} Stage C seeds × {base['n'] // max(1, p['starts'])} "
        f"test items per start; equivalence margin ±{p['margin']:g} points. `conclusion` (the interval read three "
        f"ways): `{report['conclusion']}`.",
        "",
        f"**Stage B** ({sb['steps']} steps on audio → transcript only, never a solution; {sb['kept']}): on fresh "
        f"problems read by the training voices, text {sb['text_acc']:.3f}, audio {sb['audio_acc']:.3f}, "
        f"**gap {100 * sb['gap_train_voices']:.1f} points**; what the audio path hears (the CTC readout's greedy "
        f"transcripts): {100 * sb['heard']['exact']:.1f} % exact, {100 * sb['heard']['numbers']:.1f} % with every "
        f"number right, WER {100 * sb['heard']['wer']:.1f} %; the decoder repeating the clip: "
        f"{100 * sb['transcript']['exact']:.1f} % exact. Unseen voice ({voice}): audio "
        f"{sb['unseen_audio_acc']:.3f} (gap {100 * sb['gap_unseen_voice']:.1f} points).",
        "",
        f"**Stage C**, every arm: {report['stage_c_steps']} optimizer steps, batch {rc['batch_size']}, "
        f"{rc['schedule']} lr after {rc['warmup_steps']} warmup steps ({_lr_sentence(rc['lr'], rc.get('lr_scale'))}), training "
        f"{trains}; evaluated as {avg}. Accuracies are greedy exact final answers; Δ columns are paired "
        "differences in accuracy points on the same items with 95% bootstrap intervals "
        f"({report['bootstrap']['replicates']} replicates over {', '.join(report['bootstrap']['levels'])}).",
        "",
        "| arm | runs | lr | text acc | audio acc | gap | Δ audio vs SFT-self | Δ audio vs control | "
        "Δ audio vs Stage B | Δ text vs Stage B | unseen voice audio | heard exact (CTC) | heard numbers right | "
        "repeat exact | rollout tokens / run | train s / run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| Stage B (before) | | | {base['text_acc']:.3f} | {base['audio_acc']:.3f} | {base['gap']:.3f} | | | | | "
        f"{base['unseen_audio_acc']:.3f} | {sb['heard']['exact']:.3f} | {sb['heard']['numbers']:.3f} | "
        f"{sb['transcript']['exact']:.3f} | | |",
    ]
    for arm, m in report["arms"].items():
        s, c = m["summary"], m["compute"]
        lines.append(
            f"| {'**' + arm + '**' if arm in PRIMARY else arm} | {report['starts'] * m['runs_per_start']} | "
            f"{m['lr']:g} | {s['text_acc']['mean']:.3f} | {s['audio_acc']['mean']:.3f} | {s['gap']['mean']:.3f} | "
            f"{_ci(m.get('delta_vs_sft_self'))} | {_ci(m.get('delta_vs_control'))} | {_ci(m['delta_vs_stage_b'])} | "
            f"{_ci(m['text_delta_vs_stage_b'])} | {s['unseen_audio_acc']['mean']:.3f} | "
            f"{_num(m['heard']['exact'])} | {_num(m['heard']['numbers'])} | {_num(m['transcript']['exact'])} | "
            f"{c['rollout_tokens_per_run']:.0f} | {c['train_seconds_per_run']:.0f} |")
    lines += ["", "Where the wrong audio answers go wrong first (share of wrong answers; test, training voices), and the "
              "audio-vs-text token KL on audio rollouts (`cord analyze`, start 0, seed 0):", "",
              "| model | wrong | operand misheard | operation | arithmetic | carry | answer line | no answer | other | "
              "mean KL | p80 KL |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e, kl in [("Stage B", sb["errors"], sb.get("kl")),
                        *[(a, m["errors"], m.get("kl")) for a, m in report["arms"].items()]]:
        k = e["kinds"]
        lines.append(f"| {name} | {100 * e['wrong_share']:.1f} % | " + " | ".join(
            f"{100 * k[x]:.0f} %" for x in ("operand", "operation", "arithmetic", "carry", "answer_line", "no_answer",
                                             "other")) + f" | {_num((kl or {}).get('mean'), 4)} | "
                     f"{_num((kl or {}).get('p80'), 4)} |")
    lh = report["long_horizon"]["arms"]
    if lh:
        lines += ["", f"**Long horizon** ({next(iter(lh.values()))['steps']} steps, dev checked every "
                  f"{_every(lh)} steps; collapse: {report['long_horizon']['collapse_rule']}):", "",
                  "| arm | start | peak dev audio (step) | final dev audio | drop (points) | collapsed | final test audio |",
                  "|---|---:|---:|---:|---:|---|---:|"]
        for arm, v in lh.items():
            for r in v["runs"]:
                lines.append(f"| {arm} | {r['start']} | {r['peak']:.3f} ({r['peak_step']}) | {r['final']:.3f} | "
                             f"{r['drop_points']:+.1f} | {'yes' if r['collapsed'] else 'no'} | {r['test_audio_acc']:.3f} |")
    lines += ["", "Per start (Stage B on test, training voices):", "",
              "| start | Stage A steps | text | audio | gap | heard exact (CTC) | repeat exact | unseen voice audio |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for st in report["per_start"]:
        b = st["baseline"]
        lines.append(f"| {st['start']} | {st['stage_a_steps']} | {b['text_acc']:.3f} | {b['audio_acc']:.3f} | "
                     f"{b['gap']:.3f} | {b['heard']['exact']:.3f} | {b['transcript']['exact']:.3f} | "
                     f"{b['unseen_audio_acc']:.3f} |")
    t = report.get("timings") or {}
    r = report.get("reused") or {}
    again = (f" (this invocation reused {r.get('starts', 0)} start(s) and {r.get('runs', 0)} of {r.get('of_runs')} "
             "Stage C runs; their stages and training are timed as recorded when they ran)"
             if r.get("starts") or r.get("runs") else "")
    lines += ["", f"Wall time{again}: " + ", ".join(f"{k.replace('stages_', '')} {v:.0f} s" for k, v in t.items()) + ".",
              "", _machine_line(report["machine"]), ""]
    return "\n".join(lines)


def _every(lh: dict[str, Any]) -> str:
    curve = next(iter(lh.values()))["runs"][0]["curve"]
    return str(curve[1]["step"] - curve[0]["step"]) if len(curve) > 1 else "n/a"


def _machine_line(m: dict[str, Any]) -> str:
    load = (f"; 1-minute load average {m['load_avg_1min_start']} at the start, {m['load_avg_1min_end']} at the end"
            if m.get("load_avg_1min_start") is not None else "")
    return (f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
            f"torch {m['torch']}, transformers {m.get('transformers', 'n/a')}, {m['platform']}{load}.")


# --------------------------------------------------------------------------------- plots


def plots(out: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(arms) + 2), 4))
    labels = ["Stage B"] + arms
    x = range(len(labels))
    for key, offset, color, name in (("text_acc", -0.27, "tab:blue", "text"), ("audio_acc", 0.0, "tab:orange", "audio"),
                                     ("unseen_audio_acc", 0.27, "tab:gray", "audio, unseen voice")):
        means = [report["baseline"][key]] + [report["arms"][a]["summary"][key]["mean"] for a in arms]
        ax.bar([i + offset for i in x], means, width=0.26, color=color, label=name)
        for i, a in enumerate(arms, start=1):
            pts = [r[key] for r in report["arms"][a]["runs"]]
            ax.scatter([i + offset] * len(pts), pts, color="k", s=6, zorder=3)
    ax.set_xticks(list(x), labels, rotation=30, ha="right")
    ax.set_ylabel("accuracy (test)")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("Accuracy per arm (bars: mean over runs, dots: runs)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_arm.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(arms) + 1.6))
    shown = [a for a in arms if report["arms"][a].get("delta_vs_sft_self")]
    for i, a in enumerate(shown):
        d = report["arms"][a]["delta_vs_sft_self"]
        lo, hi = d["ci95"]
        ax.errorbar([d["mean"]], [i], xerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="o", capsize=4,
                    color="tab:red" if a == "cord" else "tab:gray")
    m = report["primary"]["margin"]
    ax.axvline(0, color="k", lw=0.8)
    ax.axvspan(-m, m, color="tab:green", alpha=0.1, label=f"±{m:g} (equivalence margin)")
    ax.set_yticks(range(len(shown)), shown)
    ax.invert_yaxis()
    ax.set_xlabel("audio accuracy minus SFT-self's (points, 95% interval)")
    ax.set_title(f"Each arm against SFT-self — primary outcome: {report['primary']['outcome']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "delta_vs_sft_self.png", dpi=110)
    plt.close(fig)

    lh = report["long_horizon"]["arms"]
    if lh:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        colors = {"grpo": "tab:purple", "cord": "tab:red", "opd_weighted": "tab:blue"}
        for arm, v in lh.items():
            for r in v["runs"]:
                ax.plot([c["step"] for c in r["curve"]], [c["dev_audio_acc"] for c in r["curve"]],
                        color=colors.get(arm), lw=1, label=arm if r["start"] == v["runs"][0]["start"] else None)
        ax.set_xlabel("Stage C step")
        ax.set_ylabel("dev audio accuracy (training voices)")
        ax.set_title("Long horizon: dev checks along the way")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "long_horizon.png", dpi=110)
        plt.close(fig)
