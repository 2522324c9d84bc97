"""``cord demo``: the CPU miniature of the paper, end to end, through the real code paths.

For every independent start (data, split and init seed):

    data (espeak-ng, many voices; a held-out voice for dev/test)
    → Stage A (text LM) → Stage B (audio alignment, LM frozen, to convergence on dev)
    → Stage C from that checkpoint, one shared recipe (configs/mini/, check_presets):
      the control arm (Stage B's objective continued, cord.mini.control) and cord, opd,
      forward_kl, sft, grpo through ``cord train``, for every Stage C seed
    → ``cord eval`` on the held-out voice (greedy, exact final answer via the judges)

then ``cord analyze`` before/after CORD, and report.json / report.md / PNG plots whose
numbers are recomputed from the per-item outputs: paired differences against the control
and the Stage B model with nested bootstrap intervals (cord.mini.stats), and the
``conclusion`` read off CORD's interval against the control.

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


#: Stage C seeds per start and independent Stage A/B starts: (quick, default, study)
DEFAULT_SEEDS = {"quick": 1, "default": 2, "study": 3}
DEFAULT_STARTS = {"quick": 1, "default": 1, "study": 3}
#: the control arm's label (Stage B's own objective continued: cord.mini.control)
CONTROL_LABEL = "control (Stage B objective continued)"
BOOTSTRAP = {"replicates": 10_000, "seed": 0}


def stage_c_config(method: str, stage_b: Path, train_dir: Path, run_dir: Path, seed: int, steps: int):
    """The Stage C CordConfig of ``method`` (its preset in configs/mini/) for one run; the
    control arm uses the ``cord`` preset's model and train sections (see :func:`check_presets`)."""
    from cord.config import load_config

    preset = "cord" if method == "control" else method
    return load_config(presets_dir() / f"{preset}.yaml", [
        f"model.name_or_path={stage_b}", f"data.train={train_dir}", f"train.output_dir={run_dir}",
        f"train.seed={seed}", f"train.max_steps={steps}", "train.progress=false",
    ])


def check_presets(cfgs: dict[str, Any]) -> dict[str, Any]:
    """Every method's preset must train the same parts with the same optimiser, lr, schedule,
    batch and steps (only the objective differs), so the comparison is of objectives; returns
    that shared recipe. A preset that differs is a CordError naming the setting."""
    def shared(cfg) -> dict[str, Any]:
        train = cfg.train.model_dump(exclude={"output_dir"})
        lora = cfg.model.lora.model_dump() if cfg.model.lora is not None else None
        return {"train": train, "lora": lora, "max_new_tokens": cfg.rollout.max_new_tokens}

    ref_name, ref = next(iter(cfgs.items()))
    want = shared(ref)
    for name, cfg in cfgs.items():
        got = shared(cfg)
        for section in want:
            if got[section] != want[section]:
                diff = (sorted(k for k in want[section] if want[section][k] != got[section].get(k))
                        if isinstance(want[section], dict) and isinstance(got[section], dict) else [section])
                raise CordError(f"configs/mini/{name}.yaml differs from {ref_name}.yaml in {section} "
                                f"({', '.join(diff)}): every Stage C method must share one recipe")
    t = want["train"]
    return {"steps": t["max_steps"], "lr": t["lr"], "batch_size": t["batch_size"], "warmup_steps": t["warmup_steps"],
            "schedule": t["schedule"], "trainable": t["trainable"], "lora": want["lora"]}


def demo_recipe(quick: bool = False, test_voice: str = "espeak", threads: int | None = None):
    """The Stage A/B recipe of start 0: quick or full, with the held-out (dev and test) voice
    from ``test_voice``: "espeak" (default) or "piper" (a neural voice; see cord.mini.data), on
    ``threads`` torch threads (None: the recipe's fixed count)."""
    from dataclasses import replace

    from cord.mini.stages import RecipeConfig

    recipe = RecipeConfig.quick(seed=0) if quick else RecipeConfig(seed=0)
    if threads is not None:
        recipe = replace(recipe, threads=threads)
    # DataSettings(test_engine="piper") turns the default espeak-ng held-out voice into PIPER_TEST_VOICE
    return replace(recipe, data=replace(recipe.data, test_engine=test_voice))


