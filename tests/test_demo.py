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


# The quick demo trains three stages, the control and five methods once (about 2 minutes on two idle
# cores); the three tests share it.


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def _delta(eval_a: Path, eval_b: Path, test_name: str, modality: str) -> float:
    """Mean per-item difference a − b (points), computed directly from the two files."""
    def load(d):
        rows = [json.loads(x) for x in (Path(d) / test_name / f"{modality}.jsonl").read_text().splitlines() if x.strip()]
        return {r["id"]: int(r["correct"]) for r in rows}
    a, b = load(eval_a), load(eval_b)
    assert set(a) == set(b)
    return 100 * sum(a[i] - b[i] for i in a) / len(a)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the shared quick demo (~2 min idle) runs in the first one's setup
def test_quick_demo_report_is_recomputable_from_items(demo_dir):
    from cord.mini.stats import conclusion

    report = json.loads((demo_dir / "report.json").read_text())
    assert set(report["methods"]) == set(METHODS)
    assert report["conclusion"] in ("cord_beats_control", "no_clear_difference", "cord_worse_than_control")
    assert report["conclusion"] == conclusion(report["methods"]["cord"]["delta_vs_control"])
    st = report["per_start"][0]
    test_name = Path(st["data"]["test"]).name

    def check(row, eval_dir):
        eval_dir = Path(eval_dir) / test_name
        assert row["text_acc"] == pytest.approx(_acc(eval_dir / "text.jsonl"))
        assert row["audio_acc"] == pytest.approx(_acc(eval_dir / "audio.jsonl"))
        assert row["gap"] == pytest.approx(row["text_acc"] - row["audio_acc"])

    base = st["baseline"]
    check(base, base["eval_dir"])
    assert report["baseline"]["audio_acc"] == pytest.approx(base["audio_acc"])  # one start: its own numbers
    assert len(st["control"]) == report["seeds"] == 1
    control = st["control"][0]
    check(control, control["eval_dir"])
    lines = (Path(control["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == report["stage_c_steps"]  # the control had the same budget
    assert report["control"]["delta_vs_stage_b"]["mean"] == pytest.approx(
        _delta(control["eval_dir"], base["eval_dir"], test_name, "audio"))
    for method, m in report["methods"].items():
        for r in m["seeds"]:
            check(r, r["eval_dir"])
            expected = (base["gap"] - r["gap"]) / base["gap"] if base["gap"] > 0 else None
            assert r["gap_reduction"] == pytest.approx(expected)
            # every run really trained through the trainer for the same budget
            lines = (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
            assert json.loads(lines[-1])["step"] == report["stage_c_steps"]
            assert r["rollout_tokens"] == (0 if method == "sft" else r["tokens"]) and r["tokens"] > 0
        # the paired deltas are the per-item mean differences, inside their own interval
        r = m["seeds"][0]
        d = m["delta_vs_control"]
        assert d["mean"] == pytest.approx(_delta(r["eval_dir"], control["eval_dir"], test_name, "audio"))
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert m["text_delta_vs_stage_b"]["mean"] == pytest.approx(
            _delta(r["eval_dir"], base["eval_dir"], test_name, "text"))
        g = m["gap_delta_vs_control"]["mean"]
        assert g == pytest.approx(100 * (r["gap"] - control["gap"]))
        means = [r["gap"] for r in m["seeds"]]
        assert m["summary"]["gap"]["mean"] == pytest.approx(sum(means) / len(means))
    # the markdown is a pure function of report.json
    assert (demo_dir / "report.md").read_text() == render_markdown(report)
    assert f"**Conclusion: `{report['conclusion']}`**" in (demo_dir / "report.md").read_text()
    for png in ("accuracy_by_method.png", "training_curves.png", "kl_by_position_before_after.png",
                "delta_vs_control.png"):
        assert (demo_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_demo_text_accuracy_follows_what_stage_c_trains(demo_dir):
    report = json.loads((demo_dir / "report.json").read_text())
    st = report["per_start"][0]
    runs = st["control"] + [r for m in st["methods"].values() for r in m]
    if "language_model" not in report["stage_c"]["trainable"]:
        # the decoder is frozen: text accuracy must not move at all
        for r in runs:
            assert r["text_acc"] == pytest.approx(st["baseline"]["text_acc"])
    else:
        # the decoder trains: text accuracy is measured per run from its own items
        assert all(0.0 <= r["text_acc"] <= 1.0 and r["n"] == st["baseline"]["n"] for r in runs)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_rerun_reuses_finished_work(demo_dir, monkeypatch):
    import cord.mini.control as control_mod
    import cord.train.trainer as trainer_mod

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer_mod.Trainer, "fit", boom)
    monkeypatch.setattr(control_mod, "run_control", boom)
    torch.set_num_threads(1)
    assert main(["demo", "--quick", "--out", str(demo_dir)]) == 0
    assert torch.get_num_threads() == 1  # the demo's fixed thread count is restored after


# ---------------------------------------------------------------- synthetic reports
# build_report on per-item files written here: the statistics and the text end to end,
# without training anything.

TEST_NAME = "test"


def _write_eval(directory: Path, text: list[int], audio: list[int]) -> str:
    d = directory / TEST_NAME
    d.mkdir(parents=True)
    for modality, outcomes in (("text", text), ("audio", audio)):
        rows = [{"id": f"q{i}", "modality": modality, "status": "answered", "correct": c}
                for i, c in enumerate(outcomes)]
        (d / f"{modality}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(directory)


def _synthetic_report(tmp_path: Path, audio_acc: dict[str, list[float]], text_acc: float = 0.95,
                      base_audio: float = 0.6, n: int = 1000, starts: int = 1, text_moves: bool = False,
                      trainable=("audio_encoder", "projector")) -> dict:
    """A report built by build_report from per-item files: per arm (control and methods)
    one audio accuracy per seed. Items are correct in a fixed order, so two arms' outcomes
    overlap as much as possible (the paired difference then has a small spread)."""
    from cord.mini.demo import build_report

    def outcomes(acc):
        k = round(acc * n)
        return [1] * k + [0] * (n - k)

    per_start = []
    for s in range(starts):
        root = tmp_path / f"start{s}"
        base_dir = _write_eval(root / "eval" / "stage_b", outcomes(text_acc), outcomes(base_audio))
        arms = {}
        for arm, accs in audio_acc.items():
            arms[arm] = []
            for seed, acc in enumerate(accs):
                text = outcomes(text_acc + (0.01 if text_moves and arm == "sft" else 0.0))
                eval_dir = _write_eval(root / "eval" / f"{arm}-seed{seed}", text, outcomes(acc))
                tokens = 0.0 if arm in ("sft", "control") else 5000.0
                arms[arm].append({"seed": seed, "eval_dir": eval_dir, "run_dir": str(root / arm),
                                  "train_seconds": 1.0, "tokens": 4000.0 if not tokens else tokens,
                                  "rollout_tokens": tokens, "steps": 100})
        per_start.append({
            "start": s, "seed": s, "stage_a": {"steps": 300}, "data": {"test": str(root / "data" / TEST_NAME)},
            "stage_b": {"steps": 800, "chosen_step": 600, "stopped": "converged", "dev": {"gap": 0.3}},
            "baseline": {"eval_dir": base_dir}, "control": arms.pop("control"), "methods": arms,
            "model_parameters": {"language_model": 320_000, "audio_encoder": 400_000, "projector": 50_000},
        })
    recipe = {"steps": 100, "lr": 5e-4, "batch_size": 16, "warmup_steps": 10, "schedule": "constant",
              "trainable": list(trainable), "lora": None}
    analysis = {"before": {"kl": {"mean": 0.4}}, "after": {"kl": {"mean": 0.3}}}
    machine = {"processor": "cpu", "cpu_count": 2, "torch_threads": 2, "torch": "t", "platform": "p",
               "load_avg_1min_start": 0.1, "load_avg_1min_end": 1.0}
    seeds = len(next(iter(audio_acc.values())))
    return build_report(per_start, recipe, analysis, {"total": 1.0}, seeds, False, starts > 1, machine)


def _arms(cord, control, other=None):
    out = {"control": control, "cord": cord}
    for m in METHODS:
        if m != "cord":
            out[m] = other or control
    return out


def test_synthetic_report_conclusions_follow_the_interval(tmp_path):
    from cord.mini.demo import _honest_paragraph

    # CORD +8 points over the control on 1000 items, two seeds: a clear win
    win = _synthetic_report(tmp_path / "win", _arms([0.70, 0.70], [0.62, 0.62]))
    assert win["conclusion"] == "cord_beats_control"
    d = win["methods"]["cord"]["delta_vs_control"]
    assert d["mean"] == pytest.approx(8.0) and d["ci95"][0] > 0
    assert win["methods"]["cord"]["delta_vs_stage_b"]["mean"] == pytest.approx(10.0)
    assert win["methods"]["cord"]["gap_delta_vs_control"]["mean"] == pytest.approx(-8.0)
    assert win["control"]["delta_vs_stage_b"]["mean"] == pytest.approx(2.0)
    assert "delta_vs_control" not in win["control"]
    text = _honest_paragraph(win)
    assert "raised held-out-voice audio accuracy more than continuing Stage B" in text
    assert "does not show CORD beating" not in text
    assert "one Stage A/B start" in text and "Text accuracy did not move" in text

    # seeds disagree (+8 and −8): no clear difference, and the text says so plainly
    tie = _synthetic_report(tmp_path / "tie", _arms([0.70, 0.54], [0.62, 0.62]))
    assert tie["conclusion"] == "no_clear_difference"
    assert tie["methods"]["cord"]["delta_vs_control"]["mean"] == pytest.approx(0.0)
    assert "does not show CORD beating more of the same training" in _honest_paragraph(tie)

    # CORD clearly below the control
    worse = _synthetic_report(tmp_path / "worse", _arms([0.55, 0.55], [0.62, 0.62], other=[0.66, 0.66]))
    assert worse["conclusion"] == "cord_worse_than_control"
    t = _honest_paragraph(worse)
    assert "did worse than simply continuing" in t and "does not show CORD beating" in t
    assert "also came out above it" in t  # the other methods (+4 points) are named


def test_synthetic_report_numbers_come_from_the_items_not_from_summaries(tmp_path):
    report = _synthetic_report(tmp_path, _arms([0.70], [0.62]), text_moves=True)
    st = report["per_start"][0]
    assert st["baseline"]["audio_acc"] == pytest.approx(0.6) and st["baseline"]["n"] == 1000
    sft = report["methods"]["sft"]
    assert sft["summary"]["text_acc"]["mean"] == pytest.approx(0.96)
    assert sft["text_delta_vs_stage_b"]["mean"] == pytest.approx(1.0)
    assert sft["compute"]["rollout_tokens_per_run"] == 0
    assert report["methods"]["cord"]["compute"]["rollout_tokens_per_run"] == 5000
    from cord.mini.demo import _honest_paragraph, render_markdown

    assert "Text accuracy is measured, not frozen" in _honest_paragraph(report)
    md = render_markdown(report)
    assert "**Conclusion: `cord_beats_control`**" in md and "+8.0 [" in md


def test_synthetic_study_pools_starts_with_equal_weight(tmp_path):
    from cord.mini.demo import _honest_paragraph

    # per start CORD − control: +12, +4, −4 points: mean +4, interval spans the starts
    study_dir = tmp_path / "study"
    parts = []
    for s, delta in enumerate((0.12, 0.04, -0.04)):
        parts.append(_synthetic_report(study_dir / str(s), _arms([0.6 + delta], [0.6])))
    # build one three-start report from the three starts' folders
    from cord.mini.demo import build_report

    per_start = []
    for s, r in enumerate(parts):
        st = r["per_start"][0]
        st["start"] = s
        per_start.append(st)
    study = build_report(per_start, parts[0]["stage_c"], parts[0]["analysis"], {}, 1, False, True,
                         parts[0]["machine"])
    d = study["methods"]["cord"]["delta_vs_control"]
    assert d["mean"] == pytest.approx(4.0)
    assert d["ci95"][0] < 0 < d["ci95"][1]  # one start going the other way: no clear difference
    assert study["conclusion"] == "no_clear_difference"
    assert study["baseline"]["n"] == 3000 and study["starts"] == 3
    assert "one Stage A/B start" not in _honest_paragraph(study)


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


def test_study_runs_every_start_seed_and_arm_with_its_own_data_seed(tmp_path, monkeypatch):
    """The orchestration of `cord demo --study`, with training and evaluation stubbed: every
    start gets its own recipe seed (data, split, init), every arm × seed trains once with the
    shared preset recipe, and a rerun trains nothing again."""
    import cord.mini.control as control_mod
    import cord.mini.demo as demo
    import cord.mini.stages as stages_mod
    import cord.train.trainer as trainer_mod

    stage_seeds, trained, evaluated = [], [], []

    def fake_stages(out_dir, cfg, progress=False):
        stage_seeds.append((cfg.seed, cfg.data.seed))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = {s: str(out / "data" / s) for s in ("train", "dev", "test")}
        result = {"config": cfg.to_dict(), "paths": {"data": data, "stage_a": str(out / "stage_a"),
                                                    "stage_b": str(out / "stage_b")},
                  "stage_a": {"steps": 1}, "stage_b": {"steps": 2, "chosen_step": 2, "stopped": "converged",
                                                       "chosen": {"gap": 0.2}},
                  "test": {}, "timings": {"data": 1.0}, "model_parameters": {"language_model": 1}}
        (out / "stages.json").write_text(json.dumps(result))
        return result

    def finish(cfg, arm):
        run_dir = Path(cfg.train.output_dir)
        (run_dir / "model").mkdir(parents=True, exist_ok=True)
        rows = [{"step": s + 1, "loss": 1.0, "completion_tokens": 10.0, "step_time": 0.25}
                for s in range(cfg.train.max_steps)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        trained.append((arm, cfg.train.seed, cfg.train.lr, tuple(cfg.train.trainable), str(run_dir)))

    class FakeTrainer:
        def __init__(self, cfg):
            self.cfg = cfg

        def fit(self):
            finish(self.cfg, self.cfg.objective.method)

    def fake_control(cfg, recipe):
        finish(cfg, "control")

    def fake_evaluate(model_dir, test_dir, out, max_new_tokens):
        evaluated.append(str(model_dir))
        correct = 1 if "cord" in str(model_dir) else 0
        _write_eval_named(out, test_dir.name, [1] * 20, [correct] * 10 + [0] * 10)
        return {"text_acc": 1.0, "audio_acc": 0.0, "gap": 1.0, "n": 20, "eval_dir": str(out)}

    monkeypatch.setattr(stages_mod, "run_stages", fake_stages)
    monkeypatch.setattr(trainer_mod, "Trainer", FakeTrainer)
    monkeypatch.setattr(control_mod, "run_control", fake_control)
    monkeypatch.setattr(demo, "_evaluate", fake_evaluate)
    monkeypatch.setattr(demo, "_analyze_before_after", lambda *a, **k: {"before": {}, "after": {}})

    report = demo.run_demo(tmp_path / "study", study=True, progress=False)
    assert stage_seeds == [(0, 0), (1, 1), (2, 2)]  # independent starts: data and init seeds differ
    arms = ("control", *METHODS)
    assert sorted((a, s) for a, s, *_ in trained) == sorted((a, s) for a in arms for s in range(3) for _ in range(3))
    assert len({run_dir for *_, run_dir in trained}) == 3 * 3 * len(arms)  # each run its own folder
    assert len({(lr, parts) for _, _, lr, parts, _ in trained}) == 1  # one shared recipe
    assert report["starts"] == 3 and report["seeds"] == 3 and report["study"] is True
    # CORD answers 10 of 20 audio items, everything else none: +50 points, in every start
    d = report["methods"]["cord"]["delta_vs_control"]
    assert d["mean"] == pytest.approx(50.0) and d["ci95"][0] > 0
    assert report["conclusion"] == "cord_beats_control"
    assert report["methods"]["cord"]["compute"]["rollout_tokens_per_run"] == 10.0 * report["stage_c_steps"]
    assert report["control"]["compute"]["rollout_tokens_per_run"] == 0

    n_trained = len(trained)
    again = demo.run_demo(tmp_path / "study", study=True, progress=False)
    assert len(trained) == n_trained  # a rerun reuses every finished run
    # ... and reports their training time from the steps' own clock, not the rerun's
    per_run = [r["train_seconds"] for s in again["per_start"] for r in s["control"]]
    assert per_run == [0.25 * report["stage_c_steps"]] * 9
    assert report["reused"] == {"starts": 0, "runs": 0, "of_starts": 3, "of_runs": 54}
    assert again["reused"] == {"starts": 3, "runs": 54, "of_starts": 3, "of_runs": 54}

    # another thread count is another recipe: new stages, and no Stage C run or evaluation made
    # from the old Stage B is taken as finished
    threads = []
    real_stages = stages_mod.run_stages
    monkeypatch.setattr(stages_mod, "run_stages", lambda out_dir, cfg, progress=False: (
        threads.append(cfg.threads), real_stages(out_dir, cfg, progress))[1])
    demo.run_demo(tmp_path / "study", study=True, progress=False, threads=1)
    assert threads == [1, 1, 1] and stage_seeds[3:] == [(0, 0), (1, 1), (2, 2)]
    assert len(trained) == 2 * n_trained


def _write_eval_named(directory: Path, test_name: str, text: list[int], audio: list[int]) -> None:
    d = Path(directory) / test_name
    d.mkdir(parents=True, exist_ok=True)
    for modality, outcomes in (("text", text), ("audio", audio)):
        rows = [{"id": f"q{i}", "modality": modality, "status": "answered", "correct": c}
                for i, c in enumerate(outcomes)]
        (d / f"{modality}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
