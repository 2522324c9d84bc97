"""``cord demo``: the CPU miniature of the paper, end to end, through the real code paths.

For every independent start (data, split and init seed):

    data (espeak-ng: training voices for train/dev/test, a held-out voice for test_unseen)
    → Stage A (text LM: solve in two formats + repeat the question)
    → Stage B (audio path on audio → transcript only, LM frozen, fixed length, averaged weights)
    → Stage C from that model: every arm (cord.mini.arms) × seed, one shared recipe, through
      ``cord train`` (the control: cord.mini.control), tail-averaged weights
    → ``cord eval`` (greedy, exact final answer) on test (training voices; text and audio) and
      test_unseen (held-out voice; audio), plus per-run diagnostics (cord.mini.diagnostics)
    → with ``--study``: the long-horizon ablation (cord, weighted OPD, GRPO continued with dev
      checks along the way)

then ``cord analyze`` per arm, and report.json / report.md / PNG plots (cord.mini.report) whose
numbers are recomputed from the per-item outputs; the pre-registered primary contrast is CORD
against SFT-self (docs/demo/preregistration.md).

Every stage resumes: rerunning the same command reuses finished stages, runs and evaluations; a
start whose Stage A/B recipe changed is remade and what was derived from it is dropped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cord import CordError
from cord.mini.arms import (
    ARMS,
    DEFAULT_ARMS,
    LONG_ARMS,
    PRIMARY,
    SAMPLING_ARMS,
    check_presets,
    stage_c_config,
)


@dataclass(frozen=True)
class Plan:
    """What one invocation runs: starts, arms and their seeds, Stage C steps, the long horizon."""

    mode: str  # quick | default | study
    starts: int
    #: arm -> Stage C seeds (seeds 0 .. n-1)
    seeds: dict[str, int]
    steps: int
    #: the trainer's checkpoints averaged into the evaluated model (0: the final weights)
    average_last: int
    #: long-horizon ablation: total steps (0: none) and the dev check interval
    long_steps: int = 0
    long_every: int = 50
    analyze_limit: int = 200

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(self.seeds)


#: Stage C seeds per start for the primary arms (cord, sft_self) and for the other arms, and the
#: number of independent starts: set by the time budget, not yet from a dev pilot of the Stage C
#: variance (docs/demo/preregistration.md)
PRIMARY_SEEDS = {"quick": 1, "default": 4, "study": 4}
OTHER_SEEDS = {"quick": 1, "default": 2, "study": 1}
STARTS = {"quick": 1, "default": 1, "study": 3}
STAGE_C_STEPS = {"quick": 10, "default": 100, "study": 100}
#: checkpoints averaged (the trainer saves every train.save_every steps and keeps train.keep_last)
AVERAGE_LAST = {"quick": 0, "default": 5, "study": 5}
#: the long-horizon ablation (study only): 4× the steps, dev checked every 50 steps; collapse is a
#: final dev accuracy at least COLLAPSE_POINTS below the run's peak
LONG_STEPS = {"quick": 0, "default": 0, "study": 400}
COLLAPSE_POINTS = 5.0
#: the bootstrap of every interval
BOOTSTRAP = {"replicates": 10_000, "seed": 0}


def make_plan(mode: str, seeds: int | None = None, starts: int | None = None,
              arms: tuple[str, ...] | None = None) -> Plan:
    """The plan of ``mode``; ``seeds`` overrides the primary arms' seed count (and caps the
    others'), ``arms`` the arm list (the primary pair is always included)."""
    if seeds is not None and seeds < 1:
        raise CordError("--seeds must be at least 1")
    if starts is not None and starts < 1:
        raise CordError("--starts must be at least 1")
    if mode == "study":
        names = tuple(ARMS)
    else:
        names = DEFAULT_ARMS
    if arms is not None:
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise CordError(f"unknown arm {unknown[0]!r}; arms: {', '.join(ARMS)}")
        names = tuple(dict.fromkeys((*PRIMARY, *arms)))
    k1 = seeds if seeds is not None else PRIMARY_SEEDS[mode]
    k2 = min(k1, OTHER_SEEDS[mode])
    return Plan(mode=mode, starts=starts if starts is not None else STARTS[mode],
                seeds={a: (k1 if a in PRIMARY else k2) for a in names}, steps=STAGE_C_STEPS[mode],
                average_last=AVERAGE_LAST[mode], long_steps=LONG_STEPS[mode],
                analyze_limit=60 if mode == "quick" else 200)