def run_demo(out: str | Path = "cord-demo", seeds: int | None = None, quick: bool = False,
             progress: bool = True, study: bool = False, starts: int | None = None,
             test_voice: str = "espeak", threads: int | None = None) -> dict[str, Any]:
    """The whole miniature into ``out`` (resuming what is there); returns report.json's dict.

    ``starts`` independent Stage A/B starts (start ``s``: data, split and init seed ``s``),
    each with the control arm and every method for ``seeds`` Stage C seeds. Defaults: one
    start and 2 seeds; ``study``: 3 starts × 3 seeds; ``quick``: the test-sized recipe, one
    start, one seed. ``test_voice="piper"``: dev and test spoken by a Piper neural voice (the
    ``[piper]`` extra; slow on a CPU). Runs on the recipe's fixed torch thread count, or
    ``threads`` (the count changes float reduction order, so a seed reproduces only at the same
    count), and restores the caller's."""
    from cord.mini.data import check_engines
    from cord.mini.stages import auto_threads, torch_threads

    mode = "quick" if quick else "study" if study else "default"
    seeds = seeds if seeds is not None else DEFAULT_SEEDS[mode]
    starts = starts if starts is not None else DEFAULT_STARTS[mode]
    if seeds < 1:
        raise CordError("--seeds must be at least 1")
    if starts < 1:
        raise CordError("--starts must be at least 1")
    if threads is not None and threads < 1:
        raise CordError("--threads must be at least 1")
    if Path(out).exists() and not Path(out).is_dir():
        raise CordError(f"--out {out}: exists and is not a directory (give a new or an earlier demo directory)")
    recipe = demo_recipe(quick, test_voice, threads)
    check_engines(recipe.data)
    with torch_threads(recipe.threads or auto_threads()):
        return _run_demo(Path(out), recipe, seeds, starts, quick, study, progress)


