"""Running the pipeline: stage state on disk, locks, moving changed outputs aside, the subprocesses, the plan and status texts
(the command itself: :mod:`cord.cli.reproduce`)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from cord import CordError
from cord.reproduce.plan import (
    DONE_JSON,
    LOG,
    PIPELINE_LOCK,
    STAGE_JSON,
    STAGE_LOCK,
    Pipeline,
    Stage,
    build_pipeline,
)

# --- state --------------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, data: dict[str, Any]) -> None:
    from cord.eval.records import dump_json, write_atomic

    write_atomic(path, dump_json(data))


def stage_state(pipe: Pipeline, stage: Stage) -> tuple[str, dict[str, Any] | None]:
    """(``done`` | ``changed`` | ``failed`` | ``interrupted`` | ``running`` | ``pending``, the record)."""
    d = pipe.out / stage.name
    done = _read(d / DONE_JSON)
    if done is not None and done.get("fingerprint") == stage.fingerprint:
        return "done", done
    if _lock_busy(d / STAGE_LOCK):
        return "running", _read(d / STAGE_JSON)
    started = _read(d / STAGE_JSON)
    if started is not None and started.get("fingerprint") == stage.fingerprint:
        return ("failed" if started.get("exit") not in (None, 0) else "interrupted"), started
    if done is not None or started is not None:
        return "changed", started or done
    return "pending", None


def _lock_busy(path: Path) -> bool:
    """Whether a process holds the flock of ``path`` (taken and released at once)."""
    if not path.is_file():
        return False
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _move_aside(d: Path, keep: tuple[str, ...]) -> Path | None:
    """Move ``d``'s contents (but ``keep``) into a new sibling ``<d>.old-<time>``."""
    names = [p for p in d.iterdir() if p.name not in keep]
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = d.with_name(f"{d.name}.old-{stamp}"), 1
    while dest.exists():
        n += 1
        dest = d.with_name(f"{d.name}.old-{stamp}-{n}")
    try:
        dest.mkdir(parents=True)
        for p in names:
            os.replace(p, dest / p.name)
    except OSError as e:
        raise CordError(f"could not move the old outputs of {d} aside to {dest}: {e.strerror or e}") from None
    return dest


def training_changed(stage: Stage, d: Path) -> str | None:
    """Why the run in ``d`` cannot continue under ``stage``'s settings, or None when it can.

    ``cord train`` in a folder that holds a run continues it when only settings that do not
    change what is computed differ (``train.max_steps``, ``train.save_every``, ... — the
    checkpoint module's ``HARMLESS_KEYS``) and refuses otherwise; here such a run is another
    computation: it is moved aside and the stage starts afresh. The same for prompts per
    micro-batch (processes x ``train.grad_accum``), which seeds the rollouts."""
    saved = d / "config.yaml"
    if stage.train_config is None or not saved.is_file():
        return None
    from cord.train.checkpoint import config_changes, latest_checkpoint, read_state

    changes = config_changes(saved.read_text(encoding="utf-8"), stage.train_config)
    if changes:
        more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
        return f"its settings change what training computes ({'; '.join(changes[:3])}{more})"
    ckpt = latest_checkpoint(d)
    if ckpt is not None and stage.processes:
        tr = stage.train_config.train
        micro = tr.batch_size // (stage.processes * tr.grad_accum)
        was = read_state(ckpt).get("micro_batch")
        if was is not None and int(was) != micro:
            return (f"its prompts per micro-batch changed ({was} → {micro}: processes x train.grad_accum), "
                    "which changes each micro-batch's normalisation and rollout seeds")
    return None


# --- running ------------------------------------------------------------------------------------


class StageFailed(CordError):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the stage's command gets SIGTERM if this process dies (even by SIGKILL), so a
    killed pipeline leaves no training running behind it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()


