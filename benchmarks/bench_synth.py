"""Synthesis throughput of `cord synth` per TTS engine (espeak-ng by default; Piper with --tts).

Generates N NuminaMath-like word problems (gsm8k / orca_math / synthetic_math style: money,
percentages, fractions, a little inline LaTeX; ~215 characters each),
then runs the full `cord synth` pipeline (normalise → espeak-ng → resample to 16 kHz →
WAV + manifest with fsync) with each worker count into a fresh folder, and reports
utterances per second, audio seconds per wall second, the speed-up over 1 worker measured
in the same run, and the projected wall time for 80k questions (the paper's data size).

    .venv/bin/python benchmarks/bench_synth.py            # 200 problems, workers 1 and 2
    .venv/bin/python benchmarks/bench_synth.py --n 50 --workers 1 2 4 --repeat 1
    .venv/bin/python benchmarks/bench_synth.py --tts espeak piper --n 16 --repeat 1   # engines, same run
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from cord.config import SynthConfig
from cord.data.synth import synthesize
from cord.data.tts import make_tts

TEMPLATES = [
    "{name} buys {a} notebooks for ${p} each and a backpack for ${q}. She pays with a ${bill} bill. "
    "How much change does she get back, in dollars?",
    "A store has {big:,} apples. On Monday it sells {pct}% of them and on Tuesday it sells {a} more. "
    "How many apples are left at the end of Tuesday?",
    "{name} reads {a} pages every weekday and {b} pages on each day of the weekend. "
    "How many pages does {name} read in {w} weeks?",
    "A train travels at {s} kilometers per hour for {h}.5 hours and then at {s2} kilometers per hour "
    "for {h2} hours. What is the total distance it travels?",
    "What is $\\frac{{{n1}}}{{{d1}}}$ of {big2}, plus {a} times {b}?",
    "If $x^2 = {sq}$ and $x > 0$, what is the value of $3x + {a}$?",
    "A rectangle has a length of {a} meters and a width that is {b} meters shorter than its length. "
    "What is the area of the rectangle in square meters?",
    "{name} saves ${p} a week for {w} weeks and then spends {pct}% of the savings on a gift. "
    "How much money does {name} have left?",
    "The average of {k} numbers is {avg}. When one more number is added, the average becomes {avg2}. "
    "What number was added?",
    "A baker makes {a} dozen cookies. He sells $\\frac{{{n1}}}{{{d1}}}$ of them in the morning and "
    "{b} cookies in the afternoon. How many cookies are left?",
]
PREAMBLES = [
    "Every year the town holds a market on the first weekend of spring, and many families come to visit.",
    "A group of students is planning a trip at the end of the term and keeps careful records of everything.",
    "At a small shop near the station, the owner writes down each sale in a notebook at the end of the day.",
    "During the summer holidays a few friends decided to take on a project together to earn some money.",
    "The school library ran a reading challenge this month, and the teachers tracked the results closely.",
]
NAMES = ["Maria", "James", "Aisha", "Chen", "Olivia", "Liam", "Sofia", "Noah", "Priya", "Lucas"]


def make_problems(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = TEMPLATES[i % len(TEMPLATES)]
        r = rng.randint(2, 9)
        q = t.format(
            name=rng.choice(NAMES), a=rng.randint(3, 40), b=rng.randint(2, 12), p=rng.randint(2, 15),
            q=rng.randint(20, 60), bill=100, big=rng.randint(1000, 99999), pct=rng.choice([10, 15, 20, 25, 40]),
            w=rng.randint(2, 8), s=rng.randint(40, 120), s2=rng.randint(40, 120), h=rng.randint(1, 4),
            h2=rng.randint(1, 4), n1=rng.randint(1, 3), d1=rng.choice([4, 5, 8]), big2=rng.randint(40, 400),
            sq=r * r, k=rng.randint(4, 9), avg=rng.randint(10, 60), avg2=rng.randint(10, 60),
        )
        q = f"{rng.choice(PREAMBLES)} {q}"
        rows.append({"id": f"bench-{i:05d}", "question": q, "answer": "0", "source": "bench"})
    return rows


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        model = ""
    import os

    return f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} logical cores"


def _load() -> str:
    import os

    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (espeak-ng runs as a subprocess)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=int, default=80_000, help="questions to project the wall time for")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; worker counts are interleaved, medians reported")
    ap.add_argument("--tts", nargs="+", default=["espeak"], help="engines (or mixes such as espeak,piper), interleaved")
    args = ap.parse_args()

    load0 = _load()
    rows = make_problems(args.n, args.seed)
    chars = sum(len(r["question"]) for r in rows) / len(rows)
    runs: dict[tuple[str, int], list[dict]] = {(t, w): [] for t in args.tts for w in args.workers}
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        src = Path(tmp) / "problems.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        engines = {t: make_tts(SynthConfig(tts=t)) for t in args.tts}  # loaded once, outside the timings
        for rep in range(args.repeat):  # interleaved, so load drift hits every engine and worker count alike
            for t in args.tts:
                for w in args.workers:
                    out = Path(tmp) / f"out_{t.replace(',', '+').replace(':', '')}_w{w}_r{rep}"
                    cfg = SynthConfig(input=str(src), out=str(out), workers=w, seed=args.seed, tts=t)
                    cpu0 = _cpu_seconds()
                    s = synthesize(cfg, progress=False, tts=engines[t])
                    s["cpu_s_per_utt"] = (_cpu_seconds() - cpu0) / max(1, s["written"])
                    assert s["written"] == args.n, s["skipped"]
                    runs[(t, w)].append(s)
                    shutil.rmtree(out)
    results = []
    for (t, w), ss in runs.items():
        mid = sorted(ss, key=lambda x: x["utterances_per_second"])[len(ss) // 2]
        results.append({
            "tts": mid["tts"], "workers": w, "utt_per_s": mid["utterances_per_second"],
            "audio_s_per_s": mid["audio_seconds_per_second"], "all_utt_per_s": [x["utterances_per_second"] for x in ss],
            "mean_audio_s": round(mid["audio_seconds"] / mid["written"], 2),
            "cpu_s_per_utt": round(mid["cpu_s_per_utt"], 3),
        })
    print(f"machine: {machine()}; load average before/after: {load0} / {_load()}")
    print(f"{args.n} word problems, mean {chars:.0f} characters; median of {args.repeat} interleaved rounds")
    print("| TTS | workers | utterances/s | audio s per wall s | vs 1st worker count | mean audio s | "
          f"projected time for {args.target // 1000}k | CPU s per utterance | {args.target // 1000}k in CPU-hours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = next(x["utt_per_s"] for x in results if x["tts"] == r["tts"])
        hours = args.target / r["utt_per_s"] / 3600
        print(f"| {r['tts']} | {r['workers']} | {r['utt_per_s']:.2f} | {r['audio_s_per_s']:.1f} | "
              f"{r['utt_per_s'] / base:.2f}x | {r['mean_audio_s']:.1f} | {hours:.1f} h | {r['cpu_s_per_utt']:.3f} | "
              f"{args.target * r['cpu_s_per_utt'] / 3600:.1f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
