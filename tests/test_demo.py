"""`cord demo --quick`: the whole miniature through the real CLI, and a report whose every
number is recomputable from the per-item outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_quick_demo_text_path_is_untouched_by_stage_c(demo_dir):
    # the mini presets train the audio side only: text accuracy must not move at all
    report = json.loads((demo_dir / "report.json").read_text())
    for m in report["methods"].values():
        for r in m["seeds"]:
            assert r["text_acc"] == pytest.approx(report["baseline"]["text_acc"])


def test_rerun_reuses_finished_work(demo_dir, monkeypatch):
    import cord.train.trainer as trainer_mod

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer_mod.Trainer, "fit", boom)
    assert main(["demo", "--quick", "--out", str(demo_dir)]) == 0
