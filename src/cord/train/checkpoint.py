"""Checkpoints and run folders: written atomically (temp dir, then rename), the last k of
*this run* kept, exact resume, nothing loaded that could run code.

Layout of ``<output_dir>/checkpoints/step-00000012/``:
    trainable.safetensors   the parameters that train (full names), or
    adapter/                the peft adapter (LoRA runs; also loadable by peft directly)
    optimizer.pt, scheduler.pt   tensors and plain values only (read with weights_only=True)
    rng.json                torch / numpy / python RNG states and this process's CUDA device's, as plain JSON
    trainer_state.json      step, bad steps, data position, method, world size, global batch,
                            run id, metrics of the last step
    references.json         a frozen teacher's greedy reference answers, per process
                            (read_references; absent for a live teacher)
    config.yaml             the config the run used

A run folder holds one run. A fresh start in a folder that holds another run is refused
unless told to move it aside (``overwrite``: the old run's files go to the sibling folder
``<output_dir>.old-<YYYYmmdd-HHMMSS>``); resuming with a config that changes the math is
refused unless allowed (:data:`HARMLESS_KEYS` may change freely).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cord import CordError

PREFIX = "step-"
FORMAT = 2  # 1: rng.pt (pickled numpy state); 2: rng.json, every .pt loadable with weights_only=True

#: what a cord run writes into its output folder (a folder holding any of these holds a run)
RUN_ARTIFACTS = ("checkpoints", "metrics.jsonl", "config.yaml", "model", "tensorboard")

#: config keys that do not change what is computed: they may differ when a run resumes.
#: A key ending in "." covers a whole section (synth and eval are not read by training).
#: train.grad_accum only splits the global batch (train.batch_size); a change of the global
#: batch itself is refused by Trainer.resume from the checkpoint's trainer_state.json.
HARMLESS_KEYS = (
    "train.max_steps", "train.save_every", "train.keep_last", "train.log_every", "train.progress",
    "train.tensorboard", "train.output_dir", "train.max_bad_steps", "train.gradient_checkpointing",
    "train.grad_accum", "train.dist_timeout_s", "train.fsdp_grad_sync",
    "rollout.batch_size", "rollout.engine", "objective.chunk_size", "model.device",
    "judge.timeout", "judge.max_retries", "judge.concurrency", "judge.cache_dir", "judge.api_key_env",
    "synth.", "eval.",
)


# ------------------------------------------------------------------------------ listing
def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(rf"{PREFIX}\d+", p.name)
            and (p / "trainer_state.json").is_file()]
    return sorted(dirs, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def read_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json`` (one error line if it is not a cord checkpoint)."""
    path = Path(path)
    f = path / "trainer_state.json"
    if not f.is_file():
        raise CordError(f"not a cord checkpoint: {path} (expected trainer_state.json inside)")
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CordError(f"checkpoint {path}: trainer_state.json is not valid JSON ({e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CordError(f"checkpoint {path}: trainer_state.json has no 'step'")
    return state


# ---------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every RNG the step draws from, as plain JSON (no pickle needed to read it back)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": {"kind": kind, "keys": np.asarray(keys).tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        # this process's own device only: a run may resume with fewer (or other) visible GPUs
        index = torch.cuda.current_device()
        state["cuda"] = {"device": index, "state": torch.cuda.get_rng_state(index).tolist()}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        index = torch.cuda.current_device()
        if isinstance(cuda, dict):
            saved = cuda["state"]
        else:  # older checkpoints: one state per device the saving process saw
            saved = cuda[index] if index < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(torch.tensor(saved, dtype=torch.uint8), index)


# --------------------------------------------------------------------------- save / load
def trainable_state(model: torch.nn.Module, masters: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, on the CPU; a parameter with an fp32 master
    (:class:`cord.train.precision.MasterWeights`, ``masters``: name -> master) is saved as its master."""
    masters = masters or {}
    return {n: masters.get(n, p).detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    state: dict[str, Any],
    config_yaml: str,
    keep_last: int,
    masters: dict[str, torch.Tensor] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write ``step-<step>`` atomically, then delete this run's older checkpoints beyond the
    last ``keep_last`` (a run is ``state["run_id"]``; another run's checkpoint is never deleted).
    ``masters``: fp32 master weights saved in place of their low-precision parameters;
    ``extra_json``: more files, name -> JSON data (the frozen teacher's references)."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(tmp / "adapter"))
    save_file(trainable_state(model, masters), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "rng.json").write_text(json.dumps(rng_state()))
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "format": FORMAT}, indent=1))
    for name, data in (extra_json or {}).items():
        (tmp / name).write_text(json.dumps(data, ensure_ascii=False))
    _publish(tmp, final, output_dir, state.get("run_id"), keep_last)
    return final


def _publish(tmp: Path, final: Path, output_dir: str | Path, run_id: str | None, keep_last: int) -> None:
    """Rename the written ``tmp`` folder to ``final`` (replacing a checkpoint of the same step,
    e.g. the final save right after a periodic one), then delete this run's (``run_id``) older
    checkpoints beyond the last ``keep_last``; another run's checkpoint is never deleted."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    mine = [d for d in checkpoint_dirs(output_dir) if d == final or _run_id(d) == run_id]
    for old in mine[:-keep_last]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _run_id(path: Path) -> str | None:
    try:
        return json.loads((path / "trainer_state.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _load_plain(path: Path, device: torch.device | str) -> Any:
    """``torch.load`` of tensors and plain values only, onto ``device``; one error line for a
    file that holds anything else (a pickled object could run code when loaded)."""
    if not path.is_file():
        raise CordError(f"checkpoint {path.parent}: {path.name} is missing")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CordError(
                f"refusing to load checkpoint file {path}: it holds a pickled object ({found.group(1)}), not "
                "only tensors and plain values, and loading it could run code; use checkpoints cord wrote"
            ) from None
        raise CordError(f"checkpoint file {path} is not readable (corrupt or not a torch file)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CordError(f"checkpoint file {path} is not readable (corrupt or not a torch file): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _params_device(model: torch.nn.Module, optimizer) -> torch.device:
    for group in getattr(optimizer, "param_groups", []):
        for p in group["params"]:
            return p.device
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer, scheduler,
                    masters: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Load weights, optimizer, scheduler and RNG state; returns ``trainer_state.json``.
    Everything lands on the device of the parameters it belongs to (each rank's own).
    ``masters`` (name -> fp32 master): their saved values go into the masters too, whole (the
    model's parameters get them rounded to the model dtype)."""
    path = Path(path)
    state = read_state(path)
    if not (path / "rng.json").is_file():
        old = " (written by an older cord: rng.pt)" if (path / "rng.pt").is_file() else ""
        raise CordError(f"checkpoint {path} has no rng.json{old}; it cannot be resumed exactly: "
                        "start a fresh run (cord train --overwrite) or resume from a newer checkpoint")
    try:
        weights = load_file(str(path / "trainable.safetensors"))
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CordError(f"checkpoint {path}: trainable.safetensors is missing or not readable ({e})") from None
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise CordError(f"checkpoint {path} does not match this model/config (e.g. parameter {missing[0]!r})")
    device = _params_device(model, optimizer)
    optim_state = _load_plain(path / "optimizer.pt", device)
    sched_state = _load_plain(path / "scheduler.pt", "cpu")
    try:
        rng = json.loads((path / "rng.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CordError(f"checkpoint {path}: rng.json is not valid JSON ({e})") from None
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
            if masters and name in masters:
                masters[name].copy_(value.to(masters[name].device, masters[name].dtype))
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(sched_state)
    set_rng_state(rng)
    return state


# ------------------------------------------------------------------- sharded (FSDP2) runs
def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_sharded_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    state: dict[str, Any],
    config_yaml: str,
    keep_last: int,
) -> Path | None:
    """A checkpoint of a sharded run (train.sharding=fsdp); every process calls it. Layout:
    ``sharded/`` (torch.distributed.checkpoint: model and optimizer, each process writing its
    shards; replicated tensors once), ``rng-rank<r>.json`` per process (``rng.json`` =
    process 0's), and the usual scheduler.pt, config.yaml, trainer_state.json. Atomic like
    :func:`save_checkpoint`: written into a temp dir that process 0 renames after a barrier.
    Returns the path on process 0, None on the others."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank = dist.get_rank()
    root = Path(output_dir) / "checkpoints"
    final = root / f"{PREFIX}{step:08d}"
    name = [f".tmp-{PREFIX}{step:08d}-{os.getpid()}"]
    dist.broadcast_object_list(name, src=0)  # one folder for every process: process 0's name
    tmp = root / name[0]
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "sharded"))
    (tmp / f"rng-rank{rank}.json").write_text(json.dumps(rng_state()))
    if rank == 0:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "rng.json").write_text(json.dumps(rng_state()))
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "trainer_state.json").write_text(
            json.dumps({**state, "format": FORMAT, "sharded": True}, indent=1))
    _barrier()  # every process's shards are in tmp
    if rank == 0:
        _publish(tmp, final, output_dir, state.get("run_id"), keep_last)
    _barrier()
    return final if rank == 0 else None


def load_sharded_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer, scheduler,
                            rank: int) -> dict[str, Any]:
    """Resume a sharded run from :func:`save_sharded_checkpoint`'s folder (every process
    calls it, with the same world size or another: DCP reshards on load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    state = read_state(path)
    if not (path / "sharded").is_dir():
        raise CordError(f"checkpoint {path} is not a sharded checkpoint (no sharded/): it was written by a run "
                        "with train.sharding=none; resume it with train.sharding=none")
    rng_file = path / f"rng-rank{rank}.json"
    if not rng_file.is_file():
        rng_file = path / "rng.json"
    model_sd, optim_sd = get_state_dict(model, optimizer)
    both = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(both, checkpoint_id=str(path / "sharded"))
    set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"])
    scheduler.load_state_dict(_load_plain(path / "scheduler.pt", "cpu"))
    set_rng_state(json.loads(rng_file.read_text()))
    return state


# ---------------------------------------------------------------------------- run folders
def check_output_dir(out: Path) -> None:
    """One error line for an output path that is (or sits under) a file."""
    if out.exists() and not out.is_dir():
        raise CordError(f"train.output_dir {out} is a file, not a folder; choose another train.output_dir")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CordError(f"train.output_dir {out}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK) and not out.exists():
                raise CordError(f"train.output_dir {out}: cannot create it, {parent} is not writable")
            break


def run_artifacts(out: Path) -> list[str]:
    """The cord run files in ``out`` (an empty checkpoints/ or metrics.jsonl does not count)."""
    found = []
    for name in RUN_ARTIFACTS:
        p = out / name
        if not p.exists():
            continue
        if p.is_dir() and not any(p.iterdir()):
            continue
        if p.is_file() and name == "metrics.jsonl" and p.stat().st_size == 0:
            continue
        found.append(name)
    return found


def _describe(out: Path) -> str:
    latest = latest_checkpoint(out)
    if latest is not None:
        return f"a run with checkpoints up to {latest.name}"
    return f"a run's files ({', '.join(run_artifacts(out))})"


def aside_path(out: Path) -> Path:
    """Where ``overwrite`` moves the old run: ``<out>.old-<YYYYmmdd-HHMMSS>[-n]``, a sibling."""
    out = out.resolve()
    base = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def move_run_aside(out: Path) -> Path | None:
    """Move the run files of ``out`` (not other files) into a new sibling folder."""
    names = [n for n in RUN_ARTIFACTS if (out / n).exists()]
    if not names:
        return None
    dest = aside_path(out)
    try:
        dest.mkdir(parents=True)
        for name in names:
            os.replace(out / name, dest / name)
    except OSError as e:
        raise CordError(f"could not move the old run in {out} aside to {dest}: {e.strerror or e}") from None
    return dest


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(_flatten(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
    return out


def _harmless(key: str) -> bool:
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS_KEYS)


def config_changes(saved_yaml: str, cfg) -> list[str]:
    """``key: old → new`` for every key whose change alters the math (not :data:`HARMLESS_KEYS`).
    The saved config is validated first, so keys added to cord since take their defaults."""
    import yaml

    from cord.config import CordConfig

    try:
        raw = yaml.safe_load(saved_yaml) or {}
    except yaml.YAMLError:
        raw = {}
    try:
        saved = CordConfig.model_validate(raw).model_dump(mode="json")
    except Exception:  # a config an older/newer cord wrote: compare what is there
        saved = raw
    old, new = _flatten(saved), _flatten(cfg.model_dump(mode="json"))
    changes = []
    for key in [*new, *(k for k in old if k not in new)]:
        if _harmless(key):
            continue
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a != b:
            changes.append(f"{key}: {a!r} → {b!r}")
    return changes


def check_config_change(path: Path, cfg, allow: bool) -> list[str]:
    """Refuse (one line) to resume ``path`` with a config that changes the math unless ``allow``."""
    saved = path / "config.yaml"
    changes = config_changes(saved.read_text(encoding="utf-8"), cfg) if saved.is_file() else []
    if changes and not allow:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise CordError(
            f"{path} was trained with another config, and these changes alter the math: {shown}. "
            "Pass --allow-config-change to resume anyway, or --overwrite (or another train.output_dir) "
            "for a fresh run"
        )
    return changes


@dataclass
class RunPlan:
    """What :func:`plan_run` decided: resume from a checkpoint (or not), move an old run aside."""

    resume_from: Path | None
    move_aside: bool
    config_changes: list[str]


def plan_run(out: str | Path, cfg, *, resume: str | None = None, overwrite: bool = False,
             allow_config_change: bool = False) -> RunPlan:
    """Decide how a run starts in ``out``, refusing (one line) whatever would mix two runs.
    No side effects, no model: call it before any heavy work.

    ``resume``: None (the latest checkpoint, if any), "auto" (``--resume``: the latest
    checkpoint, which must exist), a checkpoint path, or "no"."""
    out = Path(out)
    check_output_dir(out)
    present = run_artifacts(out) if out.is_dir() else []
    if resume not in (None, "auto", "no"):  # an explicit checkpoint
        path = Path(resume)
        read_state(path)
        changes = check_config_change(path, cfg, allow_config_change)
        inside = path.resolve().parent == (out / "checkpoints").resolve()
        if inside:
            if overwrite:
                raise CordError(f"--overwrite would move {path} (the checkpoint to resume from) aside with the "
                                "old run; copy it elsewhere first")
            later = [d.name for d in checkpoint_dirs(out) if checkpoint_step(d) > checkpoint_step(path)]
            if later:
                raise CordError(
                    f"{out}/checkpoints holds later checkpoints than {path.name} ({', '.join(later)}): resuming "
                    "from an earlier one would mix two continuations; move or delete the later ones first"
                )
            return RunPlan(path, False, changes)
        if present and not overwrite:
            raise CordError(f"{out} already holds {_describe(out)}; resuming {path} there would mix two runs: "
                            "pass --overwrite to move the old run aside, or choose another train.output_dir")
        return RunPlan(path, bool(present), changes)
    if resume == "no" or overwrite:
        if present and not overwrite:
            raise CordError(
                f"{out} already holds {_describe(out)}; a fresh start there would mix the two runs. Pass "
                f"--overwrite to move the old run aside (to {out.name}.old-<time>/), choose another "
                "train.output_dir, or drop --no-resume to resume it"
            )
        return RunPlan(None, bool(present), [])
    latest = latest_checkpoint(out)
    if latest is not None:
        return RunPlan(latest, False, check_config_change(latest, cfg, allow_config_change))
    if resume == "auto":  # --resume asked for a checkpoint: starting from scratch is not what was asked
        what = (f"{out} holds no checkpoint (the run there stopped before its first one, "
                f"train.save_every={cfg.train.save_every})" if present else f"{out} holds no checkpoint")
        raise CordError(f"--resume: {what}; drop --resume to start a fresh run there, or give "
                        "--resume CHECKPOINT_DIR (a checkpoints/step-N folder)")
    if present:  # a run that stopped before its first checkpoint: restart it, if it is the same run
        check_config_change(out, cfg, allow_config_change)
    return RunPlan(None, False, [])


# ------------------------------------------------------------------------- failed writes
def disk_write_guard(save_fn):
    """``save_fn`` (:func:`save_checkpoint` or :func:`save_sharded_checkpoint`) with a failed
    write — a full disk, a read-only folder — turned into one line, after removing the
    half-written temp folder; the checkpoints already published are untouched, and a rerun
    resumes from the latest. Anything else propagates (after the same clean-up)."""
    import functools

    from cord.paths import write_failure

    @functools.wraps(save_fn)
    def guarded(output_dir, step, **kw):
        try:
            return save_fn(output_dir, step, **kw)
        except Exception as e:
            for tmp in (Path(output_dir) / "checkpoints").glob(f".tmp-{PREFIX}{step:08d}-*"):
                shutil.rmtree(tmp, ignore_errors=True)
            reason = write_failure(e)
            if reason is None:
                raise
            latest = latest_checkpoint(output_dir)
            resume = f"it resumes from {latest.name}" if latest is not None else "no checkpoint was written yet"
            raise CordError(f"cannot write checkpoint {PREFIX}{step:08d} in {Path(output_dir) / 'checkpoints'}: "
                            f"{reason}; free space and rerun the same command ({resume})") from None

    return guarded


# --------------------------------------------------------------- the teacher's references
REFERENCES = "references.json"


def read_references(path: str | Path) -> list[dict[str, str]]:
    """The frozen teacher's cached greedy answers saved in checkpoint ``path``, one
    ``{example id: text}`` per process of the run that saved it; [] when there are none (a
    checkpoint of an older cord, a live teacher) or the file is unreadable: the references
    are then generated again, as they are the first time."""
    f = Path(path) / REFERENCES
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    ranks = data.get("ranks") if isinstance(data, dict) else None
    if not isinstance(ranks, list):
        return []
    return [{str(k): str(v) for k, v in r.items()} for r in ranks if isinstance(r, dict)]