def demo_recipe(quick: bool = False, test_voice: str = "espeak", threads: int | None = None):
    """The Stage A/B recipe of start 0: quick or full, with the held-out (test_unseen) voice from
    ``test_voice``: "espeak" (default) or "piper" (a neural voice; see cord.mini.data), on
    ``threads`` torch threads (None: the recipe's fixed count)."""
    from cord.mini.recipe import RecipeConfig

    recipe = RecipeConfig.quick(seed=0) if quick else RecipeConfig(seed=0)
    if threads is not None:
        recipe = replace(recipe, threads=threads)
    return replace(recipe, data=replace(recipe.data, test_engine=test_voice))


def run_demo(out: str | Path = "cord-demo", seeds: int | None = None, quick: bool = False,
             progress: bool = True, study: bool = False, starts: int | None = None,
             test_voice: str = "espeak", threads: int | None = None,
             arms: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The whole miniature into ``out`` (resuming what is there); returns report.json's dict.

    Modes: default (one start; the primary pair CORD and SFT-self, SFT-ext and the control),
    ``study`` (independent starts; every arm of :data:`cord.mini.arms.ARMS`; the long-horizon
    ablation) and ``quick`` (the test-sized smoke run). ``seeds`` overrides the primary arms'
    Stage C seeds. Runs on the recipe's fixed torch thread count, or ``threads``, and restores
    the caller's."""
    from cord.mini.data import check_engines
    from cord.mini.machine import auto_threads, torch_threads

    mode = "quick" if quick else "study" if study else "default"
    plan = make_plan(mode, seeds, starts, arms)
    if threads is not None and threads < 1:
        raise CordError("--threads must be at least 1")
    if Path(out).exists() and not Path(out).is_dir():
        raise CordError(f"--out {out}: exists and is not a directory (give a new or an earlier demo directory)")
    recipe = demo_recipe(quick, test_voice, threads)
    check_engines(recipe.data)
    with torch_threads(recipe.threads or auto_threads()):
        return _run_demo(Path(out), recipe, plan, progress)


def _run_demo(out: Path, recipe0, plan: Plan, progress: bool) -> dict[str, Any]:
    from cord.mini.arms import build_sft_data
    from cord.mini.machine import load_average, machine_info
    from cord.mini.report import build_report, write_outputs
    from cord.mini.stages import run_stages

    out.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(f"[demo] {msg}", flush=True)) if progress else (lambda msg: None)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    load_at_start = load_average()
    per_start: list[dict[str, Any]] = []
    recipe_c = None
    reused = {"starts": 0, "runs": 0}

    def add_time(key: str, t0: float) -> None:
        timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - t0, 2)

    for start in range(plan.starts):
        recipe = replace(recipe0, seed=start, data=replace(recipe0.data, seed=start))
        sdir = out / f"start{start}"
        # ---- stages A and B (shared by every arm and seed of this start) -------------------
        stages_json = sdir / "stages" / "stages.json"
        previous = json.loads(stages_json.read_text()) if stages_json.is_file() else None
        if previous is not None and previous.get("config") == recipe.to_dict():
            stages = previous
            reused["starts"] += 1
            say(f"start {start}: reusing data and stages A and B in {sdir / 'stages'}")
        else:
            say(f"start {start}: data, Stage A (text: solve + repeat), Stage B (audio → transcript) ...")
            _drop_stale([sdir / "runs", sdir / "eval", sdir / "data_c", sdir / "long", sdir / "analyze"], say)
            stages = run_stages(sdir / "stages", recipe, progress=progress)
        for k, v in stages["timings"].items():
            timings[f"stages_{k}"] = round(timings.get(f"stages_{k}", 0.0) + v, 2)
        stage_b = Path(stages["paths"]["stage_b"])
        data = {k: Path(v) for k, v in stages["paths"]["data"].items()}
        max_new = recipe.max_new_tokens

        t = time.perf_counter()
        data_dirs = {"train": data["train"],
                     "sft_self": build_sft_data("sft_self", stage_b, data["train"], sdir / "data_c" / "sft_self", max_new),
                     "sft_ext": build_sft_data("sft_ext", stage_b, data["train"], sdir / "data_c" / "sft_ext", max_new)}
        add_time("sft_data", t)

        t = time.perf_counter()
        base = evaluate_model(stage_b, data, sdir / "eval" / "stage_b", max_new)
        add_time("eval", t)
        say(f"start {start}: Stage B on test (training voices): text {base['text_acc']:.3f}, audio "
            f"{base['audio_acc']:.3f}, gap {base['gap']:.3f}; heard exact (CTC) "
            f"{base['heard']['exact']:.3f}; unseen voice audio {base['unseen_audio_acc']:.3f}")

        # ---- stage C: every arm × seed, one shared recipe ----------------------------------
        cfgs = {a: stage_c_config(a, stage_b, data_dirs, sdir / "runs" / "x", 0, plan.steps) for a in plan.arms}
        recipe_c = check_presets(cfgs)
        _check_average(plan, recipe_c)
        runs: dict[str, list[dict[str, Any]]] = {a: [] for a in plan.arms}
        for seed in range(max(plan.seeds.values())):
            for arm in plan.arms:
                if seed >= plan.seeds[arm]:
                    continue
                run_dir = sdir / "runs" / f"{arm}-seed{seed}"
                cfg = stage_c_config(arm, stage_b, data_dirs, run_dir, seed, plan.steps)
                t = time.perf_counter()
                did = train_run(arm, cfg, recipe, plan.steps)
                reused["runs"] += not did
                model_dir = final_model(arm, cfg, run_dir, plan.average_last)
                add_time("stage_c", t)
                t = time.perf_counter()
                result = evaluate_model(model_dir, data, sdir / "eval" / f"{arm}-seed{seed}", max_new)
                add_time("eval", t)
                result.update(arm=arm, seed=seed, steps=plan.steps, lr=cfg.train.lr, run_dir=str(run_dir),
                              model_dir=str(model_dir), **run_compute(run_dir, arm))
                runs[arm].append(result)
                say(f"start {start} {arm:>12} seed {seed}: text {result['text_acc']:.3f}, audio "
                    f"{result['audio_acc']:.3f}, gap {result['gap']:.3f}, unseen {result['unseen_audio_acc']:.3f} "
                    f"[{result['train_seconds']:.0f} s]")

        # ---- the long-horizon ablation (study) ---------------------------------------------
        long_runs: dict[str, dict[str, Any]] = {}
        if plan.long_steps:
            t = time.perf_counter()
            for arm in LONG_ARMS:
                if arm in plan.arms:
                    long_runs[arm] = run_long(arm, stage_b, data_dirs, data, sdir, plan, recipe, say)
            add_time("long_horizon", t)

        per_start.append({"start": start, "seed": recipe.seed, "stages": _stage_summary(stages), "baseline": base,
                          "runs": runs, "long": long_runs, "data": {k: str(v) for k, v in data.items()},
                          "stage_b_dir": str(stage_b)})

    # ---- diagnostics: the audio-vs-text token KL per arm (start 0, seed 0) ----------------------
    t = time.perf_counter()
    first = per_start[0]
    analysis = analyze_arms(out / "start0" / "analyze", first, plan.analyze_limit, recipe0.max_new_tokens)
    add_time("analyze", t)
    t = time.perf_counter()
    report = build_report(per_start, recipe_c, plan, analysis, machine_info(load_at_start), recipe0.data)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    report["timings"] = timings
    n_runs = plan.starts * sum(plan.seeds.values())
    report["reused"] = {**reused, "of_starts": plan.starts, "of_runs": n_runs}
    write_outputs(out, report)
    say(f"done in {timings['total']:.0f} s: {out / 'report.md'} (primary: {report['primary']['outcome']}, "
        f"CORD − SFT-self {report['primary']['mean']:+.1f} points)")
    return report


