"""`cord train` as users run it (cord.cli.main in-process): resume through the CLI for
LoRA and full fine-tuning, cord and sft; --resume / --no-resume / --overwrite; refusals of a
run whose config, method or global batch changed; one error line for bad output paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cord.cli import main
from cord.config import load_config

ROOT = Path(__file__).resolve().parents[2]

FAST = ["data.limit=4", "train.batch_size=2", "train.progress=false", "train.tensorboard=false",
        "rollout.max_new_tokens=4", "rollout.seq_n=2"]


def cord_train(method: str, out: Path, *sets: str, flags: tuple[str, ...] = ()) -> list[str]:
    argv = ["train", "--config", str(ROOT / "configs" / "tiny" / f"{method}.yaml"),
            "--set", f"train.output_dir={out}"]
    for s in (*FAST, *sets):
        argv += ["--set", s]
    return [*argv, *flags]


def run(capsys, argv) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def ckpts(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def same_numbers(a: Path, b: Path) -> list[dict]:
    """metrics.jsonl of two runs without timings: equal, and returned."""
    def load(p):
        return [{k: v for k, v in json.loads(line).items()
                 if not k.startswith("time_") and k not in ("step_time", "tokens_per_s")}
                for line in (p / "metrics.jsonl").read_text().splitlines()]
    la, lb = load(a), load(b)
    assert la == lb
    return la


def same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.mark.slow
def test_no_resume_in_a_used_folder_is_refused_and_overwrite_starts_clean(tmp_path, capsys):
    """The sequence that corrupted a run folder: 12 steps; a 2-step --no-resume rerun (old
    checkpoints stayed, keep_last deleted the new one); a plain 4-step rerun then resumed
    the *old* run while metrics.jsonl held the new run's lines."""
    out = tmp_path / "run"
    rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=12", "train.save_every=4"))
    assert rc == 0, err
    assert ckpts(out) == ["step-00000008", "step-00000012"] and steps(out) == list(range(1, 13))

    rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=2", "train.save_every=4",
                                        flags=("--no-resume",)))
    assert rc == 2
    assert err.startswith(f"cord train: error: {out} already holds a run with checkpoints up to step-00000012")
    assert "--overwrite" in err and err.count("\n") == 1
    assert ckpts(out) == ["step-00000008", "step-00000012"] and steps(out) == list(range(1, 13))  # untouched

    rc, stdout, err = run(capsys, cord_train("sft", out, "train.max_steps=2", "train.save_every=4",
                                             flags=("--no-resume", "--overwrite")))
    assert rc == 0, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and f"moved the previous run in {out} to {aside[0]}" in stdout
    assert ckpts(aside[0]) == ["step-00000008", "step-00000012"] and steps(aside[0]) == list(range(1, 13))
    assert ckpts(out) == ["step-00000002"] and steps(out) == [1, 2]
    # clean: the same numbers as 2 steps in an empty folder
    rc, _, err = run(capsys, cord_train("sft", tmp_path / "clean", "train.max_steps=2", "train.save_every=4"))
    assert rc == 0, err
    same_numbers(out, tmp_path / "clean")

    rc, stdout, err = run(capsys, cord_train("sft", out, "train.max_steps=4", "train.save_every=4"))
    assert rc == 0, err
    assert f"resumed from {out}/checkpoints/step-00000002" in stdout
    assert steps(out) == [1, 2, 3, 4] and ckpts(out) == ["step-00000002", "step-00000004"]


RESUME_CASES = [
    # (method, lora, how the second leg resumes)
    pytest.param("cord", False, "--resume", id="cord-full-flag"),
    pytest.param("cord", True, "plain", id="cord-lora-plain"),
    pytest.param("sft", False, "path", id="sft-full-path"),
    pytest.param("sft", True, "--resume", id="sft-lora-flag"),
]


@pytest.mark.parametrize(("method", "lora", "how"), RESUME_CASES)
def test_resume_through_the_cli_is_exact(tmp_path, capsys, method, lora, how):
    sets = ["train.save_every=2", *(["model.lora.r=4"] if lora else [])]
    rc, _, err = run(capsys, cord_train(method, tmp_path / "a", "train.max_steps=4", *sets))
    assert rc == 0, err
    b = tmp_path / "b"
    rc, _, err = run(capsys, cord_train(method, b, "train.max_steps=2", *sets))
    assert rc == 0, err
    flags = {"--resume": ("--resume",), "plain": (), "path": ("--resume", str(b / "checkpoints" / "step-00000002"))}
    rc, stdout, err = run(capsys, cord_train(method, b, "train.max_steps=4", *sets, flags=flags[how]))
    assert rc == 0, err
    assert f"resumed from {b}/checkpoints/step-00000002" in stdout
    lines = same_numbers(tmp_path / "a", b)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    final = Path("checkpoints") / "step-00000004" / "trainable.safetensors"
    same_weights(tmp_path / "a" / final, b / final)
    if lora:
        assert (b / "checkpoints" / "step-00000004" / "adapter").is_dir()
        assert all("lora_" in k for k in load_file(str(b / final)))


