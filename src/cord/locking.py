"""One writer per output folder: the lock ``cord synth`` and ``cord train`` take on theirs.

Two processes writing one folder interleave what they append (a manifest; a metrics.jsonl
whose steps read 1, 2, 1, 3, 2, …) and both exit 0. :func:`folder_lock` makes the second one
stop at once with one line naming the first (its pid and host, read from the lock file).

The lock is ``fcntl.flock`` on a file inside the folder: the kernel releases it when its
holder exits however it exits (Ctrl-C, SIGTERM, SIGKILL, a crash), so a lock left behind by a
killed process never blocks the next run — the file stays, with a dead pid in it, and the
next run simply takes it. The file is never deleted (deleting a lock file while another
process opens it lets two processes hold two different files). Where ``flock`` is not
available (not POSIX, or a filesystem without locks), the pid in the file decides: a holder
that is not alive on this host is stale and replaced; one on another host is trusted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from cord import CordError

__all__ = ["folder_lock", "lock_holder", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


def lock_holder(path: str | Path) -> dict[str, Any] | None:
    """What the lock file at ``path`` says about its holder (``pid``, ``host``, ``command``,
    ``started``), or None when it is empty, unreadable or not a cord lock file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    host = holder.get("host")
    here = host in (None, socket.gethostname())
    return f"pid {holder['pid']}" + ("" if here else f" on {host}")


def _refuse(folder: Path, path: Path, command: str, hint: str, holder: dict[str, Any] | None,
            stale_hint: bool = False) -> CordError:
    extra = f" (if that process is gone, delete {path})" if stale_hint else ""
    return CordError(f"another `cord {command}` ({_describe(holder)}) is writing to {folder}{extra}; {hint}")


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str, hint: str, name: str | None = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` (which must exist) for ``cord <command>`` while the block
    runs; yields the lock file's path. A second holder is refused with one line: ``another
    `cord <command>` (pid N) is writing to <folder>; <hint>``. ``name``: the lock file's name
    (default ``.cord-<command>.lock``)."""
    folder = Path(folder)
    path = folder / (name or f".cord-{command}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CordError(f"cannot create the lock file {path}: {e.strerror or e}; "
                        "give an output folder you can write to") from None
    locked = False
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _refuse(folder, path, command, hint, lock_holder(path)) from None
                # ENOLCK / EOPNOTSUPP: a filesystem without locks; the pid decides below
        if not locked:
            holder = lock_holder(path)
            if holder and holder.get("pid") != os.getpid():
                same_host = holder.get("host") == socket.gethostname()
                if not same_host or pid_alive(int(holder["pid"])):
                    raise _refuse(folder, path, command, hint, holder, stale_hint=not same_host)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: nobody's pid in it (flock itself goes with close)
    finally:
        os.close(fd)
