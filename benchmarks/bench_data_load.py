"""Host memory of loading a paired dataset, eager vs lazy, and the cost of the pre-flight check.

Workload: a manifest of N clips (default 1,000) of S seconds (default 14, a NuminaMath-length
question) at 16 kHz mono PCM-16; the files are hard links to one WAV (distinct paths, no
disk), which changes nothing for a decoder.

* ``eager``: what ``load_paired`` did before: every clip decoded to 16 kHz float32 and kept
  (``cord.data.audio.load_audio`` per row, held in a list).
* ``lazy``: ``cord.data.paired.load_paired`` today (a path per example, decoded on access).
* ``check``: ``cord.data.check.check_examples`` over the lazy examples (``soundfile.info``
  per file, nothing decoded).

Each variant runs in a fresh subprocess and reports its RSS growth (``/proc/self/statm``)
from just before the load to just after, with the loaded list still alive, and its wall time.

Usage: ``.venv/bin/python benchmarks/bench_data_load.py [--n 1000] [--seconds 14]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, directory: str) -> None:
    from cord.data.audio import load_audio
    from cord.data.check import check_examples
    from cord.data.paired import load_paired, read_manifest

    d = Path(directory)
    rows = read_manifest(d)
    before = _rss()
    t0 = time.perf_counter()
    if variant == "eager":
        kept = [load_audio(d / r["audio"]) for r in rows]
    elif variant == "lazy":
        kept = load_paired(d)
    else:
        kept = load_paired(d)
        check_examples(kept, max_seconds=30.0, policy="error", say=None)
    seconds = time.perf_counter() - t0
    print(json.dumps({"variant": variant, "rss_mb": (_rss() - before) / 2**20, "seconds": seconds, "n": len(kept)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=14.0)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "DIR"))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    import numpy as np
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "audio").mkdir()
        x = 0.1 * np.random.default_rng(0).standard_normal(int(16000 * args.seconds))
        sf.write(d / "one.wav", x.astype(np.float32), 16000, subtype="PCM_16")
        rows = []
        for i in range(args.n):
            os.link(d / "one.wav", d / "audio" / f"c{i}.wav")
            rows.append({"id": f"c{i}", "question": f"What is {i}?", "answer": str(i), "audio": f"audio/c{i}.wav"})
        (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{args.n} clips x {args.seconds:g} s at 16 kHz "
              f"({args.n * args.seconds * 16000 * 4 / 2**20:.0f} MB as float32)")
        for variant in ("eager", "lazy", "check"):
            out = subprocess.run([sys.executable, __file__, "--child", variant, str(d)], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{r['variant']:>6}: RSS growth {r['rss_mb']:8.1f} MB, {r['seconds']:6.2f} s")


if __name__ == "__main__":
    main()