def _run_demo(out: Path, recipe0, seeds: int, starts: int, quick: bool, study: bool, progress: bool) -> dict[str, Any]:
    from dataclasses import replace

    from cord.mini.control import control_done, run_control
    from cord.mini.stages import load_average, machine_info, run_stages
    from cord.train.trainer import Trainer

    out.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(f"[demo] {msg}", flush=True)) if progress else (lambda msg: None)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    load_at_start = load_average()
    steps = _stage_c_steps(quick)
    per_start: list[dict[str, Any]] = []
    recipe_c = None
    reused = {"starts": 0, "runs": 0}  # Stage A/B starts and Stage C runs an earlier invocation made
    for start in range(starts):
        recipe = replace(recipe0, seed=start, data=replace(recipe0.data, seed=start))
        sdir = out / f"start{start}"
        # ---- stages A and B (shared by every arm and seed of this start) -------------------
        stages_json = sdir / "stages" / "stages.json"
        previous = json.loads(stages_json.read_text()) if stages_json.is_file() else None
        if previous is not None and previous.get("config") == recipe.to_dict():
            stages = previous
            reused["starts"] += 1
            say(f"start {start}: reusing stages A and B in {sdir / 'stages'}")
        else:
            say(f"start {start}: data, Stage A (text LM), Stage B (audio alignment to convergence) ...")
            stages = run_stages(sdir / "stages", recipe, progress=progress)
            _drop_stale([sdir / "runs", sdir / "eval", *([out / "analyze"] if start == 0 else [])], say)
        for k, v in stages["timings"].items():
            timings[f"stages_{k}"] = round(timings.get(f"stages_{k}", 0.0) + v, 2)
        stage_b = Path(stages["paths"]["stage_b"])
        train_dir = Path(stages["paths"]["data"]["train"])
        test_dir = Path(stages["paths"]["data"]["test"])
        max_new = recipe.max_new_tokens

        t = time.perf_counter()
        base = _evaluate(stage_b, test_dir, sdir / "eval" / "stage_b", max_new)
        timings["eval"] = round(timings.get("eval", 0.0) + time.perf_counter() - t, 2)
        say(f"start {start}: Stage B on the held-out voice: text {base['text_acc']:.3f}, "
            f"audio {base['audio_acc']:.3f}, gap {base['gap']:.3f}")

        # ---- stage C: the control and every method × seed, one shared recipe ---------------
        recipe_c = check_presets({m: stage_c_config(m, stage_b, train_dir, sdir / "runs" / "x", 0, steps)
                                  for m in METHODS})
        arms: dict[str, list[dict[str, Any]]] = {a: [] for a in ("control", *METHODS)}
        t_c = time.perf_counter()
        for seed in range(seeds):
            for arm in ("control", *METHODS):
                run_dir = sdir / "runs" / f"{arm}-seed{seed}"
                cfg = stage_c_config(arm, stage_b, train_dir, run_dir, seed, steps)
                t = time.perf_counter()
                if arm == "control":
                    if not control_done(run_dir, steps):
                        run_control(cfg, recipe)
                    else:
                        reused["runs"] += 1
                elif not (run_dir / "model").is_dir() or _last_step(run_dir) < steps:
                    Trainer(cfg).fit()
                else:
                    reused["runs"] += 1
                train_s = round(time.perf_counter() - t, 2)
                t = time.perf_counter()
                result = _evaluate(run_dir / "model", test_dir, sdir / "eval" / f"{arm}-seed{seed}", max_new)
                result.update(seed=seed, wall_seconds=train_s, eval_seconds=round(time.perf_counter() - t, 2),
                              steps=steps, run_dir=str(run_dir), **_compute(run_dir, arm, train_s))
                result["gap_reduction"] = _reduction(base["gap"], result["gap"])
                arms[arm].append(result)
                say(f"start {start} {arm:>10} seed {seed}: text {result['text_acc']:.3f}, audio "
                    f"{result['audio_acc']:.3f}, gap {result['gap']:.3f} [{train_s:.0f} s]")
        timings["stage_c"] = round(timings.get("stage_c", 0.0) + time.perf_counter() - t_c, 2)
        per_start.append({"start": start, "seed": recipe.seed, "stage_a": stages["stage_a"],
                          "stage_b": {"steps": stages["stage_b"].get("steps"),
                                      "chosen_step": stages["stage_b"].get("chosen_step"),
                                      "stopped": stages["stage_b"].get("stopped"),
                                      "dev": stages["stage_b"].get("chosen"), "test": stages["test"]},
                          "baseline": base, "control": arms.pop("control"), "methods": arms,
                          "data": stages["paths"]["data"], "stage_b_dir": str(stage_b), "model_parameters": stages.get("model_parameters")})

    # ---- diagnostics: where the divergence sits, before and after CORD (start 0, seed 0) ---
    t = time.perf_counter()
    first = per_start[0]
    analysis = _analyze_before_after(out, Path(first["stage_b_dir"]), Path(first["methods"]["cord"][0]["run_dir"]) / "model",
                                     Path(first["data"]["test"]), limit=60 if quick else 200,
                                     max_new_tokens=recipe0.max_new_tokens)
    timings["analyze"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    report = build_report(per_start, recipe_c, analysis, {}, seeds, quick, study, machine_info(load_at_start))
    report["test_voice"] = held_out_voice_info(recipe0.data, Path(first["data"]["test"]))
    timings["report"] = round(time.perf_counter() - t, 2)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    report["timings"] = timings
    report["reused"] = {**reused, "of_starts": starts, "of_runs": starts * seeds * (1 + len(METHODS))}
    _atomic_json(out / "report.json", report)
    _atomic_text(out / "report.md", render_markdown(report))
    _plots(out, report)
    say(f"done in {timings['total']:.0f} s: {out / 'report.md'} (conclusion: {report['conclusion']})")
    return report


def _drop_stale(paths: list[Path], say) -> None:
    """Stage C runs, evaluations and analyses made from an earlier Stage B (another recipe: thread
    count, voice, version) would be taken as finished: they go (they are derived, and are remade
    from the new Stage B)."""
    import shutil

    for path in paths:
        if path.exists():
            say(f"removing {path}: made from an earlier Stage B")
            shutil.rmtree(path)


def _last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    rows = _metrics(path)
    return int(rows[-1]["step"]) if rows else 0


def _metrics(path: Path) -> list[dict[str, Any]]:
    from cord.data.paired import read_jsonl

    return [row for _, row in read_jsonl(path)]


#: arms whose training tokens are sampled (rollouts); sft and the control read reference solutions
SAMPLING_ARMS = frozenset({"cord", "opd", "forward_kl", "grpo"})


def _compute(run_dir: Path, arm: str, wall_seconds: float = 0.0) -> dict[str, float]:
    """Compute of a run, summed over its steps from metrics.jsonl: ``tokens`` (every completion
    token trained on), ``rollout_tokens`` (those sampled: 0 for sft and the control, which read
    the reference solution) and ``train_seconds`` (the steps' own clock, so a run reused by a
    rerun keeps its time; ``wall_seconds`` when the rows have no step times)."""
    rows = _metrics(run_dir / "metrics.jsonl")
    tokens = float(sum(float(r.get("completion_tokens") or 0.0) for r in rows))
    times = [float(r["step_time"]) for r in rows if r.get("step_time") is not None]
    return {"tokens": tokens, "rollout_tokens": tokens if arm in SAMPLING_ARMS else 0.0,
            "train_seconds": round(sum(times), 2) if times else wall_seconds}


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


# ------------------------------------------------------------------------------ report


def item_outcomes(eval_dir: str | Path, test_name: str, modality: str) -> dict[str, bool]:
    """{item id: correct} from a ``cord eval`` folder's per-item file (``<test>/<modality>.jsonl``).
    Skipped items are left out (a paired comparison then refuses the run: the miniature's
    clips are all short enough to answer)."""
    from cord.data.paired import read_jsonl

    path = Path(eval_dir) / test_name / f"{modality}.jsonl"
    return {str(r["id"]): bool(r["correct"]) for _, r in read_jsonl(path)
            if r.get("status", "answered") == "answered"}


def _accuracies(eval_dir: str | Path, test_name: str) -> dict[str, Any]:
    text = item_outcomes(eval_dir, test_name, "text")
    audio = item_outcomes(eval_dir, test_name, "audio")
    t = sum(text.values()) / max(1, len(text))
    a = sum(audio.values()) / max(1, len(audio))
    return {"text": text, "audio": audio, "text_acc": t, "audio_acc": a, "gap": t - a}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for key in ("text_acc", "audio_acc", "gap", "gap_reduction"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        mean, sd = _mean_sd(vals)
        summary[key] = {"mean": mean, "sd": sd, "min": min(vals, default=None), "max": max(vals, default=None)}
    return summary


def build_report(per_start: list[dict[str, Any]], recipe_c: dict[str, Any], analysis: dict[str, Any],
                 timings: dict[str, float], seeds: int, quick: bool, study: bool,
                 machine: dict[str, Any]) -> dict[str, Any]:
    """report.json's dict. Every accuracy and interval is recomputed here from the per-item
    files ``cord eval`` wrote (each run's ``eval_dir``), not taken from its summary: the
    paired differences need the items anyway, and the report then cannot disagree with them."""
    from cord.mini.stats import bootstrap_mean, conclusion, paired_matrix

    arms = ("control", *METHODS)
    outcomes: dict[str, list[dict[str, list]]] = {a: [] for a in arms}  # per start: {text, audio} per seed
    baselines, ids_per_start = [], []
    for st in per_start:
        test_name = Path(st["data"]["test"]).name
        b = _accuracies(st["baseline"]["eval_dir"], test_name)
        ids = sorted(b["audio"])
        ids_per_start.append(ids)
        st["baseline"].update(text_acc=b["text_acc"], audio_acc=b["audio_acc"], gap=b["gap"], n=len(ids))
        baselines.append(b)
        for arm in arms:
            runs = st["control"] if arm == "control" else st["methods"][arm]
            per_seed = {"text": [], "audio": []}
            for r in runs:
                acc = _accuracies(r["eval_dir"], test_name)
                r.update(text_acc=acc["text_acc"], audio_acc=acc["audio_acc"], gap=acc["gap"], n=len(acc["audio"]),
                         gap_reduction=_reduction(b["gap"], acc["gap"]))
                per_seed["text"].append(acc["text"])
                per_seed["audio"].append(acc["audio"])
            outcomes[arm].append(per_seed)

    def compare(arm: str, ref: str, modality: str) -> dict[str, Any]:
        mats = []
        for s, ids in enumerate(ids_per_start):
            ref_rows = [baselines[s][modality]] if ref == "stage_b" else outcomes[ref][s][modality]
            mats.append(paired_matrix(outcomes[arm][s][modality], ref_rows, ids))
        return bootstrap_mean(mats, **BOOTSTRAP)

    def gap_compare(arm: str, ref: str) -> dict[str, Any]:
        # gap = text − audio per item, so Δgap = Δtext − Δaudio item by item
        mats = []
        for s, ids in enumerate(ids_per_start):
            def rows(name):
                if name == "stage_b":
                    return [baselines[s]["text"]], [baselines[s]["audio"]]
                return outcomes[name][s]["text"], outcomes[name][s]["audio"]
            at, aa = rows(arm)
            rt, ra = rows(ref)
            mats.append(paired_matrix(at, rt, ids) - paired_matrix(aa, ra, ids))
        return bootstrap_mean(mats, **BOOTSTRAP)

    all_runs = lambda arm: [r for st in per_start for r in (st["control"] if arm == "control" else st["methods"][arm])]  # noqa: E731
    entries: dict[str, dict[str, Any]] = {}
    for arm in arms:
        runs = all_runs(arm)
        entry = {
            "label": CONTROL_LABEL if arm == "control" else LABELS[arm],
            "summary": _summary(runs),
            "delta_vs_stage_b": compare(arm, "stage_b", "audio"),
            "text_delta_vs_stage_b": compare(arm, "stage_b", "text"),
            "compute": {"tokens_per_run": statistics.fmean(r["tokens"] for r in runs),
                        "rollout_tokens_per_run": statistics.fmean(r["rollout_tokens"] for r in runs),
                        "train_seconds_per_run": statistics.fmean(r["train_seconds"] for r in runs)},
        }
        if arm != "control":
            entry["delta_vs_control"] = compare(arm, "control", "audio")
            entry["text_delta_vs_control"] = compare(arm, "control", "text")
            entry["gap_delta_vs_control"] = gap_compare(arm, "control")
            entry["seeds"] = runs
        entries[arm] = entry
    control = entries.pop("control")
    control["seeds"] = all_runs("control")
    base = {k: statistics.fmean(b[k] for b in baselines) for k in ("text_acc", "audio_acc", "gap")}
    base["n"] = sum(len(ids) for ids in ids_per_start)
    base["n_per_start"] = [len(ids) for ids in ids_per_start]
    base["eval_dir"] = per_start[0]["baseline"]["eval_dir"]
    first = per_start[0]
    return {
        "version": 2,
        "quick": quick,
        "study": study,
        "starts": len(per_start),
        "seeds": seeds,
        "stage_c_steps": recipe_c["steps"],
        "stage_c": recipe_c,
        "conclusion": conclusion(entries["cord"]["delta_vs_control"]),
        "conclusion_rule": ("CORD's audio accuracy minus the control's on the same held-out-voice items (points), "
                            "95% nested bootstrap interval over starts, Stage C seeds and items: wholly above 0 → "
                            "cord_beats_control, wholly below 0 → cord_worse_than_control, else no_clear_difference"),
        "bootstrap": {**BOOTSTRAP, "levels": ["starts", "Stage C seeds", "test items"]},
        "baseline": base,
        "control": control,
        "methods": entries,
        "per_start": per_start,
        "stage_a": first["stage_a"],
        "stage_b": first["stage_b"],
        "analysis": analysis,
        "timings": timings,
        "machine": machine,
        "model_parameters": first.get("model_parameters"),
        "data": first["data"],
    }


def held_out_voice_info(data, test_dir: Path) -> dict[str, Any]:
    """The held-out voice as report.json records it: the engine and voice asked for
    (DataSettings) and the engine version and voice names the test manifest records."""
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
    return {"engine": data.test_engine, "voice": data.test_voice, "tts": sorted(versions),
            "voice_names": sorted(names)}


def _ci(d: dict[str, Any] | None) -> str:
    if not d:
        return "—"
    lo, hi = d["ci95"]
    return f"{d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md from report.json alone (every number here is in report.json)."""
    base = report["baseline"]
    rc = report["stage_c"]
    lora = rc.get("lora")
    trains = ", ".join(rc["trainable"]) + (f" (language model through LoRA r={lora['r']})" if lora else "")
    scope = (f"{report['starts']} independent Stage A/B start(s) × {report['seeds']} Stage C seed(s)")
    tv = report.get("test_voice")
    voice = (f" ({tv['engine']} voice {', '.join(tv['voice_names']) or tv['voice']}"
             f"{', ' + ', '.join(tv['tts']) if tv['tts'] else ''}; training voices are espeak-ng)" if tv else "")
    lines = [
        "# cord demo: the audio-text gap on a tiny audio LLM",
        "",
        f"**Conclusion: `{report['conclusion']}`** — {_conclusion_sentence(report)}",
        "",
        f"Held-out voice test set{voice}: n = {base['n']} ({', '.join(map(str, base['n_per_start']))} per start). {scope}. "
        f"Stage C: {rc['steps']} steps for every arm, lr {rc['lr']:g} ({rc['schedule']}, {rc['warmup_steps']} "
        f"warmup), batch {rc['batch_size']}, training {trains}. The control continues Stage B's own objective "
        "(answer CE + CTC) with exactly that recipe. Accuracies are greedy, exact final answer; Δ columns are "
        "paired differences in accuracy points on the same items with 95% bootstrap intervals "
        f"({report['bootstrap']['replicates']} replicates over {', '.join(report['bootstrap']['levels'])}).",
        "",
        "| arm | text acc | audio acc | gap | Δ audio vs control | Δ gap vs control | Δ audio vs Stage B | "
        "Δ text vs Stage B | rollout tokens / run | train s / run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| Stage B (before) | {base['text_acc']:.3f} | {base['audio_acc']:.3f} | {base['gap']:.3f} | | | | | | |",
    ]
    for name, m in (("control", report["control"]), *report["methods"].items()):
        s, c = m["summary"], m["compute"]
        lines.append(
            f"| {m['label']} | {s['text_acc']['mean']:.3f} | {s['audio_acc']['mean']:.3f} | {s['gap']['mean']:.3f} | "
            f"{_ci(m.get('delta_vs_control'))} | {_ci(m.get('gap_delta_vs_control'))} | {_ci(m['delta_vs_stage_b'])} | "
            f"{_ci(m['text_delta_vs_stage_b'])} | {c['rollout_tokens_per_run']:.0f} | {c['train_seconds_per_run']:.0f} |")
    lines += ["", "Per start: Stage B and its test accuracies.", "",
              "| start | Stage A steps | Stage B steps (kept) | stopped | dev gap (kept) | test text | test audio | test gap |",
              "|---:|---:|---:|---|---:|---:|---:|---:|"]
    for st in report["per_start"]:
        b, dev = st["baseline"], st["stage_b"].get("dev") or {}
        lines.append(f"| {st['start']} | {st['stage_a'].get('steps')} | {st['stage_b'].get('steps')} "
                     f"({st['stage_b'].get('chosen_step')}) | {st['stage_b'].get('stopped')} | "
                     f"{_num(dev.get('gap'), 3)} | {b['text_acc']:.3f} | {b['audio_acc']:.3f} | {b['gap']:.3f} |")
    lines += ["", "Per run:", "", "| start | arm | seed | text acc | audio acc | gap | gap reduction | tokens | train s |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for st in report["per_start"]:
        for name, runs in (("control", st["control"]), *st["methods"].items()):
            for r in runs:
                lines.append(f"| {st['start']} | {name} | {r['seed']} | {r['text_acc']:.3f} | {r['audio_acc']:.3f} | "
                             f"{r['gap']:.3f} | {_pct(r['gap_reduction'])} | {r['tokens']:.0f} | "
                             f"{r['train_seconds']:.0f} |")
    a = report["analysis"]
    lines += ["", "Token-level reverse KL(audio ‖ text) on audio rollouts (`cord analyze`, test voice, start 0, "
              "CORD seed 0):", "",
              "| model | mean KL | p80 KL | skewness | corr(position, KL) | tokens |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("before", "after"):
        r = a[name]
        kl = r.get("kl") or {}
        lines.append(f"| {name} | {_num(kl.get('mean'), 4)} | {_num(kl.get('p80'), 4)} | {_num(kl.get('skewness'), 2)} | "
                     f"{_num(r.get('pearson_position'), 3)} | {r.get('n_tokens', 0)} |")
    t = report["timings"]
    r = report.get("reused") or {}
    again = (f" (data and stages A/B as recorded when they ran; the rest is this invocation, which reused "
             f"{r['runs']} of {r['of_runs']} Stage C runs from an earlier one)") if r.get("starts") or r.get("runs") else ""
    lines += ["", f"Wall time{again}: " + ", ".join(f"{k.replace('stages_', '')} {v:.0f} s" for k, v in t.items()) + ".", "",
              _machine_line(report["machine"]),
              "", "## What these numbers do and do not show", "", _honest_paragraph(report), ""]
    return "\n".join(lines)


def _conclusion_sentence(report: dict[str, Any]) -> str:
    d = report["methods"]["cord"]["delta_vs_control"]
    lo, hi = d["ci95"]
    what = {
        "cord_beats_control": "CORD raised held-out-voice audio accuracy more than continuing Stage B's own "
                              "training for the same steps and lr did",
        "no_clear_difference": "CORD did not beat continuing Stage B's own training for the same steps and lr "
                               "(the interval includes zero)",
        "cord_worse_than_control": "CORD did worse than simply continuing Stage B's own training for the same "
                                   "steps and lr",
    }[report["conclusion"]]
    return f"{what}: {d['mean']:+.1f} points of audio accuracy, 95% interval [{lo:+.1f}, {hi:+.1f}]."


def _machine_line(m: dict[str, Any]) -> str:
    load = (f"; 1-minute load average {m['load_avg_1min_start']} at the start, {m['load_avg_1min_end']} at the end"
            if m.get("load_avg_1min_start") is not None else "")
    return (f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
            f"torch {m['torch']}, transformers {m.get('transformers', 'n/a')}, {m['platform']}{load}.")


def _num(x, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _excludes_zero(d: dict[str, Any]) -> int:
    """+1 when the interval is wholly above 0, −1 wholly below, 0 when it holds 0."""
    lo, hi = d["ci95"]
    return 1 if lo > 0 else -1 if hi < 0 else 0


def _honest_paragraph(report: dict[str, Any]) -> str:
    ms = report["methods"]
    cord = ms["cord"]
    params = report.get("model_parameters") or {}
    size = (f"{sum(params.values()) / 1e6:.2f} M parameters ({params.get('language_model', 0) / 1e3:.0f} k in the "
            "word-level decoder)") if params else "well under a million parameters"
    rc = report["stage_c"]
    text = (f"This is a miniature: a model of {size}, templated arithmetic word problems, espeak-ng voices, "
            f"{rc['steps']} Stage C steps per arm, evaluated on {report['baseline']['n']} problems spoken by a "
            "voice never heard in training. ")
    text += _conclusion_sentence(report) + " "
    if report["conclusion"] != "cord_beats_control":
        text += "So this run does not show CORD beating more of the same training. "
    above = [m for m in ms if m != "cord" and _excludes_zero(ms[m]["delta_vs_control"]) > 0]
    below = [m for m in ms if m != "cord" and _excludes_zero(ms[m]["delta_vs_control"]) < 0]
    if above:
        text += f"Against the control, {', '.join(above)} also came out above it (interval above zero). "
    if below:
        text += f"{', '.join(below)} came out below the control (interval below zero). "
    vs_b = _excludes_zero(cord["delta_vs_stage_b"])
    text += {1: "Against the Stage B checkpoint itself CORD raised audio accuracy "
                f"({_ci(cord['delta_vs_stage_b'])} points). ",
             -1: "Against the Stage B checkpoint itself CORD lowered audio accuracy "
                 f"({_ci(cord['delta_vs_stage_b'])} points). ",
             0: "Against the Stage B checkpoint itself CORD's change in audio accuracy is within noise "
                f"({_ci(cord['delta_vs_stage_b'])} points). "}[vs_b]
    if _text_unchanged(report):
        text += "Text accuracy did not move in any run. "
    else:
        text += (f"Text accuracy is measured, not frozen: CORD moved it by {_ci(cord['text_delta_vs_stage_b'])} "
                 "points against Stage B. ")
    if report["starts"] < 2:
        text += ("All of this is one Stage A/B start: the intervals cover the test items and the Stage C seeds, "
                 "not what another start (other data, other initialisation) would give; `cord demo --study` "
                 "repeats it over independent starts. ")
    text += ("It does not reproduce the paper's numbers, which come from 7B models, 80k NuminaMath problems and "
             "real benchmarks.")
    return text


def _text_unchanged(report: dict[str, Any]) -> bool:
    base = {st["start"]: st["baseline"]["text_acc"] for st in report["per_start"]}
    return all(abs(r["text_acc"] - base[st["start"]]) < 1e-9 for st in report["per_start"]
               for runs in (st["control"], *st["methods"].values()) for r in runs)


def _plots(out: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = ["control", *report["methods"]]
    entry = lambda a: report["control"] if a == "control" else report["methods"][a]  # noqa: E731
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = ["Stage B"] + arms
    x = range(len(labels))
    for modality, offset, color in (("text_acc", -0.18, "tab:blue"), ("audio_acc", 0.18, "tab:orange")):
        means = [report["baseline"][modality]] + [entry(a)["summary"][modality]["mean"] for a in arms]
        ax.bar([i + offset for i in x], means, width=0.36, color=color, label=modality.replace("_acc", ""))
        for i, a in enumerate(arms, start=1):
            pts = [r[modality] for r in entry(a)["seeds"]]
            ax.scatter([i + offset] * len(pts), pts, color="k", s=8, zorder=3)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("accuracy (held-out voice)")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("Text vs audio accuracy per arm (bars: mean over runs, dots: runs)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_method.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    methods = list(report["methods"])
    for i, m in enumerate(methods):
        d = report["methods"][m]["delta_vs_control"]
        lo, hi = d["ci95"]
        ax.errorbar([d["mean"]], [i], xerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="o", capsize=4,
                    color="tab:red" if m == "cord" else "tab:gray")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(methods)), methods)
    ax.invert_yaxis()
    ax.set_xlabel("audio accuracy minus the control's (points, 95% interval)")
    ax.set_title(f"Each method against the control — conclusion: {report['conclusion']}")
    fig.tight_layout()
    fig.savefig(out / "delta_vs_control.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for st in report["per_start"][:1]:
        for name, runs in (("control", st["control"]), *st["methods"].items()):
            for r in runs:
                path = Path(r["run_dir"]) / "metrics.jsonl"
                if not path.is_file():
                    continue
                rows = _metrics(path)
                steps = [row["step"] for row in rows]
                axes[0].plot(steps, [row.get("loss") for row in rows], label=f"{name} s{r['seed']}", lw=0.8)
                kl = [row.get("kl_mean") for row in rows]
                if any(v is not None for v in kl):
                    axes[1].plot(steps, kl, label=f"{name} s{r['seed']}", lw=0.8)
    axes[0].set_title("training loss (start 0)")
    axes[1].set_title("mean token KL (methods with a KL term)")
    for a in axes:
        a.set_xlabel("step")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)


def run(args) -> int:
    """CLI entry: ``cord demo [--out DIR] [--seeds N] [--quick | --study] [--threads N] [--test-voice espeak|piper]``."""
    study = bool(getattr(args, "study", False))
    if study and args.quick:
        raise CordError("--quick and --study exclude each other")
    report = run_demo(args.out, seeds=args.seeds, quick=args.quick, study=study,
                      test_voice=getattr(args, "test_voice", "espeak"), threads=getattr(args, "threads", None))
    d = report["methods"]["cord"]["delta_vs_control"]
    print(f"conclusion: {report['conclusion']} (CORD vs control: {d['mean']:+.1f} points audio accuracy, "
          f"95% interval [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]); report: {Path(args.out) / 'report.md'}")
    return 0