def run_command(command: list[str], log_path: Path) -> int:
    """Run ``command`` with stdout and stderr appended to ``log_path``; its exit status. An
    interrupted wait (Ctrl-C, SIGTERM) stops the command first (SIGTERM, then SIGKILL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} cord reproduce runs:\n$ {shlex.join(command)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        except OSError as e:
            raise CordError(f"cannot start {command[0]}: {e.strerror or e}") from None
        try:
            return proc.wait()
        except BaseException:
            _stop(proc)
            raise


def _error_line(log_path: Path) -> str:
    """The command's own error line from the end of its log (else its last line)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.split("\r")[-1].strip() for ln in tail.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("$ ") and not ln.startswith("# ")]
    for ln in reversed(lines):
        if ln.startswith("cord ") and ": error: " in ln:
            return ln
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else ""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a cluster's job kill, ``kill PID``) is handled like Ctrl-C: the running stage's
    command is stopped and the run ends, resumable."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_stage(pipe: Pipeline, stage: Stage, *, say=print) -> float:
    """Run one stage's command now (whatever its state), recording it; seconds taken."""
    from cord.locking import folder_lock

    d = pipe.out / stage.name
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CordError(f"cannot create {d}: {e.strerror or e}; give an --out you can write to") from None
    hint = f"wait for it to finish (it runs stage {stage.name} of {pipe.out})"
    with folder_lock(d, "reproduce", hint, name=STAGE_LOCK):
        prev = _read(d / DONE_JSON) or _read(d / STAGE_JSON)
        why = None
        if prev is not None and stage.kind in ("train", "eval") and prev.get("upstream") != stage.upstream:
            why = "its inputs changed since it ran"
        elif prev is not None and stage.kind == "train" and prev.get("fingerprint") != stage.fingerprint:
            why = training_changed(stage, d)
        if why:
            moved = _move_aside(d, keep=(STAGE_LOCK,))
            if moved is not None:
                say(f"  {stage.name}: {why}; its old outputs are in {moved}")
        (d / DONE_JSON).unlink(missing_ok=True)
        record = {"stage": stage.name, "fingerprint": stage.fingerprint, "product": stage.product,
                  "upstream": stage.upstream, "command": stage.command, "files": stage.files,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}
        _write(d / STAGE_JSON, record)
        t0 = time.time()
        rc = run_command(stage.command, d / LOG)
        seconds = time.time() - t0
        if rc != 0:
            _write(d / STAGE_JSON, {**record, "exit": rc, "seconds": seconds})
            why = _error_line(d / LOG)
            raise StageFailed(f"stage {stage.name} failed (exit {rc})" + (f": {why}" if why else "")
                              + f"; log: {d / LOG}; rerun: {pipe.rerun_hint(stage.name)}")
        _write(d / DONE_JSON, {**record, "exit": 0, "seconds": round(seconds, 3),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return seconds


def _check_needs(pipe: Pipeline, stage: Stage) -> None:
    for n in stage.needs:
        state, _ = stage_state(pipe, pipe.get(n))
        if state != "done":
            what = "is not done" if state in ("pending", "interrupted", "failed", "running") else "changed since it ran"
            raise CordError(f"stage {stage.name} needs {n}, which {what} ({state}); run it first: "
                            f"{pipe.rerun_hint(n)}")


def run_pipeline(pipe: Pipeline, only: str | None = None, *, say=print) -> dict[str, str]:
    """Run every stage that is not done (or only ``only``); {stage: ran | skipped}."""
    from cord.locking import folder_lock

    try:
        pipe.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CordError(f"--out {pipe.out}: cannot create it ({e.strerror or e}); give an --out you can write to") from None
    result: dict[str, str] = {}
    targets = [pipe.get(only)] if only else pipe.stages
    lock = contextlib.nullcontext() if only else folder_lock(
        pipe.out, "reproduce", "wait for it to finish, or use another --out", name=PIPELINE_LOCK)
    total = len(pipe.stages)
    with lock, _sigterm_interrupts():
        t_all = time.time()
        for stage in targets:
            k = pipe.stages.index(stage) + 1
            state, rec = stage_state(pipe, stage)
            if state == "done":
                say(f"[{k}/{total}] {stage.name}: done (skipped)")
                result[stage.name] = "skipped"
                continue
            if only:
                _check_needs(pipe, stage)
            note = {"interrupted": ", resuming", "failed": ", again", "changed": " (changed)"}.get(state, "")
            say(f"[{k}/{total}] {stage.name}: running{note} — log: {pipe.out / stage.name / LOG}")
            seconds = run_stage(pipe, stage, say=say)
            say(f"[{k}/{total}] {stage.name}: done in {seconds:.1f} s")
            result[stage.name] = "ran"
        if not only or only == "table":
            md = pipe.out / "table" / "table.md"
            if md.is_file() and any(v == "ran" for v in result.values()):
                say(md.read_text(encoding="utf-8").rstrip())
        if any(v == "ran" for v in result.values()):
            say(f"finished in {time.time() - t_all:.1f} s; table: {pipe.out / 'table'}")
        else:
            say(f"nothing to do: every stage is done; table: {pipe.out / 'table' / 'table.md'}")
    return result


def format_plan(pipe: Pipeline) -> str:
    """One line per stage: ``NAME<TAB>COMMAND`` (exactly what ``--stage NAME`` runs)."""
    return "".join(f"{s.name}\t{s.shell()}\n" for s in pipe.stages)


def format_status(pipe: Pipeline) -> str:
    lines = [f"cord reproduce: {pipe.out} ({pipe.config_path})"]
    width = max(len(s.name) for s in pipe.stages)
    counts: dict[str, int] = {}
    for s in pipe.stages:
        state, rec = stage_state(pipe, s)
        counts[state] = counts.get(state, 0) + 1
        extra = ""
        if state == "done" and rec:
            extra = f"{rec.get('seconds', 0):.1f} s, finished {rec.get('finished', '?')}"
        elif state == "failed" and rec:
            extra = f"exit {rec.get('exit')}; log: {pipe.out / s.name / LOG}"
        elif state == "interrupted":
            extra = f"started {rec.get('started', '?') if rec else '?'}; rerun to resume; log: {pipe.out / s.name / LOG}"
        elif state == "running" and rec:
            extra = f"pid {rec.get('pid', '?')}, started {rec.get('started', '?')}"
        elif state == "changed":
            extra = "its settings or inputs changed since it ran: it runs again"
        elif state == "pending" and s.needs:
            extra = f"needs {', '.join(s.needs)}"
        lines.append(f"  {s.name:<{width}}  {state:<11}  {extra}".rstrip())
    done = counts.get("done", 0)
    lines.append(f"{done} of {len(pipe.stages)} stages done")
    if _lock_busy(pipe.out / PIPELINE_LOCK):
        from cord.locking import lock_holder

        holder = lock_holder(pipe.out / PIPELINE_LOCK) or {}
        lines.append(f"a cord reproduce is running in this folder (pid {holder.get('pid', '?')})")
    return "\n".join(lines) + "\n"
