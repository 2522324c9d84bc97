"""Where cord keeps files between runs.

One cache directory for everything cord caches on disk (the built-in datasets today):
``$CORD_CACHE_DIR`` if set, else ``$CORD_CACHE`` (its older name), else
``$XDG_CACHE_HOME/cord``, else ``~/.cache/cord``. Tests point ``CORD_CACHE_DIR`` at a
temporary directory (tests/conftest.py), so no test reads or writes the user's cache.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CORD_CACHE_DIR"


def _cache_origin() -> tuple[Path, str]:
    """The cache directory and what chose it (``CORD_CACHE_DIR=...``, ``XDG_CACHE_HOME=...``
    or the default under the home folder), for error messages."""
    for var in (CACHE_ENV, "CORD_CACHE"):
        value = os.environ.get(var, "").strip()
        if value:
            return Path(value).expanduser(), f"{var}={value}"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "cord", f"XDG_CACHE_HOME={xdg}"
    return Path.home() / ".cache" / "cord", "the default (~/.cache/cord)"


def cache_dir() -> Path:
    """The cache directory (not created here; callers make the subfolders they use, with
    :func:`cache_subdir`)."""
    return _cache_origin()[0]


def cache_subdir(*parts: str) -> Path:
    """``cache_dir()/parts...``, created and checked writable: one line naming the setting
    that chose the cache when it cannot be (a file, a read-only folder, no permission)."""
    from cord import CordError

    root, origin = _cache_origin()
    path = root.joinpath(*parts)
    for p in (root, *root.parents):
        if p.exists() and not p.is_dir():
            raise CordError(f"cord's cache folder {root} ({origin}) cannot be used: {p} is a file; point "
                            f"{CACHE_ENV} at a folder you can write to")
    try:
        make_writable_folder(path)
    except OSError as e:
        raise CordError(f"cord's cache folder {path} ({origin}) cannot be written ({e.strerror or e}); point "
                        f"{CACHE_ENV} at a folder you can write to") from None
    return path


#: what a failed file write says when it does not come as an OSError (torch.save's C++ writer
#: raises RuntimeError, safetensors its own error type with the OS error in the text)
_WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "Read-only file system", "file write failed",
                   "failed writing file", "StorageFull", "Permission denied")


def write_failure(e: BaseException) -> str | None:
    """Why writing a file failed, when ``e`` is a failed write (a full disk, a read-only or
    vanished folder): its OS reason; None for anything else (a bug: let it propagate)."""
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    text = str(e)
    for marker in _WRITE_FAILURES:
        if marker in text:
            return "No space left on device" if marker == "StorageFull" else marker
    return None


def make_writable_folder(path: Path) -> None:
    """Create ``path`` and prove it can be written (a probe file, removed at once); OSError if not."""
    import tempfile

    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".cord-write-check-", dir=path)
    os.close(fd)
    os.unlink(probe)