def _check_average(plan: Plan, recipe_c: dict[str, Any]) -> None:
    if plan.average_last and (recipe_c["keep_last"] < plan.average_last
                              or recipe_c["save_every"] * plan.average_last > plan.steps):
        raise CordError(f"averaging the last {plan.average_last} checkpoints needs train.keep_last >= "
                        f"{plan.average_last} and train.save_every <= {plan.steps // plan.average_last}")


def _stage_summary(stages: dict[str, Any]) -> dict[str, Any]:
    return {"stage_a": stages["stage_a"], "stage_b": stages["stage_b"], "teacher_formats": stages["teacher_formats"],
            "timings": stages["timings"], "model_parameters": stages.get("model_parameters")}


def _drop_stale(paths: list[Path], say) -> None:
    """What was derived from an earlier Stage B (runs, evaluations, SFT data, analyses) would be
    taken as finished: it goes, and is remade from the new Stage B."""
    for path in paths:
        if path.exists():
            say(f"removing {path}: made from an earlier Stage B")
            shutil.rmtree(path)


# ------------------------------------------------------------------------------ one run


def train_run(arm: str, cfg, recipe, steps: int) -> bool:
    """Train one arm's run unless it is finished (its model exported at ``steps``); True when it
    trained."""
    from cord.mini.control import control_done, run_control
    from cord.train.trainer import Trainer

    run_dir = Path(cfg.train.output_dir)
    if arm == "control":
        if control_done(run_dir, steps):
            return False
        run_control(cfg, recipe)
        return True
    if (run_dir / "model").is_dir() and last_step(run_dir) >= steps:
        return False
    Trainer(cfg).fit()
    return True


