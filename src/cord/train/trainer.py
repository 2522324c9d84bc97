"""The training loop: plain code around :func:`cord.train.step.run_micro_step`.

Distributed through accelerate (``accelerate launch -m cord.cli train ...``): each process
runs its share of the global batch, gradients are averaged across processes explicitly
(all-reduce) after accumulation. Explicit averaging is used instead of wrapping the model in
DDP because the adapter calls submodules directly (completion hidden states, generate),
which would bypass DDP's forward hooks; the result is the same update as DDP's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from cord import CordError
from cord.config import CordConfig, dump_config
from cord.data.paired import load_paired
from cord.models import load_adapter
from cord.models.base import module_map_of
from cord.rollout import make_engine
from cord.train.checkpoint import (
    REFERENCES,
    check_config_change,
    disk_write_guard,
    latest_checkpoint,
    load_checkpoint,
    move_run_aside,
    plan_run,
    read_state,
    save_checkpoint,
)
from cord.train.records import (
    jsonable,
    progress_postfix,
    tensorboard_writer,
    truncate_metrics,
)
from cord.train.setup import (
    DataOrder,
    enable_checkpointing,
    lr_lambda,
    lr_scales,
    make_optimizer,
    resolve_data,
    select_trainable,
    unscaled_lr,
)
from cord.train.step import (
    METRIC_KEYS,
    StepContext,
    Teacher,
    run_micro_step,
    sync_clock,
)
from cord.types import METHODS

#: metrics every process all-reduces at every step, in this order (see Trainer._reduce_metrics)
REDUCED_KEYS: tuple[str, ...] = (*METRIC_KEYS, "time_backward", "loss_finite")
#: counts reported as totals over the whole global batch
TOTAL_KEYS = frozenset({"completion_tokens", "skipped_long_audio", "targets_truncated"})


class Trainer:
    def __init__(self, cfg: CordConfig, *, accelerator=None) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        if cfg.objective.method not in METHODS:
            raise CordError(f"unknown method {cfg.objective.method!r}")
        if accelerator is None:
            from datetime import timedelta

            from accelerate.utils import InitProcessGroupKwargs

            timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))
            accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[timeout])
        self.accelerator = accelerator
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        parts = self.world * cfg.train.grad_accum
        if cfg.train.batch_size % parts:
            fit = max(parts, cfg.train.batch_size // parts * parts)
            raise CordError(
                f"train.batch_size={cfg.train.batch_size} is the global batch (prompts per optimizer step) and must "
                f"split evenly over {self.world} process(es) x train.grad_accum={cfg.train.grad_accum} = {parts} "
                f"micro-batches; use a multiple of {parts} (e.g. train.batch_size={fit})"
            )
        self.out = Path(cfg.train.output_dir)
        # fp32 matmuls (a full fine-tuning's fp32 lm_head in the chunked KL) on TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        # data first: a missing dataset is reported before any model loads
        with self.accelerator.main_process_first():  # a built-in dataset is made once, by process 0
            data_path = resolve_data(cfg.data.train)
        self.data = load_paired(data_path, limit=cfg.data.limit)
        if not self.data:
            raise CordError(f"dataset {cfg.data.train} is empty")
        from cord.data.check import (
            check_examples,  # every bad clip in one line, from the headers
        )
        check_examples(self.data, cfg.model, source=cfg.data.train, quiet=self.rank != 0)
        torch.manual_seed(cfg.train.seed)
        model_cfg = cfg.model
        if model_cfg.device == "auto":
            model_cfg = model_cfg.model_copy(update={"device": str(self.accelerator.device)})
        self.adapter = load_adapter(model_cfg)
        lora = cfg.model.lora is not None
        self.sharded = self._use_fsdp(lora)
        low = sorted({str(p.dtype) for p in self.adapter.model.parameters() if p.dtype != torch.float32})
        if self.sharded and low:
            # FSDP's parameters are the optimizer's master weights: held in fp32, computed in bf16
            warnings.warn(f"train.sharding=fsdp keeps fp32 master weights: the model loaded in {', '.join(low)} "
                          "(model.dtype) is cast to float32; its layers still compute in bf16 on GPUs", stacklevel=2)
            self.adapter.model.to(torch.float32)
        module_map = module_map_of(self.adapter)
        self.params = select_trainable(self.adapter.model, list(cfg.train.trainable), lora, module_map)
        self._broadcast_trainable()  # before the frozen teacher copy is taken
        text_path_trains = any(p in cfg.train.trainable for p in ("language_model", "lm_head"))
        use_bf16 = cfg.train.bf16 and self.adapter.device.type == "cuda" and torch.cuda.is_bf16_supported()
        # sharded: a frozen teacher copy needs no fp32 master weights; stored in bf16 on GPUs
        teacher_dtype = torch.bfloat16 if self.sharded and use_bf16 else None
        self.teacher = Teacher(self.adapter, cfg.objective.teacher, text_path_trains, dtype=teacher_dtype)
        #: FSDP units (transformer layers) of the policy / of a frozen teacher copy; [] unsharded
        self.units: list[torch.nn.Module] = []
        self.teacher_units: list[torch.nn.Module] = []
        if self.sharded:
            from cord.train.sharding import shard_model

            compute = torch.bfloat16 if use_bf16 else None
            if self.teacher.kind == "frozen-copy":
                self.teacher_units = shard_model(self.teacher.adapter.model, module_map, param_dtype=compute)
            self.units = shard_model(self.adapter.model, module_map, param_dtype=compute)
            # fully_shard replaced the layers' parameters (DTensors now)
            self.params = [p for p in self.adapter.model.parameters() if p.requires_grad]
        if cfg.train.gradient_checkpointing:
            enable_checkpointing(self.adapter.model)
        self.adapter.model.train()
        self.engine = make_engine(self.adapter, cfg)
        if self.sharded:
            from cord.train.sharding import GatheredEngine

            self.engine = GatheredEngine(self.engine, self.units)
        # bf16/fp16 weights that train outside LoRA get fp32 masters (cord.train.precision); the
        # optimizer, averaging and clipping see the masters
        from cord.train.precision import MasterWeights

        scales = lr_scales(self.adapter.model, self.params, cfg.train.lr_scale, module_map)
        self.master = MasterWeights([] if self.sharded else self.params)
        if self.master:
            self.params = self.master.params  # each master in its parameter's place
        self.optimizer = make_optimizer(self.params, scales, cfg.train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
        self.ctx = StepContext(cfg, self.adapter, self.engine, self.teacher, autocast)
        if self.sharded:
            from cord.train.sharding import GatheredEngine

            teacher_units = self.teacher_units
            self.ctx.wrap_engine = lambda engine: GatheredEngine(engine, teacher_units)
            self.ctx.cache_references = False
        self.order = DataOrder(len(self.data), cfg.train.seed, cfg.data.shuffle)
        self.step = 0
        self.bad_steps = 0

    def _use_fsdp(self, lora: bool) -> bool:
        """``train.sharding``: "fsdp", "none", or "auto" (fsdp when ``accelerate launch`` ran
        with an FSDP config: it sets ACCELERATE_USE_FSDP)."""
        mode = self.cfg.train.sharding
        if mode == "auto":
            mode = "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" else "none"
        if mode != "fsdp":
            return False
        if lora:
            raise CordError("train.sharding=fsdp is for full fine-tuning; with model.lora the model is not "
                            "sharded: set model.lora=null, or train LoRA with train.sharding=none (DDP-like)")
        if self.cfg.model.long_audio == "skip":
            raise CordError("model.long_audio=skip is not supported with train.sharding=fsdp (a process whose whole "
                            "micro-batch is skipped would run no layer and stall the others' collectives): use "
                            "model.long_audio=truncate, or drop the long clips from the data")
        if self.world == 1:
            # asked for on one process (one GPU): FSDP2 over a process group of one, so the run
            # is what was asked — fp32 masters, bf16 compute, sharded checkpoints — not silently
            # an unsharded run in the model's dtype
            from cord.train.sharding import init_single_process_group

            init_single_process_group(self.adapter.device, timeout_s=self.cfg.train.dist_timeout_s)
        return True

    # -------------------------------------------------------------------------------- state
    def resume(self, which: str | Path | None, allow_config_change: bool = False) -> Path | None:
        """``which``: None/"auto" → latest checkpoint in output_dir if any; a path; "no".

        Refused (one line), unless ``allow_config_change``: a checkpoint whose config differs in
        a key that changes the math (see checkpoint.HARMLESS_KEYS for the others), whose method
        differs, or whose global batch (prompts per optimizer step) or micro-batch size differs.
        Another world size with the same global and micro-batch (processes x grad_accum kept) is
        the same computation, and resumes."""
        if which == "no":
            return None
        path = latest_checkpoint(self.out) if which in (None, "auto") else Path(which)
        if path is None:
            return None
        state = read_state(path)
        changed = check_config_change(path, self.cfg, allow_config_change)
        method, saved_method = self.cfg.objective.method, state.get("method")
        if saved_method is not None and saved_method != method and not allow_config_change:
            raise CordError(f"{path} was trained with method {saved_method!r}, this run is {method!r}: "
                            "pass --allow-config-change to continue it with another method, or start a fresh "
                            "run (--overwrite or another train.output_dir)")
        saved_batch, saved_world = state.get("global_batch"), state.get("world_size")
        if saved_batch is not None and int(saved_batch) != self.global_batch and not allow_config_change:
            raise CordError(
                f"{path} was trained with a global batch of {saved_batch} prompts per step (world size "
                f"{saved_world}); this run has {self.global_batch} (world size {self.world}), which changes the "
                "update and the data position: keep the global batch, or pass --allow-config-change"
            )
        # Each micro-batch's loss is normalised by its own tokens and its rollouts are seeded by
        # its index, so processes x grad_accum (the micro-batch size) is part of the math: 2 GPUs
        # x accum 2 may become 4 GPUs x accum 1, but not 2 GPUs x accum 1.
        saved_micro = state.get("micro_batch")
        if saved_micro is not None and int(saved_micro) != self.micro_batch and not allow_config_change:
            raise CordError(
                f"{path} was trained with {saved_micro} prompts per micro-batch (world size {saved_world}); this "
                f"run has {self.micro_batch} (world size {self.world} x train.grad_accum="
                f"{self.cfg.train.grad_accum}), which changes each micro-batch's normalisation and rollout seeds: "
                "keep processes x train.grad_accum, or pass --allow-config-change"
            )
        if self.sharded:
            from cord.train.checkpoint import load_sharded_checkpoint

            state = load_sharded_checkpoint(path, model=self.adapter.model, optimizer=self.optimizer,
                                            scheduler=self.scheduler, rank=self.rank)
        else:
            state = load_checkpoint(path, model=self.adapter.model, optimizer=self.optimizer,
                                    scheduler=self.scheduler, masters=self.master.by_name(self.adapter.model))
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.run_id = state.get("run_id") or uuid.uuid4().hex
        if not changed:  # another model or data (--allow-config-change): the references are redone
            self._restore_references(path)
        return path

    # ------------------------------------------------------------ the teacher's references
    def _caches_references(self) -> bool:
        return not self.sharded and self.ctx.teacher.static and self.ctx.cache_references

    def _gather_references(self) -> dict[str, Any] | None:
        """Every process's cache of the frozen teacher's greedy references (one per process:
        each caches the examples it saw), for the checkpoint; None when nothing is cached.
        Under several processes a collective: every process calls it (from :meth:`save`).

        Why they are saved: without them a resumed run generates them again, for examples
        first seen before the checkpoint, in other batches — other padding, so not always the
        same greedy tokens where two logits nearly tie — and spends the generation again; the
        uninterrupted run used the answers cached the first time."""
        if not self._caches_references():
            return None
        caches = [dict(self.ctx.reference_cache)]
        if self.world > 1:
            import torch.distributed as dist

            caches = [None] * self.world
            dist.all_gather_object(caches, dict(self.ctx.reference_cache))
        return {"format": 1, "ranks": caches}

    def _restore_references(self, path: Path) -> None:
        """The cache as the checkpoint's run had it: this process's own with the same number
        of processes, else the union of all (any of them is the frozen teacher's answer)."""
        from cord.train.checkpoint import read_references

        ranks = read_references(path)
        if not ranks or not self._caches_references():
            return
        mine = ranks[self.rank] if len(ranks) == self.world else {k: v for r in ranks for k, v in r.items()}
        self.ctx.reference_cache.clear()
        self.ctx.reference_cache.update(mine)

    def _run_id(self) -> str:
        """This run's id: new for a fresh run, the checkpoint's for a resumed one (keep_last
        deletes only checkpoints of this run)."""
        if getattr(self, "run_id", None) is None:
            self.run_id = uuid.uuid4().hex
        return self.run_id

    def save(self) -> Path | None:
        """Every process calls it; unsharded, process 0 writes everything, sharded
        (train.sharding=fsdp), every process writes its shards (torch.distributed.checkpoint)."""
        references = self._gather_references()  # a collective under several processes
        if self.rank != 0 and not self.sharded:
            return None
        save = save_checkpoint
        if self.sharded:
            from cord.train.checkpoint import save_sharded_checkpoint

            save = save_sharded_checkpoint
        save = disk_write_guard(save)  # a full disk: one line, no temp folder left
        return save(
            self.out, self.step, model=self.adapter.model, optimizer=self.optimizer, scheduler=self.scheduler,
            state={"step": self.step, "bad_steps": self.bad_steps, "data_position": self.step * self.global_batch,
                   "world_size": self.world, "global_batch": self.global_batch, "micro_batch": self.micro_batch,
                   "method": self.cfg.objective.method, "run_id": self._run_id()},
            config_yaml=dump_config(self.cfg), keep_last=self.cfg.train.keep_last,
            **({"masters": self.master.by_name(self.adapter.model)} if self.master else {}),
            **({"extra_json": {REFERENCES: references}} if references is not None else {}),
        )

    @property
    def global_batch(self) -> int:
        """Prompts per optimizer step, over all processes: ``train.batch_size``."""
        return self.cfg.train.batch_size

    @property
    def micro_batch(self) -> int:
        """Prompts per micro-batch: the global batch over processes x accumulation steps."""
        return self.cfg.train.batch_size // (self.world * self.cfg.train.grad_accum)

    def micro_examples(self, step: int, micro: int) -> list:
        """Micro-batch ``micro`` (0 .. world x grad_accum - 1) of step ``step``'s global batch:
        positions step*B + micro*b .. + b - 1 of the data stream (B global, b micro). The global
        batch is the same stream slice whatever the number of processes; process r takes
        micro-batches r, r + world, r + 2 world, ..."""
        b = self.micro_batch
        start = step * self.global_batch + micro * b
        return [self.data[self.order[start + j]] for j in range(b)]

    # --------------------------------------------------------------------------------- step
    def train_step(self) -> dict[str, Any]:
        """One optimizer step over this process's micro-batches; returns its metrics (the same
        on every process)."""
        cfg = self.cfg
        device = self.adapter.device
        t_start = sync_clock(device)
        accum = cfg.train.grad_accum
        records = []
        self.ctx.engine.sync_weights(self.step)  # once per optimizer step, before its rollouts
        defer_sync = self.sharded and cfg.train.fsdp_grad_sync == "last_micro_batch" and accum > 1
        for a in range(accum):
            if defer_sync:  # reduce-scatter the layers' gradients once, after the last micro-batch
                for unit in self.units:
                    unit.set_requires_gradient_sync(a == accum - 1)
            micro = a * self.world + self.rank
            loss, m = run_micro_step(self.ctx, self.micro_examples(self.step, micro), self.step, micro)
            t0 = sync_clock(device)
            if loss.requires_grad:
                (loss / accum).backward()
            self.master.accumulate_grads()  # low-precision gradients into the fp32 masters
            m["time_backward"] = sync_clock(device) - t0
            m["loss_finite"] = float(bool(torch.isfinite(loss.detach())))
            records.append(m)
        t0 = sync_clock(device)
        max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else float("inf")
        if self.sharded:  # FSDP averaged the layers' gradients (reduce-scatter); the rest here
            from cord.train.sharding import average_replicated_grads, clip_grad_norm

            if self.world > 1:
                average_replicated_grads(self.params, self.world)
            grad_norm = clip_grad_norm(self.params, max_norm)
        else:
            if self.world > 1:
                self._average_gradients()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        metrics = self._reduce_metrics(records)
        finite = metrics["loss_finite"] == 1.0 and math.isfinite(grad_norm)
        # no micro-batch of any process had a loss (all its audio skipped): nothing to learn
        # from, and an optimizer step would still move the weights (Adam's momentum)
        empty = math.isnan(metrics["loss"])
        lr = unscaled_lr(self.optimizer, self.scheduler)
        if finite and not empty:
            self.optimizer.step()
            self.master.copy_to_model()
        elif finite:
            warnings.warn(f"step {self.step + 1}: every example of the global batch was skipped "
                          "(model.long_audio); no update", stacklevel=2)
        else:
            self.bad_steps += 1
            warnings.warn(f"step {self.step + 1}: non-finite loss or gradient; step skipped "
                          f"({self.bad_steps}/{cfg.train.max_bad_steps} allowed)", stacklevel=2)
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["time_backward"] += sync_clock(device) - t0  # optimizer step counts with backward
        self.step += 1
        elapsed = sync_clock(device) - t_start
        metrics.update(step=self.step, grad_norm=grad_norm, lr=lr, skipped=not finite or empty, step_time=elapsed,
                       tokens_per_s=metrics["completion_tokens"] / max(elapsed, 1e-9))
        metrics.pop("loss_finite", None)
        if self.bad_steps > cfg.train.max_bad_steps:
            raise CordError(
                f"training stopped at step {self.step}: {self.bad_steps} steps had a non-finite loss or gradient "
                f"(train.max_bad_steps={cfg.train.max_bad_steps}); lower train.lr or check the data"
            )
        return metrics

    def _broadcast_trainable(self) -> None:
        """Every process starts from process 0's trainable weights (gradients are averaged
        explicitly, not through DDP, so nothing else would keep the replicas identical if a
        random initialisation, e.g. LoRA's, differed between processes)."""
        if self.world <= 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in self.params:
                dist.broadcast(p.data, src=0)

    def _average_gradients(self) -> None:
        """Gradients averaged over processes (all-reduce in buckets, on the parameters' device,
        cord.train.collectives); a parameter without a gradient here contributes zeros, so every
        process runs the same collectives in the same order."""
        from cord.train.collectives import all_reduce_mean

        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        all_reduce_mean([p.grad for p in self.params], self.world)

    def _reduce_metrics(self, records: list[dict[str, float]]) -> dict[str, float]:
        """One step's metrics from this process's micro-batch records, the same on every process.

        Each of :data:`REDUCED_KEYS` (a fixed list, so every process all-reduces the same
        tensor whatever its micro-batches held) becomes: for :data:`TOTAL_KEYS` the total over
        all micro-batches of all processes (the global batch); for ``time_*`` the per-process
        sum averaged over processes; for the others the mean over the
        micro-batches (of all processes) where it is not NaN — NaN only if it is NaN in all.
        Other keys (none from run_micro_step) are this process's mean.
        """
        nan = float("nan")
        sums, counts = [], []
        for k in REDUCED_KEYS:
            vals = [float(r.get(k, nan)) for r in records]
            vals = [v for v in vals if not math.isnan(v)]
            sums.append(math.fsum(vals))
            counts.append(float(len(vals)))
        if self.world > 1:
            import torch.distributed as dist

            # on the accelerator's device: NCCL reduces CUDA tensors only
            t = torch.tensor([sums, counts], dtype=torch.float64, device=self.adapter.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            sums, counts = t.cpu().tolist()
        out = {}
        for k, total, n in zip(REDUCED_KEYS, sums, counts, strict=True):
            if k in TOTAL_KEYS:
                out[k] = total
            elif k.startswith("time_"):
                out[k] = total / self.world
            else:
                out[k] = total / n if n else nan
        for k in sorted({k for r in records for k in r} - set(REDUCED_KEYS)):
            vals = [float(r[k]) for r in records if k in r and not math.isnan(float(r[k]))]
            out[k] = math.fsum(vals) / len(vals) if vals else nan
        return out

    # --------------------------------------------------------------------------------- loop
    def fit(self, resume: str | None = None, export: bool = True, overwrite: bool = False,
            allow_config_change: bool = False) -> dict[str, Any]:
        """Train to ``train.max_steps``. ``resume`` as in :meth:`resume`; the run folder rules
        (refuse mixing two runs; ``overwrite`` moves an old run aside) are
        :func:`cord.train.checkpoint.plan_run`'s."""
        cfg = self.cfg
        plan = plan_run(self.out, cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change)
        self.accelerator.wait_for_everyone()  # every rank has planned before rank 0 moves anything
        moved = move_run_aside(self.out) if plan.move_aside and self.rank == 0 else None
        self.accelerator.wait_for_everyone()
        self.out.mkdir(parents=True, exist_ok=True)
        self.run_id = None
        resumed_from = self.resume(plan.resume_from or "no", allow_config_change)
        metrics_path = self.out / "metrics.jsonl"
        if self.rank == 0:
            truncate_metrics(metrics_path, self.step)
            (self.out / "config.yaml").write_text(dump_config(cfg))
        writer = tensorboard_writer(self.out, cfg) if self.rank == 0 else None
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc=f"cord train ({cfg.objective.method})",
                   disable=not cfg.train.progress or self.rank != 0, dynamic_ncols=True)
        last: dict[str, Any] = {}
        try:
            while self.step < cfg.train.max_steps:
                last = self.train_step()
                if self.rank == 0:
                    if self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps:
                        with open(metrics_path, "a", encoding="utf-8") as f:
                            f.write(json.dumps(jsonable(last)) + "\n")
                        if writer is not None:
                            for k, v in last.items():
                                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                                    writer.add_scalar(f"train/{k}", float(v), self.step)
                    bar.update(1)
                    bar.set_postfix(progress_postfix(last))
                if self.step % cfg.train.save_every == 0 and self.step < cfg.train.max_steps:
                    self.save()
            ckpt = self.save()
            if export and (self.rank == 0 or self.sharded):  # sharded: every process gathers
                self.export(self.out / "model")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return {"step": self.step, "resumed_from": str(resumed_from) if resumed_from else None,
                "checkpoint": str(ckpt) if ckpt else None, "last": last, "bad_steps": self.bad_steps,
                "moved_aside": str(moved) if moved else None, "config_changes": plan.config_changes}

    def export(self, directory: Path) -> None:
        """A loadable model (``model.name_or_path: <dir>``) whose outputs equal the trained
        model's. LoRA is saved unmerged, base weights + adapter (see cord.models.export:
        merging an fp32 update into bf16 weights rounds most of it away)."""
        from cord.models.export import export_model

        if not self.sharded:
            export_model(self.adapter, directory)
            return
        # sharded: process 0 builds the model on the meta device (config, tokenizer and
        # feature extractor; no weights read or held), the weights are gathered onto its CPU
        # one tensor at a time in the exported dtype (model.dtype), and written under that
        # shell's names — no reload of the checkpoint from disk while the others wait
        from cord.models.registry import resolve_dtype
        from cord.train.sharding import gather_state_dict

        shell = dtypes = None
        if self.rank == 0:
            shell = load_adapter(self.cfg.model.model_copy(update={"device": "meta"}))
            dtypes = {k: v.dtype for k, v in shell.model.state_dict().items()}
        dtype = resolve_dtype(self.cfg.model.dtype, self.adapter.device)
        weights = gather_state_dict(self.adapter.model, rank=self.rank, dtypes=dtypes, dtype=dtype)
        if self.rank == 0:
            missing = set(dtypes) - set(weights)
            if missing:
                raise RuntimeError(f"sharded export: {len(missing)} tensors missing (e.g. {sorted(missing)[0]})")
            export_model(shell, directory, state_dict={k: weights[k] for k in dtypes})
        self.accelerator.wait_for_everyone()


def train(cfg: CordConfig, resume: str | None = None, export: bool = True, overwrite: bool = False,
          allow_config_change: bool = False) -> dict[str, Any]:
    """Train with ``cfg``; resumes from the output dir's latest checkpoint unless resume="no".
    The run folder is checked (:func:`plan_run`) before the data or the model loads."""
    plan_run(cfg.train.output_dir, cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change)
    with run_lock(cfg.train.output_dir):  # before the model loads: a second process stops at once
        trainer = Trainer(cfg)
        summary = trainer.fit(resume=resume, export=export, overwrite=overwrite,
                              allow_config_change=allow_config_change)
    return {**summary, "rank": trainer.rank}  # the CLI prints the summary on rank 0 only


def run_lock(output_dir: str | Path):
    """The run folder's lock (cord.locking.folder_lock, as ``cord synth`` takes on its folder):
    a second ``cord train`` on the same train.output_dir is refused with one line naming the
    first one's pid; a lock left by a killed run does not block. Under ``accelerate launch``
    only process 0 (``RANK`` 0) takes it: the processes of one run share the folder by design."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return contextlib.nullcontext()
    from cord.locking import folder_lock

    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CordError(f"train.output_dir {out}: cannot create it ({e.strerror or e})") from None
    return folder_lock(out, "train", "wait for it to finish, or choose another train.output_dir")
