"""Per-phase time of one training step on the tiny models (CPU), and tokens per second.

    .venv/bin/python benchmarks/bench_trainer.py [--steps 6] [--methods cord,opd,...]
        [--variant NAME:key=value,key=value ...]

For each family × method: runs `--steps` optimizer steps of the tiny preset (batch 2,
32 new tokens), drops the first (warm-up) and reports medians of the per-phase seconds the
trainer logs in metrics.jsonl: rollout (sampling incl. the text-conditioned greedy
reference), teacher (teacher hidden states), student (student hidden states + objective),
update (backward + optimizer step); plus completion tokens per second. The shares are
ratios inside one run, so they compare across machines better than the seconds do.

Each ``--variant`` runs every family × method again with its config overrides (the preset
as it is is the variant "preset"), so settings compare inside one run: e.g.
``--variant shared:rollout.share_rollouts=true``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from cord.config import load_config
from cord.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--methods", default="sft,forward_kl,opd,opd_weighted,grpo,grpo_opd,cord")
    ap.add_argument("--families", default="qwen2-audio,qwen2.5-omni")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:key=value,key=value — also run with these overrides (repeatable)")
    args = ap.parse_args()
    variants = [("preset", [])]
    for v in args.variant:
        name, _, sets = v.partition(":")
        if not name or not sets:
            raise SystemExit(f"--variant {v!r}: expected NAME:key=value[,key=value]")
        variants.append((name, sets.split(",")))
    torch.set_num_threads(args.threads)
    rows = []
    for family, method, (variant, sets) in itertools.product(
        args.families.split(","), args.methods.split(","), variants
    ):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(ROOT / "configs" / "tiny" / f"{method}.yaml", [
                f"model.family={family}", f"train.output_dir={tmp}", f"train.max_steps={args.steps}",
                "train.progress=false", "train.tensorboard=false", "train.save_every=1000",
                "rollout.max_new_tokens=32", "train.batch_size=2", *sets])
            Trainer(cfg).fit(export=False)
            lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][1:]
        med = {k: statistics.median(m[k] for m in lines) for k in
               ("time_rollout", "time_teacher", "time_student", "time_backward", "step_time", "tokens_per_s")}
        total = med["time_rollout"] + med["time_teacher"] + med["time_student"] + med["time_backward"]
        rows.append(dict(family=family, method=method, variant=variant, **med,
                         share_rollout=med["time_rollout"] / total, share_teacher=med["time_teacher"] / total,
                         share_student=med["time_student"] / total, share_update=med["time_backward"] / total))
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}")
    print("| family | method | variant | step s | rollout | teacher | student | update | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['method']} | {r['variant']} | {r['step_time']:.2f} | {r['share_rollout']:.0%} | "
              f"{r['share_teacher']:.0%} | {r['share_student']:.0%} | {r['share_update']:.0%} | {r['tokens_per_s']:.0f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
