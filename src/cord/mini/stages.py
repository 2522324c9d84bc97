"""The miniature's staged recipe before CORD, shaped like the paper's: the language model learns
to reason from text (Stage A); the audio path learns only to *hear* (Stage B); reasoning from
speech is first trained in Stage C (the arms, :mod:`cord.mini.demo`).

The stages: :mod:`cord.mini.stage_a` and :mod:`cord.mini.stage_b`; their knobs:
:class:`cord.mini.recipe.RecipeConfig`; how they are scored on dev: :mod:`cord.mini.scoring`.

Both stages are plain seeded loops. Their models are written with ``MiniAdapter.save_pretrained``
to ``OUT/stage_a`` and ``OUT/stage_b``; load them with
``ModelConfig(family="mini", name_or_path="OUT/stage_b", dtype="float32", device="cpu")``.
No test split is read here: ``stages.json`` holds dev numbers only (the demo evaluates test).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cord.mini.adapter import MiniAdapter
from cord.mini.data import build_datasets, load_split, text_examples
from cord.mini.machine import auto_threads, load_average, machine_info, torch_threads
from cord.mini.model import build_mini
from cord.mini.recipe import RecipeConfig
from cord.mini.stage_a import stage_a, teacher_formats
from cord.mini.stage_b import stage_b


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_stages(out_dir: str | Path, cfg: RecipeConfig | None = None, progress: bool = False) -> dict[str, Any]:
    """Data → Stage A → Stage B, writing under ``out_dir``:

    ``data/{train,dev,test,test_unseen}`` (paired datasets; reused when complete for the same
    settings), ``stage_a/`` and ``stage_b/`` (models loadable as family ``mini``) and
    ``stages.json`` (the returned metrics: config, paths, stage metrics on dev, the text
    teacher's format distribution, wall timings, machine, and the evaluation log)."""
    cfg = cfg or RecipeConfig()
    with torch_threads(cfg.threads or auto_threads()):
        return _run_stages(out_dir, cfg, progress)


def _run_stages(out_dir: str | Path, cfg: RecipeConfig, progress: bool) -> dict[str, Any]:
    load_at_start = load_average()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    log: list[dict] = []

    def say(msg: str) -> None:
        if progress:
            print(f"[mini] {msg}", flush=True)

    t = time.perf_counter()
    data_cfg = replace(cfg.data, seed=cfg.seed) if cfg.data.seed != cfg.seed else cfg.data
    dirs = build_datasets(out / "data", data_cfg)
    train, dev = (load_split(dirs[s]) for s in ("train", "dev"))
    text_train = text_examples(cfg.a_text_examples, data_cfg, repeat_share=cfg.a_repeat_share,
                               transcript_share=cfg.a_transcript_share)
    timings["data"] = round(time.perf_counter() - t, 2)
    say(f"data: {len(train)} train / {len(dev)} dev clips in {timings['data']} s")

    model, tokenizer = build_mini(seed=cfg.seed)
    adapter = MiniAdapter(model, tokenizer)

    t = time.perf_counter()
    a = stage_a(adapter, text_train, dev, cfg, log)
    adapter.save_pretrained(out / "stage_a")
    teacher = teacher_formats(adapter, dev, cfg)
    timings["stage_a"] = round(time.perf_counter() - t, 2)
    say(f"stage A: {a['steps']} steps, dev text acc {a['dev_text_acc']:.3f}, repeat exact "
        f"{a['dev_text_repeat_exact']:.3f}, teacher formats greedy {teacher['greedy']} sampled "
        f"{teacher['sampled_t1']} ({timings['stage_a']} s)")

    t = time.perf_counter()
    b = stage_b(adapter, train, dev, cfg, dev_text_acc=a["dev_text_acc"], log=log)
    timings["stage_b"] = round(time.perf_counter() - t, 2)
    adapter.save_pretrained(out / "stage_b")
    d = b["dev"]
    say(f"stage B: {b['steps']} steps; dev (training voices) text {d['text_acc']:.3f} audio {d['audio_acc']:.3f} "
        f"gap {d['gap']:.3f}, transcript exact {d['transcript']['exact']:.3f} numbers "
        f"{d['transcript']['numbers']:.3f} ({timings['stage_b']} s)")

    result = {
        "config": cfg.to_dict(),
        "paths": {"data": {k: str(v) for k, v in dirs.items()}, "stage_a": str(out / "stage_a"),
                  "stage_b": str(out / "stage_b")},
        "stage_a": {k: v for k, v in a.items() if k != "history"},
        "teacher_formats": teacher,
        "stage_b": {k: v for k, v in b.items() if k != "history"},
        "timings": timings,
        "machine": machine_info(load_at_start),
        "model_parameters": {name: sum(p.numel() for p in getattr(model, name).parameters())
                             for name in ("language_model", "audio_encoder", "projector")},
        "log": log,
    }
    _write_atomic(out / "stages.json", json.dumps(result, indent=2) + "\n")  # its presence marks a finished run
    return result
