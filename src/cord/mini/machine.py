"""What the miniature's timings ran on, and its torch CPU threads: the thread count changes float
reduction order, so a seed reproduces only at the same count (:class:`cord.mini.recipe.RecipeConfig`'s
``threads``)."""

from __future__ import annotations

import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch CPU threads, restoring the caller's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def auto_threads() -> int:
    """2 when at least two cores are idle (1-minute load average < 0.5), else 1."""
    import os

    cores = os.cpu_count() or 1
    load = load_average() or 0.0
    return 2 if cores >= 2 and load < cores - 1.5 else 1


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(load_at_start: float | None = None) -> dict[str, Any]:
    """What the timings were measured on (the load average says whether the CPU was shared)."""
    import os

    import transformers

    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min_start": load_at_start,
        "load_avg_1min_end": load_average(),
    }