def final_model(arm: str, cfg, run_dir: Path, average_last: int) -> Path:
    """The model a run is evaluated as: its last ``average_last`` checkpoints averaged
    (``model_avg/``, made once), or the final weights (``model/``)."""
    from cord.mini.arms import average_run, weight_files

    if not average_last:
        return run_dir / "model"
    out = run_dir / "model_avg"
    if not (out / "averaged.json").is_file():
        info = average_run(cfg, weight_files(arm, run_dir, average_last), out)
        (out / "averaged.json").write_text(json.dumps(info) + "\n")
    return out


def evaluate_model(model_dir: Path, data: dict[str, Path], out: Path, max_new_tokens: int) -> dict[str, Any]:
    """``cord eval`` of one model: test (training voices) from audio and text, test_unseen from
    audio; then the per-run diagnostics (transcripts, error positions). Resumes."""
    from cord.mini.diagnostics import run_diagnostics

    _cord_eval(model_dir, data["test"], out, ["audio", "text"], max_new_tokens)
    _cord_eval(model_dir, data["test_unseen"], out, ["audio"], max_new_tokens)
    diag = run_diagnostics(model_dir, data["test"], out, max_new_tokens)
    return {"eval_dir": str(out), **diag}


def _cord_eval(model_dir: Path, test_dir: Path, out: Path, modalities: list[str], max_new_tokens: int) -> None:
    from cord.config import load_config
    from cord.eval import evaluate

    cfg = load_config(None, [
        "model.family=mini", f"model.name_or_path={model_dir}", "model.dtype=float32", "model.device=cpu",
        f"eval.benchmarks=[{test_dir}]", f"eval.modalities=[{','.join(modalities)}]",
        f"eval.out={out / test_dir.name}", "eval.batch_size=200", f"eval.max_new_tokens={max_new_tokens}",
    ])
    evaluate(cfg, progress=False)


def last_step(run_dir: Path) -> int:
    rows = _metrics(run_dir / "metrics.jsonl")
    return int(rows[-1]["step"]) if rows else 0


def _metrics(path: Path) -> list[dict[str, Any]]:
    from cord.data.paired import read_jsonl

    return [row for _, row in read_jsonl(path)] if path.is_file() else []


