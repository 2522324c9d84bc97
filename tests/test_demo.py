"""`cord demo --quick`: the whole miniature through the real CLI, and a report whose every
number is recomputable from the per-item outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cord.cli import main
from cord.mini.demo import METHODS, render_markdown


def _acc(path: Path) -> float:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("status", "answered") != "skipped"]
    return sum(int(r["correct"]) for r in rows) / len(rows)


# The quick demo trains three stages and five methods once (about 2 minutes on two idle
# cores); the three tests share it.


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the shared quick demo (~2 min idle) runs in the first one's setup
def test_quick_demo_report_is_recomputable_from_items(demo_dir):
    report = json.loads((demo_dir / "report.json").read_text())
    assert set(report["methods"]) == set(METHODS)
    test_name = Path(report["data"]["test"]).name

    def check(row, eval_dir):
        eval_dir = Path(eval_dir) / test_name
        assert row["text_acc"] == pytest.approx(_acc(eval_dir / "text.jsonl"))
        assert row["audio_acc"] == pytest.approx(_acc(eval_dir / "audio.jsonl"))
        assert row["gap"] == pytest.approx(row["text_acc"] - row["audio_acc"])

    base = report["baseline"]
    check(base, base["eval_dir"])
    for method, m in report["methods"].items():
        for r in m["seeds"]:
            check(r, r["eval_dir"])
            expected = (base["gap"] - r["gap"]) / base["gap"] if base["gap"] > 0 else None
            assert r["gap_reduction"] == pytest.approx(expected)
            # every run really trained through the trainer for the same budget
            lines = (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
            assert json.loads(lines[-1])["step"] == report["stage_c_steps"]
        means = [r["gap"] for r in m["seeds"]]
        assert m["summary"]["gap"]["mean"] == pytest.approx(sum(means) / len(means))
    # the markdown is a pure function of report.json
    assert (demo_dir / "report.md").read_text() == render_markdown(report)
    for png in ("accuracy_by_method.png", "training_curves.png", "kl_by_position_before_after.png"):
        assert (demo_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_demo_text_path_is_untouched_by_stage_c(demo_dir):
    # the mini presets train the audio side only: text accuracy must not move at all
    report = json.loads((demo_dir / "report.json").read_text())
    for m in report["methods"].values():
        for r in m["seeds"]:
            assert r["text_acc"] == pytest.approx(report["baseline"]["text_acc"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_rerun_reuses_finished_work(demo_dir, monkeypatch):
    import cord.train.trainer as trainer_mod

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer_mod.Trainer, "fit", boom)
    torch.set_num_threads(1)
    assert main(["demo", "--quick", "--out", str(demo_dir)]) == 0
    assert torch.get_num_threads() == 1  # the demo's fixed thread count is restored after


def _synthetic_report(reductions: dict[str, list[float]], text_moves: bool = False) -> dict:
    """A report.json-shaped dict with the given per-seed gap reductions (base gap 0.4)."""
    from cord.mini.demo import LABELS, _build_report

    base = {"text_acc": 0.9, "audio_acc": 0.5, "gap": 0.4, "n": 400, "eval_dir": "x"}
    runs = {}
    for method, reds in reductions.items():
        runs[method] = []
        for seed, red in enumerate(reds):
            gap = base["gap"] * (1 - red)
            text = base["text_acc"] + (0.01 if text_moves and method == "sft" else 0.0)
            runs[method].append({"seed": seed, "text_acc": text, "audio_acc": text - gap, "gap": gap,
                                 "gap_reduction": red, "train_seconds": 1.0, "run_dir": "r", "eval_dir": "e"})
    stages = {"stage_a": {}, "stage_b": {}, "test": {}, "paths": {"data": {}},
              "model_parameters": {"language_model": 320_000, "audio_encoder": 400_000, "projector": 50_000}}
    analysis = {"before": {"kl": {"mean": 0.4}}, "after": {"kl": {"mean": 0.3}}}
    machine = {"processor": "cpu", "cpu_count": 2, "torch_threads": 2, "torch": "t", "platform": "p",
               "load_avg_1min_start": 0.1, "load_avg_1min_end": 1.0}
    report = _build_report(stages, base, runs, analysis, {"total": 1.0}, len(next(iter(reductions.values()))),
                           100, False, machine)
    assert set(report["methods"]) == set(reductions) <= set(LABELS)
    return report


def test_honest_paragraph_claims_only_what_the_seed_ranges_support():
    from cord.mini.demo import _honest_paragraph

    report = _synthetic_report({"cord": [0.20, 0.25], "opd": [0.10, 0.19], "sft": [0.05, 0.22],
                                "grpo": [0.30, 0.35]})
    text = _honest_paragraph(report)
    # opd's best seed is below CORD's worst: the only baseline CORD clears
    assert "more than every seed of opd (" in text
    assert "The seed range of sft overlaps CORD's" in text
    assert "Every seed of grpo reduced the gap more than every CORD seed" in text
    assert "grpo > cord > opd > sft" in text  # ranked by mean reduction
    assert "+22.5%" in text  # CORD's mean
    assert "0.77 M parameters" in text
    assert "while text accuracy stays where it was" in text

    moved = _honest_paragraph(_synthetic_report({"cord": [0.2, 0.3], "sft": [0.0, 0.1]}, text_moves=True))
    assert "stays where it was" not in moved  # text accuracy moved under sft: no such claim

    worse = _honest_paragraph(_synthetic_report({"cord": [-0.1, -0.05], "opd": [0.1, 0.2]}))
    assert "did not narrow the gap" in worse and "more than every seed" not in worse

    single = _honest_paragraph(_synthetic_report({"cord": [0.3], "opd": [0.1]}))
    assert "ranks nothing" in single and "more than every seed" not in single


def test_bad_demo_arguments_fail_in_one_line_and_touch_nothing(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["demo", "--quick", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a directory" in err[0] and str(target) in err[0]
    assert target.read_text() == "keep me"
    assert main(["demo", "--seeds", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
