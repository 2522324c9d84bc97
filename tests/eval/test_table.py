"""`cord table` (cord.eval.table): the paired bootstrap against independent computations
(an exact enumeration, a plain-Python bootstrap with another RNG, the delta method), the
table from eval and run folders with the registry's published numbers, and one-line errors."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from cord import CordError
from cord.cli import main
from cord.eval.benchmarks import ANCHORS, Anchor, anchor_model, anchors_for, register_anchor
from cord.eval.table import paired_comparison, percentile_interval

QWEN = "Qwen/Qwen2-Audio-7B-Instruct"


def _outcomes(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.random(n) < p).astype(float)


def _data(n: int, seed: int = 0):
    """Base audio 0.40 / text 0.70; the arm's audio 0.55 / text 0.72 (correlated with the base)."""
    rng = np.random.default_rng(seed)
    ba, bt = _outcomes(n, 0.40, rng), _outcomes(n, 0.70, rng)
    flip = rng.random(n) < 0.25
    ma = np.where(flip, _outcomes(n, 0.9, rng), ba)
    mt = np.where(rng.random(n) < 0.05, 1.0, bt)
    return ba, bt, ma, mt


def test_point_estimates_are_the_formulas():
    ba, bt, ma, mt = _data(500)
    got = paired_comparison(ba, ma, bt, mt, replicates=200, seed=0)
    gb, gm = bt.mean() - ba.mean(), mt.mean() - ma.mean()
    assert got["n"] == 500
    assert got["audio_acc"] == pytest.approx(ma.mean()) and got["text_acc"] == pytest.approx(mt.mean())
    assert got["gap"] == pytest.approx(gm) and got["base_gap"] == pytest.approx(gb)
    assert got["gap_reduction"] == pytest.approx((gb - gm) / gb)
    assert got["audio_delta"] == pytest.approx(ma.mean() - ba.mean())
    assert got["gap_change"] == pytest.approx(gm - gb)
    # deterministic for a seed
    assert paired_comparison(ba, ma, bt, mt, replicates=200, seed=0)["gap_reduction_ci95"] == got["gap_reduction_ci95"]


def _enumerate(cols: np.ndarray) -> np.ndarray:
    """Every equally likely ordered resample of n items (n^n draws): their column means."""
    n = cols.shape[1]
    idx = np.array(list(itertools.product(range(n), repeat=n)))
    return cols[:, idx].mean(-1).T  # (n^n, k)


def _exact_percentile(values: np.ndarray, q: float) -> float:
    v = np.sort(values)
    return float(v[min(len(v) - 1, int(np.searchsorted(np.arange(1, len(v) + 1) / len(v), q)))])


def test_paired_intervals_match_the_exact_bootstrap_of_a_small_case():
    # 6 items: all 6^6 resamples can be enumerated; the same draw for base and arm, both modalities
    ba = np.array([0, 1, 0, 0, 1, 0.0])
    bt = np.array([1, 1, 1, 0, 1, 1.0])
    ma = np.array([1, 1, 0, 0, 1, 1.0])
    mt = np.array([1, 1, 1, 1, 1, 0.0])
    exact = _enumerate(np.stack([ba, ma, bt, mt]))
    got = paired_comparison(ba, ma, bt, mt, replicates=40_000, seed=5)
    for key, values in (("audio_delta", exact[:, 1] - exact[:, 0]),
                        ("gap_change", (exact[:, 3] - exact[:, 1]) - (exact[:, 2] - exact[:, 0]))):
        lo, hi = _exact_percentile(values, 0.025), _exact_percentile(values, 0.975)
        # percentiles of a discrete distribution: within one atom (1/6) of the exact ones
        assert got[f"{key}_ci95"][0] == pytest.approx(lo, abs=1 / 6 + 1e-9), key
        assert got[f"{key}_ci95"][1] == pytest.approx(hi, abs=1 / 6 + 1e-9), key
    # the gap reduction: undefined resamples (base gap <= 0, 1.6 % here) at -inf / +inf; the Monte
    # Carlo ends lie between the exact distribution's 2.0-3.0 % and 97.0-98.0 % quantiles
    gb, gm = exact[:, 2] - exact[:, 0], exact[:, 3] - exact[:, 1]
    undefined = gb <= 0
    assert 0 < undefined.mean() < 0.025
    ratio = np.where(undefined, 0.0, (gb - gm) / np.where(undefined, 1.0, gb))
    low, high = np.sort(np.where(undefined, -np.inf, ratio)), np.sort(np.where(undefined, np.inf, ratio))
    q = lambda v, x: float(v[int(x * (len(v) - 1))])  # noqa: E731
    assert got["gap_reduction"] == pytest.approx((3 / 6 - 1 / 6) / (3 / 6))  # base gap 5/6 - 2/6, arm 5/6 - 4/6
    assert q(low, 0.020) <= got["gap_reduction_ci95"][0] <= q(low, 0.030)
    assert q(high, 0.970) <= got["gap_reduction_ci95"][1] <= q(high, 0.980)
    # a base gap that is <= 0 in more than 2.5 % of resamples: the interval is unbounded, and said so
    ba2, bt2 = np.array([0, 1, 0, 1, 1, 0.0]), np.array([1, 1, 0, 0, 1, 1.0])
    got2 = paired_comparison(ba2, ma, bt2, mt, replicates=4000, seed=5)
    assert got2["gap_reduction"] is not None
    assert got2["gap_reduction_ci95"] is None and "unbounded" in got2["gap_reduction_note"]


