"""One writer per output folder (issue #27): a second `cord train` / `cord synth` on the same
folder is refused with one line naming the first one's pid; a lock left by a killed process
never blocks the next run."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cord import CordError
from cord.cli import main
from cord.locking import folder_lock, lock_holder
from tests.train.test_cli import cord_train, run, steps


def _holder(folder: Path, command: str, name: str | None = None) -> subprocess.Popen:
    """A process that takes ``folder``'s lock and keeps it until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from cord.locking import folder_lock
        with folder_lock({str(folder)!r}, {command!r}, "wait", name={name!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    proc = _holder(tmp_path, "train")
    try:
        with pytest.raises(CordError) as e:
            with folder_lock(tmp_path, "train", "wait for it"):
                pass
        assert str(e.value) == f"another `cord train` (pid {proc.pid}) is writing to {tmp_path}; wait for it"
    finally:
        proc.kill()
        proc.wait()
    # killed: the lock file still names it, but the lock went with the process
    assert lock_holder(tmp_path / ".cord-train.lock")["pid"] == proc.pid
    with folder_lock(tmp_path, "train", "wait") as path:
        assert lock_holder(path)["pid"] != proc.pid
    assert lock_holder(path) is None  # released: no pid left behind


def test_without_flock_a_dead_pid_is_stale_and_a_live_one_holds(tmp_path, monkeypatch):
    import fcntl
    import socket

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / ".cord-train.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "command": "train"}))
    with folder_lock(tmp_path, "train", "wait"):  # stale: taken over
        pass
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        path.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "command": "train"}))
        with pytest.raises(CordError, match=f"pid {live.pid}"):
            with folder_lock(tmp_path, "train", "wait"):
                pass
    finally:
        live.kill()
        live.wait()


def test_two_trains_on_one_folder_the_second_is_refused_before_anything_is_written(tmp_path, capsys):
    """Two `cord train` on one output_dir both exited 0 with metrics steps [1,2,1,3,2,4,3,4]."""
    out = tmp_path / "run"
    out.mkdir()
    proc = _holder(out, "train")
    try:
        rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=2"))
    finally:
        proc.kill()
        proc.wait()
    assert rc == 2 and err.count("\n") == 1
    assert err == (f"cord train: error: another `cord train` (pid {proc.pid}) is writing to {out}; "
                   "wait for it to finish, or choose another train.output_dir\n")
    assert sorted(p.name for p in out.iterdir()) == [".cord-train.lock"]  # nothing of a run written

    # the holder was killed (SIGKILL): its lock does not block the next run
    rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=2"))
    assert rc == 0, err
    assert steps(out) == [1, 2]


def test_synth_uses_the_same_lock(tmp_path):
    from cord.config import SynthConfig
    from cord.data.synth import synthesize
    from tests.data.test_synth import WORD_PROBLEMS, FakeTTS, write_jsonl

    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    out = tmp_path / "out"
    out.mkdir()
    proc = _holder(out, "synth", name=".synth.lock")
    try:
        with pytest.raises(CordError, match=rf"another `cord synth` \(pid {proc.pid}\) is writing to {out}"):
            synthesize(SynthConfig(input=str(src), out=str(out)), progress=False, tts=FakeTTS())
    finally:
        proc.kill()
        proc.wait()
    assert synthesize(SynthConfig(input=str(src), out=str(out)), progress=False, tts=FakeTTS())["written"] == 4


def test_holder_file_is_plain_json(tmp_path):
    with folder_lock(tmp_path, "synth", "wait") as path:
        rec = lock_holder(path)
        assert rec["command"] == "synth" and isinstance(rec["pid"], int) and rec["host"]
        time.sleep(0)


def _train_two_ranks(rank: int, out: Path) -> dict:
    import contextlib
    import io

    from tests.gloo import tiny_data

    argv = cord_train("grpo", out / "run", "train.max_steps=1", f"data.train={tiny_data()}")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(argv)
    return {"rc": rc, "out": stdout.getvalue(), "err": stderr.getvalue()}


@pytest.mark.slow
def test_two_processes_of_one_run_share_the_folder_and_print_one_summary(tmp_path):
    """Under accelerate launch (here: two gloo processes) only process 0 takes the run
    folder's lock (no refusal, no deadlock) and only process 0 prints the end-of-run summary.
    The checkpoint holds each process's frozen-teacher references (gathered to process 0)."""
    from cord.train.checkpoint import read_references
    from tests.gloo import run_two_processes

    r0, r1 = run_two_processes(_train_two_ranks, tmp_path, timeout_s=300)
    assert r0["rc"] == r1["rc"] == 0, (r0["err"], r1["err"])
    assert "trained to step 1" in r0["out"] and "checkpoint:" in r0["out"]
    assert r1["out"] == ""
    assert steps(tmp_path / "run") == [1]
    refs = read_references(tmp_path / "run" / "checkpoints" / "step-00000001")
    assert len(refs) == 2 and all(len(r) == 1 for r in refs) and refs[0].keys() != refs[1].keys()
