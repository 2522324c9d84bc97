"""Small built-in paired datasets made on the fly with the offline TTS (no downloads).

``data.train: builtin:tiny-arith`` in a config resolves to a cached directory holding 24
spoken arithmetic questions with worked solutions — enough for the tiny presets to run
every method end to end. Cached under :func:`cord.paths.cache_dir` (``$CORD_CACHE_DIR``,
default ``~/.cache/cord``).
"""

from __future__ import annotations

import json
from pathlib import Path

from cord import CordError
from cord.paths import cache_dir, cache_subdir

BUILTINS = {"tiny-arith": 24}


def cache_root() -> Path:
    return cache_dir()


def arithmetic_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` deterministic questions like "What is 3 plus 4?" → "3 + 4 = 7. The answer is 7."."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if i % 2:
            a, b = max(a, b), min(a, b)
            q, sol, ans = f"What is {a} minus {b}?", f"{a} - {b} = {a - b}.", a - b
        else:
            q, sol, ans = f"What is {a} plus {b}?", f"{a} + {b} = {a + b}.", a + b
        rows.append({"id": f"arith-{i:03d}", "question": q, "answer": str(ans), "solution": f"{sol} The answer is {ans}."})
    return rows


def ensure_builtin(name: str) -> Path:
    """The directory of built-in dataset ``name``, synthesizing it on first use."""
    from cord.config import SynthConfig
    from cord.data.synth import synthesize

    if name not in BUILTINS:
        raise CordError(f"unknown built-in dataset {name!r} (available: {', '.join(sorted(BUILTINS))})")
    out = cache_root() / "builtin" / name
    manifest = out / "manifest.jsonl"
    n = BUILTINS[name]
    if manifest.is_file() and sum(1 for line in manifest.open() if line.strip()) >= n:
        return out  # made already: a read-only cache that holds it is fine
    out = cache_subdir("builtin", name)  # one line for a cache that is a file or read-only
    src = out / "questions.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(n)))
    synthesize(SynthConfig(input=str(src), out=str(out), id_column="id", workers=2, seed=0), progress=False)
    return out
