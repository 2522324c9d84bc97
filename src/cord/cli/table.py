"""``cord table``: Table 1 from evaluation and training run folders (:mod:`cord.eval.table`)."""

from __future__ import annotations

from pathlib import Path

from cord.eval.table import TABLE_JSON, TABLE_MD, TABLE_PNG, format_table_md, make_table


def run(args) -> int:
    """``cord table``."""
    table = make_table(args.inputs, args.out, base=args.base, anchors=args.anchors, replicates=args.replicates,
                       seed=args.seed, title=args.title)
    print(format_table_md(table), end="")
    print(f"wrote {Path(args.out) / TABLE_MD}, {Path(args.out) / TABLE_JSON}, {Path(args.out) / TABLE_PNG}")
    return 0