def _python_bootstrap(ba, bt, ma, mt, replicates: int, seed: int):
    """An independent implementation: Python's random, index draws, plain loops."""
    rnd = random.Random(seed)
    n = len(ba)
    out = []
    for _ in range(replicates):
        idx = [rnd.randrange(n) for _ in range(n)]
        gb = sum(bt[i] - ba[i] for i in idx) / n
        gm = sum(mt[i] - ma[i] for i in idx) / n
        out.append((gb - gm) / gb if gb > 0 else float("nan"))
    return np.array(out)


def test_gap_reduction_interval_matches_an_independent_bootstrap_and_the_delta_method():
    ba, bt, ma, mt = _data(1500, seed=1)
    got = paired_comparison(ba, ma, bt, mt, replicates=4000, seed=0)
    ref = _python_bootstrap(ba.tolist(), bt.tolist(), ma.tolist(), mt.tolist(), replicates=4000, seed=12345)
    assert not np.isnan(ref).any()
    lo, hi = np.percentile(ref, [2.5, 97.5])
    width = hi - lo
    # two Monte Carlo runs of the same bootstrap: endpoints agree to a few percent of the width
    assert got["gap_reduction_ci95"][0] == pytest.approx(lo, abs=0.06 * width)
    assert got["gap_reduction_ci95"][1] == pytest.approx(hi, abs=0.06 * width)
    # delta method (closed form, float64): R = 1 - Gm/Gb with per-item d_b = bt - ba, d_m = mt - ma
    n = len(ba)
    db, dm = bt - ba, mt - ma
    gb, gm = db.mean(), dm.mean()
    cov = np.cov(np.stack([db, dm]), ddof=0) / n
    grad = np.array([gm / gb**2, -1 / gb])  # dR/dGb, dR/dGm
    se = math.sqrt(grad @ cov @ grad)
    r = 1 - gm / gb
    assert got["gap_reduction"] == pytest.approx(r)
    assert got["gap_reduction_ci95"][0] == pytest.approx(r - 1.96 * se, abs=0.15 * width)
    assert got["gap_reduction_ci95"][1] == pytest.approx(r + 1.96 * se, abs=0.15 * width)
    # the gap's interval: normal approximation of a mean
    se_gap = dm.std() / math.sqrt(n)
    assert got["gap_ci95"][0] == pytest.approx(gm - 1.96 * se_gap, abs=0.1 * 3.92 * se_gap)
    assert got["gap_ci95"][1] == pytest.approx(gm + 1.96 * se_gap, abs=0.1 * 3.92 * se_gap)


def test_percentile_interval_counts_undefined_replicates_at_both_ends():
    v = np.linspace(0.0, 1.0, 1001)
    assert percentile_interval(v) == pytest.approx(list(np.percentile(v, [2.5, 97.5])))
    undefined = np.zeros(1001, bool)
    undefined[500:510] = True  # 1 % (mid-distribution values): both ends move outwards, stay finite
    lo, hi = percentile_interval(v, undefined)
    assert lo < np.percentile(v, 2.5) and hi > np.percentile(v, 97.5)
    assert lo == pytest.approx(np.percentile(np.where(undefined, -1e9, v), 2.5))
    undefined[500:540] = True  # 4 % > 2.5 %: the interval is unbounded
    assert percentile_interval(v, undefined) is None


