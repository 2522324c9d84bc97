"""Evaluation: benchmarks, audio-vs-text accuracy (``cord eval``), reports, and token-level
KL diagnostics (``cord analyze``).

* :func:`evaluate` — benchmarks × modalities → per-item JSONL → ``report.json`` / ``report.md``.
* :func:`report_from_items` — the report recomputed from the per-item JSONL;
  :func:`add_gap_reduction` — gap reduction against a baseline report.
* :func:`analyze` — per-token reverse KL between audio- and text-conditioned predictions on
  audio rollouts; :func:`kl_diagnostics` — the statistics alone; :func:`plot_kl_comparison`
  — before/after plots.
* :func:`load_benchmark` and friends — the benchmark loaders.
"""

from cord.eval.analyze import analyze, kl_diagnostics, rollout_kl
from cord.eval.benchmarks import (
    Benchmark,
    benchmark_names,
    load_benchmark,
    load_gsm8k_audio,
    load_local_benchmark,
    load_mmau,
    load_voicebench,
    open_benchmark,
)
from cord.eval.plots import plot_kl_by_position, plot_kl_comparison, plot_kl_histogram
from cord.eval.records import read_records
from cord.eval.report import (
    add_gap_reduction,
    format_markdown,
    load_report,
    report_from_items,
    write_report,
)
from cord.eval.runner import evaluate

__all__ = [
    "Benchmark",
    "add_gap_reduction",
    "analyze",
    "benchmark_names",
    "evaluate",
    "format_markdown",
    "kl_diagnostics",
    "load_benchmark",
    "load_gsm8k_audio",
    "load_local_benchmark",
    "load_mmau",
    "load_report",
    "load_voicebench",
    "open_benchmark",
    "plot_kl_by_position",
    "plot_kl_comparison",
    "plot_kl_histogram",
    "read_records",
    "report_from_items",
    "rollout_kl",
    "write_report",
]


def __getattr__(name: str):
    if name == "HUB_BENCHMARKS":  # the registered benchmark names as of now (no stale copy)
        return benchmark_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
