"""Progress that shows in a terminal and in a log file.

:func:`progress_bar` gives a tqdm bar when the stream is a terminal; otherwise (output
redirected to a log, a batch job) it prints a plain line at the first update, then at most
every ``interval`` seconds (default 30, ``CORD_PROGRESS_INTERVAL`` overrides) and at the
end::

    cord eval spoken [audio]: 40/100 items (40%), 2.31 items/s, ETA 0:00:26

The rate counts only the work done in this process (a resumed run's ``initial`` items are
not in it). Both kinds share ``update(n)``, ``set_postfix(**kv)``, ``close()`` and ``with``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

#: seconds between two progress lines in a log (not a terminal)
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    try:
        return float(os.environ.get("CORD_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (hours grow past 99 as needed)."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LineProgress:
    """Progress as plain lines (for logs); the same small interface as a tqdm bar."""

    def __init__(self, total: int | None, desc: str, unit: str = "item", initial: int = 0,
                 stream: IO[str] | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = _interval() if interval is None else float(interval)
        self.clock = clock
        self.start = clock()
        self.last_print: float | None = None
        self.printed_n: int | None = None
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def line(self) -> str:
        done = self.n - self.initial
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = done / elapsed
        units = self.unit if self.unit.endswith("s") else self.unit + "s"
        parts = [f"{self.n}/{self.total} {units}" if self.total is not None else f"{self.n} {units}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {units}/s" if rate >= 0.1 or done == 0 else f"{elapsed / done:.3g} s/{self.unit}")
        if self.total is not None and done > 0 and self.n < self.total:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        elif self.total is not None and self.n >= self.total:
            parts.append(f"done in {format_duration(elapsed)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return f"{self.desc}: " + ", ".join(parts)

    def _print(self) -> None:
        self.last_print, self.printed_n = self.clock(), self.n
        print(self.line(), file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.last_print is None or now - self.last_print >= self.interval or (
                self.total is not None and self.n >= self.total):
            self._print()

    def set_postfix(self, **kv: Any) -> None:
        self.postfix = kv

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n > self.initial and self.printed_n != self.n:  # where it stopped, unless just said
            self._print()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "item", *, enabled: bool = True, initial: int = 0,
                 stream: IO[str] | None = None, interval: float | None = None):
    """A tqdm bar on a terminal, :class:`LineProgress` lines otherwise, nothing when not
    ``enabled`` (a disabled tqdm bar)."""
    from tqdm.auto import tqdm

    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial=initial, stream=stream, interval=interval)