def test_no_gap_to_reduce_is_said_not_divided():
    same = np.array([1, 0, 1, 0.0])
    got = paired_comparison(same, same, same, same, replicates=200)
    assert got["gap_reduction"] is None and got["gap_reduction_ci95"] is None
    assert "no gap to reduce" in got["gap_reduction_note"]
    with pytest.raises(CordError, match="one outcome per item"):
        paired_comparison([1, 0], [1], replicates=200)


def test_anchor_registry_finds_models_by_hub_id_or_folder_name():
    assert anchor_model("qwen/qwen2-audio-7b-instruct") == QWEN
    assert anchor_model("/models/Qwen2-Audio-7B-Instruct/") == QWEN
    assert anchor_model("tiny") is None and anchors_for("tiny") == []
    got = {(a.benchmark, a.group, a.method, a.source.split()[0]): a.value for a in anchors_for(QWEN)
           if a.metric == "audio_acc"}
    assert got[("voicebench-mmsu", None, "base", "CORD")] == 36.04
    assert got[("voicebench-mmsu", None, "cord", "CORD")] == 38.06
    assert got[("voicebench-mmsu", None, "base", "VoiceBench")] == 35.72
    assert got[("gsm8k-audio", None, "cord", "CORD")] == 36.20
    assert got[("mmau-test-mini", "sound", "base", "MMAU")] == 54.95
    avg = {(a.method, a.model): a.value for a in ANCHORS if a.benchmark == "average"}
    assert avg[("cord", QWEN)] == 41.6 and avg[("cord", "stepfun-ai/Step-Audio-2-mini")] == 44.8
    assert avg[("forward_kl", QWEN)] == 28.5
    # every anchor names its source; re-registering the same number replaces it
    assert all(a.source for a in ANCHORS)
    n = len(ANCHORS)
    register_anchor(Anchor(QWEN, "voicebench-mmsu", "audio_acc", "base", 36.04, ANCHORS[0].source, note="again"))
    assert len(ANCHORS) == n


# --- folders ------------------------------------------------------------------------------------

BENCHES = {"voicebench-mmsu": (0.40, 0.70, "voicebench"), "voicebench-openbookqa": (0.50, 0.80, "voicebench"),
           "gsm8k-audio": (0.20, 0.60, "math")}


def _write_eval(folder: Path, model: str, data: dict, protocol: str = "official") -> None:
    """A cord eval output folder: eval-run.json and <benchmark>/<modality>.jsonl."""
    folder.mkdir(parents=True)
    (folder / "eval-run.json").write_text(json.dumps({"fingerprint": {"model": model, "protocol": protocol},
                                                      "benchmarks": list(data)}))
    for bench, mods in data.items():
        (folder / bench).mkdir()
        for mod, rows in mods.items():
            lines = []
            for i, (correct, extra) in enumerate(rows):
                rec = {"id": f"{bench}-{i}", "modality": mod, "status": "answered", "response": "…",
                       "answer": None if extra.get("fail") else "A", "correct": int(correct), "protocol": protocol,
                       "judge": extra.get("judge", "math")}
                if "groups" in extra:
                    rec["groups"] = extra["groups"]
                if extra.get("skipped"):
                    rec = {"id": f"{bench}-{i}", "modality": mod, "status": "skipped", "correct": None}
                lines.append(json.dumps(rec))
            (folder / bench / f"{mod}.jsonl").write_text("\n".join(lines) + "\n")


def _fake_models(root: Path, n: int = 200):
    """The base and a trained run ('cord'), as the reproduce layout has them; returns their outcomes."""
    rng = np.random.default_rng(7)
    base, arm = {}, {}
    for bench, (pa, pt, judge) in BENCHES.items():
        ba, bt = _outcomes(n, pa, rng), _outcomes(n, pt, rng)
        ma = np.where(rng.random(n) < 0.3, 1.0, ba)
        mt = bt.copy()
        base[bench] = {"audio": [(c, {"judge": judge, "fail": (judge == "voicebench" and not c and i % 5 == 0)})
                                 for i, c in enumerate(ba)], "text": [(c, {"judge": judge}) for c in bt]}
        arm[bench] = {"audio": [(c, {"judge": judge}) for c in ma], "text": [(c, {"judge": judge}) for c in mt]}
    tasks = ["sound", "music", "speech"] * 20
    ba = _outcomes(60, 0.5, rng)
    ma = np.where(rng.random(60) < 0.2, 1.0, ba)
    base["mmau-test-mini"] = {"audio": [(c, {"judge": "mmau-official", "groups": {"task": t}}) for c, t in zip(ba, tasks)],
                              "text": [(0, {"skipped": True}) for _ in tasks]}
    arm["mmau-test-mini"] = {"audio": [(c, {"judge": "mmau-official", "groups": {"task": t}}) for c, t in zip(ma, tasks)],
                             "text": [(0, {"skipped": True}) for _ in tasks]}
    _write_eval(root / "eval-base", QWEN, base)
    run = root / "train-cord"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": QWEN}, "objective": {"method": "cord"}}))
    _write_eval(root / "eval-cord", str(run / "model"), arm)
    return base, arm