def run_compute(run_dir: Path, arm: str) -> dict[str, float]:
    """Compute of a run, summed over its steps from metrics.jsonl: ``tokens`` (every completion
    token trained on), ``rollout_tokens`` (those sampled; 0 for the arms that read fixed targets)
    and ``train_seconds`` (the steps' own clock, so a reused run keeps its time)."""
    rows = _metrics(run_dir / "metrics.jsonl")
    tokens = float(sum(float(r.get("completion_tokens") or 0.0) for r in rows))
    times = [float(r["step_time"]) for r in rows if r.get("step_time") is not None]
    return {"tokens": tokens, "rollout_tokens": tokens if arm in SAMPLING_ARMS else 0.0,
            "train_seconds": round(sum(times), 2)}


# ------------------------------------------------------------------------ long horizon


def run_long(arm: str, stage_b: Path, data_dirs: dict[str, Path], data: dict[str, Path], sdir: Path, plan: Plan,
             recipe, say) -> dict[str, Any]:
    """The long-horizon ablation for ``arm`` (seed 0): the default run's checkpoints are copied and
    training continues to ``plan.long_steps`` in segments of ``plan.long_every`` steps (the
    schedule is constant after warmup, so this is one uninterrupted run); after every segment the
    exported model's greedy audio accuracy on dev (training voices) is recorded. The final model
    is also evaluated on test. Resumes: finished segments and evaluations are kept in
    ``curve.json``."""
    from cord.data.paired import load_paired
    from cord.mini.scoring import greedy_accuracy
    from cord.models import load_adapter
    from cord.train.checkpoint import checkpoint_dirs
    from cord.train.trainer import Trainer

    run_dir = sdir / "long" / f"{arm}-seed0"
    curve_path = run_dir / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
    if not checkpoint_dirs(run_dir):
        base_run = sdir / "runs" / f"{arm}-seed0"
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base_run / "checkpoints", run_dir / "checkpoints", dirs_exist_ok=True)
        shutil.copy(base_run / "metrics.jsonl", run_dir / "metrics.jsonl")
    dev = load_paired(data["dev"])
    done = {c["step"] for c in curve}
    cfg = None
    for target in range(plan.steps, plan.long_steps + 1, plan.long_every):
        cfg = stage_c_config(arm, stage_b, data_dirs, run_dir, 0, target)
        if target in done:
            continue
        if last_step(run_dir) < target or not (run_dir / "model").is_dir():
            Trainer(cfg).fit()
        adapter = load_adapter(cfg.model.model_copy(update={"name_or_path": str(run_dir / "model"), "lora": None}))
        acc, _ = greedy_accuracy(adapter, dev, "audio", max_new_tokens=recipe.max_new_tokens)
        curve.append({"step": target, "dev_audio_acc": acc})
        curve_path.write_text(json.dumps(curve, indent=1) + "\n")
        say(f"long horizon {arm}: step {target}, dev audio {acc:.3f}")
    final = evaluate_model(run_dir / "model", data, sdir / "eval" / f"long-{arm}-seed0", recipe.max_new_tokens)
    return {"arm": arm, "seed": 0, "steps": plan.long_steps, "curve": curve, "run_dir": str(run_dir),
            "lr": cfg.train.lr if cfg is not None else None, **run_compute(run_dir, arm), "final": final}


# ---------------------------------------------------------------------------- analysis


def analyze_arms(out: Path, start: dict[str, Any], limit: int, max_new_tokens: int) -> dict[str, Any]:
    """``cord analyze`` (audio-vs-text token KL on audio rollouts, test items of the training
    voices) of the Stage B model and of seed 0 of every arm of one start."""
    from cord.config import load_config
    from cord.eval import analyze

    models = {"stage_b": Path(start["stage_b_dir"])}
    for arm, runs in start["runs"].items():
        if runs:
            models[arm] = Path(runs[0]["model_dir"])
    keep = ("kl", "pearson_position", "n_tokens", "n_rollouts", "top_tokens")
    result = {}
    for name, model in models.items():
        cfg = load_config(None, ["model.family=mini", f"model.name_or_path={model}", "model.dtype=float32",
                                 "model.device=cpu", f"rollout.max_new_tokens={max_new_tokens}"])
        res = analyze(cfg, out=out / name, data=start["data"]["test"], limit=limit, progress=False, plots=False)
        result[name] = {k: v for k, v in res.items() if k in keep}
        if "top_tokens" in result[name]:
            result[name]["top_tokens"] = result[name]["top_tokens"][:8]
    return result
