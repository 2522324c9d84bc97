"""`cord demo`: the whole miniature through the real CLI (``--quick``), a report whose every number
is recomputable from the per-item outputs, the pre-registered primary outcome, and the study's
orchestration (stubbed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cord.cli import main
from cord.mini.arms import ARMS, DEFAULT_ARMS, LONG_ARMS, PRIMARY

PRIMARY_FIELDS = {"contrast", "metric", "mean", "ci95", "margin", "outcome", "mde"}


def _items(path: Path) -> dict[str, int]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["id"]: int(r["correct"]) for r in rows if r.get("status", "answered") != "skipped"}


def _acc(path: Path) -> float:
    d = _items(path)
    return sum(d.values()) / len(d)


def _delta(eval_a, eval_b, split: str, modality: str) -> float:
    """Mean per-item difference a − b (points), computed directly from the two files."""
    a = _items(Path(eval_a) / split / split / f"{modality}.jsonl")
    b = _items(Path(eval_b) / split / split / f"{modality}.jsonl")
    assert set(a) == set(b)
    return 100 * sum(a[i] - b[i] for i in a) / len(a)


# The quick demo trains stages A and B and the default arms once (about 2 minutes on two idle
# cores); the tests below share it.


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the shared quick demo (~2 min idle) runs in the first one's setup
def test_quick_demo_report_is_recomputable_from_items(demo_dir):
    from cord.mini.report import render_markdown
    from cord.mini.stats import conclusion, primary_outcome

    report = json.loads((demo_dir / "report.json").read_text())
    assert list(report["arms"]) == [a for a in ARMS if a in DEFAULT_ARMS]
    p = report["primary"]
    assert PRIMARY_FIELDS <= set(p) and p["contrast"] == "cord - sft_self"
    assert p["outcome"] == primary_outcome(p["mean"], p["ci95"], p["margin"])
    assert report["conclusion"] == conclusion(p)
    assert p["mde"] == pytest.approx(2.8016 * p["se"], rel=1e-3)
    st = report["per_start"][0]
    base = st["baseline"]

    def check(row, eval_dir):
        root = Path(eval_dir)
        assert row["text_acc"] == pytest.approx(_acc(root / "test" / "test" / "text.jsonl"))
        assert row["audio_acc"] == pytest.approx(_acc(root / "test" / "test" / "audio.jsonl"))
        assert row["unseen_audio_acc"] == pytest.approx(_acc(root / "test_unseen" / "test_unseen" / "audio.jsonl"))
        assert row["gap"] == pytest.approx(row["text_acc"] - row["audio_acc"])

    check(base, base["eval_dir"])
    # stage_b: the gap on fresh problems read by the training voices, and the transcripts
    sb = report["stage_b"]
    assert sb["gap_train_voices"] == pytest.approx(base["text_acc"] - base["audio_acc"])
    assert set(sb["transcript"]) == {"exact", "numbers", "wer"} and 0 <= sb["transcript"]["exact"] <= 1
    # what the audio path hears: the Stage B model's CTC readout on test, decoded again here by
    # hand (best label per frame, repeats merged, blanks dropped) and scored word by word
    import torch

    from cord.config import ModelConfig
    from cord.data.paired import load_paired
    from cord.mini.task import transcript
    from cord.models import load_adapter

    adapter = load_adapter(ModelConfig(family="mini", name_or_path=str(demo_dir / "start0" / "stages" / "stage_b"),
                                       dtype="float32", device="cpu"))
    test = load_paired(demo_dir / "start0" / "stages" / "data" / "test")
    exact = 0
    with torch.no_grad():
        for ex in test:
            prompts = adapter.audio_prompts([ex])
            hidden, valid = adapter.core().audio_encoder(prompts.extra["input_features"],
                                                         prompts.extra["feature_attention_mask"])
            best = adapter.core().audio_encoder.ctc_logits(hidden)[0, : int(valid.sum())].argmax(-1).tolist()
            words = [adapter.tokenizer.decode([t]) for i, t in enumerate(best)
                     if t != adapter.pad_token_id and (i == 0 or t != best[i - 1])]
            exact += transcript(" ".join(words)).split() == transcript(ex.question_text).split()
    assert sb["heard"]["exact"] == pytest.approx(exact / len(test))
    runs = {a: m["runs"] for a, m in report["arms"].items()}
    sft_self = runs["sft_self"][0]
    for arm, m in report["arms"].items():
        for r in m["runs"]:
            check(r, r["eval_dir"])
            # every run really trained for the same number of optimizer steps
            lines = (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
            assert json.loads(lines[-1])["step"] == report["stage_c_steps"] == r["steps"]
            assert r["tokens"] > 0 and r["rollout_tokens"] == (r["tokens"] if arm == "cord" else 0)
        r = m["runs"][0]
        # the paired deltas are the per-item mean differences, inside their own interval
        assert m["delta_vs_stage_b"]["mean"] == pytest.approx(_delta(r["eval_dir"], base["eval_dir"], "test", "audio"))
        assert m["text_delta_vs_stage_b"]["mean"] == pytest.approx(
            _delta(r["eval_dir"], base["eval_dir"], "test", "text"))
        if arm != "sft_self":
            d = m["delta_vs_sft_self"]
            assert d["mean"] == pytest.approx(_delta(r["eval_dir"], sft_self["eval_dir"], "test", "audio"))
            assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
            assert m["unseen_delta_vs_sft_self"]["mean"] == pytest.approx(
                _delta(r["eval_dir"], sft_self["eval_dir"], "test_unseen", "audio"))
    assert p["mean"] == pytest.approx(report["arms"]["cord"]["delta_vs_sft_self"]["mean"])
    # the markdown is a pure function of report.json
    md = (demo_dir / "report.md").read_text()
    assert md == render_markdown(report) and f"**Primary outcome: `{p['outcome']}`**" in md
    for png in ("accuracy_by_arm.png", "delta_vs_sft_self.png"):
        assert (demo_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_demo_arms_train_on_what_they_say(demo_dir):
    from cord.data.paired import load_paired
    from cord.mini.arms import teacher_solutions
    from cord.mini.task import EXTERNAL_FORMAT, solution_format

    report = json.loads((demo_dir / "report.json").read_text())
    start = demo_dir / "start0"
    stage_b = start / "stages" / "stage_b"
    train = load_paired(start / "stages" / "data" / "train", with_audio=False)
    sft_self = load_paired(start / "data_c" / "sft_self")
    sft_ext = load_paired(start / "data_c" / "sft_ext", with_audio=False)
    # SFT-self's targets are the frozen teacher's own greedy text solutions, item by item
    assert [ex.solution for ex in sft_self] == teacher_solutions(stage_b, [ex.question_text for ex in train])
    assert [ex.id for ex in sft_self] == [ex.id for ex in train]
    assert sft_self[0].audio.shape == load_paired(start / "stages" / "data" / "train")[0].audio.shape
    # SFT-ext's targets are correct solutions in the format Stage A never taught
    assert {solution_format(ex.solution) for ex in sft_ext} == {EXTERNAL_FORMAT}
    assert all(ex.solution.endswith(f"The answer is {ex.answer}.") for ex in sft_ext)
    # each arm's run read its own data (the trainer's saved config)
    import yaml

    for arm, want in (("sft_self", "sft_self"), ("sft_ext", "sft_ext"), ("cord", "train")):
        run_dir = Path(report["arms"][arm]["runs"][0]["run_dir"])
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert Path(cfg["data"]["train"]).name == want
        assert cfg["objective"]["method"] == (ARMS[arm].preset)
    # the decoder trains through LoRA: text accuracy is measured per run from its own items
    for m in report["arms"].values():
        assert all(0.0 <= r["text_acc"] <= 1.0 and r["n"] == report["per_start"][0]["baseline"]["n"]
                   for r in m["runs"])


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
    again = json.loads((demo_dir / "report.json").read_text())
    assert again["reused"]["runs"] == again["reused"]["of_runs"]


# ---------------------------------------------------------------- synthetic reports
# build_report on per-item files written here: the statistics and the text end to end,
# without training anything.


def _write_eval(directory: Path, text: list[int], audio: list[int], unseen: list[int]) -> str:
    for split, modality, outcomes in (("test", "text", text), ("test", "audio", audio),
                                      ("test_unseen", "audio", unseen)):
        d = directory / split / split
        d.mkdir(parents=True, exist_ok=True)
        rows = [{"id": f"q{i}", "modality": modality, "status": "answered", "correct": c,
                 "response": f"The answer is {c}."} for i, c in enumerate(outcomes)]
        (d / f"{modality}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(directory)


def _outcomes(acc: float, n: int) -> list[int]:
    k = round(acc * n)
    return [1] * k + [0] * (n - k)


DIAG = {"transcript": {"exact": 0.9, "numbers": 0.95, "wer": 0.01, "n": 10},
        "heard": {"exact": 0.8, "numbers": 0.85, "wer": 0.02, "n": 10},
        "errors": {"n": 10, "wrong": 2, "kinds": {"operand": 1, "arithmetic": 1}, "formats": {"ops": 1.0}}}


def _per_start(root: Path, audio_acc: dict[str, list[float]], n: int = 1000, base_audio: float = 0.6,
               text_acc: float = 0.95, start: int = 0, long: dict | None = None) -> dict:
    base_dir = _write_eval(root / "eval" / "stage_b", _outcomes(text_acc, n), _outcomes(base_audio, n),
                           _outcomes(base_audio - 0.1, n // 2))
    runs = {}
    for arm, accs in audio_acc.items():
        runs[arm] = []
        for seed, acc in enumerate(accs):
            eval_dir = _write_eval(root / "eval" / f"{arm}-seed{seed}", _outcomes(text_acc, n), _outcomes(acc, n),
                                   _outcomes(acc - 0.1, n // 2))
            tokens = 5000.0 if arm not in ("sft_self", "sft_ext", "control") else 0.0
            runs[arm].append({"arm": arm, "seed": seed, "eval_dir": eval_dir, "run_dir": str(root / arm), "steps": 100,
                              "train_seconds": 1.0, "tokens": tokens or 4000.0, "rollout_tokens": tokens, **DIAG})
    stages = {"stage_a": {"steps": 300}, "stage_b": {"steps": 600, "kept": "ema", "dev": {"gap": 0.3}},
              "teacher_formats": {"greedy": {"ops": 1.0}}, "timings": {},
              "model_parameters": {"language_model": 320_000, "audio_encoder": 400_000, "projector": 50_000}}
    return {"start": start, "seed": start, "stages": stages, "baseline": {"eval_dir": base_dir, **DIAG},
            "runs": runs, "long": long or {}, "data": {"test": str(root / "data" / "test"),
                                                      "test_unseen": str(root / "data" / "test_unseen")}}


def _report(per_start: list[dict], arms: dict[str, list[float]]):
    from cord.mini.demo import Plan
    from cord.mini.report import build_report

    plan = Plan(mode="default", starts=len(per_start), seeds={a: len(v) for a, v in arms.items()}, steps=100,
                average_last=5)
    recipe = {"steps": 100, "batch_size": 16, "warmup_steps": 10, "schedule": "constant",
              "trainable": ["audio_encoder", "projector"], "lora": None, "save_every": 10, "keep_last": 5,
              "max_new_tokens": 24, "lr": {a: 5e-4 for a in arms}}
    machine = {"processor": "cpu", "cpu_count": 2, "torch_threads": 2, "torch": "t", "transformers": "x",
               "platform": "p", "load_avg_1min_start": 0.1, "load_avg_1min_end": 1.0}
    return build_report(per_start, recipe, plan, {"cord": {"kl": {"mean": 0.3, "p80": 0.01}}}, machine)


def _arms(cord, sft_self, other=None):
    out = {"cord": cord, "sft_self": sft_self}
    for a in ("sft_ext", "control"):
        out[a] = other or sft_self
    return out


@pytest.mark.parametrize("cord,sft_self,outcome,conclusion", [
    ([0.70, 0.70], [0.62, 0.62], "cord_beats_control", "cord_beats_control"),          # +8 points
    ([0.55, 0.55], [0.62, 0.62], "cord_worse_than_control", "cord_worse_than_control"),  # −7 points
    ([0.60, 0.60], [0.60, 0.60], "equivalent", "no_clear_difference"),                  # identical items
    ([0.70, 0.54], [0.62, 0.62], "inconclusive", "no_clear_difference"),                # seeds disagree
])
def test_synthetic_primary_outcome_follows_the_interval(tmp_path, cord, sft_self, outcome, conclusion):
    from cord.mini.report import render_markdown
    from cord.mini.stats import primary_outcome

    arms = _arms(cord, sft_self)
    report = _report([_per_start(tmp_path, arms)], arms)
    p = report["primary"]
    assert p["outcome"] == outcome and report["conclusion"] == conclusion
    assert p["outcome"] == primary_outcome(p["mean"], p["ci95"], p["margin"])
    assert p["mean"] == pytest.approx(100 * (sum(cord) - sum(sft_self)) / len(cord))
    assert p["margin"] == 3.0 and p["mde"] >= 0
    md = render_markdown(report)
    assert f"**Primary outcome: `{outcome}`**" in md
    if outcome == "cord_worse_than_control":
        assert "CORD did worse than SFT-self" in md


def test_synthetic_report_numbers_come_from_the_items(tmp_path):
    arms = _arms([0.70], [0.62], other=[0.66])
    report = _report([_per_start(tmp_path, arms)], arms)
    assert report["stage_b"]["gap_train_voices"] == pytest.approx(0.35)
    assert report["stage_b"]["unseen_audio_acc"] == pytest.approx(0.5)
    cord = report["arms"]["cord"]
    assert cord["delta_vs_sft_self"]["mean"] == pytest.approx(8.0)
    assert cord["delta_vs_control"]["mean"] == pytest.approx(4.0)
    assert cord["delta_vs_stage_b"]["mean"] == pytest.approx(10.0)
    assert cord["unseen_delta_vs_sft_self"]["mean"] == pytest.approx(8.0)
    assert "delta_vs_sft_self" not in report["arms"]["sft_self"]
    assert cord["compute"]["rollout_tokens_per_run"] == 5000 and report["arms"]["sft_self"]["compute"][
        "rollout_tokens_per_run"] == 0
    assert cord["errors"]["kinds"]["operand"] == pytest.approx(0.5)


def test_report_says_how_the_lrs_were_set(tmp_path):
    from cord.mini.report import render_markdown

    arms = _arms([0.70], [0.62], other=[0.66])
    report = _report([_per_start(tmp_path, arms)], arms)
    md = render_markdown(report)
    assert "lr 0.0005 for every arm: no per-arm lr sweep" in md and "dev sweep" not in md
    report["stage_c"]["lr"]["cord"] = 1e-3  # a per-arm lr (cord.mini.arms.ARM_LR) is said to be one
    md = render_markdown(report)
    assert "lr per arm from one dev sweep" in md and "for every arm" not in md


def test_synthetic_study_pools_starts_with_equal_weight_and_pairs_common_seeds(tmp_path):
    # per start CORD − SFT-self: +12, +4, −4 points; SFT-ext ran one seed where the pair ran two
    per_start = []
    for s, delta in enumerate((0.12, 0.04, -0.04)):
        arms = {"cord": [0.6 + delta] * 2, "sft_self": [0.6, 0.6], "sft_ext": [0.5], "control": [0.6]}
        per_start.append(_per_start(tmp_path / str(s), arms, start=s))
    report = _report(per_start, arms)
    d = report["primary"]
    assert d["mean"] == pytest.approx(4.0) and d["ci95"][0] < 0 < d["ci95"][1]
    assert d["outcome"] == "inconclusive" and d["starts"] == 3
    assert report["arms"]["sft_ext"]["delta_vs_sft_self"]["mean"] == pytest.approx(-10.0)
    assert report["baseline"]["n"] == 3000


def test_long_horizon_collapse_is_the_preregistered_drop_from_the_peak(tmp_path):
    from cord.mini.report import collapsed

    curve = lambda accs: [{"step": 100 + 50 * i, "dev_audio_acc": a} for i, a in enumerate(accs)]  # noqa: E731
    assert collapsed(curve([0.5, 0.7, 0.64]), 5.0)["collapsed"] is True      # 6 points below its peak
    assert collapsed(curve([0.5, 0.7, 0.66]), 5.0)["collapsed"] is False     # 4 points
    assert collapsed(curve([0.5, 0.6, 0.7]), 5.0) == {"peak": 0.7, "peak_step": 200, "final": 0.7,
                                                       "drop_points": 0.0, "collapsed": False}
    final = {"audio_acc": 0.4}
    long = {"grpo": {"steps": 200, "curve": curve([0.6, 0.7, 0.5]), "final": final, "train_seconds": 3.0},
            "cord": {"steps": 200, "curve": curve([0.6, 0.7, 0.72]), "final": final, "train_seconds": 3.0}}
    arms = _arms([0.7], [0.62])
    report = _report([_per_start(tmp_path, arms, long=long)], arms)
    lh = report["long_horizon"]["arms"]
    assert lh["grpo"]["collapsed"] == 1 and lh["cord"]["collapsed"] == 0
    from cord.mini.report import render_markdown

    assert "| grpo | 0 | 0.700 (150) | 0.500 | +20.0 | yes |" in render_markdown(report)


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


def test_plans_run_the_primary_pair_with_the_most_seeds():
    from cord.mini.demo import make_plan

    default, study, quick = make_plan("default"), make_plan("study"), make_plan("quick")
    assert set(default.arms) == set(DEFAULT_ARMS) and set(study.arms) == set(ARMS)
    for plan in (default, study, quick):
        assert all(plan.seeds[a] == max(plan.seeds.values()) for a in PRIMARY)
        assert plan.steps == (10 if plan is quick else 100)
    assert study.long_steps >= 3 * study.steps and default.long_steps == 0
    assert make_plan("default", seeds=1).seeds == {a: 1 for a in DEFAULT_ARMS}


def test_study_runs_every_start_arm_and_seed_with_its_own_data_seed(tmp_path, monkeypatch):
    """The orchestration of `cord demo --study`, with training and evaluation stubbed: every
    start gets its own recipe seed (data, split, init), every arm × seed trains once with the
    shared recipe and its own lr, the long horizon continues the seed-0 runs of its arms, and a
    rerun trains nothing again."""
    import cord.mini.control as control_mod
    import cord.mini.demo as demo
    import cord.mini.stages as stages_mod
    import cord.train.trainer as trainer_mod

    stage_seeds, trained = [], []

    def fake_stages(out_dir, cfg, progress=False):
        stage_seeds.append((cfg.seed, cfg.data.seed))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = {s: str(out / "data" / s) for s in ("train", "dev", "test", "test_unseen")}
        result = {"config": cfg.to_dict(), "paths": {"data": data, "stage_a": str(out / "stage_a"),
                                                    "stage_b": str(out / "stage_b")},
                  "stage_a": {"steps": 1}, "stage_b": {"steps": 2, "kept": "ema", "dev": {"gap": 0.2}},
                  "teacher_formats": {}, "timings": {"data": 1.0}, "model_parameters": {"language_model": 1}}
        (out / "stages.json").write_text(json.dumps(result))
        return result

    def finish(cfg, arm):
        run_dir = Path(cfg.train.output_dir)
        (run_dir / "model").mkdir(parents=True, exist_ok=True)
        rows = [{"step": s + 1, "loss": 1.0, "completion_tokens": 10.0, "step_time": 0.25}
                for s in range(cfg.train.max_steps)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        trained.append((arm, cfg.train.seed, cfg.train.lr, tuple(cfg.train.trainable), str(run_dir),
                        cfg.train.max_steps))

    class FakeTrainer:
        def __init__(self, cfg):
            self.cfg = cfg

        def fit(self):
            finish(self.cfg, Path(self.cfg.train.output_dir).name.split("-seed")[0])

    def fake_evaluate(model_dir, data, out, max_new_tokens):
        correct = 1 if "/cord-" in str(model_dir) else 0
        _write_eval(Path(out), [1] * 20, [correct] * 10 + [0] * 10, [0] * 10)
        return {"eval_dir": str(out), "text_acc": 1.0, "audio_acc": correct / 2, "gap": 0.5, "unseen_audio_acc": 0.0,
                **DIAG}

    def fake_long(arm, stage_b, data_dirs, data, sdir, plan, recipe, say):
        base = sdir / "runs" / f"{arm}-seed0"
        assert (base / "model").is_dir()  # continues a finished default-length run
        return {"arm": arm, "steps": plan.long_steps, "curve": [{"step": 100, "dev_audio_acc": 0.5}],
                "final": {"audio_acc": 0.5}, "train_seconds": 1.0}

    monkeypatch.setattr(stages_mod, "run_stages", fake_stages)
    monkeypatch.setattr(trainer_mod, "Trainer", FakeTrainer)
    monkeypatch.setattr(control_mod, "run_control", lambda cfg, recipe: finish(cfg, "control"))
    monkeypatch.setattr(demo, "evaluate_model", fake_evaluate)
    monkeypatch.setattr(demo, "run_long", fake_long)
    monkeypatch.setattr(demo, "final_model", lambda arm, cfg, run_dir, last: run_dir / "model")
    monkeypatch.setattr("cord.mini.arms.build_sft_data", lambda kind, stage_b, train, out, *a: out)
    monkeypatch.setattr(demo, "analyze_arms", lambda *a, **k: {})
    monkeypatch.setattr("cord.mini.report.plots", lambda out, report: None)

    report = demo.run_demo(tmp_path / "study", study=True, progress=False)
    plan = demo.make_plan("study")
    assert stage_seeds == [(s, s) for s in range(plan.starts)]  # independent starts: data and init seeds differ
    want = sorted((a, k) for _ in range(plan.starts) for a, n in plan.seeds.items() for k in range(n))
    assert sorted((a, s) for a, s, *_ in trained) == want
    assert len({run_dir for *_, run_dir, _ in trained}) == len(trained)  # each run its own folder
    assert {(parts, steps) for _, _, _, parts, _, steps in trained} == {(trained[0][3], plan.steps)}
    assert set(report["long_horizon"]["arms"]) == set(LONG_ARMS)
    assert report["starts"] == plan.starts and report["mode"] == "study"
    # CORD answers 10 of 20 audio items, everything else none: +50 points, in every start
    assert report["primary"]["mean"] == pytest.approx(50.0) and report["primary"]["outcome"] == "cord_beats_control"
    assert report["arms"]["cord"]["compute"]["rollout_tokens_per_run"] == 10.0 * plan.steps
    assert report["arms"]["control"]["compute"]["rollout_tokens_per_run"] == 0

    n_trained = len(trained)
    again = demo.run_demo(tmp_path / "study", study=True, progress=False)
    assert len(trained) == n_trained  # a rerun reuses every finished run
    assert again["reused"] == {"starts": plan.starts, "runs": n_trained, "of_starts": plan.starts,
                               "of_runs": n_trained}
    per_run = [r["train_seconds"] for r in again["arms"]["control"]["runs"]]
    assert per_run == [0.25 * plan.steps] * len(per_run)  # the steps' own clock, not the rerun's

    # another thread count is another recipe: new stages, and no run made from the old Stage B is reused
    demo.run_demo(tmp_path / "study", study=True, progress=False, threads=1)
    assert stage_seeds[plan.starts:] == [(s, s) for s in range(plan.starts)]
    assert len(trained) == 2 * n_trained