def _rows(table, label):
    return {(r["benchmark"], r.get("group")): r for r in table["rows"] if r["label"] == label}


def test_table_from_eval_and_run_folders_with_published_numbers(tmp_path, capsys):
    base, arm = _fake_models(tmp_path)
    out = tmp_path / "table"
    rc = main(["table", str(tmp_path / "eval-base"), str(tmp_path / "train-cord"), "--out", str(out),
               "--replicates", "500"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = json.loads((out / "table.json").read_text())
    assert (out / "table.md").is_file() and (out / "table.png").stat().st_size > 1000
    assert table["base"] == "base" and table["anchors_model"] == QWEN and table["protocol"] == "official"
    assert [i["label"] for i in table["inputs"]] == ["base", "cord"]
    assert table["inputs"][1]["method"] == "cord" and table["inputs"][1]["run"] == str(tmp_path / "train-cord")
    b, c = _rows(table, "base"), _rows(table, "cord")
    keys = [(k, None) for k in BENCHES] + [("mmau-test-mini", None)] + [("mmau-test-mini", t) for t in ("music", "sound", "speech")] + [("average", None)]
    assert set(b) == set(c) == set(keys)
    for bench in BENCHES:
        ba = np.array([x for x, _ in base[bench]["audio"]])
        bt = np.array([x for x, _ in base[bench]["text"]])
        ma = np.array([x for x, _ in arm[bench]["audio"]])
        mt = np.array([x for x, _ in arm[bench]["text"]])
        row = c[(bench, None)]
        gb, gm = bt.mean() - ba.mean(), mt.mean() - ma.mean()
        assert row["audio_acc"] == pytest.approx(ma.mean()) and row["text_acc"] == pytest.approx(mt.mean())
        assert row["gap_reduction"] == pytest.approx((gb - gm) / gb)
        lo, hi = row["gap_reduction_ci95"]
        assert lo < row["gap_reduction"] < hi
        assert b[(bench, None)]["gap_reduction"] == 0.0 and b[(bench, None)]["gap_reduction_ci95"] == [0.0, 0.0]
    # VoiceBench's official accuracy: strict + failed/4
    fails = sum(1 for x, e in base["voicebench-mmsu"]["audio"] if e.get("fail"))
    strict = np.mean([x for x, _ in base["voicebench-mmsu"]["audio"]])
    assert b[("voicebench-mmsu", None)]["audio_acc_official"] == pytest.approx(strict + fails / 4 / 200)
    # the average: mean of the per-benchmark gap reductions, with an interval
    avg = c[("average", None)]
    assert avg["gap_reduction"] == pytest.approx(np.mean([c[(k, None)]["gap_reduction"] for k in BENCHES]))
    assert avg["gap_reduction_ci95"][0] < avg["gap_reduction"] < avg["gap_reduction_ci95"][1]
    assert avg["benchmarks_averaged"] == list(BENCHES)
    # MMAU: audio only, per task
    assert c[("mmau-test-mini", None)]["text_acc"] is None and c[("mmau-test-mini", "sound")]["n"] == 20
    # published numbers beside ours: the CORD paper's base and CORD rows, VoiceBench's leaderboard, MMAU's paper
    pub = lambda row: {(p["source"].split()[0], p["as_published"]) for p in row["published"]}  # noqa: E731
    assert pub(b[("voicebench-mmsu", None)]) == {("CORD", 36.04), ("VoiceBench", 35.72)}
    assert pub(c[("voicebench-mmsu", None)]) == {("CORD", 38.06)}
    assert pub(c[("gsm8k-audio", None)]) == {("CORD", 36.20)}
    assert pub(c[("average", None)]) == {("CORD", 41.6)}
    assert ("MMAU", 54.95) in pub(b[("mmau-test-mini", "sound")]) and ("CORD", 64.44) in pub(c[("mmau-test-mini", "sound")])
    md = (out / "table.md").read_text()
    assert "38.06[1]" in md and "35.72[2]" in md and "41.60[1]" in md
    assert md in captured.out


def test_a_trained_base_sits_beside_no_published_row(tmp_path, capsys):
    """A base that was itself trained (e.g. cord reproduce's warm-up) is labelled with its method
    but gets no published numbers (the paper's row for that method, here forward KL's average gap
    reduction, was trained from another start, and the released base's row is not this model);
    the methods trained from it keep theirs."""
    base, _ = _fake_models(tmp_path)
    warm = tmp_path / "warmup"
    (warm / "model").mkdir(parents=True)
    (warm / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": QWEN}, "objective": {"method": "forward_kl"}}))
    _write_eval(tmp_path / "eval-warm", str(warm / "model"), base)
    out = tmp_path / "t"
    rc = main(["table", f"base={tmp_path / 'eval-warm'}", f"cord={tmp_path / 'eval-cord'}", "--base", "base",
               "--anchors", QWEN, "--out", str(out), "--replicates", "200"])
    assert rc == 0, capsys.readouterr().err
    table = json.loads((out / "table.json").read_text())
    assert [i["method"] for i in table["inputs"]] == ["forward_kl", "cord"]
    b, c = _rows(table, "base"), _rows(table, "cord")
    assert all(row["published"] == [] for row in b.values())
    pub = {(p["source"].split()[0], p["as_published"]) for p in c[("voicebench-mmsu", None)]["published"]}
    assert pub == {("CORD", 38.06)}
    assert "| voicebench-mmsu | base (forward_kl) |" in (out / "table.md").read_text()


def test_labels_base_choice_and_protocol_notes(tmp_path, capsys):
    _fake_models(tmp_path)
    other = tmp_path / "eval-other"
    _write_eval(other, "some/other-model", {"gsm8k-audio": {"audio": [(1, {})] * 3, "text": [(1, {})] * 3}}, protocol="cord")
    out = tmp_path / "t"
    # two released checkpoints: the base must be named
    rc = main(["table", str(tmp_path / "eval-base"), f"x={other}", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--base LABEL" in err and err.count("\n") == 1
    rc = main(["table", f"x={other}", str(tmp_path / "eval-base"), str(tmp_path / "eval-cord"), "--base", "base",
               "--out", str(out), "--replicates", "200"])
    assert rc == 0, capsys.readouterr().err
    table = json.loads((out / "table.json").read_text())
    assert [i["label"] for i in table["inputs"]] == ["base", "x", "cord"]
    assert any("x was evaluated under --protocol cord" in n for n in table["notes"])
    assert any("voicebench-mmsu: x has no audio/text answers" in n for n in table["notes"])
    assert any("gsm8k-audio: x answered 3 of the base's 200 items" in n for n in table["notes"])


@pytest.mark.parametrize("case", ["missing", "file", "not_eval", "duplicate", "run_without_eval", "no_base",
                                  "out_is_file", "replicates", "empty"])
def test_one_line_errors(tmp_path, capsys, case):
    _fake_models(tmp_path)
    base, cord_eval = str(tmp_path / "eval-base"), str(tmp_path / "eval-cord")
    out = str(tmp_path / "t")
    f = tmp_path / "a-file"
    f.write_text("x")
    bare_run = tmp_path / "runs" / "mine"
    (bare_run / "model").mkdir(parents=True)
    (bare_run / "config.yaml").write_text("objective: {method: cord}\n")
    empty = tmp_path / "empty-eval"
    empty.mkdir()
    (empty / "eval-run.json").write_text("{}")
    argv, expect = {
        "missing": ([base, str(tmp_path / "nope")], "no such folder"),
        "file": ([base, str(f)], "is a file"),
        "not_eval": ([base, str(tmp_path)], "neither a cord eval output folder"),
        "duplicate": ([base, f"base={cord_eval}"], "two inputs are labelled 'base'"),
        "run_without_eval": ([base, str(bare_run)], "training run with no evaluation"),
        "no_base": ([cord_eval], "every input is a trained run"),
        "out_is_file": ([base, cord_eval, "--out", str(f)], "--out"),
        "replicates": ([base, cord_eval, "--replicates", "10"], "at least 100"),
        "empty": ([base, str(empty)], "holds no answers yet"),
    }[case]
    if "--out" not in argv:
        argv = [*argv, "--out", out]
    rc = main(["table", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("cord table: error: ") and err.count("\n") == 1 and expect in err, err
