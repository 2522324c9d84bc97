"""The demo's ``control`` arm: Stage B's own objective, continued with Stage C's budget.

It answers "does more of the audio alignment close the gap?" — more *hearing* training,
no reasoning from speech: from the Stage B checkpoint it trains

    L_B = CE(transcript | SpecAugmented audio prompt with <repeat>) + b_ctc_weight · CTC(transcript)

(:func:`cord.mini.stage_b.stage_b_loss`, Stage B's loss) with everything else taken from the
Stage C preset it is compared with: the same trainable parts (and LoRA, when the preset has
one), AdamW with the same lr, betas, weight decay, warmup and schedule, the same global batch,
steps, gradient clipping and data order (``cord.train.trainer``'s ``DataOrder`` with the
same ``train.seed``), and the same export (``cord.models.export.export_model``), so ``cord
eval`` loads it exactly as it loads the methods' models.

The run folder holds ``config.yaml``, ``metrics.jsonl`` (one row per step), ``model/`` and,
like the trainer's checkpoints, the trainable weights every ``train.save_every`` steps (the
last ``train.keep_last``) in ``snapshots/step-<n>/trainable.safetensors`` for the demo's tail
averaging. A finished folder (``model/`` and the last metrics row at ``train.max_steps``) is
reused.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from cord import CordError


def control_done(run_dir: Path, steps: int) -> bool:
    path = run_dir / "metrics.jsonl"
    if not (run_dir / "model").is_dir() or not path.is_file():
        return False
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    return bool(lines) and json.loads(lines[-1]).get("step") == steps


def run_control(cfg, recipe) -> dict[str, Any]:
    """Train the control arm described in the module doc; ``cfg``: the Stage C CordConfig
    (model, data, train sections are used; objective and rollout are not), ``recipe``: the
    :class:`cord.mini.recipe.RecipeConfig` whose Stage B loss (CTC weight, masks) continues.
    Returns {"steps", "seconds", "run_dir"}."""
    from cord.config import dump_config
    from cord.data.paired import load_paired
    from cord.mini.stage_b import stage_b_loss, stage_b_targets
    from cord.models import load_adapter
    from cord.models.base import module_map_of
    from cord.models.export import export_model
    from cord.train.setup import DataOrder, lr_lambda, lr_scales, make_optimizer, select_trainable, unscaled_lr

    t0 = time.perf_counter()
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.grad_accum != 1:
        raise CordError("the control arm runs on one process with train.grad_accum 1")
    data = load_paired(cfg.data.train, limit=cfg.data.limit)
    if not data:
        raise CordError(f"dataset {cfg.data.train} is empty")
    torch.manual_seed(cfg.train.seed)
    adapter = load_adapter(cfg.model)
    module_map = module_map_of(adapter)
    params = select_trainable(adapter.model, list(cfg.train.trainable), cfg.model.lora is not None, module_map)
    scales = lr_scales(adapter.model, params, cfg.train.lr_scale, module_map)
    optimizer = make_optimizer(params, scales, cfg.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    order = DataOrder(len(data), cfg.train.seed, cfg.data.shuffle)
    # the masks' own stream, seeded like the data order (Stage B's is seed + 1 of the recipe)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    batch_size = cfg.train.batch_size
    (out / "config.yaml").write_text(dump_config(cfg))
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    adapter.model.train()
    max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else float("inf")
    snapshots = out / "snapshots"
    shutil.rmtree(snapshots, ignore_errors=True)
    for step in range(cfg.train.max_steps):
        t = time.perf_counter()
        batch = [data[order[step * batch_size + j]] for j in range(batch_size)]
        loss, parts = stage_b_loss(adapter, batch, recipe, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        lr = unscaled_lr(optimizer, scheduler)
        if math.isfinite(loss.item()) and math.isfinite(grad_norm):
            optimizer.step()
        scheduler.step()
        row = {"step": step + 1, "loss": loss.item(), **parts, "lr": lr, "grad_norm": grad_norm,
               "completion_tokens": float(sum(len(adapter.encode(t)) + 1 for t in stage_b_targets(batch))),
               "step_time": time.perf_counter() - t}
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if (step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.max_steps:
            _snapshot(adapter.model, snapshots, step + 1, cfg.train.keep_last)
    adapter.model.eval()
    export_model(adapter, out / "model")
    return {"steps": cfg.train.max_steps, "seconds": round(time.perf_counter() - t0, 2), "run_dir": str(out)}


def snapshot_files(run_dir: Path) -> list[Path]:
    """The control run's kept weight snapshots, oldest first."""
    root = Path(run_dir) / "snapshots"
    dirs = sorted((d for d in root.glob("step-*") if (d / WEIGHTS).is_file()), key=lambda d: int(d.name[5:]))
    return [d / WEIGHTS for d in dirs]


WEIGHTS = "trainable.safetensors"


def _snapshot(model, root: Path, step: int, keep_last: int) -> None:
    from safetensors.torch import save_file

    from cord.train.checkpoint import trainable_state

    d = root / f"step-{step:08d}"
    d.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(d / WEIGHTS))
    for old in snapshot_files(root.parent)[:-keep_last]:
        shutil.rmtree(old.parent, ignore_errors=True)
