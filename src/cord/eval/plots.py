"""PNG plots of the KL diagnostics (matplotlib's object API: no pyplot, no global backend
change, safe in a headless process). Every file is written to a temp name and renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cord.eval.records import _file_mode


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_kl_histogram(kl: np.ndarray, path: str | Path, percentiles: Mapping[str, float] | None = None,
                      title: str = "Per-token reverse KL (audio ‖ text)") -> Path:
    """Histogram of per-token KL with a log count axis (the tail is where the mass is), the
    percentiles marked."""
    kl = np.asarray(kl, dtype=np.float64)
    fig, (ax,) = _figure()
    if kl.size:
        ax.hist(kl, bins=min(60, max(10, int(np.sqrt(kl.size)))), color="#4c72b0", log=True)
    for i, (name, v) in enumerate((percentiles or {}).items()):
        if v is not None:
            ax.axvline(v, ls="--", lw=1, color=f"C{i + 1}", label=f"{name} = {v:.3g}")
    if percentiles:
        ax.legend(fontsize=8)
    ax.set_xlabel("KL(p(·|audio, y<t) ‖ p(·|text, y<t))  [nats]")
    ax.set_ylabel("tokens (log scale)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_kl_by_position(position: Sequence[int], mean_kl: Sequence[float], count: Sequence[int],
                        path: str | Path, title: str = "Mean KL by completion position") -> Path:
    """Mean KL at each completion position (line) and how many rollouts reach it (bars)."""
    fig, (ax,) = _figure()
    ax.plot(position, mean_kl, color="#c44e52", lw=1.2, label="mean KL")
    ax.set_xlabel("completion position t (0 = first generated token)")
    ax.set_ylabel("mean KL [nats]")
    ax.set_title(title, fontsize=10)
    twin = ax.twinx()
    twin.bar(position, count, width=1.0, color="0.85", zorder=0)
    twin.set_ylabel("rollouts reaching t", color="0.5")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    return _save(fig, path)


def plot_kl_comparison(analyses: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Overlay several :func:`cord.eval.analyze` results (e.g. ``{"before CORD": a, "after
    CORD": b}``): left, the share of tokens with KL above x (log y, from the stored
    quantiles); right, mean KL by completion position."""
    fig, (left, right) = _figure(ncols=2)
    for i, (label, a) in enumerate(analyses.items()):
        q = a.get("quantiles") or {}
        values, levels = q.get("values") or [], q.get("levels") or []
        if values:
            survival = 1.0 - np.asarray(levels, dtype=np.float64)
            keep = survival > 0
            left.step(np.asarray(values)[keep], survival[keep], where="post", color=f"C{i}",
                      label=f"{label} (mean {a['kl']['mean']:.3g})")
        pos = a.get("kl_by_position") or {}
        if pos.get("position"):
            right.plot(pos["position"], pos["mean_kl"], color=f"C{i}", lw=1.2, label=label)
    left.set_yscale("log")
    left.set_xlabel("KL [nats]")
    left.set_ylabel("share of tokens with KL > x")
    left.set_title("Per-token KL tail", fontsize=10)
    right.set_xlabel("completion position t")
    right.set_ylabel("mean KL [nats]")
    right.set_title("Mean KL by completion position", fontsize=10)
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)
