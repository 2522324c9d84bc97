"""`cord reproduce` (cord.reproduce): the plan is what runs, a finished pipeline reruns
nothing, a changed input reruns that stage and what is downstream of it, an interrupted or
failed stage resumes, --stage / --status, locks, one-line errors — with the stage commands
faked — and, marked slow, the tiny preset end to end for real, and a training stage killed
mid-run that resumes from its checkpoint to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import cord.reproduce.runner as rp  # run_command is patched where the runner calls it
from cord.cli import main
from cord.config import dump_config, load_config
from cord.locking import folder_lock
from cord.reproduce import load_reproduce_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "reproduce.yaml"
STAGES = ["synth", "warmup", "eval-base", "train-cord", "eval-cord", "train-forward_kl", "eval-forward_kl", "train-sft",
          "eval-sft", "table"]


class Fake:
    """Stands in for the stage commands: records them, makes what the next stage looks for."""

    def __init__(self):
        self.ran: list[tuple[str, list[str]]] = []
        self.fail: dict[str, int] = {}
        self.interrupt: set[str] = set()

    def __call__(self, command, log_path):
        stage = Path(log_path).parent.name
        self.ran.append((stage, list(command)))
        with open(log_path, "a") as f:
            f.write(f"$ {shlex.join(command)}\n")
            if stage in self.fail:
                f.write("some progress\ncord train: error: something went wrong\n")
                return self.fail[stage]
        if stage in self.interrupt:
            raise KeyboardInterrupt
        d = Path(log_path).parent
        if stage.startswith("train-") or stage == "warmup":
            (d / "model").mkdir(exist_ok=True)
            # the config the run trained with, as cord train writes it (what a rerun compares with)
            args = command[command.index("train") + 1:]
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            cfg = load_config(args[args.index("--config") + 1], sets)
            (d / "config.yaml").write_text(dump_config(cfg))
            world = int(command[command.index("--num_processes") + 1]) if "--num_processes" in command else 1
            ckpt = d / "checkpoints" / f"step-{cfg.train.max_steps:08d}"
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "trainer_state.json").write_text(json.dumps(
                {"step": cfg.train.max_steps, "world_size": world,
                 "micro_batch": cfg.train.batch_size // (world * cfg.train.grad_accum)}))
        (d / f"{stage}.product").write_text("x")
        return 0

    def names(self) -> list[str]:
        return [s for s, _ in self.ran]


@pytest.fixture
def fake(monkeypatch):
    f = Fake()
    monkeypatch.setattr(rp, "run_command", f)
    return f


def reproduce(capsys, *args) -> tuple[int, str, str]:
    rc = main(["reproduce", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def plan_lines(capsys, config, out, *extra) -> list[tuple[str, list[str]]]:
    rc, stdout, err = reproduce(capsys, "--config", config, "--out", out, "--plan", *extra)
    assert rc == 0, err
    return [(name, shlex.split(cmd)) for name, cmd in (line.split("\t", 1) for line in stdout.splitlines())]


def private_config(tmp_path: Path, **changes) -> Path:
    """A copy of the tiny preset whose method presets and synth input are copies too (so a test
    can edit them); ``changes``: section -> {key: value} merged in."""
    presets = tmp_path / "presets"
    presets.mkdir(exist_ok=True)
    for m in ("_family", "cord", "forward_kl", "sft"):  # _family.yaml: the part the presets name in base:
        shutil.copy(ROOT / "configs" / "tiny" / f"{m}.yaml", presets / f"{m}.yaml")
    (presets / "warmup").mkdir(exist_ok=True)  # the warm-up preset names ../_family.yaml
    shutil.copy(ROOT / "configs" / "tiny" / "warmup" / "sft.yaml", presets / "warmup" / "sft.yaml")
    shutil.copy(ROOT / "configs" / "tiny" / "reproduce-train.jsonl", tmp_path / "questions.jsonl")
    data = yaml.safe_load(TINY.read_text())
    data["train"]["presets"] = str(presets)
    data["warmup"]["preset"] = str(presets / "warmup" / "sft.yaml")
    data["synth"]["input"] = str(tmp_path / "questions.jsonl")
    for section, values in changes.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    path = tmp_path / "reproduce.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- the plan and the runs (commands faked) -------------------------------------------------------


def test_plan_is_exactly_what_runs_and_a_rerun_runs_nothing(tmp_path, capsys, fake):
    out = tmp_path / "out"
    plan = plan_lines(capsys, TINY, out)
    assert [n for n, _ in plan] == STAGES
    cmds = dict(plan)
    assert cmds["synth"][:4] == ["env", "OMP_NUM_THREADS=1", sys.executable, "-m"]
    assert cmds["synth"][4:6] == ["cord.cli", "synth"]
    assert cmds["synth"][cmds["synth"].index("--input") + 1] == str(ROOT / "configs" / "tiny" / "reproduce-train.jsonl")
    tc = cmds["train-cord"]
    assert tc[tc.index("--config") + 1] == str(ROOT / "configs" / "tiny" / "cord.yaml")
    assert f"data.train={out / 'synth'}" in tc and f"train.output_dir={out / 'train-cord'}" in tc
    assert "train.max_steps=4" in tc and "accelerate.commands.launch" not in tc
    ec = cmds["eval-cord"]
    assert ec[ec.index("--model") + 1] == str(out / "train-cord" / "model") and "--protocol" in ec
    # the warm-up trains the configured model; everything after it starts from its export
    wu = cmds["warmup"]
    assert wu[wu.index("--config") + 1] == str(ROOT / "configs" / "tiny" / "warmup" / "sft.yaml")
    assert "model.name_or_path=tiny" in wu and f"train.output_dir={out / 'warmup'}" in wu
    assert not any(a.startswith("data.train=") for a in wu)  # its own data (the built-in questions)
    assert cmds["eval-base"][cmds["eval-base"].index("--model") + 1] == str(out / "warmup" / "model")
    assert f"model.name_or_path={out / 'warmup' / 'model'}" in tc and "model.name_or_path=tiny" not in tc
    # self-contained: cord eval makes the built-in benchmark itself (nothing for a job to prepare)
    assert ec[ec.index("--benchmarks") + 1] == "builtin:tiny-arith"
    assert cmds["table"][cmds["table"].index("table") + 1:][:4] == [
        f"base={out / 'eval-base'}", f"cord={out / 'eval-cord'}", f"forward_kl={out / 'eval-forward_kl'}",
        f"sft={out / 'eval-sft'}"]
    assert not out.exists()  # --plan writes nothing

    rc, stdout, err = reproduce(capsys, "--config", TINY, "--out", out)
    assert rc == 0, err
    assert fake.ran == plan  # the same commands, in the same order
    for name, cmd in plan:
        done = json.loads((out / name / "done.json").read_text())
        assert done["command"] == cmd and done["exit"] == 0
        assert f"$ {shlex.join(cmd)}" in (out / name / "log.txt").read_text()
    assert "[10/10] table: done in" in stdout

    fake.ran.clear()
    rc, stdout, err = reproduce(capsys, "--config", TINY, "--out", out)
    assert rc == 0 and fake.ran == []
    assert "nothing to do" in stdout and stdout.count("(skipped)") == 10
    rc, stdout, _ = reproduce(capsys, "--config", TINY, "--out", out, "--status")
    assert rc == 0 and "10 of 10 stages done" in stdout


def test_a_change_reruns_that_stage_and_what_depends_on_it(tmp_path, capsys, fake):
    cfg = private_config(tmp_path)
    out = tmp_path / "out"
    assert reproduce(capsys, "--config", cfg, "--out", out)[0] == 0

    # how a stage runs, not what it makes: only that stage runs again, in place
    fake.ran.clear()
    assert reproduce(capsys, "--config", cfg, "--out", out, "--set", "synth.workers=2")[0] == 0
    assert fake.names() == ["synth"]
    fake.ran.clear()
    rc, stdout, _ = reproduce(capsys, "--config", cfg, "--out", out, "--set", "synth.workers=2",
                              "--set", "eval.batch_size=4")
    assert rc == 0 and fake.names() == ["eval-base", "eval-cord", "eval-forward_kl", "eval-sft"]
    assert not list(tmp_path.glob("out/*.old-*"))  # own settings: run in place, nothing moved

    # a method preset edited in a setting that does not change what is computed: its training
    # runs again in place (cord train continues the run), its evaluation is of another model:
    # moved aside and redone; then the table
    preset = tmp_path / "presets" / "cord.yaml"
    preset.write_text(preset.read_text() + "  keep_last: 3\n")  # under the preset's train: (its last section)
    fake.ran.clear()
    rc, stdout, _ = reproduce(capsys, "--config", cfg, "--out", out, "--set", "synth.workers=2",
                              "--set", "eval.batch_size=4")
    assert rc == 0 and fake.names() == ["train-cord", "eval-cord", "table"]
    assert (out / "train-cord" / "model").is_dir() and not list(tmp_path.glob("out/train-cord.old-*"))
    moved = list(tmp_path.glob("out/eval-cord.old-*"))
    assert len(moved) == 1 and (moved[0] / "eval-cord.product").is_file() and (moved[0] / "done.json").is_file()
    assert "eval-cord: its inputs changed since it ran" in stdout

    # ... and in the maths: the old run is another computation (cord train would refuse to
    # continue it): moved aside, the training starts afresh; its evaluation and the table again
    preset.write_text(preset.read_text() + "  lr: 2.0e-3\n")
    fake.ran.clear()
    rc, stdout, _ = reproduce(capsys, "--config", cfg, "--out", out, "--set", "synth.workers=2",
                              "--set", "eval.batch_size=4")
    assert rc == 0 and fake.names() == ["train-cord", "eval-cord", "table"]
    moved = list(tmp_path.glob("out/train-cord.old-*"))
    assert len(moved) == 1 and (moved[0] / "config.yaml").is_file() and (moved[0] / "model").is_dir()
    assert "train-cord: its settings change what training computes (train.lr: 0.001 → 0.002)" in stdout
    assert len(list(tmp_path.glob("out/eval-cord.old-*"))) == 2
    assert not list(tmp_path.glob("out/train-forward_kl.old-*")) and not list(tmp_path.glob("out/train-sft.old-*"))

    # the training data changed: every training starts afresh (old runs moved aside), every
    # evaluation of a trained model too; the base's evaluation stays
    q = tmp_path / "questions.jsonl"
    q.write_text(q.read_text().replace("What is 3 plus 2?", "What is 3 plus 3?").replace('"5"', '"6"', 1))
    fake.ran.clear()
    base_args = ("--config", cfg, "--out", out, "--set", "synth.workers=2", "--set", "eval.batch_size=4")
    rc, stdout, _ = reproduce(capsys, *base_args)
    assert rc == 0 and fake.names() == ["synth"] + STAGES[3:]  # not the warm-up (its own data) nor eval-base
    old = {m: len(list(tmp_path.glob(f"out/train-{m}.old-*"))) for m in ("cord", "forward_kl", "sft")}
    assert old == {"cord": 2, "forward_kl": 1, "sft": 1}
    assert not list(tmp_path.glob("out/eval-base.old-*")) and not list(tmp_path.glob("out/synth.old-*"))

    # more processes with the same global batch: fewer prompts per micro-batch, which seeds the
    # rollouts differently: another computation too (the warm-up's run moved aside, and so every
    # stage that starts from its model)
    fake.ran.clear()
    rc, stdout, _ = reproduce(capsys, *base_args, "--set", "train.processes=2")
    assert rc == 0 and fake.names() == STAGES[1:]  # the warm-up too (then the base's evaluation)
    assert stdout.count("its prompts per micro-batch changed (12 → 6: processes x train.grad_accum)") == 1  # the warm-up
    assert stdout.count("its inputs changed since it ran") == 7  # what starts from it: eval-base, 3 runs, 3 evaluations
    assert {m: len(list(tmp_path.glob(f"out/train-{m}.old-*"))) for m in old} == {"cord": 3, "forward_kl": 2, "sft": 2}
    assert reproduce(capsys, *base_args, "--set", "train.processes=2")[0] == 0 and len(fake.ran) == 9  # nothing new

    # the part every preset names in base: (_family.yaml) is read too: an edit there is an edit
    # of every method's preset
    part = tmp_path / "presets" / "_family.yaml"
    part.write_text(part.read_text().replace("keep_last: 2", "keep_last: 4"))
    fake.ran.clear()
    assert reproduce(capsys, *base_args, "--set", "train.processes=2")[0] == 0
    assert fake.names() == STAGES[1:]  # the warm-up's preset names it too


def test_an_interrupted_stage_resumes_in_place(tmp_path, capsys, fake):
    out = tmp_path / "out"
    fake.interrupt = {"train-forward_kl"}
    rc, stdout, err = reproduce(capsys, "--config", TINY, "--out", out)
    assert rc == 130 and "interrupted; rerun the same command to resume" in err
    assert fake.names() == STAGES[:6]
    rc, status, _ = reproduce(capsys, "--config", TINY, "--out", out, "--status")
    lines = {ln.split()[0]: ln.split()[1] for ln in status.splitlines()[1:-1]}
    assert lines["train-cord"] == "done" and lines["train-forward_kl"] == "interrupted"
    assert lines["eval-forward_kl"] == "pending" and "5 of 10 stages done" in status
    fake.interrupt.clear()
    fake.ran.clear()
    rc, stdout, _ = reproduce(capsys, "--config", TINY, "--out", out)
    assert rc == 0 and fake.names() == STAGES[5:]
    assert "train-forward_kl: running, resuming" in stdout
    assert not list(tmp_path.glob("out/*.old-*"))


def test_a_failed_stage_is_one_line_naming_it_its_log_and_the_rerun(tmp_path, capsys, fake):
    out = tmp_path / "out"
    fake.fail = {"train-cord": 3}
    rc, stdout, err = reproduce(capsys, "--config", TINY, "--out", out)
    assert rc == 2 and err.count("\n") == 1
    log = out / "train-cord" / "log.txt"
    rerun = shlex.join(["cord", "reproduce", "--config", str(TINY), "--out", str(out), "--stage", "train-cord"])
    assert err == (f"cord reproduce: error: stage train-cord failed (exit 3): cord train: error: something went wrong; "
                   f"log: {log}; rerun: {rerun}\n")
    assert fake.names() == STAGES[:4]  # the pipeline stopped there
    rc, status, _ = reproduce(capsys, "--config", TINY, "--out", out, "--status")
    assert "train-cord" in status and "failed" in status and f"exit 3; log: {log}" in status
    fake.fail.clear()
    fake.ran.clear()
    assert reproduce(capsys, "--config", TINY, "--out", out)[0] == 0
    assert fake.names() == STAGES[3:]


def test_a_real_failing_command_is_reported_in_one_line(tmp_path, capsys):
    cfg = private_config(tmp_path)
    (tmp_path / "questions.jsonl").write_text('{"question": "What is 1 plus 1?", "answer": "2"}\n{not json\n')
    out = tmp_path / "out"
    rc, stdout, err = reproduce(capsys, "--config", cfg, "--out", out, "--stage", "synth")
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("cord reproduce: error: stage synth failed (exit 2): cord synth: error: ")
    assert f"log: {out / 'synth' / 'log.txt'}; rerun: cord reproduce --config {cfg} --out {out} --stage synth" in err


def test_stage_runs_one_stage_once_its_inputs_are_done(tmp_path, capsys, fake):
    out = tmp_path / "out"
    rc, _, err = reproduce(capsys, "--config", TINY, "--out", out, "--stage", "train-cord")
    assert rc == 2 and err.count("\n") == 1
    assert "stage train-cord needs synth, which is not done (pending); run it first: cord reproduce" in err
    assert err.rstrip().endswith("--stage synth") and fake.ran == []
    assert reproduce(capsys, "--config", TINY, "--out", out, "--stage", "synth")[0] == 0
    rc, stdout, err = reproduce(capsys, "--config", TINY, "--out", out, "--stage", "train-cord")
    assert rc == 2 and "stage train-cord needs warmup, which is not done (pending)" in err
    assert reproduce(capsys, "--config", TINY, "--out", out, "--stage", "warmup")[0] == 0
    rc, stdout, _ = reproduce(capsys, "--config", TINY, "--out", out, "--stage", "train-cord")
    assert rc == 0 and fake.names() == ["synth", "warmup", "train-cord"]
    plan = dict(plan_lines(capsys, TINY, out))
    assert fake.ran[2][1] == plan["train-cord"]
    rc, stdout, _ = reproduce(capsys, "--config", TINY, "--out", out, "--stage", "train-cord")
    assert rc == 0 and "train-cord: done (skipped)" in stdout and len(fake.ran) == 3
    rc, _, err = reproduce(capsys, "--config", TINY, "--out", out, "--stage", "train-crod")
    assert rc == 2 and "no such stage (did you mean 'train-cord'?)" in err


def test_a_second_runner_is_refused_and_stages_lock_their_own_folder(tmp_path, capsys, fake):
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out, "reproduce", "wait", name=rp.PIPELINE_LOCK):
        rc, _, err = reproduce(capsys, "--config", TINY, "--out", out)
        assert rc == 2 and f"another `cord reproduce` (pid {os.getpid()}) is writing to {out}" in err
        rc, status, _ = reproduce(capsys, "--config", TINY, "--out", out, "--status")
        assert f"a cord reproduce is running in this folder (pid {os.getpid()})" in status
        # a --stage job locks its stage's folder only: it may run beside the pipeline
        assert reproduce(capsys, "--config", TINY, "--out", out, "--stage", "warmup")[0] == 0
    (out / "eval-base").mkdir()
    with folder_lock(out / "eval-base", "reproduce", "wait", name=rp.STAGE_LOCK):
        rc, status, _ = reproduce(capsys, "--config", TINY, "--out", out, "--status")
        assert "eval-base" in status and "running" in status
        rc, _, err = reproduce(capsys, "--config", TINY, "--out", out, "--stage", "eval-base")
        assert rc == 2 and f"is writing to {out / 'eval-base'}" in err and err.count("\n") == 1


def test_plans_of_the_7b_presets(tmp_path, capsys):
    for family, model in (("qwen2-audio-7b", "Qwen/Qwen2-Audio-7B-Instruct"),
                          ("step-audio2-mini", "stepfun-ai/Step-Audio-2-mini")):
        cfg = ROOT / "configs" / family / "reproduce.yaml"
        plan = dict(plan_lines(capsys, cfg, tmp_path / family))
        assert list(plan) == ["synth", "eval-base"] + [f"{k}-{m}" for m in ("sft", "forward_kl", "opd", "cord")
                                                        for k in ("train", "eval")] + ["table"]
        sy = plan["synth"]
        assert sy[sy.index("--input") + 1] == "AI-MO/NuminaMath-CoT" and sy[sy.index("--limit") + 1] == "80000"
        tr = plan["train-cord"]
        assert tr[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
        assert tr[tr.index("--config_file") + 1] == str(ROOT / "configs" / "accelerate" / "ddp.yaml")
        assert tr[tr.index("--num_processes") + 1] == "8"
        assert tr[tr.index("--config") + 1] == str(ROOT / "configs" / family / "cord.yaml")
        ev = plan["eval-cord"]
        assert ev[ev.index("--protocol") + 1] == "official"
        assert ev[ev.index("--benchmarks") + 1] == "voicebench-mmsu,voicebench-openbookqa,gsm8k-audio"
        tb = plan["table"]
        assert tb[tb.index("--anchors") + 1] == model
        # one GPU, no accelerate: a plain cord train
        one = dict(plan_lines(capsys, cfg, tmp_path / family, "--set", "train.processes=1",
                              "--set", "train.accelerate_config=null"))
        assert one["train-cord"][:4] == [sys.executable, "-m", "cord.cli", "train"]


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*/reproduce.yaml")),
                         ids=lambda p: p.parent.name)
def test_every_shipped_reproduce_config_plans_every_stage(config, tmp_path, capsys):
    """Every reproduce.yaml shipped loads, and its plan has each stage in order, every method
    preset it names existing (a preset typo or a dropped method fails here)."""
    cfg = load_reproduce_config(config)
    plan = plan_lines(capsys, config, tmp_path / "out")
    methods = cfg.train.methods
    warmup = ["warmup"] if cfg.warmup is not None else []
    assert [n for n, _ in plan] == ["synth", *warmup, "eval-base",
                                    *[f"{k}-{m}" for m in methods for k in ("train", "eval")], "table"]
    for m in methods:
        train = dict(plan)[f"train-{m}"]
        assert Path(train[train.index("--config") + 1]).is_file()


@pytest.mark.parametrize("case", ["unknown_key", "unknown_nested", "no_preset", "missing_input", "out_is_file",
                                  "missing_config", "bad_set", "train_set_typo", "model_lora", "no_config",
                                  "benchmark_folder", "builtin", "duplicate_method", "warmup_preset", "warmup_set"])
def test_one_line_errors(tmp_path, capsys, case):
    f = tmp_path / "a-file"
    f.write_text("x")
    pc = lambda **kw: lambda: private_config(tmp_path, **kw)  # noqa: E731  (each case writes its own config)
    same = lambda p: lambda: p  # noqa: E731
    args = {
        "unknown_key": (pc(trian={"methods": ["cord"]}), [], "unknown key 'trian' — did you mean 'train'?"),
        "unknown_nested": (pc(eval={"protocl": "cord"}), [], "unknown key 'eval.protocl' — did you mean 'eval.protocol'?"),
        "no_preset": (pc(train={"methods": ["cord", "forward-kl"]}), [], "did you mean 'forward_kl'?"),
        "missing_input": (pc(synth={"input": "nope/questions.jsonl"}), [], "synth.input nope/questions.jsonl: no such file"),
        "out_is_file": (same(TINY), ["--out", str(f)], "exists and is not a directory"),
        "missing_config": (same(tmp_path / "nope.yaml"), [], "config file not found"),
        "bad_set": (same(TINY), ["--set", "eval.limit=many"], "--set eval.limit=many: eval.limit"),
        "train_set_typo": (pc(train={"set": ["train.max_step=4"]}), [],
                           "unknown key 'train.max_step' — did you mean 'train.max_steps'?"),
        "model_lora": (pc(model={"lora": {"r": 8}}), [], "set lora in the method presets"),
        "no_config": (same(None), [], "needs --config FILE"),
        "benchmark_folder": (pc(eval={"benchmarks": ["./no/such/bench"]}), [], "no such folder"),
        "builtin": (pc(eval={"benchmarks": ["builtin:tiny-arth"]}), [], "unknown built-in dataset 'tiny-arth'"),
        "duplicate_method": (pc(train={"methods": ["cord", "cord"]}), [], "listed twice: cord"),
        "warmup_preset": (pc(warmup={"preset": "warmup/sfft.yaml"}), [], "warmup.preset warmup/sfft.yaml: no such file"),
        "warmup_set": (same(TINY), ["--set", "warmup.set=[train.max_step=4]"],
                       "warmup.set train.max_step=4 (over sft.yaml): unknown key 'train.max_step'"),
    }
    make, extra, expect = args[case]
    cfg = make()
    argv = (["--config", cfg] if cfg is not None else []) + (extra if "--out" in extra else ["--out", tmp_path / "o", *extra])
    rc, _, err = reproduce(capsys, *argv, "--plan")
    assert rc == 2 and err.startswith("cord reproduce: error: ") and err.count("\n") == 1 and expect in err, err


# --- for real (slow) ------------------------------------------------------------------------------


def run_cli(*args, timeout=900, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cord.cli", "reproduce", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset end to end, for real, once for this module."""
    out = tmp_path_factory.mktemp("reproduce") / "tiny"
    t0 = time.time()
    proc = run_cli("--config", TINY, "--out", out)
    return out, proc, time.time() - t0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_tiny_preset_runs_every_stage_and_writes_the_table(tiny_run, capsys, monkeypatch):
    out, proc, seconds = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in STAGES:
        assert (out / name / "done.json").is_file(), name
    table = json.loads((out / "table" / "table.json").read_text())
    assert (out / "table" / "table.md").is_file() and (out / "table" / "table.png").is_file()
    labels = ["base", "cord", "forward_kl", "sft"]
    assert [i["label"] for i in table["inputs"]] == labels
    # the base is the warm-up's model: a run of method sft (labelled so; no published row beside it)
    assert [i["method"] for i in table["inputs"]] == ["sft", "cord", "forward_kl", "sft"]
    assert table["inputs"][0]["model"] == str(out / "warmup" / "model")
    for bench in ("tiny-arith", "average"):
        rows = {r["label"]: r for r in table["rows"] if r["benchmark"] == bench}
        assert sorted(rows) == sorted(labels), bench
        for label, r in rows.items():
            assert r["n"] == 12 and r["audio_acc"] is not None and r["text_acc"] is not None
            # the warm-up answers from text, not from speech: every row has a gap reduction with
            # its interval (the base row: 0 by definition)
            assert rows["base"]["gap"] > 0.2, rows["base"]
            assert r["gap_reduction"] is not None and len(r["gap_reduction_ci95"]) == 2, (label, r)
            lo, hi = r["gap_reduction_ci95"]
            assert lo <= r["gap_reduction"] <= hi
            assert r["gap_ci95"] is not None and r["audio_delta_ci95"] is not None
    # what ran is what --plan prints
    plan = plan_lines(capsys, TINY, out)
    assert [(n, json.loads((out / n / "done.json").read_text())["command"]) for n, _ in plan] == plan
    # a rerun runs no stage command
    ran = []
    monkeypatch.setattr(rp, "run_command", lambda command, log: ran.append(command) or 0)
    rc = main(["reproduce", "--config", str(TINY), "--out", str(out)])
    assert rc == 0 and ran == [] and "nothing to do" in capsys.readouterr().out
    rc = main(["reproduce", "--config", str(TINY), "--out", str(out), "--status"])
    assert rc == 0 and "10 of 10 stages done" in capsys.readouterr().out
    print(f"tiny reproduce: {seconds:.1f} s")


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time_") and k not in ("step_time", "tokens_per_s")}
            for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_training_stage_killed_mid_run_resumes_from_its_checkpoint(tiny_run, tmp_path):
    import torch

    ref, proc, _ = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    # save every step (changes no number), so the kill lands between checkpoints 1 and 4
    sets = ("--set", "train.set=[train.max_steps=4,train.save_every=1,train.progress=false,train.tensorboard=false]")
    for stage in ("synth", "warmup"):
        assert run_cli("--config", TINY, "--out", out, *sets, "--stage", stage).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "cord.cli", "reproduce", "--config", str(TINY), "--out", str(out),
                              *sets, "--stage", "train-cord"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    first = out / "train-cord" / "checkpoints" / "step-00000001" / "trainer_state.json"
    deadline = time.time() + 600
    while not first.is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if child.poll() is not None:
        pytest.fail(f"the stage ended before it could be killed: {child.communicate()}")
    child.send_signal(signal.SIGTERM)  # what a cluster's job kill sends
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130 and "interrupted; rerun the same command to resume" in err
    assert not rp._lock_busy(out / "train-cord" / ".cord-train.lock")  # the training process is gone too
    assert not (out / "train-cord" / "done.json").exists()
    latest = max(int(p.name.split("-")[1]) for p in (out / "train-cord" / "checkpoints").glob("step-*"))
    status = run_cli("--config", TINY, "--out", out, *sets, "--status").stdout
    assert "train-cord" in status and "interrupted" in status

    again = run_cli("--config", TINY, "--out", out, *sets, "--stage", "train-cord")
    assert again.returncode == 0, again.stderr
    log = (out / "train-cord" / "log.txt").read_text()
    assert f"resumed from {out / 'train-cord' / 'checkpoints' / f'step-{latest:08d}'}" in log
    print(f"killed after checkpoint {latest} of 4; resumed from it")
    # the resumed run equals the uninterrupted one (the end-to-end run's train-cord)
    assert _metrics(out / "train-cord" / "metrics.jsonl") == _metrics(ref / "train-cord" / "metrics.jsonl")
    wa, wb = _weights(out / "train-cord" / "model"), _weights(ref / "train-cord" / "model")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_training_stage_of_two_processes_runs_under_accelerate_launch(tmp_path):
    """train.processes > 1: the stage is `accelerate launch --num_processes N -m cord.cli train`
    (on CPU the processes meet over gloo), one run of world size 2, recorded like any stage."""
    out = tmp_path / "out"
    sets = ("--set", "train.processes=2", "--set", "warmup=null")  # the launcher is the point, not the warm-up
    assert run_cli("--config", TINY, "--out", out, *sets, "--stage", "synth").returncode == 0
    proc = run_cli("--config", TINY, "--out", out, *sets, "--stage", "train-cord")
    for _ in range(2):
        if proc.returncode == 0 or "terminate called without an active exception" not in \
                (out / "train-cord" / "log.txt").read_text():
            break
        # A gloo rank sometimes aborts in C++ right after loading, before any step: once in 7
        # fresh-clone CI runs, and twice in a row on a busy machine (unexplained; follow-up in
        # the session note). The pipeline's promise covers it: rerunning the stage runs it again.
        proc = run_cli("--config", TINY, "--out", out, *sets, "--stage", "train-cord")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = json.loads((out / "train-cord" / "done.json").read_text())["command"]
    launch = cmd.index("accelerate.commands.launch")
    assert cmd[launch + 1:launch + 6] == ["--multi_gpu", "--num_processes", "2", "-m", "cord.cli"]
    state = json.loads((out / "train-cord" / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    assert (out / "train-cord" / "model").is_dir() and "trained to step 4" in (out / "train-cord" / "log.txt").read_text()