def test_a_changed_method_or_math_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=2", "train.save_every=2"))
    assert rc == 0, err
    import cord.train.trainer as trainer_mod

    real_init = trainer_mod.Trainer.__init__

    def no_model(self, *a, **k):
        raise AssertionError("the model loaded before the refusal")

    monkeypatch.setattr(trainer_mod.Trainer, "__init__", no_model)
    rc, _, err = run(capsys, cord_train("cord", out, "train.max_steps=3"))
    assert rc == 2 and err.count("\n") == 1
    assert "objective.method: 'sft' → 'cord'" in err and "--allow-config-change" in err
    rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=3", "train.lr=5e-4"))
    assert rc == 2 and "train.lr: 0.001 → 0.0005" in err
    monkeypatch.setattr(trainer_mod.Trainer, "__init__", real_init)
    # harmless keys resume freely; the flag lets a math change through, and says so
    rc, stdout, err = run(capsys, cord_train("sft", out, "train.max_steps=3", "train.save_every=1",
                                             "train.keep_last=3", "train.log_every=1"))
    assert rc == 0, err
    assert "resumed from" in stdout and "config changes" not in stdout and steps(out) == [1, 2, 3]
    rc, stdout, err = run(capsys, cord_train("sft", out, "train.max_steps=4", "train.lr=5e-4",
                                             flags=("--allow-config-change",)))
    assert rc == 0, err
    assert "resumed with config changes (--allow-config-change): train.lr: 0.001 → 0.0005" in stdout
    assert steps(out) == [1, 2, 3, 4]


def test_resume_checks_the_saved_method_and_global_batch(tmp_path, capsys):
    """Trainer.resume reads trainer_state.json itself: a checkpoint whose config.yaml is gone
    still cannot be resumed by another method; another world size resumes only when the
    global batch (prompts per optimizer step) is the same."""
    from cord import CordError
    from cord.train.trainer import Trainer

    out = tmp_path / "run"
    rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=1"))
    assert rc == 0, err
    ckpt = out / "checkpoints" / "step-00000001"
    (ckpt / "config.yaml").unlink()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["method"] == "sft" and state["world_size"] == 1

    cfg = load_config(ROOT / "configs" / "tiny" / "opd.yaml", [f"train.output_dir={out}", *FAST])
    trainer = Trainer(cfg)
    with pytest.raises(CordError, match=f"{ckpt} was trained with method 'sft', this run is 'opd'"):
        trainer.resume(None)
    assert trainer.resume(None, allow_config_change=True) == ckpt and trainer.step == 1

    sft = Trainer(load_config(ROOT / "configs" / "tiny" / "sft.yaml", [f"train.output_dir={out}", *FAST]))
    own = sft.global_batch
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "world_size": 2, "global_batch": 2 * own}))
    with pytest.raises(CordError, match=rf"global batch of {2 * own} prompts per step \(world size 2\); this run "
                                        rf"has {own} \(world size 1\)"):
        sft.resume(None)
    # same global batch, but another micro-batch size (processes x grad_accum changed): each
    # micro-batch's normalisation and rollout seeds change, so it is refused too
    assert state["micro_batch"] == sft.micro_batch
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "world_size": 2, "global_batch": own,
                                                         "micro_batch": sft.micro_batch + 1}))
    with pytest.raises(CordError, match=rf"{sft.micro_batch + 1} prompts per micro-batch \(world size 2\); this "
                                        rf"run has {sft.micro_batch} \(world size 1 x train.grad_accum="):
        sft.resume(None)
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "world_size": 2, "global_batch": own}))
    assert sft.resume(None) == ckpt and sft.step == 1


def test_bad_output_paths_and_flag_mixes_are_one_line(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    for out, says in ((f, f"train.output_dir {f} is a file, not a folder; choose another train.output_dir"),
                      (f / "run", f"train.output_dir {f / 'run'}: {f} is a file, not a folder")):
        rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=1"))
        assert (rc, err) == (2, f"cord train: error: {says}\n")
    rc, _, err = run(capsys, cord_train("sft", tmp_path / "r", flags=("--resume", "--overwrite")))
    assert rc == 2 and "use one of them" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(cord_train("sft", tmp_path / "r", flags=("--resume", "--no-resume")))
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_resume_flag_in_a_folder_without_checkpoint_is_refused_not_a_silent_fresh_start(tmp_path, capsys):
    """Issue #27: `--resume` where nothing can be resumed trained from scratch without a word."""
    out = tmp_path / "run"
    rc, stdout, err = run(capsys, cord_train("sft", out, "train.max_steps=1", flags=("--resume",)))
    assert rc == 2 and err.count("\n") == 1 and stdout == ""
    assert err.startswith(f"cord train: error: --resume: {out} holds no checkpoint; drop --resume")
    assert not (out / "metrics.jsonl").exists()
    # a run that stopped before its first checkpoint says so
    rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=1", "train.save_every=5"))
    assert rc == 0, err
    import shutil

    shutil.rmtree(out / "checkpoints")
    rc, _, err = run(capsys, cord_train("sft", out, "train.max_steps=2", "train.save_every=5", flags=("--resume",)))
    assert rc == 2 and "stopped before its first one, train.save_every=5" in err
    assert steps(out) == [1]  # untouched


def test_help_names_every_built_in_family(capsys):
    """`cord eval --help` and `cord analyze --help` list the families; the list is written out in
    cli.py (no torch import for --help) and must not fall behind the registry."""
    from cord.cli import BUILTIN_FAMILY_NAMES, main
    from cord.models.registry import BUILTIN_FAMILIES

    assert set(BUILTIN_FAMILY_NAMES) == set(BUILTIN_FAMILIES)
    for command in ("eval", "analyze"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = "".join(capsys.readouterr().out.split())  # argparse wraps lines at hyphens
        assert all(name in shown for name in BUILTIN_FAMILIES), (command, shown)
