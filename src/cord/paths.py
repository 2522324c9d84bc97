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


def cache_dir() -> Path:
    """The cache directory (not created here; callers make the subfolders they use)."""
    for var in (CACHE_ENV, "CORD_CACHE"):
        value = os.environ.get(var, "").strip()
        if value:
            return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cord"
